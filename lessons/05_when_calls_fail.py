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
# # 05 · When calls fail
#
# Make enough calls and some of them fail: the provider has an error, is overloaded, never answers, closes the
# connection half-way through, or sends back something that is not JSON. A batch of a thousand calls meets all
# of these. This lesson makes them happen on purpose, and shows how to end every run with each prompt accounted
# for: an answer, or an error that says what went wrong.
#
# **In this lesson you will**
# - make the server misbehave while your calling code stays what it would be against a real provider;
# - meet the errors a client sees, and tell those worth another try from those that are not;
# - see `pool.map` lose answers at the first failure, and `submit` + `as_completed` keep them all;
# - compare `gather`, `gather(return_exceptions=True)` and `TaskGroup` by what the server saw;
# - bound each call with timeouts (connect, read, total), so that one hung call cannot hold up a run;
# - keep partial results: every prompt ends with an answer or a recorded error, drawn on the timeline.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers import connect
from helpers.exercises import check, environment

# Fixed speed: a call takes 0.05 s plus 0.05 s per token of its answer (a token is about a word). A call told to
# hang gets no answer for 1.5 s; a real hung call would wait as long as your client lets it.
target = connect(seed=5, profile="fixed", ttft=0.05, tokens_per_second=20, hang_seconds=1.5)
environment(target)

# %% [markdown]
# ## 5.1 Faults on purpose
#
# To study failures you need them on demand. The simulator can be told to misbehave for every prompt that
# contains a given text: `fault_on={"beta": "500"}` answers any prompt mentioning `beta` with an HTTP 500. That
# is a setting of the *server*. The calling code below is exactly what you would run against a real provider,
# and it has no idea which call will fail. (Against a real provider these steps are skipped: it fails on its
# own schedule, not on request.)

# %%
import httpx

from helpers import APIError, ask

client = target.client()  # the workbook's default timeouts: 5 s to connect, 30 s for everything else
prompts = ["Reply: alpha, the first answer", "Reply: beta", "Reply: gamma, the last answer"]


def call(prompt: str) -> str:
    return ask(client, target.model, prompt)


if target.is_simulator:
    target.simulator.configure(fault_on={"beta": "500"})
try:
    print(call(prompts[1]))
except APIError as error:
    print(f"{type(error).__name__}: status {error.status}: {error.message}")

# %% [markdown]
# ## 5.2 What a failure looks like from the client
#
# Each kind of fault reaches your code as a different exception. Below, one call meets each of them, plus a
# request for a model that does not exist. The client gives up on an answer that has not come within 0.5 s (a
# *read timeout*, see 5.5), so the hung call ends quickly.
#
# **Predict:** which of these failures are worth trying again, and which will fail the same way every time?

# %%
from helpers import is_retryable

quick = target.client(timeout=httpx.Timeout(5.0, read=0.5))
kinds = ["500", "503", "hang", "drop", "malformed", "429", "quota"]
errors = {}
if target.is_simulator:
    target.simulator.configure(fault_on={f"[{kind}]": kind for kind in kinds})
    for kind in kinds:
        try:
            ask(quick, target.model, f"Reply: [{kind}]")
        except Exception as error:
            errors[kind] = error
    try:
        ask(quick, "no-such-model", "Reply: hello")
    except APIError as error:
        errors["404"] = error
    for kind, error in errors.items():
        verdict = "retry" if is_retryable(error) else "do not retry"
        print(f"{kind:9} {type(error).__name__:19} {verdict:12}  {str(error)[:46]}")
else:
    print("Skipped: a real provider cannot be told to fail. The table below says what each fault raises.")

# %%
if target.is_simulator:
    assert {kind: type(error).__name__ for kind, error in errors.items()} == {
        "500": "APIError",
        "503": "APIError",
        "hang": "ReadTimeout",
        "drop": "RemoteProtocolError",
        "malformed": "MalformedResponse",
        "429": "APIError",
        "quota": "APIError",
        "404": "APIError",
    }
    assert [kind for kind, error in errors.items() if is_retryable(error)] == ["500", "503", "hang", "drop", "429"]

