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
# # 05 · When calls fail: solutions
#
# Worked solutions to the exercises of `05_when_calls_fail.ipynb`. The first cell rebuilds the lesson's setup:
# the same simulator settings, prompts and calls.

# %%
import asyncio
import time

import httpx

from helpers import APIError, MalformedResponse, ask, ask_async, connect, is_retryable, run_threads
from helpers.exercises import check

target = connect(seed=5, profile="fixed", ttft=0.05, tokens_per_second=20, hang_seconds=1.5)
prompts = ["Reply: alpha, the first answer", "Reply: beta", "Reply: gamma, the last answer"]
aclient = target.async_client()


async def acall(prompt: str) -> str:
    return await ask_async(aclient, target.model, prompt)


# %% [markdown]
# **Exercise 5.1.** A good answer takes at most 0.3 s here and the hang 1.5 s, so a read timeout of 0.5 s
# ends the hung call and spares the others. (Against a real provider, keep it well above its slowest answer.)

# %%
if target.is_simulator:
    target.simulator.configure(fault_on={"gamma": "hang"})
my_client = target.client(timeout=httpx.Timeout(10.0, connect=2.0, read=0.5 if target.is_simulator else 30.0))

exercise = run_threads(lambda prompt: ask(my_client, target.model, prompt), prompts, workers=3)
check(
    exercise.records[0].ok
    and exercise.records[1].ok
    and (not target.is_simulator or (exercise.wall < 1.0 and "Timeout" in (exercise.records[2].error or ""))),
    "the hung call ends at the read timeout, and the run with it."
    if target.is_simulator
    else "every call answered (a real provider does not hang on request: the timeout is not tested here).",
    "target.client(timeout=httpx.Timeout(10.0, read=...)) with a read timeout above 0.3 s and below 1 s.",
)

# %% [markdown]
# **Exercise 5.2.** `asyncio.wait` with a timeout returns when the time is up, with the finished tasks in `done`
# and the rest in `pending`. Cancelling a pending task closes its connection; gathering the cancelled tasks
# waits until they have really stopped. A failed task is done too, so check its exception before its result.


# %%
async def answers_by(prompts: list[str], seconds: float) -> list[str | None]:
    tasks = [asyncio.create_task(acall(prompt)) for prompt in prompts]
    done, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return [task.result() if task in done and task.exception() is None else None for task in tasks]


if target.is_simulator:
    target.simulator.configure(fault_on={"beta": "500", "gamma": "hang"})
start = time.perf_counter()
got = await answers_by(prompts, 0.5 if target.is_simulator else 30.0)
took = time.perf_counter() - start
await asyncio.sleep(0.2)
if target.is_simulator:
    left = target.simulator.stats(records=False)["in_flight"]
    right = got == ["alpha, the first answer", None, None] and took < 1.0 and left == 0
else:  # a real provider: no faults, so every call should answer in time
    right = len(got) == 3 and all(got)
check(
    right,
    "the answer that came in time, None for the failure and the hang, and nothing left running.",
    "create a task per prompt, asyncio.wait(tasks, timeout=seconds), cancel the pending ones, then read the "
    "done ones (task.exception() is None when a call succeeded).",
)

# %% [markdown]
# Another way to the same list: give each call its own deadline with `asyncio.timeout(seconds)` inside a
# coroutine that returns None on any error, and `gather` those. Each call is then cancelled at its own deadline,
# which is the same moment here since they all start together.


# %%
async def answer_or_none(prompt: str, seconds: float) -> str | None:
    try:
        async with asyncio.timeout(seconds):
            return await acall(prompt)
    except Exception:  # TimeoutError, APIError, a dropped connection: no answer
        return None


start = time.perf_counter()
also = await asyncio.gather(*(answer_or_none(prompt, 0.5 if target.is_simulator else 30.0) for prompt in prompts))
took = time.perf_counter() - start
check(
    also == got and (not target.is_simulator or took < 1.0),
    "the same list, with one deadline per call.",
    "wrap the call in `async with asyncio.timeout(seconds):` and return None from `except Exception`.",
)

# %% [markdown]
# **Exercise 5.3.** An `APIError` is worth another try for a rate limit (429, unless the code says the quota is
# spent), a request timeout or conflict (408, 409) and any 5xx; `MalformedResponse` is an `APIError` with status
# 200, so it is not. Of the other exceptions, only timeouts and broken connections are: httpx's
# `TimeoutException` (connect, read, write, pool), `NetworkError` and `RemoteProtocolError`.


# %%
def worth_retrying(error: Exception) -> bool:
    if isinstance(error, APIError):
        if error.code == "insufficient_quota":
            return False
        return error.status in (408, 409, 429) or error.status >= 500
    return isinstance(error, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)


samples = [
    APIError(500, "server error"),
    APIError(503, "overloaded"),
    APIError(429, "slow down", code="rate_limit_exceeded", retry_after=1.0),
    APIError(429, "no credit left", code="insufficient_quota"),
    APIError(400, "bad request"),
    APIError(401, "bad key", code="invalid_api_key"),
    MalformedResponse(200, "not a chat completion"),
    httpx.ReadTimeout("timed out"),
    httpx.ConnectTimeout("timed out"),
    httpx.RemoteProtocolError("peer closed connection"),
    ValueError("a bug in the calling code"),
]
wrong = [repr(error)[:50] for error in samples if worth_retrying(error) != is_retryable(error)]
check(
    not wrong,
    "the same verdict as is_retryable on every kind of error.",
    f"these get the wrong verdict: {wrong}",
)
