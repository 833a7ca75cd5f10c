# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Rate limits, retries and cost
#
# A provider lets you send so many requests and so many tokens per minute, and answers anything beyond that with
# **429 Too Many Requests**. Parallel calls reach that limit sooner; retries done badly make it worse. This
# lesson reads a 429, retries the right errors the right way, finds out how many workers a rate limit can use,
# and checks what parallel calls cost.
#
# **In this lesson you will**
# - read a 429 from a real response: its body, `retry-after` and the `x-ratelimit-*` headers;
# - watch the openai SDK retry behind your back, and decide where retries belong;
# - write retries with exponential backoff and jitter that honour `retry-after`, then the same with tenacity;
# - know what must never be retried: 400, 401, `insufficient_quota`;
# - measure throughput against workers under a rate limit, and replace the 429s by a throttle;
# - check that parallel calls cost the same tokens as sequential ones, and see the quota guard refuse a run
#   before its first call.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers import connect
from helpers.exercises import check, environment, plain

# Fixed speed: every call takes 0.05 s, so that runs of many calls stay short.
target = connect(seed=6, profile="fixed", latency=0.05)
environment(target)

# %% [markdown]
# ## 6.1 A 429, read from a real response
#
# Providers count two things per minute: requests (RPM) and tokens (TPM, the prompt plus the most the answer may
# use). The simulator is told to allow 3 requests a minute, and four calls go out one after another, with plain
# httpx so that nothing hides the answer. (A real provider's limit is not yours to set: against one, a single call
# shows the headers it sends.)
#
# **Predict:** how many of the four get an answer?

# %%
from helpers import APIError, ask

client = target.client()


def request(prompt: str, max_tokens: int | None = None) -> dict:
    body = {"model": target.model, "messages": [{"role": "user", "content": prompt}]}
    return body if max_tokens is None else body | {"max_tokens": max_tokens}


if target.is_simulator:
    target.simulator.configure(rpm=3)
    responses = [client.post("/chat/completions", json=request(f"Reply: call {i}")) for i in range(1, 5)]
else:
    responses = [client.post("/chat/completions", json=request("Reply: call 1"))]
for response in responses:
    print(response.status_code, "· requests left this minute:", response.headers.get("x-ratelimit-remaining-requests"))

# %% [markdown]
# Every answer says how much of the limit is left, not only the refusal. The fourth call is the refusal; its body
# is OpenAI's, and its headers say how long to wait:

# %%
rejected = responses[-1]
if rejected.status_code == 429:
    error = rejected.json()["error"]
    print("type:", error["type"], "· code:", error["code"])
    print("headers:", ", ".join(sorted(h for h in rejected.headers if h.startswith(("retry-after", "x-ratelimit")))))

# %%
# NBVAL_IGNORE_OUTPUT
print(rejected.json()["error"]["message"] if rejected.status_code == 429 else "no 429 this time")
for name, value in rejected.headers.items():
    if name.startswith(("retry-after", "x-ratelimit")):
        print(f"{name:32} {value}")

