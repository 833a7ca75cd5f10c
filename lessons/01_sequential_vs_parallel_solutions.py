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
# # 01 · Sequential vs parallel: solutions
#
# Worked solutions to the exercises of `01_sequential_vs_parallel.ipynb`. The first cell rebuilds what the
# exercises use: the same target (seed 1), `call`, `prompts` and the measured `latencies`.

# %%
import time

from helpers import ask, connect, run_threads
from helpers.exercises import check

target = connect(seed=1, latency=0.6, profile="uniform", spread=0.5)
client = target.client()
prompts = ["Reply: alpha", "Reply: beta", "Reply: gamma"]


def call(prompt: str) -> str:
    return ask(client, target.model, prompt)


latencies = []
for prompt in prompts:
    began = time.perf_counter()
    call(prompt)
    latencies.append(time.perf_counter() - began)

# %% [markdown]
# **Exercise 1.1.** One thread can hold one call at a time, so the calls queue up behind each other: the wall time
# is the sum of the latencies, exactly as in the sequential loop.

# %%
predicted = sum(latencies)
one_worker = run_threads(call, prompts, workers=1)
check(
    predicted is not None and abs(predicted - one_worker.wall) < 0.15 * one_worker.wall,
    "one worker is sequential again: the wall time is the sum of the latencies.",
    "with one thread, can two calls overlap? Then add up the right numbers.",
)

# %% [markdown]
# **Exercise 1.2.** Six calls take about one slowest call only if all six are in flight at once: six workers.
# With three workers you would get two rounds (about twice the slowest call); lesson 02 draws that staircase.

# %%
workers = 6
six = run_threads(call, prompts * 2, workers=workers)
check(
    six.wall <= 1.4 * max(latencies),
    f"{workers} workers: all six calls in flight at once, so the run takes about one slowest call.",
    f"with {workers} worker(s) some calls wait for a free thread; how many calls need to be in flight at once?",
)

# %% [markdown]
# **Exercise 1.3.** Tokens depend on what is sent and answered, not on when. The simulator's counts prove it:
# the same prompt gives the same `usage` whichever way it is scheduled.

# %%
from helpers import run_sequential


def tokens_used(run_it) -> int:
    """Tokens counted (prompt + completion) for one run: by the simulator, or by the quota guard's meter."""
    if not target.is_simulator:
        before = target.quota.tokens
        run_it()
        return target.quota.tokens - before
    target.simulator.reset()
    run_it()
    return sum(r["prompt_tokens"] + r["completion_tokens"] for r in target.simulator.stats()["records"])


sequential_tokens = tokens_used(lambda: run_sequential(call, prompts))
parallel_tokens = tokens_used(lambda: run_threads(call, prompts, workers=3))
print(f"sequential: {sequential_tokens} tokens · parallel: {parallel_tokens} tokens")
if target.is_simulator:  # a real model may word an answer differently from one call to the next
    assert sequential_tokens == parallel_tokens

# %%
more_tokens = "same"
check(
    more_tokens == "same",
    "the same prompts cost the same tokens however they are scheduled: parallelism saves time, not money.",
    "each call sends the same prompt and gets the same answer, whichever thread makes it.",
)
