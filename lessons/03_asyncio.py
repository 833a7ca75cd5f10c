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
# # 03 · asyncio
#
# Threads let blocking code wait side by side. `asyncio` does the same job on **one** thread: each call is a
# coroutine that says where it waits (`await`), and an event loop switches to another coroutine while it waits.
#
# **In this lesson you will**
# - write a call as a coroutine with `httpx.AsyncClient`, and run many with `asyncio.gather` and `as_completed`;
# - see what `gather`, `gather(return_exceptions=True)` and `TaskGroup` each do when one call fails;
# - cap the calls in flight with a semaphore;
# - measure why a new `AsyncClient` per call is slow;
# - use the same pattern with the openai SDK's `AsyncOpenAI`, and see its own retries at work;
# - understand why `asyncio.run()` fails in Jupyter, and what `nest_asyncio2.apply()` changes;
# - choose between threads and asyncio.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers import connect
from helpers.exercises import check, environment, plain

# Fixed speed: a call takes 0.1 s plus 0.05 s per token of its answer (a token is about a word).
target = connect(seed=3, profile="fixed", ttft=0.1, tokens_per_second=20)
environment(target)

# %% [markdown]
# ## 3.1 A call as a coroutine
#
# `async def` makes a *coroutine function*. Inside it, `await` marks the places where it waits; there, the event
# loop is free to run something else. `httpx.AsyncClient` is the async twin of `httpx.Client`: build it once, share
# it between all the calls.

# %%
import httpx


async def ask_async(client: httpx.AsyncClient, prompt: str) -> str:
    request = {"model": target.model, "messages": [{"role": "user", "content": prompt}]}
    response = await client.post("/chat/completions", json=request)
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


client = target.async_client()
coroutine = ask_async(client, "Reply: alpha")
type(coroutine).__name__

# %% [markdown]
# Calling it does **not** make the call: it returns a coroutine object, a call waiting to be run. A notebook runs
# an event loop all the time, so a cell can simply `await` it:

# %%
await coroutine

# %% [markdown]
# ## 3.2 `gather`: all at once, answers in input order
#
# `asyncio.gather(*coroutines)` runs them all concurrently and returns their results in the order given.
#
# **Predict:** three calls, of about 1.05 s, 0.15 s and 0.4 s. How long does the `gather` take?

# %%
import asyncio
import time

prompts = [
    "Reply: a long answer that takes the model a good while to write out in full, word after word",
    "Reply: short",
    "Reply: a medium answer of six words",
]

start = time.perf_counter()
answers = await asyncio.gather(*(ask_async(client, prompt) for prompt in prompts))
gather_wall = time.perf_counter() - start
answers

# %%
# NBVAL_IGNORE_OUTPUT
print(f"gather took {gather_wall:.2f} s")

# %%
assert plain(answers[1]) == "short"  # input order, whatever finished first
if target.is_simulator:  # the simulator's latencies are known: about 1.05 s, 0.15 s and 0.4 s
    assert 0.9 < gather_wall < 1.4  # about the slowest call (≈ 1.05 s), not the sum (≈ 1.6 s)

# %% [markdown]
# One thread, three calls in flight. While the first call waits for its answer, the loop sends the second and the
# third. `gather` hands back everything at once, when the last call is done.
#
# ## 3.3 `as_completed`: each answer as soon as it is ready
#
# `asyncio.as_completed` yields awaitables in the order the calls finish. To know which prompt an answer belongs
# to, let each coroutine return its index too.


# %%
async def numbered(index: int, prompt: str) -> tuple[int, str]:
    return index, await ask_async(client, prompt)


for next_done in asyncio.as_completed([numbered(i, p) for i, p in enumerate(prompts)]):
    index, answer = await next_done
    print(f"prompt {index}: {answer[:40]}")

# %% [markdown]
# `helpers.run_async` does the same (`order="input"` is `gather`, `order="completion"` is `as_completed`) and
# records every call, so both can be drawn. The dots show when the answers reached your code:

# %%
from helpers import draw, run_async


async def call(prompt: str) -> str:
    return await ask_async(client, prompt)


