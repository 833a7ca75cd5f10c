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
# # 00 · Start here
#
# This workbook answers one question: **how do I make many LLM calls fast, and safely?** You will run the same
# calls one after another, on threads and with asyncio, watch each run as a timeline, and then learn what goes
# wrong at scale: failures, timeouts, rate limits, quotas.
#
# Every call in these lessons is a real HTTP request. By default it goes to a **local LLM simulator**: a small
# server on your own machine that speaks the OpenAI API, with realistic (and repeatable) latencies, errors and rate
# limits. It needs no key and no internet. Change one environment variable and the same code talks to OpenAI,
# Ollama or any OpenAI-compatible endpoint.
#
# **In this lesson you will**
# - see where your calls go (simulator or real provider) and which versions you run;
# - make one call with `httpx` and read everything that comes back;
# - make one call with a pydantic-ai agent;
# - learn why the experiments keep only 2–3 calls in flight against a real provider.

# %% [markdown]
# ## 0.1 Where do the calls go?
#
# `connect()` decides. With no `LLM_BASE_URL` in the environment it starts the simulator in its own process
# (once per kernel) and returns a *target*: a base URL, a model name and, for real providers, a key.
# The seed makes every answer and every latency repeatable.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers import connect
from helpers.exercises import check, environment, plain

target = connect(seed=0)
environment(target)

# %% [markdown]
# The target knows everything a client needs. Its repr never shows a key, even against a real provider:

# %%
target

# %% [markdown]
# ## 0.2 One call with httpx
#
# An LLM API call is an HTTP `POST` of a JSON body to `/chat/completions`. `target.client()` gives an
# `httpx.Client` already pointed at the right base URL (and carrying the key, if there is one).
#
# The simulator answers `Reply: X` with exactly `X`, so the lessons can check what comes back.

# %%
client = target.client()
request = {"model": target.model, "messages": [{"role": "user", "content": "Reply: alpha"}]}
response = client.post("/chat/completions", json=request)
response.status_code

# %% [markdown]
# The answer is JSON. The text sits in `choices[0].message.content`; `usage` counts the tokens you pay for.

# %%
body = response.json()
answer = body["choices"][0]["message"]["content"]
print("answer:", answer)
print("finish_reason:", body["choices"][0]["finish_reason"])
print("usage:", body["usage"])
assert plain(answer) == "alpha"  # plain(): lower case, no final full stop (a real model may add one)

# %% [markdown]
# **Predict, then run.** How long did that call take? A real model needs a moment before the first token and then
# produces tokens at some rate; the simulator does the same. Guess a number, then look:

# %%
# NBVAL_IGNORE_OUTPUT
import time

start = time.perf_counter()
client.post("/chat/completions", json=request)
elapsed = time.perf_counter() - start
print(f"one call took {elapsed:.2f} s")

# %% [markdown]
# A few tenths of a second, almost all of it **waiting**: your Python process sends a few hundred bytes and then
# does nothing until the answer arrives. Keep that in mind; the whole workbook builds on it.
#
# `helpers.ask` does the same `POST` and returns the text, or raises an error that quotes the provider's message.
# It is three lines long; read it with `ask??`.

# %%
from helpers import ask

ask(client, target.model, "What is the capital of Japan?")

# %% [markdown]
# ## 0.3 One call with pydantic-ai
#
# Agent frameworks wrap the same HTTP call. `target.chat_model()` gives a pydantic-ai model pointed at the same
# place. In a notebook you can `await` directly in a cell; lesson 03 explains why `agent.run_sync(...)` fails here
# and works in a script.

# %%
from pydantic_ai import Agent

agent = Agent(target.chat_model())
result = await agent.run("Reply: beta")
print("output:", result.output)
print("usage:", result.usage)
assert plain(result.output) == "beta"

# %% [markdown]
# ## 0.4 What the server saw
#
# The simulator counts what reaches it: two calls from httpx, one from `ask`, one from the agent. (A real
# provider shows such counts only on its usage page, so against one this cell says so and moves on; the lessons
# do the same wherever they ask the simulator something.)

