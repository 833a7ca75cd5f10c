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
# # 01 · Sequential vs parallel
#
# An LLM call is mostly waiting. This lesson measures what that means: three calls made one after another take
# the **sum** of their latencies; the same three calls made at once take about as long as the **slowest** one.
#
# **In this lesson you will**
# - predict, then measure, three calls in sequence and three calls at once;
# - read a run as a timeline: one bar per call, one lane per worker;
# - see for yourself that a thread waiting for an answer does not use the CPU, and that CPU-bound work is a
#   different story.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers import connect
from helpers.exercises import check, environment, plain

# Latencies between 0.3 s and 0.9 s, the same ones every time you run the lesson (seed 1).
target = connect(seed=1, latency=0.6, profile="uniform", spread=0.5)
environment(target)

# %% [markdown]
# ## 1.1 Three calls, one after another
#
# Three independent questions. Each call takes somewhere between 0.3 s and 0.9 s.
#
# **Predict:** how long will the three take, one after another? Write your guess down, then run the cell.

# %%
import time

from helpers import ask

client = target.client()
prompts = ["Reply: alpha", "Reply: beta", "Reply: gamma"]

answers, latencies = [], []
start = time.perf_counter()
for prompt in prompts:
    began = time.perf_counter()
    answers.append(ask(client, target.model, prompt))
    latencies.append(time.perf_counter() - began)
sequential_wall = time.perf_counter() - start

# %%
# NBVAL_IGNORE_OUTPUT
print("latencies:", [f"{s:.2f} s" for s in latencies])
print(f"sum of latencies {sum(latencies):.2f} s · sequential run {sequential_wall:.2f} s")

# %% [markdown]
# The run took the sum of its calls, as it must: each call starts only when the previous one has answered.

# %%
assert [plain(a) for a in answers] == ["alpha", "beta", "gamma"]  # plain(): lower case, no full stop
assert abs(sequential_wall - sum(latencies)) < 0.05 + 0.05 * sequential_wall  # wall = sum of latencies

# %% [markdown]
# ## 1.2 Three calls at once
#
# A `ThreadPoolExecutor` runs a function on several threads. `pool.map(call, prompts)` hands each prompt to a free
# thread and gives the answers back **in the order of the prompts**. With `max_workers=3`, all three calls are in
# flight at the same time.
#
# **Predict:** the same three calls, all at once. The sum again? Something else?

# %%
from concurrent.futures import ThreadPoolExecutor


def call(prompt: str) -> str:
    return ask(client, target.model, prompt)


start = time.perf_counter()
with ThreadPoolExecutor(max_workers=3) as pool:
    parallel_answers = list(pool.map(call, prompts))
parallel_wall = time.perf_counter() - start

# %%
# NBVAL_IGNORE_OUTPUT
print(f"slowest call {max(latencies):.2f} s · sum {sum(latencies):.2f} s")
print(f"sequential {sequential_wall:.2f} s · parallel {parallel_wall:.2f} s · {sequential_wall / parallel_wall:.1f}× faster")

# %% [markdown]
# About the slowest call, not the sum. The simulator gives the same prompt the same latency every time, so
# `max(latencies)` from the sequential run is the slowest call here too. The claim, checked:

# %%
assert [plain(a) for a in parallel_answers] == ["alpha", "beta", "gamma"]  # map keeps the input order
assert parallel_wall < 0.6 * sequential_wall  # much less than the sum ...
if target.is_simulator:  # a real provider's latencies change from call to call; the simulator's do not
    assert parallel_wall < max(latencies) + 0.25  # ... about the slowest call

# %% [markdown]
# ## 1.3 The picture
#
# `helpers.runs` does the same two runs and records every call: when it started and ended, and on which worker.
# `helpers.timeline.draw` puts both runs on one time axis. Each bar is one call; each lane is one worker; the
# dot shows when your code got the answer back.

# %%
from helpers import draw, run_sequential, run_threads, summary_table

sequential = run_sequential(call, prompts)
threaded = run_threads(call, prompts, workers=3)
draw(sequential, threaded, title="The same three calls: one after another, then all at once")

# %% [markdown]
# The top panel is a staircase: one lane, each call waiting for the one before. The bottom panel has three lanes
# and the bars overlap; the run ends when the longest bar ends. Its title says how many times faster it was than
# the sequential run: the sequential wall time divided by its own. The table says the same in numbers, and adds
# the **overlap** (the sum of latencies ÷ the wall time), which is how many calls were in flight on average:

# %%
# NBVAL_IGNORE_OUTPUT
summary_table(sequential, threaded)

# %%
assert threaded.wall < 0.6 * sequential.wall
assert threaded.peak_in_flight == 3 and sequential.peak_in_flight == 1