gathered = await run_async(call, prompts, limit=None, order="input")
completed = await run_async(call, prompts, limit=None, order="completion")
draw(gathered, completed, title="gather hands back everything at the end; as_completed hands each answer over at once")

# %%
assert gathered.delivery_order == [0, 1, 2] and completed.delivery_order == [1, 2, 0]

# %% [markdown]
# ## 3.4 When one call fails
#
# The simulator is now told to fail any prompt that mentions `beta` (HTTP 500). Three ways to run the same three
# calls, three behaviours:

# %%
if target.is_simulator:  # a real provider fails when it fails: there, all three calls succeed
    target.simulator.configure(fault_on={"beta": "500"})
mixed = ["Reply: alpha, the first answer", "Reply: beta", "Reply: gamma, the third answer"]

try:
    await asyncio.gather(*(ask_async(client, p) for p in mixed))
except httpx.HTTPStatusError as error:
    print("gather raised:", error.response.status_code, "- and the other answers are lost to you")

# %% [markdown]
# Plain `gather` raises the first exception and you lose the results of the others (they keep running in the
# background, but nobody collects them). With `return_exceptions=True` every call gets its slot, answer or
# exception:

# %%
results = await asyncio.gather(*(ask_async(client, p) for p in mixed), return_exceptions=True)
for prompt, result in zip(mixed, results, strict=True):
    print(f"{prompt:32} -> {result if isinstance(result, str) else type(result).__name__}")

# %% [markdown]
# `asyncio.TaskGroup` (Python 3.11+) takes the opposite view: if one task fails, the group **cancels the others**
# and raises an `ExceptionGroup`. That is right when the results only make sense together, and wrong for a batch
# of independent calls.

# %%
try:
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(ask_async(client, p)) for p in mixed]
except* httpx.HTTPStatusError as failures:
    print("TaskGroup raised", len(failures.exceptions), "error(s)")
print("cancelled:", [task.cancelled() for task in tasks])

# %%
if target.is_simulator:
    assert isinstance(results[1], httpx.HTTPStatusError) and results[0].startswith("alpha") and results[2].startswith("gamma")
    assert any(task.cancelled() for task in tasks)  # the TaskGroup cancelled the calls still running

# %% [markdown]
# For a batch of independent LLM calls, use `gather(..., return_exceptions=True)` (or catch errors inside each
# coroutine) so that nothing is lost. Lesson 05 goes further: timeouts, retries and keeping partial results.
#
# ## 3.5 A semaphore caps the calls in flight
#
# `gather` starts everything at once: 1000 prompts, 1000 requests at the same moment (the client's pool lets out as many
# as it has connections, 100 by default, and holds the rest in its own queue). An `asyncio.Semaphore(3)` lets at most
# three coroutines past `async with semaphore:` at a time; the rest wait their turn. It plays the role of `max_workers`.

# %%
if target.is_simulator:
    target.simulator.configure(fault_on={}, latency=0.4)
    target.simulator.reset()
nine = [f"Reply: answer {i}" for i in range(9)]
semaphore = asyncio.Semaphore(3)


async def bounded(prompt: str) -> str:
    async with semaphore:
        return await ask_async(client, prompt)


start = time.perf_counter()
answers = await asyncio.gather(*(bounded(p) for p in nine))
bounded_wall = time.perf_counter() - start
if target.is_simulator:
    print("the server saw at most", target.simulator.stats(records=False)["peak_in_flight"], "calls at once")

# %%
# NBVAL_IGNORE_OUTPUT
print(f"nine calls of 0.4 s, three at a time: {bounded_wall:.2f} s")

# %%
if target.is_simulator:
    assert target.simulator.stats(records=False)["peak_in_flight"] == 3
    assert bounded_wall > 0.9 * 3 * 0.4  # three rounds: the same staircase as max_workers=3

# %% [markdown]
# ## 3.6 A new client for every call
#
# A common first version opens a client inside the call: `async with httpx.AsyncClient() as client:` around each
# request. It works, and it is slow: building a client sets up a connection pool and an SSL context (tens of
# milliseconds of CPU, even for plain `http://`), and every call opens a new connection instead of reusing one.
#
# **Predict:** 40 calls of 0.4 s, all at once. Shared client versus a client per call?

