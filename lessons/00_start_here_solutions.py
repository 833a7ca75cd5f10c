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
# # 00 · Start here: solutions
#
# Worked solutions to the exercises of `00_start_here.ipynb`. The first cell sets up the same target, client and
# agent as the lesson.

# %%
from pydantic_ai import Agent

from helpers import ask, connect
from helpers.exercises import check, plain

target = connect(seed=0)
client = target.client()
agent = Agent(target.chat_model())

# %% [markdown]
# **Exercise 0.1.** `ask` posts the request and returns the text.

# %%
capital = ask(client, target.model, "What is the capital of France?")
check(
    capital is not None and "paris" in plain(capital),
    "Paris: the simulator knows its capitals (and so does a real model, in more words).",
    "call ask(client, target.model, '...') and store the text.",
)

# %% [markdown]
# **Exercise 0.2.** `max_tokens` caps the answer. The model was not done: `finish_reason` is `"length"`, which
# means *cut off*. You pay for the 12 tokens all the same.

# %%
request = {"model": target.model, "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 12}
story = client.post("/chat/completions", json=request).json()
print(story["usage"], story["choices"][0]["finish_reason"])
check(
    story["usage"]["completion_tokens"] == 12 and story["choices"][0]["finish_reason"] == "length",
    "the answer stopped at 12 tokens: finish_reason 'length' means it was cut off, not finished.",
    "post the request with max_tokens=12 and keep response.json().",
)

# %% [markdown]
# **Exercise 0.3.** In a notebook cell, `await` the coroutine that `agent.run` returns; `.output` is the answer.

# %%
gamma = (await agent.run("Reply: gamma")).output
check(
    gamma is not None and plain(gamma) == "gamma",
    "the agent's output is the plain text answer.",
    "use (await agent.run('Reply: gamma')).output.",
)
