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
# # 06 · Rate limits and retries: solutions
#
# Worked solutions to the exercises of `06_rate_limits_and_retries.ipynb`. The first cell rebuilds the lesson's
# setup: the same simulator settings and `call`.

# %%
import random
import time

from helpers import APIError, ask, connect
from helpers.exercises import check

target = connect(seed=6, profile="fixed", latency=0.05)
client = target.client()


def call(prompt: str) -> str:
    return ask(client, target.model, prompt)


# %% [markdown]
# **Exercise 6.1.** The loop of 6.3 with the exercise's numbers. `raise` inside the `except` re-raises the error
# as it was, traceback included; the error's own `retryable` says whether another try can help.


# %%
rng = random.Random(6)


def careful_call(prompt: str) -> str:
    for attempt in range(1, 5):
        try:
            return call(prompt)
        except APIError as error:
            if not error.retryable or attempt == 4:
                raise
            wait = rng.uniform(0, 0.05 * 2 ** (attempt - 1))
            time.sleep(max(wait, error.retry_after or 0.0))
    raise AssertionError("unreachable: the last attempt returns or raises")


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