# %%
from helpers import run_naive_async

forty = [f"Reply: answer {i}" for i in range(40 if target.is_simulator else 3)]  # a real provider: 3, to save quota
shared = await run_async(call, forty, limit=None)
per_call = await run_naive_async(target.base_url, target.model, forty, make_client=target.async_client)
draw(shared, per_call, title="40 calls at once: one shared AsyncClient vs a new AsyncClient per call")

# %%
# NBVAL_IGNORE_OUTPUT
print(f"shared client:   wall {shared.wall:.2f} s, CPU {shared.cpu:.2f} s")
print(f"client per call: wall {per_call.wall:.2f} s, CPU {per_call.cpu:.2f} s")

# %%
if target.is_simulator:  # with only 3 calls the difference is too small to check
    assert per_call.cpu > 3 * shared.cpu  # building clients costs CPU ...
    assert per_call.wall > shared.wall  # ... and the calls start later: the loop is busy building them

# %% [markdown]
# The per-call version starts its calls in a slope and they all end together, long after their answers were
# ready: the one thread is so busy building clients that it neither sends the later requests nor reads the answers
# that have arrived. At 1000 calls it is fifteen times slower than the same calls on small shared clients (see 3.9).
#
# ## 3.7 The same with the openai SDK
#
# Most code does not post JSON by hand: it calls the official SDK. `openai.AsyncOpenAI` is one client with its own
# connection pool (on `httpx2`, the SDK's fork of httpx): build it once and share it between all the tasks, exactly
# like the `AsyncClient` above. The cap stays yours, a semaphore. (`target.async_openai_client()` builds one
# pointed at this lesson's endpoint; elsewhere it is `openai.AsyncOpenAI(base_url=..., api_key=...)`.)
#
# **Predict:** the server fails the second request with a 500. What does `gather` return?

# %%
sdk = target.async_openai_client()
sdk_semaphore = asyncio.Semaphore(3)


async def ask_sdk(prompt: str) -> str:
    async with sdk_semaphore:
        reply = await sdk.chat.completions.create(model=target.model, messages=[{"role": "user", "content": prompt}])
        return reply.choices[0].message.content


if target.is_simulator:
    target.simulator.configure(latency=0.05)
    target.simulator.reset()
    target.simulator.configure(script={2: "500"})  # the second request this server sees fails
sdk_answers = await asyncio.gather(*(ask_sdk(p) for p in nine))
print("answers:", [plain(a) for a in sdk_answers])
if target.is_simulator:
    seen = target.simulator.stats(records=False)
    target.simulator.configure(script={})
    print(f"the server saw {seen['requests']} requests for {len(nine)} calls: {dict(sorted(seen['by_status'].items()))}")
assert [plain(a) for a in sdk_answers] == [f"answer {i}" for i in range(9)]
if target.is_simulator:
    assert seen["requests"] == 10 and seen["retries_seen"] == 1 and seen["by_status"] == {"200": 9, "500": 1}

# %% [markdown]
# Nine answers and no error: the SDK met the 500 and tried again by itself (twice at most, by default), after a
# short wait. That is kind for one call and a trap for a batch: the retry counts against your rate limit, its wait
# hides in your timings, and a retry loop of your own around it multiplies the requests. Lesson 06 shows where
# retries belong.
#
# What does the SDK cost the client, next to a bare `httpx` post? It builds typed objects from every answer, and
# its connection pool is not httpx's. The same forty calls, ten in flight, through each client, measured with the
# CPU clock:

# %%
# NBVAL_IGNORE_OUTPUT
async def sdk_call(prompt: str) -> str:
    reply = await sdk.chat.completions.create(model=target.model, messages=[{"role": "user", "content": prompt}])
    return reply.choices[0].message.content


by_httpx = await run_async(call, forty, limit=10)
by_sdk = await run_async(sdk_call, forty, limit=10)
for name, report in (("httpx.AsyncClient", by_httpx), ("openai.AsyncOpenAI", by_sdk)):
    print(f"{name:19} {report.cpu / report.n * 1000:4.1f} ms of client CPU a call, wall {report.wall:.2f} s")