# %% [markdown]
# | what happened | what your code gets | worth another try? |
# |---|---|---|
# | server error (500), overloaded (503) | `APIError` with `.status` 500 or 503 | yes: the next try often succeeds |
# | no answer at all | `httpx.ReadTimeout`, once the client's read timeout has passed (5.5) | yes |
# | connection closed half-way | `httpx.RemoteProtocolError` (its cousins: `ReadError`, `ConnectError`) | yes |
# | HTTP 200, but the body is not JSON | `helpers.MalformedResponse` | not blindly: a wrong URL or a proxy's error page answers the same way again; look first |
# | too many requests (429) | `APIError` 429, `.retry_after` says how long to wait | yes, after waiting (lesson 06) |
# | no credit left (429 `insufficient_quota`) | `APIError` 429 with `.code == "insufficient_quota"` | no: only a bigger quota helps |
# | bad request (400), bad key (401), unknown model (404) | `APIError` 4xx | no: the same request fails the same way |
#
# `helpers.is_retryable(error)` encodes this table. Two 429s look alike by status and need opposite treatment:
# read the error code. Lesson 06 turns "worth another try" into retries with backoff; in this lesson a failure
# is recorded and kept, not retried.
#
# ## 5.3 Threads: a failure stays in its future
#
# An exception raised in a `ThreadPoolExecutor`'s worker does not crash the pool or the other calls. It is
# stored in that call's *future*, and raised only when you ask for the result.

# %%
from concurrent.futures import ThreadPoolExecutor, as_completed

if target.is_simulator:
    target.simulator.configure(fault_on={"beta": "500"})
with ThreadPoolExecutor(max_workers=3) as pool:
    future = pool.submit(call, prompts[1])
    stored = future.exception()  # waits for the call, and returns its exception instead of raising it
print("done:", future.done(), "· stored:", type(stored).__name__ if stored else None)
try:
    future.result()
except APIError as error:
    print("result() raises it:", error.status)
if target.is_simulator:
    assert future.done() and isinstance(stored, APIError) and stored.status == 500

# %% [markdown]
# `pool.map` gives you the answers in input order by calling `.result()` on each future in turn; so it raises
# the first stored exception it meets, and your loop ends there.
#
# **Predict:** `beta` fails. How many answers does this loop collect, and did the server answer `gamma`?

# %%
if target.is_simulator:
    target.simulator.reset()
got = []
with ThreadPoolExecutor(max_workers=3) as pool:
    try:
        for answer in pool.map(call, prompts):
            got.append(answer)
    except APIError as error:
        print("map raised:", error.status)
print("answers collected:", got)
if target.is_simulator:
    server = {record["prompt"]: record["status"] for record in target.simulator.stats()["records"]}
    print("the server answered gamma with HTTP", server[prompts[2]])
    assert got == ["alpha, the first answer"] and server[prompts[2]] == 200

# %% [markdown]
# The `gamma` call was made, answered (and, against a real provider, paid for), and its answer is lost: the
# loop stopped at `beta`. Two ways out: make the mapped function return errors instead of raising them (lesson
# 02), or take the futures one by one with a `try` around each `.result()`:

# %%
results = {}
with ThreadPoolExecutor(max_workers=3) as pool:
    futures = {pool.submit(call, prompt): index for index, prompt in enumerate(prompts)}
    for future in as_completed(futures):
        index = futures[future]
        try:
            results[index] = future.result()
        except Exception as error:  # this call failed; the others are untouched
            results[index] = error
for index in sorted(results):
    print(index, repr(results[index])[:70])
if target.is_simulator:
    assert results[0] == "alpha, the first answer" and isinstance(results[1], APIError)
    assert results[2] == "gamma, the last answer"
assert sorted(results) == [0, 1, 2]  # every prompt has its entry

# %% [markdown]
# ## 5.4 asyncio: what happens to the other calls
#
# Lesson 03 showed what `gather`, `gather(return_exceptions=True)` and `TaskGroup` hand back when one call fails.
# The server's records show what happens meanwhile to the *other* calls. First plain `gather`:
#
# **Predict:** `gather` raises as soon as `beta` fails. Are `alpha` and `gamma` still running, and will the server
# answer them?

# %%
import asyncio

from helpers import ask_async

aclient = target.async_client()


async def acall(prompt: str) -> str:
    return await ask_async(aclient, target.model, prompt)


if target.is_simulator:
    target.simulator.reset()
try:
    answers = await asyncio.gather(*(acall(prompt) for prompt in prompts))
    print("gather returned", len(answers), "answers")
except APIError as error:
    print("gather raised:", error)
if target.is_simulator:
    print("calls still in flight at the server:", target.simulator.stats(records=False)["in_flight"])
    await asyncio.sleep(0.4)  # give them a moment, then look again
    server = {record["prompt"]: record["status"] for record in target.simulator.stats()["records"]}
    for prompt in prompts:
        print(f"{prompt:32} HTTP {server[prompt]}")

# %%
if target.is_simulator:
    assert server == {prompts[0]: 200, prompts[1]: 500, prompts[2]: 200}

