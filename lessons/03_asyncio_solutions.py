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
# # 03 · asyncio: solutions
#
# Worked solutions to the exercises of `03_asyncio.ipynb`. The first cell rebuilds the lesson's setup.

# %%
import asyncio

import httpx

from helpers import connect
from helpers.exercises import check, plain

target = connect(seed=3, profile="fixed", ttft=0.1, tokens_per_second=20)
client = target.async_client()


async def ask_async(client: httpx.AsyncClient, prompt: str) -> str:
    request = {"model": target.model, "messages": [{"role": "user", "content": prompt}]}
    response = await client.post("/chat/completions", json=request)
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


prompts = [
    "Reply: a long answer that takes the model a good while to write out in full, word after word",
    "Reply: short",
    "Reply: a medium answer of six words",
]
mixed = ["Reply: alpha, the first answer", "Reply: beta", "Reply: gamma, the third answer"]


# %% [markdown]
# **Exercise 3.1.** `as_completed` yields the calls in the order they finish: return at the first. The others are
# still running, and nobody would collect their answers: cancel them on the way out (`finally` runs however the
# function ends), and each closes its connection, so the server stops working on it.


# %%
async def first_answer(prompts: list[str]) -> str:
    tasks = [asyncio.create_task(ask_async(client, p)) for p in prompts]
    try:
        for next_done in asyncio.as_completed(tasks):
            return await next_done
        raise ValueError("no prompts")
    finally:
        for task in tasks:
            task.cancel()  # a task that has finished ignores this


if target.is_simulator:
    target.simulator.reset()
first = await first_answer(prompts)
await asyncio.sleep(0.2)  # a moment for the server to see the cancelled calls hang up
left = target.simulator.stats(records=False)["in_flight"] if target.is_simulator else 0
check(
    plain(first) == "short" and left == 0,
    "as_completed yields the fastest call first, and the others were cancelled.",
    "make a task per prompt, loop over asyncio.as_completed(tasks), return the first result, and cancel the "
    "other tasks on the way out (try/finally)." + (f" ({left} calls are still running at the server.)" if left else ""),
)
if target.is_simulator:  # the two slower calls hung up before their answers: HTTP 499 at the server
    print("the server's view:", dict(sorted(target.simulator.stats(records=False)["by_status"].items())))


# %% [markdown]
# **Exercise 3.2.** One semaphore shared by all the coroutines; `gather` keeps the input order.


# %%
async def bounded_gather(prompts: list[str], limit: int) -> list[str]:
    semaphore = asyncio.Semaphore(limit)

    async def bounded(prompt: str) -> str:
        async with semaphore:
            return await ask_async(client, prompt)

    return await asyncio.gather(*(bounded(p) for p in prompts))


if target.is_simulator:
    target.simulator.reset()
got = await bounded_gather([f"Reply: {i}" for i in range(6)], limit=2)
check(
    [plain(answer) for answer in got] == [str(i) for i in range(6)]
    and (not target.is_simulator or target.simulator.stats(records=False)["peak_in_flight"] <= 2),
    "input order from gather, at most two in flight thanks to the semaphore.",
    "create asyncio.Semaphore(limit), wrap each call in `async with semaphore:`, and gather them.",
)


# %% [markdown]
# **Exercise 3.3.** A task that returns its exception instead of raising it has not failed, so the `TaskGroup`
# has no reason to cancel its siblings.


# %%
async def safe_ask(prompt: str) -> str | Exception:
    try:
        return await ask_async(client, prompt)
    except Exception as error:
        return error


if target.is_simulator:
    target.simulator.configure(fault_on={"beta": "500"})
try:
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(safe_ask(p)) for p in mixed]
    kept = [task.result() for task in tasks]
except* Exception:
    kept = []
check(
    len(kept) == 3 and kept[0].startswith("alpha") and isinstance(kept[1], Exception) and kept[2].startswith("gamma"),
    "every task finished; the failure is a value you can inspect.",
    "wrap the await in try/except and return the exception.",
)