cheaper = "the SDK" if by_sdk.cpu < by_httpx.cpu else "httpx"
print(f"cheaper here: {cheaper}")

# %%
assert by_httpx.answers == by_sdk.answers and not by_sdk.failures
assert max(by_httpx.cpu, by_sdk.cpu) / len(forty) < 0.02  # milliseconds of CPU a call, however it is built

# %% [markdown]
# Either way the client's work is a few milliseconds, small next to a call that waits for its answer; which
# one is cheaper depends on the pools underneath as much as on the SDK (this lesson's `client` has room for 100
# connections, and 3.9 shows what that costs httpx). It still sets a limit: one Python process can drive only so
# many calls a second.
#
# ## 3.8 `asyncio.run()` inside Jupyter
#
# In a script you start the event loop yourself with `asyncio.run(main())`. In Jupyter a loop is already
# running (that is what makes top-level `await` work), and `asyncio.run()` refuses to start a second one in the
# same thread:


# %%
async def main() -> str:
    return await ask_async(client, "Reply: from main")


coroutine = main()
try:
    asyncio.run(coroutine)
except RuntimeError as error:
    print("RuntimeError:", error)
    coroutine.close()

# %% [markdown]
# Three ways out:
# - **in a notebook, `await main()`** at the top level of a cell: the simplest, used throughout this workbook;
# - in a script, `asyncio.run(main())`;
# - `nest_asyncio2.apply()` patches the running loop so that it can be re-entered: then `asyncio.run()` and
#   pydantic-ai's `agent.run_sync()` work inside Jupyter too. It changes the loop for the rest of the kernel's
#   life, so use it knowingly. (`nest_asyncio2` is the maintained fork of the archived `nest_asyncio`;
#   ipykernel itself depends on it.)

# %%
import nest_asyncio2

nest_asyncio2.apply()
asyncio.run(main())