# %% [markdown]
# Nobody cancelled `alpha` and `gamma`: both finished and were answered (and, against a real provider, paid for),
# and their answers went nowhere. `return_exceptions=True` would have kept them (lesson 03). `TaskGroup` does the
# opposite: the first failure **cancels** the tasks still running. A cancelled call closes its connection, and the
# server sees the client hang up (status 499, "client disconnected"):

# %%
if target.is_simulator:
    target.simulator.reset()
try:
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(acall(prompt)) for prompt in prompts]
except* APIError as failures:
    print("TaskGroup raised", len(failures.exceptions), "error")
print("cancelled:", [prompt for prompt, task in zip(prompts, tasks, strict=True) if task.cancelled()])
await asyncio.sleep(0.2)  # a moment for the server to notice the closed connections
if target.is_simulator:
    server = {record["prompt"]: (record["status"], record["outcome"]) for record in target.simulator.stats()["records"]}
    for prompt in prompts:
        print(f"{prompt:32} HTTP {server[prompt][0]} {server[prompt][1] or ''}")
    assert [task.cancelled() for task in tasks] == [True, False, True]
    assert server[prompts[0]][0] == server[prompts[2]][0] == 499 and server[prompts[1]][0] == 500

# %% [markdown]
# All or nothing is right when the results only make sense together (three steps of one answer), and wrong for
# a batch of independent prompts: there, keep every result. Whether a provider stops generating (and billing)
# when you hang up is up to the provider.
#
# ## 5.5 Timeouts: one hung call holds up the run
#
# Now `gamma` gets no answer at all: the server accepts the request and says nothing.
#
# **Predict:** three calls on three threads, the client's default timeouts (30 s). How long does the run take?

# %%
from helpers import draw, run_threads

if target.is_simulator:
    target.simulator.configure(fault_on={"gamma": "hang"})
patient = run_threads(call, prompts, workers=3)
for record in patient.records:
    print(f"{record.prompt:32} {record.outcome[:60]}")

# %% [markdown]
# The run lasts as long as its slowest call: `alpha` and `beta` were done within 0.3 s, and the run
# waited for `gamma` until the simulator gave up after 1.5 s. A real hung call waits for your client's
# timeout: 30 s with this workbook's clients, 10 minutes with the openai SDK's defaults, for ever with none.
#
# `httpx.Timeout` has four parts, each a limit on one kind of waiting:
#
# - `connect`: to open the connection (TCP and TLS); short, a few seconds;
# - `read`: for the next piece of the answer. A non-streaming LLM call sends nothing until the whole answer is
#   written, so this must be longer than your slowest *good* answer;
# - `write`: to send the request; `pool`: for a free connection in the client's pool.
#
# None of them limits the whole call. Here the read timeout goes well above the slowest good answer (0.3 s)
# and well below the hang:

# %%
READ_TIMEOUT = 0.5 if target.is_simulator else 30.0  # a real model can take several seconds to answer
bounded_client = target.client(timeout=httpx.Timeout(10.0, connect=2.0, read=READ_TIMEOUT))


def call_bounded(prompt: str) -> str:
    return ask(bounded_client, target.model, prompt)


bounded = run_threads(call_bounded, prompts, workers=3)
patient.label, bounded.label = "default timeouts", f"read timeout {READ_TIMEOUT:g} s"
draw(patient, bounded, title="One hung call: the run waits for it, unless a timeout ends it")

# %%
# NBVAL_IGNORE_OUTPUT
print(f"default timeouts: {patient.wall:.2f} s · read timeout {READ_TIMEOUT:g} s: {bounded.wall:.2f} s")
if target.is_simulator:
    assert patient.wall > 1.4 and bounded.wall < 1.0  # the hang (1.5 s) vs the timeout (0.5 s)
    assert [r.ok for r in bounded.records] == [True, True, False] and "ReadTimeout" in bounded.records[2].error
assert bounded.records[0].ok and bounded.records[1].ok  # the other calls are unharmed either way

# %% [markdown]
# The failed call is drawn in vermillion, labelled with what ended it. With threads the timeout belongs in the
# client. `future.result(timeout=...)` looks like an alternative, but it only stops *your* waiting: the thread
# is still blocked on the socket, and leaving the `with` block waits for it.

# %%
import time

gave_up = None
start = time.perf_counter()
with ThreadPoolExecutor(max_workers=1) as pool:
    future = pool.submit(call, prompts[2])  # the client without a short read timeout
    try:
        future.result(timeout=0.5)
    except TimeoutError:
        gave_up = time.perf_counter() - start