# %% [markdown]
# ## 1.4 Waiting is not working
#
# Python threads share one interpreter, and only one thread runs Python code at a time (the *GIL*, the global
# interpreter lock). So how can three threads make progress at once? Because a thread that waits for the network
# **releases the GIL** while it waits. The CPU clock shows it: `time.process_time()` counts only the time the
# process actually computes.
#
# Every report records the CPU time the whole process used during the run:

# %%
# NBVAL_IGNORE_OUTPUT
print(f"threaded run: {threaded.wall:.2f} s on the clock, {threaded.cpu * 1000:.0f} ms of CPU")
print(f"the CPU was busy {100 * threaded.cpu / threaded.wall:.0f}% of the time; the rest was waiting")

# %%
assert threaded.cpu < 0.25 * threaded.wall  # the threads were waiting, not computing

# %% [markdown]
# Now the opposite: work that *is* computing. Counting in pure Python never waits, so it never lets go of the GIL.
# **Predict:** three of these on three threads, faster than one after another?


# %%
def count(_: object) -> int:
    total = 0
    for i in range(3_000_000):
        total += i % 7
    return total


def clocked(work) -> tuple[float, float]:
    """Run ``work()``; return the seconds it took on the wall clock and the CPU seconds the process used."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def on_three_threads() -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(count, range(3)))


one_wall, one_cpu = clocked(lambda: [count(job) for job in range(3)])
three_wall, three_cpu = clocked(on_three_threads)

# %%
# NBVAL_IGNORE_OUTPUT
print(f"one after another: {one_wall:.2f} s, {one_cpu / one_wall:.2f} s of CPU per second")
print(f"three threads:     {three_wall:.2f} s, {three_cpu / three_wall:.2f} s of CPU per second")

# %% [markdown]
# CPU seconds per second of wall time say how many cores' worth the process computed at once. Three threads
# could keep several cores busy; they used no more than one core's worth, as the single thread did. That is the
# GIL: only the thread holding it runs Python code, so the threads took turns, and three threads cannot beat
# one. (The wall times above also depend on whatever else your machine is doing; threads running pure-Python code
# never go past one core's worth, whatever it is doing.)

# %%
assert three_cpu / three_wall < 1.15  # never more than one core's worth at once: the threads took turns

# %% [markdown]
# LLM calls are the first kind of work, **I/O-bound**: the time goes to waiting for a server, so threads (and
# asyncio, lesson 03) help a lot. For CPU-bound work in Python you need processes (lesson 08). (Python 3.13 and
# later also come in a *free-threaded* build without the GIL, where threads can compute on several cores at
# once; there, `sys._is_gil_enabled()` says which kind you are running. The workbook's Python has the GIL.)
#
# ## Summary
#
# - Calls one after another take the **sum** of their latencies; calls at once take about the **slowest** one.
# - `ThreadPoolExecutor(max_workers=3)` with `pool.map` runs three calls at once and keeps the answers in input
#   order.
# - A timeline shows it at a glance: a staircase for sequential, overlapping bars for parallel. Speed-up is one
#   run's wall time against another's; overlap (sum of latencies ÷ wall) is the calls in flight on average.
# - A thread waiting for the network releases the GIL and costs almost no CPU; CPU-bound Python code does not
#   release it, so threads never compute more than one core's worth at once, and do not speed it up.
# - Parallel calls save time, not tokens: the three calls cost the same either way.
#
# ## Exercises
#
# Solutions are in `01_sequential_vs_parallel_solutions.ipynb`.
#
# **Exercise 1.1.** With `max_workers=1`, the thread pool has a single thread. From `latencies`, predict the wall
# time of `run_threads(call, prompts, workers=1)` and store your prediction (in seconds) in `predicted`.

# %%
predicted = None  # your prediction, computed from `latencies`

# %%
one_worker = run_threads(call, prompts, workers=1)
check(
    predicted is not None and abs(predicted - one_worker.wall) < 0.15 * one_worker.wall,
    "one worker is sequential again: the wall time is the sum of the latencies.",
    "with one thread, can two calls overlap? Then add up the right numbers.",
)

# %% [markdown]
# **Exercise 1.2.** Six prompts (the three above, twice). Choose `workers` so that the six calls take about as
# long as the slowest single call (at most 1.4 × `max(latencies)`).

# %%
workers = 2  # change me

# %%
six = run_threads(call, prompts * 2, workers=workers)
check(
    six.wall <= 1.4 * max(latencies),
    f"{workers} workers: all six calls in flight at once, so the run takes about one slowest call.",
    f"with {workers} worker(s) some calls wait for a free thread; how many calls need to be in flight at once?",
)

# %% [markdown]
# **Exercise 1.3.** Which run used more tokens, the sequential one or the parallel one? Set `more_tokens` to
# `"sequential"`, `"parallel"` or `"same"`.

# %%
more_tokens = None  # "sequential", "parallel" or "same"

# %%
check(
    more_tokens == "same",
    "the same prompts cost the same tokens however they are scheduled: parallelism saves time, not money.",
    "each call sends the same prompt and gets the same answer, whichever thread makes it.",
)
