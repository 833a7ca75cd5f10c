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
# # 06 · Rate limits and retries
#
# A provider lets you send so many requests and so many tokens per minute, and answers anything beyond that with
# **429 Too Many Requests**. Parallel calls reach that limit sooner; retries done badly make it worse. This
# lesson reads a 429, and retries the right errors the right way. Lesson 07 then runs whole batches under a
# limit: throughput, throttling and cost.
#
# **In this lesson you will**
# - read a 429 from a real response: its body, `retry-after` and the `x-ratelimit-*` headers;
# - watch the openai SDK retry behind your back, and decide where retries belong;
# - write retries with exponential backoff and jitter that honour `retry-after`, then the same with tenacity;
# - know what must never be retried: 400, 401, `insufficient_quota`.

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
# The simulator's limit is a bucket that holds up to a minute's worth and refills continuously: at 3 a minute, one
# request comes back every 20 s, which is what `retry-after` says. A provider's may be stricter than its headline
# figure: OpenAI says a per-minute limit may be enforced over shorter windows (a limit of 60,000 requests a minute as
# 1,000 a second), so a burst can be refused although the minute's total is well under the limit. Never count on a whole
# minute's worth at once; read the headers, and pace the calls (lesson 07). `helpers.ask` turns such a response into an
# `APIError` with `.status`, `.code` and `.retry_after` (in seconds, from `retry-after-ms` when present).
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
from helpers.retry import backoff, is_retryable, retry, retry_after

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
    took = {}
    for name, attempt in tries.items():
        target.simulator.reset()
        start = time.perf_counter()
        try:
            attempt()
        except (APIError, openai.RateLimitError) as failure:
            took[name] = time.perf_counter() - start
            requests_made[name] = target.simulator.stats(records=False)["requests"]
            print(f"{name:26} {requests_made[name]} request(s), then {type(failure).__name__}: code {failure.code}")
    target.simulator.configure(fault_on={})
else:
    print("Skipped: nobody exhausts a real quota on purpose.")

# %%
# NBVAL_IGNORE_OUTPUT
if target.is_simulator:
    assert requests_made == {"hand-written loop": 1, "tenacity": 1, "helpers.retry": 1, "openai SDK, max_retries=2": 3}
    print(", ".join(f"{name}: {seconds:.2f} s" for name, seconds in took.items()))

# %% [markdown]
# The SDK goes by status alone: it tried the empty account three times, and spent the time printed above waiting
# for nothing. One more reason to turn its retries off (`max_retries=0`) when you retry yourself.
#
# ## Summary
#
# - A 429 carries OpenAI's error body and headers: `retry-after` / `retry-after-ms` say how long to wait, and
#   `x-ratelimit-remaining-*` on *every* answer says how close you are. A limit per minute may be enforced over
#   shorter windows: a burst can be refused although the minute's total is under it.
# - The openai SDK retries 429s and 5xx twice by default, invisibly (even `insufficient_quota`). Retry in one
#   place: the SDK's, or yours with `max_retries=0`.
# - Retry only what can succeed (429, 5xx, timeouts, dropped connections); back off exponentially with full
#   jitter; never sooner than `retry-after`; cap the attempts and the total wait. `helpers.retry`, or tenacity
#   with `retry_if_exception(is_retryable)` and a wait that honours `retry-after`.
# - Never retry 400, 401/403, 404 or `insufficient_quota`.
#
# ## Exercises
#
# Solutions are in `06_rate_limits_and_retries_solutions.ipynb`.
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
