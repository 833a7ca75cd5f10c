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
# # 04 · pydantic-ai agents in parallel: solutions
#
# Worked solutions to the exercises of `04_pydantic_ai.ipynb`. The first cell rebuilds the lesson's setup.

# %%
import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from pydantic import BaseModel
from pydantic_ai import Agent

from helpers import connect
from helpers.exercises import check

target = connect(seed=4, latency=0.3, profile="uniform", spread=0.5)
model = target.chat_model()


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    confidence: float


reviews = [
    "I love this kettle, it boils water in a minute.",
    "The lid broke after two days. Terrible.",
    "It arrived on Tuesday.",
    "Great value and a friendly seller.",
    "Slow delivery and the box was squashed.",
    "It is a kettle.",
]
expected = ["positive", "negative", "neutral", "positive", "negative", "neutral"]

# %% [markdown]
# **Exercise 4.1.** The agent's `max_concurrency` queues the runs inside the agent, so a plain `gather` over all
# six never puts more than two calls on the wire.

# %%
if target.is_simulator:
    target.simulator.reset()
two_at_a_time = Agent(model, output_type=Review, max_concurrency=2)
results = await asyncio.gather(*(two_at_a_time.run(review) for review in reviews))
sentiments = [result.output.sentiment for result in results]
check(
    sentiments == expected and (not target.is_simulator or target.simulator.stats(records=False)["peak_in_flight"] <= 2),
    "right labels, and the agent kept at most two calls on the wire.",
    "build Agent(model, output_type=Review, max_concurrency=2) and gather its run() for every review.",
)


# %% [markdown]
# **Exercise 4.2.** Each thread builds its own model (and with it its own HTTP client and connection pool) and an
# agent over it, the first time it needs one; `pool.map` keeps the input order. `Agent(model)` over a model built
# outside the threads would fail here, whether the agent is made per call or per thread.


# %%
def classify_all(reviews: list[str]) -> list[str]:
    local = threading.local()

    def classify(review: str) -> str:
        if not hasattr(local, "agent"):
            local.agent = Agent(target.chat_model(), output_type=Review)
        return local.agent.run_sync(review, timeout=5).output.sentiment

    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(classify, reviews))


if target.is_simulator:
    target.simulator.configure(latency=0.05)
rounds = 10 if target.is_simulator else 1  # sixty quick calls: a shared model would not get through them
check(
    classify_all(reviews * rounds) == expected * rounds,
    "one model and agent per thread: no event-loop errors, input order kept.",
    "build the model and its agent inside each thread (threading.local: Agent(target.chat_model(), ...)) and map "
    "over the reviews with a ThreadPoolExecutor(3).",
)
