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
# # 07 · Throughput, throttling and cost
#
# Lesson 06 met the rate limit one refusal at a time: a 429, read and retried. This lesson looks at a whole batch
# under a limit. How many calls a second can it get, and how many workers does that take? What does a throttle do
# that retries cannot? And what do parallel calls cost, next to the same calls one by one?
#
# **In this lesson you will**
# - measure throughput against workers under a rate limit, and find where more workers stop helping;
# - replace the 429s with a throttle on the client, for threads and for asyncio;
# - tell a cap on calls in flight from a cap on calls per minute;
# - check that parallel calls cost the same tokens as sequential ones;
# - see the quota guard refuse a run before its first call, and a call before it is sent.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers import connect
from helpers.exercises import check, environment

# Fixed speed: every call takes 0.05 s, so that runs of many calls stay short.
target = connect(seed=6, profile="fixed", latency=0.05)
environment(target)

# %% [markdown]
# The calls of this lesson: plain httpx through the workbook's `ask`, each asking for at most 20 tokens, and the
# retries of lesson 06 (`helpers.with_retries`) where a run needs them.

# %%
import functools

from helpers import Answer, ask, draw, run_threads, with_retries

client = target.client()


def request(prompt: str, max_tokens: int | None = None) -> dict:
    body = {"model": target.model, "messages": [{"role": "user", "content": prompt}]}
    return body if max_tokens is None else body | {"max_tokens": max_tokens}


def call(prompt: str) -> str:
    return ask(client, target.model, prompt)


def short_call(prompt: str) -> str:
    return ask(client, target.model, prompt, max_tokens=20)


# %% [markdown]
# ## 7.1 More workers under a rate limit
#
# Lesson 02 showed more workers finishing sooner. Under a rate limit that holds only up to the limit. To see it
# in seconds, the simulator now allows **2,400 requests a minute**: **40 calls a second**. A call takes 0.05 s,
# so one worker makes at most 20 calls a second, two workers 40, four workers 80 if they were let.
#
# One detail first. The simulator's bucket normally holds up to a minute's worth, so a fresh one would let a burst
# of calls through before any limit showed. Do not count on that from a provider: a per-minute limit may be
# enforced over much shorter windows (OpenAI's example: 60,000 a minute as 1,000 a second), and a long batch
# lives on the refill rate anyway. To see that steady state at once, the simulator's bucket is told to hold only
# a twentieth of a second's worth (`burst=0.05`: 2 calls); it refills at the same 40 calls a second.
#
# **Predict:** 16 calls, with retries (honouring `retry-after`), on 1, 2, 4, 8 and 16 workers. How many calls a
# second will 16 workers make?

# %%
RPM = 2_400
LIMIT = RPM / 60  # calls per second
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
if sweep:
    rates = {workers: report.n / report.wall for workers, (report, _) in sweep.items()}
    best = max(rates, key=rates.get)
    beyond = [rates[w] for w in rates if w > best]
    if beyond:
        print(
            f"the most: {rates[best]:.1f} calls/s with {best} workers; with more workers, "
            f"{min(beyond):.1f} to {max(beyond):.1f} calls/s, against a limit of {LIMIT:.0f}"
        )

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
# Up to the limit, more workers mean more calls per second. Past it they never mean more (the last line above says
# what they did in this run): the extra workers send requests that come back as 429s, then sit
# out their backoff, sometimes while the bucket refills for nobody. Every one of those 429s was a request: it
# cost a round trip, it may count against the limit itself at some providers, and it makes the run's timing
# unpredictable. A limit enforced over short windows makes bursts worse still: parallel calls never fit more
# calls into a minute than the limit, and against such a limit they can fit fewer.
#
# So the number of workers has an upper bound set by the rate limit: about `limit (calls/s) × latency (s)`,
# here 40 × 0.05 = 2 workers. Against a real provider with 2 s calls and 500 calls a minute that is
# about 17 workers, and no more.
#
# ## 7.2 A throttle instead of 429s
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
    for kind in ("threads", "asyncio"):
        refused = throttled[kind + " 429s"]
        assert refused <= 2 and refused < unthrottled_refused / 5  # no 429s, or on a busy machine one or two ...
        assert len(throttled[kind].failures) == refused  # (without retries, a refused call is a failure)
        assert throttled[kind].n / throttled[kind].wall > 0.7 * LIMIT  # ... and close to the limit
else:
    assert throttle.waited > 1.2 and not throttled["threads"].failures  # 0, 0.5 and 1 s: half a second apart

# %% [markdown]
# No 429s, or on a busy machine one or two, and close to the limit (the counts are printed above).
# Why one or two? The throttle paces the calls by the client's clock: a call whose thread or event loop is held
# up past its turn can reach the server together with the next call, and a bucket as small as this server's
# refuses the second. That is why retries stay, below. The throttle runs a little under the limit on purpose (90
# %), so it can be a little slower than the retries were; the panel titles compare the two runs. What it buys is
# not speed: (almost) no request refused, and a pace you can predict. In the first
# run the calls go out, are refused, wait and try again (each vermillion stretch is a refused try, each orange mark
# another request); in the second each call waits once for its turn, on the client, where it costs nothing, and
# the turns make a staircase at the limit's pace. Keep both tools, they answer different questions:
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
# ## 7.3 Parallelism saves latency, not cost
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

# %% [markdown] Less time (the cell above prints both wall times), the same tokens, the same bill. What parallel calls
# change is how much of your limits they hold at once: three calls in flight are three slots of a concurrency limit and
# arrive three times as fast at the per-minute limits. Parallelism buys time, never money. (Retries, on the other hand,
# do cost: each is a request, and a retried call that had produced half its answer before it failed may be billed for
# that half.)
#
# ## 7.4 The quota guard
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
# - Under a rate limit, throughput grows with workers only up to the limit; past it the extra workers collect
#   429s and throughput does not grow. About `limit (calls/s) × latency (s)` workers are enough.
# - A provider may enforce its per-minute limit over shorter windows (a 60,000 RPM limit as 1,000 a second), so a
#   burst can be refused although the minute's total is under the limit: pace the calls, do not count on a
#   minute's worth at once.
# - A throttle (`Throttle.acquire()`, `await acquire_async()`) starts each call only when the limit has room:
#   (almost) no 429s, at about the limit's pace. A cap on calls in flight (`max_workers`, a semaphore) is not a cap
#   on calls per minute; keep both, and keep retries for what still gets through.
# - Parallel calls cost the same tokens as sequential ones: they save time, not money.
# - Against a real provider the quota guard caps calls in flight and refuses a run, or a call, that would go
#   over the session's budget, before anything is sent.
#
# ## Exercises
#
# Solutions are in `07_throughput_throttling_cost_solutions.ipynb`.
#
# **Exercise 7.1.** The simulator now allows 48,000 tokens a minute, and `short_call` uses 30 tokens. Make
# `throttle` a `Throttle` on requests (`Throttle(rpm=...)`) that lets 16 workers run sixteen calls with **no 429**
# and at least 75 % of the calls per second the limit allows.

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
    right = throttle is not None and throttle.rpm is not None and throttle.rpm <= 48_000 / 30
check(
    right,
    "no 429s, close to the limit: the throttle waits so the server does not have to refuse.",
    "48,000 tokens a minute at 30 tokens a call is 1,600 calls a minute; throttle a little below: Throttle(rpm=...).",
)

# %% [markdown]
# **Exercise 7.2.** A session's guard allows 100 calls and 50,000 tokens. Your prompts are estimated at about 700
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