# %%
if target.is_simulator:
    stats = target.simulator.stats(records=False)
    print("requests:", stats["requests"], "· by status:", stats["by_status"], "· peak in flight:", stats["peak_in_flight"])
    assert stats["requests"] == 4 and stats["peak_in_flight"] == 1
else:
    print("a real provider: its usage page shows the calls; this session has made", target.quota.calls, "so far")

# %% [markdown]
# One at a time: a peak of 1 call in flight. The next lessons raise that number and watch what happens.
#
# ## 0.5 Pointing the workbook at a real provider
#
# Set three variables before you start JupyterLab (or before the kernel starts), then run the lessons unchanged:
#
# ```bash
# export LLM_BASE_URL=https://api.openai.com/v1 LLM_MODEL=gpt-4o-mini LLM_API_KEY=sk-...   # OpenAI
# export LLM_BASE_URL=http://localhost:11434/v1 LLM_MODEL=llama3.2                        # Ollama, no key
# python3 scripts/lab.py
# ```
#
# The key stays in the environment: never paste it into a cell, where it would be saved with the notebook.
#
# **Why only 2–3 calls in flight?** Each call in flight uses a slot of your provider's rate limit, and every call
# costs tokens whether it runs alone or beside others: running 3 calls at once saves *time*, not *money*.
# Against a real provider `target.max_in_flight` is 3 and the runners refuse anything wider, before a single call
# is made. Here is that guard, tried on a made-up provider address (nothing is contacted):

# %%
from helpers import Target, run

pretend_provider = Target(base_url="https://api.example.com/v1", model="some-model")
cap = target.max_in_flight
print("this target:", f"at most {cap} calls in flight" if cap else "no cap (the simulator costs nothing)")
print("a real provider:", f"at most {pretend_provider.max_in_flight} calls in flight")
try:
    run("threads", ["Reply: a"] * 10, target=pretend_provider, workers=10)
except ValueError as error:
    print("refused:", error)

# %% [markdown]
# ## Summary
#
# - `connect()` gives a target: the local simulator by default, a real provider when `LLM_BASE_URL` is set.
# - An LLM call is one HTTP `POST /chat/completions`; the answer is JSON with the text and the token `usage`.
# - pydantic-ai sends the same request; in a notebook you `await agent.run(...)`.
# - A call is mostly waiting for the server. That is why running calls side by side can help (lesson 01).
# - Against a real provider, experiments keep at most 3 calls in flight: parallel calls cost the same tokens.
#
# ## Exercises
#
# Each exercise has a cell for your code and a self-check cell that says whether it is right. Solutions are in
# `00_start_here_solutions.ipynb`.
#
# **Exercise 0.1.** Ask the simulator for the capital of France with `ask` and store the answer in `capital`.

# %%
capital = None  # your code here

# %%
check(
    capital is not None and "paris" in plain(capital),
    "Paris: the simulator knows its capitals (and so does a real model, in more words).",
    "call ask(client, target.model, '...') and store the text.",
)

# %% [markdown]
# **Exercise 0.2.** Send `"Tell me a story"` with `max_tokens` set to 12 (add `"max_tokens": 12` to the request
# body) and store the JSON body in `story`. How many completion tokens came back, and why did it stop?

# %%
story = None  # your code here

# %%
check(
    isinstance(story, dict)
    and story["usage"]["completion_tokens"] == 12
    and story["choices"][0]["finish_reason"] == "length",
    "the answer stopped at 12 tokens: finish_reason 'length' means it was cut off, not finished.",
    "post the request with max_tokens=12 and keep response.json().",
)

# %% [markdown]
# **Exercise 0.3.** With the agent, get the answer to `"Reply: gamma"` into `gamma` (remember `await`).

# %%
gamma = None  # your code here

# %%
check(
    gamma is not None and plain(gamma) == "gamma",
    "the agent's output is the plain text answer.",
    "use (await agent.run('Reply: gamma')).output.",
)