pool_closed = time.perf_counter() - start

# %%
# NBVAL_IGNORE_OUTPUT
waited = "did not time out" if gave_up is None else f"gave up after {gave_up:.2f} s"
print(f"result() {waited}; the pool closed after {pool_closed:.2f} s")
if target.is_simulator:
    assert gave_up is not None and gave_up < 0.9 and pool_closed > 1.4

# %% [markdown]
# A read timeout limits each wait for the *next piece* of the answer, not the whole answer. A streamed answer
# (`"stream": true`) arrives in many small pieces; as long as they keep coming, the read timeout never fires,
# however long the whole answer takes. Here, a stream of 0.65 s with a read timeout of 0.2 s:

# %%
import json


async def stream(client: httpx.AsyncClient, prompt: str) -> str:
    request = {"model": target.model, "messages": [{"role": "user", "content": prompt}], "stream": True}
    text = ""
    async with client.stream("POST", "/chat/completions", json=request) as response:
        async for line in response.aiter_lines():  # one event per piece: data: {...}
            if line.startswith("data: {"):
                text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
    return text


streamed = None
if target.is_simulator:  # 12 words at 20 per second, a piece every 0.05 s
    async with target.async_client(timeout=httpx.Timeout(10.0, read=0.2)) as short_read:
        start = time.perf_counter()
        text = await stream(short_read, "Reply: " + " ".join(["word"] * 12))
        streamed = time.perf_counter() - start
    print(f"no ReadTimeout: {len(text.split())} words arrived")
else:
    print("Skipped against a real provider: a 0.2 s read timeout could cut a real model's first token.")

# %%
# NBVAL_IGNORE_OUTPUT
if streamed:
    print(f"the stream took {streamed:.2f} s, {streamed / 0.2:.1f} times the read timeout")
    assert streamed > 0.55 and text.split() == ["word"] * 12

# %% [markdown]
# asyncio can do what threads cannot: cancel a call. `async with asyncio.timeout(s):` (Python 3.11+) or
# `await asyncio.wait_for(coroutine, s)` (5.6 uses it) gives the call a **total** deadline: when it passes, the task is
# cancelled, its connection closed, and `TimeoutError` raised. That bounds everything at once: connecting,
# waiting for a connection from the pool, sending, and an answer that trickles in for too long.

# %%
from helpers import run_async

DEADLINE = 0.5 if target.is_simulator else 30.0


async def acall_within(prompt: str) -> str:
    async with asyncio.timeout(DEADLINE):
        return await ask_async(aclient, target.model, prompt)


within = await run_async(acall_within, prompts, limit=3)
for record in within.records:
    print(f"{record.prompt:32} {record.outcome[:60]}")
await asyncio.sleep(0.2)
if target.is_simulator:
    print("calls still in flight at the server:", target.simulator.stats(records=False)["in_flight"])

# %%
if target.is_simulator:
    assert [r.ok for r in within.records] == [True, True, False] and within.wall < 1.0
    assert target.simulator.stats(records=False)["in_flight"] == 0  # cancelled calls do not linger

# %% [markdown]
# ## 5.6 Nothing lost: an answer or a recorded error for every prompt
#
# A larger batch now, with a mix of faults: a server error, an overloaded server, a hang, a dropped connection
# and a broken body among twelve prompts. `run_threads` and `run_async` do what 5.3 and 5.4 did by hand: each
# prompt gets a record with its answer or its error, and the report lists the failures. (Against a real
# provider: the three prompts of this lesson, to save quota.)

# %%
words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima"]
faults = {"charlie": "500", "echo": "hang", "golf": "drop", "india": "malformed", "kilo": "503"}
if target.is_simulator:
    target.simulator.configure(fault_on=faults)
    batch = [f"Reply: {word}" for word in words]
else:
    batch = prompts
with_threads = run_threads(call_bounded, batch, workers=3, order="completion")


async def acall_by_deadline(prompt: str) -> str:  # the same deadline as acall_within, with wait_for
    return await asyncio.wait_for(acall(prompt), DEADLINE)


with_asyncio = await run_async(acall_by_deadline, batch, limit=3, order="completion")
print(f"threads: {len(with_threads.failures)} of {with_threads.n} calls failed")
for record in with_threads.failures:
    print(f"{record.index:2} {record.prompt:14} {record.error[:70]}")

# %%
draw(with_threads, with_asyncio, title="Twelve calls, five faults: every prompt ends with an answer or an error")

# %%
for report in (with_threads, with_asyncio):
    assert report.n == len(batch)  # a record for every prompt ...
    assert all(record.ok != (record.error is not None) for record in report.records)  # ... answer or error
    assert [answer is not None for answer in report.answers] == [record.ok for record in report.records]
