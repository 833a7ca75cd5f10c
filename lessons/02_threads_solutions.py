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
# # 02 · Threads: solutions
#
# Worked solutions to the exercises of `02_threads.ipynb`. The first cell rebuilds the lesson's setup: the same
# simulator settings, prompts and `call`.

# %%
from concurrent.futures import ThreadPoolExecutor, as_completed

from helpers import APIError, ask, connect, run_threads
from helpers.exercises import check

target = connect(seed=2, profile="fixed", ttft=0.1, tokens_per_second=20)
client = target.client()
prompts = [
    "Reply: a long answer that takes the model a good while to write out in full, word after word",
    "Reply: beta",
    "Reply: a fairly short answer",
]


def call(prompt: str) -> str:
    return ask(client, target.model, prompt)


# %% [markdown]
# **Exercise 2.1.** `pool.map` keeps the input order; a wrapper that returns the exception instead of raising it
# keeps `map` from stopping at the first failure, and keeps the reason.

# %%
if target.is_simulator:
    target.simulator.configure(fault_on={"beta": "500"}, latency=None)


def run_all(prompts: list[str]) -> list:
    def call_safely(prompt: str) -> str | Exception:
        try:
            return call(prompt)
        except Exception as error:
            return error

    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(call_safely, prompts))


got = run_all(prompts)
check(
    len(got) == 3
    and str(got[0]).startswith("a long answer")
    and isinstance(got[1], APIError)
    and got[2] == "a fairly short answer",
    "input order kept, and the failure is an exception you can inspect.",
    "store each result at its prompt's index (pool.map keeps the order), and return the exception for a failure.",
)

# %% [markdown]
# **Exercise 2.2.** Four calls fit at once, so ten calls need `ceil(10 / 4) = 3` rounds of 0.4 s.

# %%
import math

predicted_wall = math.ceil(10 / 4) * 0.4
if target.is_simulator:
    target.simulator.configure(fault_on={}, latency=0.4)
ten = run_threads(call, [f"Reply: {i}" for i in range(10)], workers=4)
check(
    predicted_wall is not None and abs(predicted_wall - ten.wall) < 0.2 * ten.wall,
    "ceil(10 / 4) = 3 rounds of 0.4 s.",
    "how many rounds does the pool need when only 4 calls fit at once?",
)

# %% [markdown]
# **Exercise 2.3.** `as_completed` yields futures as they finish; the failed one finishes first here, so skip it.

# %%
if target.is_simulator:
    target.simulator.configure(fault_on={"beta": "500"}, latency=None)
first_index = None
with ThreadPoolExecutor(max_workers=3) as pool:
    futures = {pool.submit(call, prompt): index for index, prompt in enumerate(prompts)}
    for future in as_completed(futures):
        if future.exception() is None:
            first_index = futures[future]
            break
check(
    first_index == 2,
    "the shortest answer finishes first, whatever its position in the list.",
    "keep a {future: index} dictionary; skip futures whose result() raises; take the first index that succeeds.",
)