# %%
if target.is_simulator:
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in responses] == ["2", "1", "0", "0"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert 15_000 < int(rejected.headers["retry-after-ms"]) <= 20_000  # 3 a minute: one comes back every 20 s

# %% [markdown]
# | header | what it says |
# |---|---|
# | `retry-after` | seconds to wait before trying again (whole seconds) |
# | `retry-after-ms` | the same in milliseconds (OpenAI's, more precise; prefer it when present) |
# | `x-ratelimit-limit-requests`, `-tokens` | your limits per minute |
# | `x-ratelimit-remaining-requests`, `-tokens` | what is left of them right now |
# | `x-ratelimit-reset-requests`, `-tokens` | how long until the limit is whole again (`120ms`, `19.9s`, `6m0s`) |
#
# The limit is a bucket that holds a minute's worth and refills continuously: at 3 a minute, one request comes
# back every 20 s, which is what `retry-after` says. `helpers.ask` turns such a response into an `APIError` with
# `.status`, `.code` and `.retry_after` (in seconds, from `retry-after-ms` when present).
#
# ## 6.2 The openai SDK retries behind your back
#
# The official `openai` SDK retries failed requests by itself: twice by default, on 408, 409, 429, 5xx and broken
# connections, waiting as long as `retry-after` says (or 0.5 s, 1 s, ... with some jitter). You see only the end
# result. Each attempt carries an `x-stainless-retry-count` header, which lets the simulator count them.
#
# **Predict:** the first request of this call gets a 429. What does your code see?

# %%
import time

import openai

sdk = target.openai_client()  # the SDK's defaults
print("max_retries:", sdk.max_retries)
if target.is_simulator:
    target.simulator.reset()
    target.simulator.configure(rpm=None, script={1: "429"})  # no more RPM limit; the next request gets a 429
start = time.perf_counter()
reply = sdk.chat.completions.create(model=target.model, messages=[{"role": "user", "content": "Reply: alpha"}])
sdk_wall = time.perf_counter() - start
print("answer:", plain(reply.choices[0].message.content))
if target.is_simulator:
    seen = target.simulator.stats(records=False)
    print(f"the server saw {seen['requests']} requests {seen['by_status']}, {seen['retries_seen']} of them a retry")

# %%
# NBVAL_IGNORE_OUTPUT
print(f"the call took {sdk_wall:.2f} s")

# %%
assert plain(reply.choices[0].message.content) == "alpha"
if target.is_simulator:
    assert seen["requests"] == 2 and seen["retries_seen"] == 1 and seen["by_status"] == {"429": 1, "200": 1}
    assert sdk_wall > 0.9  # it waited the second that retry-after asked for

# %% [markdown]
# An answer, no error, and a call that took a second longer than it should: two requests, both counted against
# your rate limit (and, against a real provider, the workbook's quota guard counts both). With `max_retries=0`
# the SDK hands you the 429 at once:

# %%
strict = target.openai_client(max_retries=0)
if target.is_simulator:
    target.simulator.reset()
    target.simulator.configure(script={1: "429"})
    try:
        strict.chat.completions.create(model=target.model, messages=[{"role": "user", "content": "Reply: alpha"}])
    except openai.RateLimitError as failure:
        print(f"{type(failure).__name__}: {failure.status_code} {failure.code}")
        print("retry-after-ms:", failure.response.headers["retry-after-ms"])
    seen = target.simulator.stats(records=False)
    print(f"the server saw {seen['requests']} request, {seen['retries_seen']} retries")
    target.simulator.configure(script={})
else:
    print("Skipped: a real provider cannot be told to refuse a call. The SDK's retries work the same way there.")

# %%
if target.is_simulator:
    assert seen["requests"] == 1 and seen["retries_seen"] == 0

# %% [markdown]
# Hidden retries are a fine default for one call in a script. In a batch they get in the way:
#
# - a retry loop of your own around the SDK multiplies: 4 attempts of yours × 3 of the SDK's = 12 requests for
#   one prompt, all against your limit;
# - the SDK's waits are hidden from your timing, your logs and your progress bar;
# - it retries some errors that can never succeed (6.5).
#
# Retry in **one** place. Either trust the SDK's (`max_retries=...`) or turn it off (`max_retries=0`) and retry
# in your own loop, where you decide what to retry and can see it. pydantic-ai calls through the same SDK client,
# so the same hidden retries happen under an agent.
#
# ## 6.3 Backoff with jitter, by hand
#
# A good retry loop does four things: it retries only what can succeed next time (`error.retryable`: 429 and
# 5xx, not 400 or `insufficient_quota`); it waits longer after each failure (*exponential backoff*: `base`,
# `2·base`, `4·base`, ... up to `cap`); it draws each wait at random below that ceiling (*full jitter*); and
# it never comes back sooner than the server's `retry-after`. Here it is, small enough to read:

# %%
import random

from helpers import Answer

rng = random.Random(6)  # seeded: the same waits every run


def call(prompt: str) -> str:
    return ask(client, target.model, prompt)


def call_with_retries(prompt: str, *, attempts: int = 5, base: float = 0.25, cap: float = 4.0, jitter: bool = True):
    waited = 0.0
    for attempt in range(1, attempts + 1):
        try:
            return Answer(call(prompt), attempts=attempt, waited=waited)
        except APIError as error:
            if not error.retryable or attempt == attempts:
                raise  # not worth another try, or no tries left
            ceiling = min(cap, base * 2 ** (attempt - 1))  # 0.25, 0.5, 1, 2, 4 s
            wait = rng.uniform(0, ceiling) if jitter else ceiling
            if error.retry_after is not None:
                wait = max(wait, error.retry_after)  # never sooner than the server asked
            time.sleep(wait)
            waited += wait


# %% [markdown]
# Why the randomness? When a server fails, it fails many callers at the same moment. If they all wait the same
# time, they all come back at the same moment and meet the same overloaded server. Eight calls whose first
# attempts all fail with a 503, retried with a fixed wait and with jitter:
#
# **Predict:** in which run do the second attempts reach the server closest together?

# %%
import functools

from helpers import draw, run_threads

eight = [f"Reply: caller {i}" for i in range(8)]
comeback = {}  # jitter: how far apart the retries reached the server, in seconds
herd = {}
if target.is_simulator:
    for jitter in (False, True):
        target.simulator.reset()
        target.simulator.configure(script={n: "503" for n in range(1, 9)})  # the first eight requests fail
        herd[jitter] = run_threads(functools.partial(call_with_retries, jitter=jitter), eight, workers=8)
        arrivals = [r["received"] for r in target.simulator.stats()["records"] if r["n"] > 8]
        comeback[jitter] = max(arrivals) - min(arrivals)
    target.simulator.configure(script={})
    herd[False].label, herd[True].label = "fixed wait of 0.25 s", "full jitter: a random wait below 0.25 s"
else:
    print("Skipped: a real provider fails on its own schedule. One call through the loop:")
    print(call_with_retries("Reply: caller 0"))

# %%
title = "Eight calls fail together: a fixed wait brings them back together, jitter spreads them"
draw(*herd.values(), title=title) if herd else None

# %%
# NBVAL_IGNORE_OUTPUT
if comeback:
    print(f"the retries reached the server within {comeback[False] * 1000:.0f} ms (fixed wait)")
    print(f"and within {comeback[True] * 1000:.0f} ms (jitter)")

# %%
if target.is_simulator:
    assert all(r.ok and r.attempts == 2 for report in herd.values() for r in report.records)
    assert comeback[False] < 0.08  # together, as they failed
    assert comeback[True] > 0.14 and comeback[True] > 2 * comeback[False]  # the seeded draws span 0.2 s

# %% [markdown]
# The hatched part of each bar is waiting. With a fixed wait the eight retries hit the server as one burst
# again; with jitter they arrive one by one, and on average sooner. (Against a rate limit the burst is what
# produces the next round of 429s.)
#
# `helpers.retry` is the same loop made complete: it also retries timeouts and dropped connections, caps the
# total waiting (`max_wait`), and returns an `Answer` that records the attempts and the waiting, so a run's
# timeline can show them. `with_retries(call, ...)` wraps a call for `run_threads` (or a coroutine function for
# `run_async`), `is_retryable(error)` is the verdict, and `backoff(attempt)` and `retry_after(error)` are the two
# waits it combines.

# %%
from helpers.retry import backoff, is_retryable, retry, retry_after, with_retries

print("ceilings (base 0.5 s, cap 8 s):", [min(8.0, 0.5 * 2 ** (k - 1)) for k in range(1, 7)])
draws = [round(backoff(k, base=0.5, cap=8.0, rng=random.Random(k)), 2) for k in range(1, 7)]
print("one draw each:                 ", draws)
if target.is_simulator:
    target.simulator.reset()
    target.simulator.configure(script={1: "503", 2: "503"})  # two failures, then an answer
    answer = retry(call, "Reply: delta", attempts=4, base=0.05, rng=6)
    print(f"answer {answer.text!r} after {answer.attempts} attempts")
    target.simulator.configure(script={})
else:
    answer = retry(call, "Reply: delta", attempts=4, base=0.05, rng=6)
    print(f"answer {plain(answer.text)!r} after {answer.attempts} attempt(s)")

# %%
assert plain(answer.text) == "delta" and answer.waited < 30
if target.is_simulator:
    assert answer.attempts == 3 and 0 < answer.waited < 0.15  # waits below 0.05 s and 0.1 s

# %% [markdown]
# ## 6.4 The library way: tenacity
#
# [tenacity](https://tenacity.readthedocs.io) is the usual Python library for retries. The same rules, said as
# its building blocks: retry only when `is_retryable` says so, wait exponentially with full jitter
# (`wait_random_exponential`) but at least what the server asked, stop after 5 attempts or 30 s, and re-raise the
# last error (not tenacity's own `RetryError`) when giving up.

# %%
import tenacity

jittered = tenacity.wait_random_exponential(multiplier=0.05, max=2.0)


def wait_as_asked(state: tenacity.RetryCallState) -> float:
    """Exponential backoff with full jitter, but never shorter than the server's retry-after."""
    asked = retry_after(state.outcome.exception())
    return max(jittered(state), asked or 0.0)


@tenacity.retry(
    retry=tenacity.retry_if_exception(is_retryable),
    wait=wait_as_asked,
    stop=tenacity.stop_after_attempt(5) | tenacity.stop_after_delay(30),
    reraise=True,
)
def sturdy_call(prompt: str) -> str:
    return call(prompt)


if target.is_simulator:
    target.simulator.reset()
    target.simulator.configure(script={1: "429"})  # a 429 that asks for 1 s
start = time.perf_counter()
sturdy = sturdy_call("Reply: echo")
sturdy_wall = time.perf_counter() - start
print(f"answer {plain(sturdy)!r} after {sturdy_call.statistics['attempt_number']} attempt(s)")

# %%
# NBVAL_IGNORE_OUTPUT
print(f"took {sturdy_wall:.2f} s")

# %%
assert plain(sturdy) == "echo"
if target.is_simulator:
    assert sturdy_call.statistics["attempt_number"] == 2
    assert sturdy_wall > 0.95  # the server asked for 1 s; jitter alone would have waited at most 0.05 s
    target.simulator.configure(script={})

# %% [markdown]
# Which to use? tenacity when you want the policy written down in one decorator, logging hooks
# (`before_sleep=...`) and async support (it also decorates `async def`); a ten-line loop when you want to read
# every step. Both must be told the two things that matter for LLM calls: which errors to retry, and to honour
# `retry-after`. Neither is right by default: tenacity's bare `@retry` retries *every* exception, for ever,
# without waiting.
#
# ## 6.5 What not to retry
#
# Some errors come back the same way however often you ask:
#
# | error | why another try cannot help |
# |---|---|
# | 400 bad request | the request is wrong (a parameter, a prompt over the context window) |
# | 401 / 403 | the key is wrong or may not use this model |
# | 404 | no such model (or URL) |
# | 429 with code `insufficient_quota` | no credit left: only a bigger quota helps, not waiting |
# | a `KeyError` or `TypeError` in your own code | a bug |
#
# The two 429s look alike by status and need opposite treatment: read the code. Below, a prompt that meets an
# exhausted quota goes through our loop, tenacity, and the SDK with its default retries.
#
# **Predict:** how many requests does each make for this one prompt?

# %%
no_credit = "Reply: foxtrot"
requests_made = {}
if target.is_simulator:
    target.simulator.configure(fault_on={"foxtrot": "quota"})
    tries = {
        "hand-written loop": lambda: call_with_retries(no_credit),
        "tenacity": lambda: sturdy_call(no_credit),
        "helpers.retry": lambda: retry(call, no_credit),
        "openai SDK, max_retries=2": lambda: sdk.chat.completions.create(
            model=target.model, messages=[{"role": "user", "content": no_credit}]
        ),
    }
    for name, attempt in tries.items():
        target.simulator.reset()
        try:
            attempt()
        except (APIError, openai.RateLimitError) as failure:
            requests_made[name] = target.simulator.stats(records=False)["requests"]
            print(f"{name:26} {requests_made[name]} request(s), then {type(failure).__name__}: code {failure.code}")
    target.simulator.configure(fault_on={})
else:
    print("Skipped: nobody exhausts a real quota on purpose.")

# %%
if target.is_simulator:
    assert requests_made == {"hand-written loop": 1, "tenacity": 1, "helpers.retry": 1, "openai SDK, max_retries=2": 3}

# %% [markdown]
# The SDK goes by status alone: it tried the empty account three times and waited about a second and a half for
# nothing. One more reason to turn its retries off (`max_retries=0`) when you retry yourself.
#
# ## 6.6 More workers under a rate limit
#
# Lesson 02 showed more workers finishing sooner. Under a rate limit that holds only up to the limit. To see it
# in seconds, the simulator now allows **2,400 requests a minute**: **40 calls a second**. A call takes 0.05 s,
# so one worker makes at most 20 calls a second, two workers 40, four workers 80 if they were let.
#
# One detail first. A provider's bucket holds a minute's worth, so a fresh one lets a burst of 2,400 calls
# through before any limit shows. A long batch spends that in its first minute and from then on lives on the
# refill rate. To see that steady state at once, the simulator's bucket is told to hold only a twentieth of a
# second's worth (`burst=0.05`: 2 calls); it refills at the same 40 calls a second.
#
# **Predict:** 16 calls, with retries (honouring `retry-after`), on 1, 2, 4, 8 and 16 workers. How many calls a
# second will 16 workers make?

# %%
RPM = 2_400
LIMIT = RPM / 60  # calls per second


def short_call(prompt: str) -> str:
    return ask(client, target.model, prompt, max_tokens=20)


sixteen = [f"Reply: {i}" for i in range(16)]
sweep = {}
if target.is_simulator:
    target.simulator.configure(rpm=RPM, burst=0.05)
    for workers in (1, 2, 4, 8, 16):
        target.simulator.reset()  # a fresh bucket (of 2 calls) and fresh counts
        patient = with_retries(short_call, attempts=20, base=0.02, cap=0.25, rng=workers)
        report = run_threads(patient, sixteen, workers=workers)
        refused = target.simulator.stats(records=False)["by_status"].get("429", 0)
        sweep[workers] = (report, refused)
else:
    print("Skipped: finding a real provider's limit means spending it. The picture below is the simulator's.")

# %%
import matplotlib.pyplot as plt

if sweep:
    counts = list(sweep)
    speed = [report.n / report.wall for report, _ in sweep.values()]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    left.plot(counts, speed, marker="o", color="#0072B2")
    left.axhline(LIMIT, color="#555555", linestyle="--", linewidth=1)
    left.text(counts[0], LIMIT, " the limit: 40 calls/s", color="#555555", fontsize=8, va="bottom")
    left.set(xlabel="workers", ylabel="calls answered per second", title="Throughput stops at the limit")
    right.bar([str(n) for n in counts], [refused for _, refused in sweep.values()], color="#D55E00")
    right.set(xlabel="workers", ylabel="429 answers", title="More workers only collect more 429s")
    left.set_xscale("log", base=2)
    left.set_xticks(counts, [str(n) for n in counts])
    for axes in (left, right):
        axes.set_ylim(bottom=0)
        axes.grid(color="#dddddd", linewidth=0.6)
    left.set_ylim(top=LIMIT * 1.3)
    figure.tight_layout()
    plt.show()

# %%
# NBVAL_IGNORE_OUTPUT
for workers, (report, refused) in sweep.items():
    attempts = sum(r.attempts for r in report.records)
    rate = report.n / report.wall
    print(f"{workers:2} workers: {rate:5.1f} calls/s, {refused:3} answers were 429, {attempts} attempts")

# %%
if sweep:
    speed = {workers: report.n / report.wall for workers, (report, _) in sweep.items()}
    refused = {workers: refused for workers, (_, refused) in sweep.items()}
    assert all(not report.failures for report, _ in sweep.values())  # every prompt answered in the end
    assert speed[1] < 0.8 * LIMIT and refused[1] == 0  # one worker stays under the limit
    assert max(speed[2], speed[4]) > 1.2 * speed[1]  # more workers help, up to the limit ...
    assert max(speed.values()) < 1.2 * LIMIT  # ... and nobody gets past it
    assert refused[16] > refused[4] > 0  # past it, the extra workers collect 429s

# %% [markdown]
# Up to the limit, more workers mean more calls per second. Past it, throughput stays at the limit at best, often
# a little under: the extra workers send requests that come back as 429s, then sit out their backoff while the
# bucket refills for nobody. Every one of those 429s was a request: it cost a round trip, it may count against
# the limit itself at some providers, and it makes the run's timing unpredictable.
#
# So the number of workers has an upper bound set by the rate limit: about `limit (calls/s) × latency (s)`,
# here 40 × 0.05 = 2 workers. Against a real provider with 2 s calls and 500 calls a minute that is
# about 17 workers, and no more.
#
# ## 6.7 A throttle instead of 429s
#
# A cap on calls **in flight** (`max_workers`, a semaphore) is not a cap on calls **per minute**. Four workers
# with 0.05 s calls start 80 calls a second. Against a rate limit you want a throttle: something that lets
# each call start only when the limit has room for it. `helpers.Throttle` is a token bucket on the client side,
# shared by every thread and task: `throttle.acquire()` in a thread, `await throttle.acquire_async()` in a
# coroutine (it never blocks the event loop). Set it a little under the server's limit.
#
# **Predict:** 16 workers again, no retries this time, with a throttle at 90 % of the limit. How many 429s?

# %%
from helpers import Throttle, run_async

throttled = {}
if target.is_simulator:
    throttle = Throttle(rpm=0.9 * RPM)  # 2,160 calls a minute, evenly spaced

    def throttled_call(prompt: str) -> Answer:
        waited = throttle.acquire()  # wait for this call's turn
        return Answer(short_call(prompt), waited=waited)  # the wait shows on the timeline

    target.simulator.reset()
    throttled["threads"] = run_threads(throttled_call, sixteen, workers=16)
    throttled["threads 429s"] = target.simulator.stats(records=False)["by_status"].get("429", 0)

    aclient = target.async_client()
    athrottle = Throttle(rpm=0.9 * RPM)

    async def throttled_acall(prompt: str) -> str:
        await athrottle.acquire_async()  # waits with asyncio.sleep: the other tasks keep running
        response = await aclient.post("/chat/completions", json=request(prompt, max_tokens=20))
        response.raise_for_status()
        return response.json()["choices"][0]["message"]["content"]

    target.simulator.reset()
    throttled["asyncio"] = await run_async(throttled_acall, sixteen, limit=16)
    throttled["asyncio 429s"] = target.simulator.stats(records=False)["by_status"].get("429", 0)
    print("429s with a throttle: threads", throttled["threads 429s"], "· asyncio", throttled["asyncio 429s"])
else:  # a real provider: three calls, 120 a minute at most, so half a second apart
    throttle = Throttle(rpm=120)

    def throttled_call(prompt: str) -> Answer:
        waited = throttle.acquire()
        return Answer(call(prompt), waited=waited)

    throttled["threads"] = run_threads(throttled_call, ["Reply: one", "Reply: two", "Reply: three"], workers=3)
    print(f"three calls on three workers; the throttle held them back {throttle.waited:.1f} s in all (0 + 0.5 + 1)")

# %%
if target.is_simulator:
    sweep[16][0].label = "16 workers, retrying after 429s"
    throttled["threads"].label = "16 workers, throttle at 90 % of the limit"
    title = "Sixteen calls under a limit of 40 calls/s: waiting after 429s, or waiting for a turn"
    figure = draw(sweep[16][0], throttled["threads"], title=title)
figure if target.is_simulator else draw(throttled["threads"], title="A throttle at 120 calls a minute")

# %%
# NBVAL_IGNORE_OUTPUT
if target.is_simulator:
    unthrottled, unthrottled_refused = sweep[16]
    print(f"16 workers, retries:  {unthrottled.n / unthrottled.wall:5.1f} calls/s, {unthrottled_refused} 429s")
    for kind in ("threads", "asyncio"):
        report = throttled[kind]
        print(f"16 workers, throttle: {report.n / report.wall:5.1f} calls/s, {throttled[kind + ' 429s']} 429s ({kind})")
    print(throttle, athrottle, sep="\n")

# %%
if target.is_simulator:
    assert throttled["threads 429s"] == 0 and throttled["asyncio 429s"] == 0  # no 429 at all ...
    assert not throttled["threads"].failures and not throttled["asyncio"].failures
    for kind in ("threads", "asyncio"):
        assert throttled[kind].n / throttled[kind].wall > 0.7 * LIMIT  # ... and close to the limit
else:
    assert throttle.waited > 1.2 and not throttled["threads"].failures  # 0, 0.5 and 1 s: half a second apart

# %% [markdown]
# No 429s, and about as many calls per second as the retries managed, without a single refused request. In the
# first run the calls go out, are refused, wait and try again (each orange mark is another request); in the
# second each call waits once for its turn, on the client, where it costs nothing, and the turns make a
# staircase at the limit's pace. Keep both tools, they answer different questions:
#
# | | concurrency cap (`max_workers`, `Semaphore`) | throttle (`Throttle(rpm=..., tpm=...)`) |
# |---|---|---|
# | limits | calls in flight at once | calls (or tokens) started per minute |
# | protects | your memory, sockets, and a provider's concurrent-request limit | the provider's RPM and TPM limits |
# | short calls | let through far more per minute than the limit | hold them to the limit |
#
# When calls differ in size, throttle tokens too: `Throttle(tpm=...)` and `acquire(tokens=...)` with the
# prompt's tokens plus `max_tokens`. Keep retries as well: a throttle prevents most 429s, and other clients of
# the same key (a colleague, another notebook) can still use up the limit.
#
# ## 6.8 Parallelism saves latency, not cost
#
# A provider bills tokens: those of the prompt and those of the answer. Running the calls side by side changes
# when they happen, not what they contain. Here the same six prompts run one by one and on three threads, and
# every answer's `usage` is added up. (Against a real provider: three prompts.) The prices are those of
# `gpt-4o-mini`, as if the simulator were it.
#
# **Predict:** which run costs more?

# %%
from helpers import run_sequential
from helpers.quota import estimate_cost

if target.is_simulator:
    target.simulator.configure(rpm=None, burst=60, latency=0.08)
questions = ["What is the capital of Japan?", "What is 2+2?", "Reply: a short summary of the plan"]
questions += ["Reply: yes", "Reply: the second-to-last answer", "Reply: done"] if target.is_simulator else []


def metered_call(prompt: str, usage: list) -> str:
    response = client.post("/chat/completions", json=request(prompt, max_tokens=50))
    response.raise_for_status()
    body = response.json()
    usage.append(body["usage"])  # list.append is safe from many threads
    return body["choices"][0]["message"]["content"]


bills = {}
for name, runner in (("one by one", run_sequential), ("3 threads", functools.partial(run_threads, workers=3))):
    usage = []
    report = runner(functools.partial(metered_call, usage=usage), questions)
    tokens_in = sum(u["prompt_tokens"] for u in usage)
    tokens_out = sum(u["completion_tokens"] for u in usage)
    bills[name] = (report, tokens_in, tokens_out, estimate_cost("gpt-4o-mini", tokens_in, tokens_out))
    print(f"{name:10}: {len(usage)} calls, {tokens_in} + {tokens_out} tokens, ${bills[name][3]:.6f}")

# %%
# NBVAL_IGNORE_OUTPUT
for name, (report, *_) in bills.items():
    print(f"{name:10}: wall {report.wall:.2f} s")

# %%
(sequential, *seq_bill), (threaded, *par_bill) = bills.values()
assert seq_bill[0] == par_bill[0]  # the same prompts: the same input tokens
assert threaded.wall < 0.6 * sequential.wall  # a third of the time (about) ...
if target.is_simulator:  # the simulator answers the same every time; a real model's answers vary a little
    assert seq_bill == par_bill  # ... and exactly the same tokens and dollars

# %% [markdown]
# Three times faster, the same tokens, the same bill. What parallel calls change is how much of your limits they
# hold at once: three calls in flight are three slots of a concurrency limit and arrive three times as fast at the
# per-minute limits. Parallelism buys time, never money. (Retries, on the other hand, do cost: each is a request,
# and a retried call that had produced half its answer before it failed may be billed for that half.)
#
# ## 6.9 The quota guard
#
# Against a real provider, a loop with a bug, a `range(10000)` where you meant `range(10)`, or a retry storm
# spends real money before you notice. The workbook therefore sends every call to a real provider through a
# **quota guard** (`helpers.quota`, one per kernel session): at most 3 calls in flight, and a budget of 100 calls
# and 50,000 tokens. It does two things:
#
# - **before a run**, `guard.check_run(n_calls, est_tokens_per_call, workers)` refuses a run that would not fit,
#   with its estimate, before the first call is sent. `helpers.run(strategy, prompts, target=...)` asks it first.
# - **on every request**, a call over the budget is refused with `QuotaExceeded` before it is sent; the tokens of
#   each answer's `usage` are counted.
#
# Against the simulator there is no guard (it costs nothing), so here is one made for the purpose, priced as
# `gpt-4o-mini` (against a real provider, the session's own guard is used). No call is made:

# %%
from helpers import QuotaExceeded, QuotaGuard

guard = target.quota if target.quota is not None else QuotaGuard(model="gpt-4o-mini")
print(guard)
for n_calls, workers in ((1000, 3), (20, 10)):
    try:
        guard.check_run(n_calls, est_tokens_per_call=300, workers=workers)
    except QuotaExceeded as refusal:
        print(f"\n{n_calls} calls on {workers} workers: {refusal}")

# %% [markdown]
# The message says what the run would need, what is left, and how to allow more *on purpose*. Estimates are
# rough (about 4 characters a token, plus `max_tokens` for the answer), which is enough to stop a mistake of ten
# times or more.
#
# To see the guard stop real requests, point a `Target` at the simulator without telling it that it is the
# simulator: it then behaves as it would with a real provider, and every client it builds goes through the
# guard. A budget of 5 calls:

# %%
from helpers import Target, run

guarded_requests = {}
if target.is_simulator:
    guarded = Target(base_url=target.base_url, model=target.model, quota=QuotaGuard(max_calls=5))
    target.simulator.configure(latency=0.05)
    target.simulator.reset()
    try:
        run("threads", [f"Reply: {i}" for i in range(20)], target=guarded, workers=3)
    except QuotaExceeded as refusal:
        print("run refused:", refusal)
    guarded_requests["after the refused run"] = target.simulator.stats(records=False)["requests"]
    with guarded.client() as guarded_client:
        for i in range(1, 7):
            try:
                ask(guarded_client, guarded.model, f"Reply: call {i}")
            except QuotaExceeded as refusal:
                print(f"\ncall {i} refused: {refusal}")
    guarded_requests["after six calls"] = target.simulator.stats(records=False)["requests"]
    print("\n", guarded.quota, sep="")
else:
    print("Skipped: against a real provider your calls already go through the session's guard:", target.quota)

# %%
if target.is_simulator:
    assert guarded_requests == {"after the refused run": 0, "after six calls": 5}  # refused before sending
    assert guarded.quota.calls == 5 and guarded.quota.refused == 1

# %% [markdown]
# The run of 20 never started: the server saw nothing. Of the six single calls, five went out and the sixth was
# refused in the client. This is what protects a real key: whatever a cell does (threads, asyncio, the SDK with its
# hidden retries, a pydantic-ai agent), its requests go through the guard, and each retry counts as a call.
#
# ## Summary
#
# - A 429 carries OpenAI's error body and headers: `retry-after` / `retry-after-ms` say how long to wait, and
#   `x-ratelimit-remaining-*` on *every* answer says how close you are. The limit is a bucket holding a minute's
#   worth, refilled continuously.
# - The openai SDK retries 429s and 5xx twice by default, invisibly (even `insufficient_quota`). Retry in one
#   place: the SDK's, or yours with `max_retries=0`.
# - Retry only what can succeed (429, 5xx, timeouts, dropped connections); back off exponentially with full
#   jitter; never sooner than `retry-after`; cap the attempts and the total wait. `helpers.retry`, or tenacity
#   with `retry_if_exception(is_retryable)` and a wait that honours `retry-after`.
# - Never retry 400, 401/403, 404 or `insufficient_quota`.
# - Under a rate limit, throughput grows with workers only up to the limit; past it the extra workers collect
#   429s. A throttle (`Throttle.acquire()`, `await acquire_async()`) keeps the calls at the limit with none.
# - Parallel calls cost the same tokens as sequential ones: they save time, not money.
# - Against a real provider the quota guard caps calls in flight and refuses a run, or a call, that would go
#   over the session's budget, before anything is sent.
#
# ## Exercises
#
# Solutions are in `06_rate_limits_retries_cost_solutions.ipynb`.
#
# **Exercise 6.1.** Write `careful_call(prompt)`: at most 4 attempts, retrying only retryable errors
# (`error.retryable`), with full jitter below `0.05 · 2^(attempt-1)` seconds and never less than
# `error.retry_after`. Any other error is raised at once. Use `call(prompt)` for each attempt. (The check hands
# your function a stand-in for `call` that fails as planned: a 503, then a 429 that asks for 0.2 s, and later an
# exhausted quota.)


# %%
def careful_call(prompt: str) -> str:
    return call(prompt)  # change me


# %%
real_call = call
planned, seen = [], []


def call(prompt: str) -> str:  # a stand-in for the real call: it fails as planned and sends nothing
    seen.append(prompt)
    if planned:
        raise planned.pop(0)
    return prompt.removeprefix("Reply: ")


planned[:] = [APIError(503, "overloaded"), APIError(429, "slow down", code="rate_limit_exceeded", retry_after=0.2)]
start = time.perf_counter()
try:
    got = careful_call("Reply: golf")
except Exception as failure:
    got = failure
right = got == "golf" and len(seen) == 3 and time.perf_counter() - start >= 0.2
seen.clear()
planned[:] = [APIError(429, "no credit left", code="insufficient_quota")]
try:
    careful_call("Reply: hotel")
    right = False
except APIError as failure:
    right = right and failure.code == "insufficient_quota" and len(seen) == 1
call = real_call
check(
    right,
    "the 503 and the 429 retried away (waiting as long as asked), and the empty account tried once.",
    "loop over the attempts; on APIError, raise unless error.retryable and attempts are left; otherwise sleep "
    "max(random.uniform(0, 0.05 * 2 ** (attempt - 1)), error.retry_after or 0).",
)

# %% [markdown]
# **Exercise 6.2.** The simulator now allows 48,000 tokens a minute, and `short_call` uses 30 tokens. Make
# `throttle` a `Throttle` that lets 16 workers run sixteen calls with **no 429** and at least 75 % of the calls
# per second the limit allows.

# %%
throttle = None  # your throttle

# %%
if target.is_simulator and throttle is not None:
    target.simulator.configure(tpm=48_000, burst=0.25)  # a quarter of a second's worth: 200 tokens
    target.simulator.reset()

    def exercise_call(prompt: str) -> str:
        throttle.acquire()
        return short_call(prompt)

    exercise = run_threads(exercise_call, sixteen, workers=16)
    exercise_refused = target.simulator.stats(records=False)["by_status"].get("429", 0)
    target.simulator.configure(tpm=None, burst=60)
    right = exercise_refused == 0 and exercise.n / exercise.wall >= 0.75 * 48_000 / 60 / 30
else:
    right = throttle is not None and throttle.rpm <= 48_000 / 30
check(
    right,
    "no 429s, close to the limit: the throttle waits so the server does not have to refuse.",
    "48,000 tokens a minute at 30 tokens a call is 1,600 calls a minute; throttle a little below: Throttle(rpm=...).",
)

# %% [markdown]
# **Exercise 6.3.** A session's guard allows 100 calls and 50,000 tokens. Your prompts are estimated at about 700
# tokens a call. What is the largest number of calls `check_run` lets through? Store it in `largest` (work it
# out, then try it with `QuotaGuard(max_calls=100, max_tokens=50_000).check_run(...)`).

# %%
largest = None  # your answer

# %%
fresh = QuotaGuard(max_calls=100, max_tokens=50_000)
fits = False
try:
    fresh.check_run(largest, est_tokens_per_call=700)
    fits = True
    fresh.check_run(largest + 1, est_tokens_per_call=700)
    fits = False  # one more would fit too: not the largest
except (QuotaExceeded, TypeError, ValueError):
    pass
check(
    isinstance(largest, int) and fits,
    "50,000 // 700 = 71 calls: here the tokens run out before the calls do.",
    "both limits count: at most 100 calls, and calls × 700 tokens at most 50,000.",
)
