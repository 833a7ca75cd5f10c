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
# # 08 · When not to parallelise: solutions
#
# Worked solutions to the exercises of `08_when_not_to_parallelise.ipynb`. The first cell rebuilds the lesson's
# setup: the same simulator settings, clients and `call`.

# %%
import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from helpers import connect, run_threads
from helpers.calls import answer_from
from helpers.cpu import count_tokens
from helpers.exercises import check, plain

target = connect(seed=7, profile="fixed", latency=0.15)
client = target.client()
async_client = target.async_client()


def chat(messages: list[dict]) -> str:
    response = client.post("/chat/completions", json={"model": target.model, "messages": messages})
    return answer_from(response)


def call(prompt: str) -> str:
    return chat([{"role": "user", "content": prompt}])


# %% [markdown]
# **Exercise 8.1.** Inside `talk`, each question is written from the answer before it, so each turn is awaited
# before the next is written; the conversation keeps growing, as a chat does. The three conversations do not
# depend on each other, so `gather` runs them side by side.


# %%
async def talk(start: int) -> list[str]:
    messages: list[dict] = []
    answers: list[str] = []
    for question in (f"What is {start} + 1?", "What is {} * 3?", "What is {} - 4?"):
        text = question.format(plain(answers[-1])) if answers else question
        messages.append({"role": "user", "content": text + " Answer with the number only."})
        response = await async_client.post("/chat/completions", json={"model": target.model, "messages": messages})
        answers.append(answer_from(response))
        messages.append({"role": "assistant", "content": answers[-1]})
    return answers


results = await asyncio.gather(talk(1), talk(2), talk(3))

# %%
check(
    [[plain(a) for a in r] for r in results] == [["2", "6", "2"], ["3", "9", "5"], ["4", "12", "8"]],
    "each conversation in order, the three side by side.",
    "await each turn before writing the next question; gather the three talk(...) coroutines.",
)

# %% [markdown]
# **Exercise 8.2.** Twelve threads send all twelve calls at once, but the server serves three at a time and
# queues the rest: `ceil(12 / 3) = 4` rounds of 0.2 s. The number of threads does not matter once it exceeds the
# capacity.

# %%
import math

predicted_wall = math.ceil(12 / 3) * 0.2

# %%
if target.is_simulator:
    target.simulator.configure(capacity=3, latency=0.2)
    twelve = run_threads(call, [f"Reply: {i}" for i in range(12)], workers=12)
    target.simulator.configure(capacity=None, latency=0.15)
    check(
        predicted_wall is not None and abs(predicted_wall - twelve.wall) < 0.2 * twelve.wall,
        "12 calls, 3 at a time: 4 rounds of 0.2 s, however many threads wait.",
        "the server works through them 3 at a time: how many rounds of 0.2 s is that?",
    )
else:
    print("Skipped with a real provider: its capacity is not yours to set.")

# %% [markdown]
# **Exercise 8.3.** `ProcessPoolExecutor.map` works like the thread pool's: results in input order. The function
# it runs, `count_tokens`, comes from a module, so the spawned worker processes can import it.


# %%
def count_all(texts: list[str]) -> list[int]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        return list(pool.map(count_tokens, texts))


# %%
few = ["one two three", "4 5 6 seven", "a much longer text " * 1000]
check(
    count_all(few) == [count_tokens(text) for text in few],
    "the counts in input order: pool.map keeps it, as it does for threads.",
    "make a ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context('spawn')) and map count_tokens.",
)