if target.is_simulator:
    for report in (with_threads, with_asyncio):
        assert sorted(record.prompt.removeprefix("Reply: ") for record in report.failures) == sorted(faults)
    assert with_threads.answers[0] == "alpha" and with_asyncio.answers[-1] == "lima"
    assert with_threads.slowest < 1.0 and with_asyncio.slowest < 1.0  # the hang ended at the timeout (0.5 s)
    assert with_asyncio.records[words.index("echo")].error == "TimeoutError"  # wait_for's deadline

# %% [markdown] Seven answers kept, five failures recorded with their reasons, and no call took longer than the timeout
# allows: the hang cost 0.5 s on one worker, not 1.5 s (or 30). The broken body is labelled `malformed`: its status was
# fine (200), its body was not. The report is what you save: whatever order the answers arrived in, `answers[i]` belongs
# to `batch[i]` (None where the call failed), and `failures` is the list to look at, or to try again.
#
# Which of them are worth another try? The errors are kept on the records (`record.exception`):

# %%
to_retry = [record.prompt for record in with_threads.failures if is_retryable(record.exception)]
to_retry

# %%
if target.is_simulator:
    assert to_retry == ["Reply: charlie", "Reply: echo", "Reply: golf", "Reply: kilo"]  # not the broken body

# %% [markdown]
# Trying those again, right away or after a pause, and how many times, is lesson 06: retries with backoff,
# rate limits and the server's `retry-after`.
#
# ## Summary
#
# - Fault injection happens at the server (`fault_on`); the calling code is what you would run against a real
#   provider.
# - Errors come as `APIError` (with status and code), timeouts, dropped connections and malformed bodies. 5xx,
#   429 rate limits, timeouts and dropped connections are worth another try; 4xx, `insufficient_quota` and
#   broken bodies are not, or not blindly.
# - A thread pool stores each call's exception in its future. `pool.map` raises at the first one and loses the
#   rest of the loop; `submit` + `as_completed` with a `try` per future keeps every result.
# - `gather` raises the first error and leaves the other calls running unseen; `return_exceptions=True` keeps
#   them all; `TaskGroup` cancels them.
# - Without a timeout a run waits for its slowest call, hung or not. Set `httpx.Timeout(10.0, connect=..., read=...)`
#   on every client; with asyncio, `asyncio.timeout` or `wait_for` adds a total deadline that really cancels.
#   `future.result(timeout=...)` stops only your waiting.
# - Keep partial results: every prompt ends with an answer or a recorded error (`report.failures`).
#
# ## Exercises
#
# Solutions are in `05_when_calls_fail_solutions.ipynb`.
#
# **Exercise 5.1.** `gamma` hangs again. Build `my_client` so that the three prompts, run on three threads, end
# in under a second: the hung call fails with a timeout, the others answer.

# %%
if target.is_simulator:
    target.simulator.configure(fault_on={"gamma": "hang"})
my_client = target.client()  # change me

# %%
exercise = run_threads(lambda prompt: ask(my_client, target.model, prompt), prompts, workers=3)
check(
    exercise.records[0].ok
    and exercise.records[1].ok
    and (not target.is_simulator or (exercise.wall < 1.0 and "Timeout" in (exercise.records[2].error or ""))),
    "the hung call ends at the read timeout, and the run with it."
    if target.is_simulator
    else "every call answered (a real provider does not hang on request: the timeout is not tested here).",
    "target.client(timeout=httpx.Timeout(10.0, read=...)) with a read timeout above 0.3 s and below 0.8 s.",
)

# %% [markdown]
# **Exercise 5.2.** Write `answers_by(prompts, seconds)`: start all the calls at once; after `seconds`, return a
# list where item `i` is the answer to `prompts[i]`, or None if that call failed or had not finished. Cancel
# the calls still running: the server should not be left working on them. (`asyncio.wait(tasks,
# timeout=...)` returns the tasks done and those still pending.)


# %%
async def answers_by(prompts: list[str], seconds: float) -> list[str | None]:
    return []  # your code here


# %%
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
# **Exercise 5.3.** Write `worth_retrying(error)` yourself, without `is_retryable`: True for a server error
# (5xx), a rate limit (429, but not `insufficient_quota`), a timeout and a dropped connection; False for
# anything else. The check compares it with `helpers.is_retryable` on one error of each kind.


# %%
def worth_retrying(error: Exception) -> bool:
    return False  # your code here


# %%
from helpers import MalformedResponse

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