# %% [markdown]
# ## 3.9 Threads or asyncio?
#
# Both make many waiting calls overlap; for a handful of calls they are equally fast. Choose by how the code
# reads and by scale:
#
# | | threads (`ThreadPoolExecutor`) | asyncio (`gather` + semaphore) |
# |---|---|---|
# | code | ordinary blocking functions, `client.post(...)` | `async def` and `await` all the way down |
# | libraries | any blocking SDK | needs async clients (`httpx.AsyncClient`, `AsyncOpenAI`, `agent.run`) |
# | cap | `max_workers` | `asyncio.Semaphore(n)` |
# | cost per call in flight | a thread (stack, OS scheduling) | a small object on one thread |
# | at 1000s of calls | fine up to about 100 threads (the benchmark's largest pool) | fine, if calls are bounded and each client keeps a small pool |
#
# The workbook's benchmark (`benchmarks/strategies.py`, run by hand) measures all of them against the simulator
# at 0.5 s per call, up to 1000 calls (table in `benchmarks/results/strategies.md`; httpx 0.28.1, httpx2 2.16.2).
# For 1000 calls:
#
# | 1000 calls | in flight | wall | ideal | client CPU |
# |---|---:|---:|---:|---:|
# | threads, one shared `httpx.Client` | 32 | 16.2 s | 16 s | 0.8 s |
# | asyncio + semaphore, one shared `AsyncClient` | 32 | 16.2 s | 16 s | 1.2 s |
# | threads, one shared `httpx.Client` | 100 | 5.2 s | 5 s | 1.1 s |
# | asyncio + semaphore, one shared `AsyncClient` | 100 | 17.2 s | 5 s | 15.7 s |
# | asyncio + semaphore, one shared `httpx2.AsyncClient` (the SDK's) | 100 | 5.4 s | 5 s | 0.9 s |
# | asyncio + semaphore, 13 `AsyncClient`s of 8 connections | 100 | 5.3 s | 5 s | 0.8 s |
# | asyncio + semaphore, 40 `AsyncClient`s of 8 connections | 320 | 2.2 s | 2 s | 0.8 s |
# | asyncio, 125 `AsyncClient`s of 8 connections, all at once | 1000 | 1.3 s | 0.5 s | 1.0 s |
# | one shared `AsyncClient`, unbounded `gather` | pool of 100 | 9.5 s | 0.5 s | 8.5 s |
# | a new `AsyncClient` per call, unbounded | 1000 | 20.2 s | 0.5 s | 19.7 s |
#
# A **shared, bounded** client stays at the ideal time, threads or asyncio alike, up to a few dozen calls in
# flight. Past that the *client's CPU* becomes the bottleneck, and one cost stands out: httpx 0.28's async
# connection pool. Each time a request joins or leaves it, the pool checks every connection against every waiting
# request, so one pool of 100 connections burned thirteen times the CPU per call of a pool of 32 (15.7 ms against
# 1.2 ms), while 100 threads on one *sync* `httpx.Client` did not. That is httpx's cost, not asyncio's: `httpx2`,
# the fork inside the openai SDK and pydantic-ai, rewrote its pool, and one `httpx2` client of 100 connections
# stayed at 0.9 ms a call (it too grows costly at 320 connections and more: 2.1 ms a call at 320, 7.3 ms at 1000).
#
# With plain httpx, spread hundreds of calls in flight over several small clients, built once before the batch
# (each costs tens of milliseconds of CPU to build), and deal the calls out among them. The fastest row above is
# built like this:
#
# ```python
# clients = [target.async_client(connections=8) for _ in range(125)]  # 125 pools of 8 connections
# semaphore = asyncio.Semaphore(1000)
#
# async def spread(i: int, prompt: str) -> str:
#     async with semaphore:
#         return await ask_async(clients[i % len(clients)], prompt)
#
# answers = await asyncio.gather(*(spread(i, p) for i, p in enumerate(prompts)))
# ```
#
# A client per call is the slowest of all. Bound your calls, and against a real provider let its rate limit set
# the bound (lesson 07).
#
# ## Summary
#
# - A coroutine runs only when awaited; in a notebook you can `await` at the top level of a cell.
# - `gather` returns all answers together in input order; `as_completed` yields them as they finish.
# - On failure: plain `gather` raises the first error, `return_exceptions=True` keeps every result, `TaskGroup`
#   cancels the rest. For independent calls, keep every result.
# - `asyncio.Semaphore(n)` caps the calls in flight, like `max_workers`.
# - Build one `AsyncClient` and share it; a client per call burns CPU and wastes connections. The same goes for
#   the SDK's `AsyncOpenAI`, which also retries failed requests by itself.
# - `asyncio.run()` fails inside Jupyter's running loop; `await` instead, or `nest_asyncio2.apply()`.
#
# ## Exercises
#
# Solutions are in `03_asyncio_solutions.ipynb`.
#
# **Exercise 3.1.** Write `first_answer(prompts)`: it starts all calls at once, returns the text of the **first**
# answer to arrive, and cancels the calls still running (the server should not be left working on them).


# %%
async def first_answer(prompts: list[str]) -> str:
    return ""  # your code here


# %%
if target.is_simulator:
    target.simulator.configure(latency=None)
first = await first_answer(prompts)
await asyncio.sleep(0.2)  # a moment for the server to see the cancelled calls hang up
left = target.simulator.stats(records=False)["in_flight"] if target.is_simulator else 0
check(
    plain(first) == "short" and left == 0,
    "as_completed yields the fastest call first, and the others were cancelled.",
    "make a task per prompt, loop over asyncio.as_completed(tasks), return the first result, and cancel the "
    "other tasks on the way out (try/finally)." + (f" ({left} calls are still running at the server.)" if left else ""),
)

# %% [markdown]
# **Exercise 3.2.** Write `bounded_gather(prompts, limit)`: all answers in input order, never more than `limit`
# calls in flight.


# %%
async def bounded_gather(prompts: list[str], limit: int) -> list[str]:
    return []  # your code here


# %%
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
# **Exercise 3.3.** Make the `TaskGroup` version keep going when one call fails: write `safe_ask(prompt)` that
# returns the answer, or the exception instead of raising it. Then no task fails and none is cancelled.


# %%
async def safe_ask(prompt: str) -> str | Exception:
    return await ask_async(client, prompt)  # change me


# %%
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
