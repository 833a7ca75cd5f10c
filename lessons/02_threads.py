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
# # 02 · Threads
#
# Threads are the simplest way to run blocking calls side by side: you keep writing ordinary code and let a pool
# of threads make the calls. This lesson starts from the version people write first, one thread per prompt, and
# fixes it step by step.
#
# **In this lesson you will**
# - see what goes wrong with one `threading.Thread` per prompt and a shared list;
# - use `ThreadPoolExecutor.map`, where `answers[i]` always belongs to `prompts[i]`;
# - use `submit` + `as_completed` to handle each answer as soon as it arrives, fastest first;
# - use `max_workers` as a cap on calls in flight, and read the staircase it draws, with equal and with uneven
#   latencies.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers import connect
from helpers.exercises import check, environment

# Fixed speed: a call takes 0.1 s plus 0.05 s per token of its answer (a token is about a word), so longer
# answers take longer.
target = connect(seed=2, profile="fixed", ttft=0.1, tokens_per_second=20)
environment(target)

# %% [markdown]
# Three prompts whose answers have very different lengths, so their calls take very different times.
# The simulator is also told to fail any prompt that mentions `beta` with an HTTP 500, the way a real provider
# sometimes does. The lesson's code does not know about that: it is the server's behaviour. (A real provider
# fails on its own schedule, not on request: against one, the checks that count on this failure are skipped.)

# %%
from helpers import APIError, ask

client = target.client()
prompts = [
    "Reply: a long answer that takes the model a good while to write out in full, word after word",
    "Reply: beta",
    "Reply: a fairly short answer",
]
if target.is_simulator:
    target.simulator.configure(fault_on={"beta": "500"})


def call(prompt: str) -> str:
    return ask(client, target.model, prompt)


# %% [markdown]
# ## 2.1 One thread per prompt
#
# The first version most people write: start a thread for each prompt, let each append its answer to a shared
# list, wait for all of them. Errors are caught so that one failure does not kill the thread.
#
# **Predict:** in what order will `results` hold the answers?

# %%
import threading

results = []


def worker(prompt: str) -> None:
    try:
        results.append(call(prompt))
    except Exception:
        results.append(None)


threads = [threading.Thread(target=worker, args=(prompt,)) for prompt in prompts]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()

results

# %% [markdown]
# Three problems, all typical:
#
# 1. **Order.** The list fills in the order the calls *finish*. `results[0]` is not the answer to `prompts[0]`.
# 2. **Errors swallowed.** One entry is `None`. Which prompt failed, and why? The exception is gone.
# 3. **No cap.** A thread per prompt: 1000 prompts, 1000 threads asking at once. Only the client's connection
#    pool stands between them and the provider (100 connections by default), and the provider answers most of
#    them with "429 Too Many Requests".

# %%
if target.is_simulator:
    assert results[-1].startswith("a long answer")  # the slowest call finished last, so its answer is last
    assert None in results  # and the failure left no trace

# %% [markdown]
# ## 2.2 `ThreadPoolExecutor.map`: answers in input order
#
# A pool keeps a fixed number of threads and feeds them the prompts. `pool.map(call, prompts)` returns the answers
# **in the order of the prompts**. The catch: `map` raises the first exception it meets when you reach that
# answer, and the answers after it are lost to your loop. So the function handed to `map` should not raise.
# Here it returns the exception instead:

# %%
from concurrent.futures import ThreadPoolExecutor


def call_safely(prompt: str) -> str | Exception:
    try:
        return call(prompt)
    except APIError as error:
        return error


with ThreadPoolExecutor(max_workers=3) as pool:
    answers = list(pool.map(call_safely, prompts))

for prompt, answer in zip(prompts, answers, strict=True):
    print(f"{prompt[:30]:32} -> {answer!s:.60}")

# %%
if target.is_simulator:
    assert answers[2] == "a fairly short answer" and isinstance(answers[1], APIError) and answers[1].status == 500

# %% [markdown]
# `answers[i]` belongs to `prompts[i]`, and the failure says what it was. The price of input order: the short
# answer was ready long before the long one, but `map` hands it over only after the answers before it. The
# timeline shows that wait. `run_threads(..., order="input")` does exactly this `map` and records every call;
# the dot marks when your loop received the answer.

# %%
from helpers import draw, run_threads

in_order = run_threads(call, prompts, workers=3, order="input")
draw(in_order, title="pool.map: each answer waits for the ones before it")

# %%
assert in_order.delivery_order == [0, 1, 2]

# %% [markdown]
# ## 2.3 `submit` + `as_completed`: fastest first
#
# `pool.submit(call, prompt)` returns a *future* at once; `as_completed(futures)` yields each future as soon as its
# call finishes. Every future carries its own result or its own exception, so one failure does not disturb the
# others. Keep a dictionary from future to prompt index to know which answer is which.

# %%
from concurrent.futures import as_completed

with ThreadPoolExecutor(max_workers=3) as pool:
    futures = {pool.submit(call, prompt): index for index, prompt in enumerate(prompts)}
    for future in as_completed(futures):
        index = futures[future]
        try:
            print(f"prompt {index}: {future.result()[:40]}")
        except APIError as error:
            print(f"prompt {index} failed: {error.status} {error.message[:50]}")

# %% [markdown]
# The failure first (a server error often comes back fast), then the short answer, the long one last: each
# handled the moment it is known.
# Choose `map` when you need the answers lined up with the inputs, `as_completed` when you want to act on each
# answer as early as possible (show progress, save it, start the next step).

# %%
fastest_first = run_threads(call, prompts, workers=3, order="completion")
draw(in_order, fastest_first, title="The same calls: map (input order) vs as_completed (completion order)")

# %%
if target.is_simulator:
    assert fastest_first.delivery_order == [1, 2, 0]
    assert [r.ok for r in fastest_first.records] == [True, False, True]  # one failure, the others unharmed

# %% [markdown]
# ## 2.4 `max_workers` caps the calls in flight
#
# `max_workers` is how many threads the pool has, so it is the most calls that can be in flight at once. Nine
# calls of 0.4 s with three workers:
#
# **Predict:** how long, and what will the picture look like?

# %%
nine = [f"Reply: answer {i}" for i in range(9)]
peaks = {}
if target.is_simulator:
    target.simulator.configure(fault_on={}, latency=0.4)
    target.simulator.reset()
    three_workers = run_threads(call, nine, workers=3)
    peaks[3] = target.simulator.stats(records=False)["peak_in_flight"]  # what the server saw at once
    target.simulator.reset()
    nine_workers = run_threads(call, nine, workers=9)
    peaks[9] = target.simulator.stats(records=False)["peak_in_flight"]
else:  # the quota guard allows 3 calls in flight: show the staircase with 1 and 3 workers instead
    three_workers = run_threads(call, nine[:3], workers=1)
    nine_workers = run_threads(call, nine[:3], workers=3)
title = "Nine calls of 0.4 s: 3 workers make a staircase, 9 workers one step"
draw(three_workers, nine_workers, title=title if target.is_simulator else "Three calls: 1 worker, then 3")

# %% [markdown]
# Three rounds of three: about 3 × 0.4 s. The server agrees: it never saw more than three of these calls at once
# during the first run, and all nine at once during the second. When every call takes the same time, the wall
# time is about `ceil(N / max_workers) × latency`.

# %%
# NBVAL_IGNORE_OUTPUT
print(f"3 workers: {three_workers.wall:.2f} s · 9 workers: {nine_workers.wall:.2f} s · server peaks {peaks}")

# %%
import math

if target.is_simulator:
    assert peaks == {3: 3, 9: 9}
    assert three_workers.wall > 0.9 * math.ceil(9 / 3) * 0.4  # three rounds
assert nine_workers.wall < 0.6 * three_workers.wall

# %% [markdown]
# Real calls do not take the same time. With uneven latencies there are no rounds: a pool hands the next prompt to
# whichever thread is free first, so a long call holds one thread while the others work through the short ones.
# The rounds formula then says little. Two bounds always hold: the run takes at least the longest call and at
# least the total work shared out evenly (`sum of latencies / max_workers`), and at most that share plus the
# longest call.
#
# **Predict:** nine calls on three workers, one long (36 words to write) and eight short ones (2 to 6 words). Will
# the run take three rounds of their mean latency?

# %%
uneven = ["Reply: " + " ".join(["word"] * n) for n in (36, 2, 5, 3, 6, 2, 4, 3, 2)]  # 0.1 s + 0.05 s a word
if target.is_simulator:
    target.simulator.configure(latency=None)
    uneven_run = run_threads(call, uneven, workers=3)
else:
    uneven_run = run_threads(call, uneven[:3], workers=3)
draw(uneven_run, title="Uneven latencies on 3 workers: no rounds, a free thread takes the next prompt")

# %%
# NBVAL_IGNORE_OUTPUT
rounds = math.ceil(uneven_run.n / 3) * uneven_run.sum_of_latencies / uneven_run.n
share = uneven_run.sum_of_latencies / 3
print(f"three rounds of the mean latency: {rounds:.2f} s · the longest call: {uneven_run.slowest:.2f} s")
print(f"bounds: at least {max(uneven_run.slowest, share):.2f} s, at most {share + uneven_run.slowest:.2f} s")
print(f"measured: {uneven_run.wall:.2f} s")

# %%
assert max(uneven_run.slowest, share) - 0.02 <= uneven_run.wall <= share + uneven_run.slowest + 0.1  # the bounds
if target.is_simulator:
    assert uneven_run.wall > 1.2 * rounds  # the rounds formula is far off ...
    assert uneven_run.wall < uneven_run.slowest + 0.25  # ... the run took about as long as its longest call

# %% [markdown]
# The long call set the pace: while it ran, the two other threads worked through the eight short ones, so the run
# took about as long as the long call, well over three rounds of the mean latency and inside the two bounds.

# %% [markdown]
# **Try it.** The panel below runs the same nine calls with the number of workers you choose. Move the slider,
# press **Run**, and watch the staircase grow and shrink: 1, 2, 3, 5 and 9 workers. Where does adding workers
# stop helping? (The full panel, with every control, is in `lab.ipynb`.)

# %%
# NBVAL_IGNORE_OUTPUT
from helpers.lab import Lab

Lab(target, show=("workers",), prompts=9, profile="fixed", latency=0.4, workers=3) if target.is_simulator else None

# %% [markdown]
# Against a real provider that cap is your friend: every call in flight takes a slot of your rate limit, so the
# workbook keeps `max_workers` at 3 there. More workers only help while the provider keeps up (lesson 07).
#
# ## Summary
#
# - One thread per prompt with a shared list loses the input order, swallows errors and has no cap.
# - `ThreadPoolExecutor.map` keeps `answers[i]` with `prompts[i]`; make the mapped function return errors
#   instead of raising them, or `map` stops your loop at the first one.
# - `submit` + `as_completed` gives each answer as soon as it is ready; each future holds its own exception.
# - `max_workers` caps the calls in flight. With equal latencies the run is a staircase of
#   `ceil(N / max_workers)` rounds; with uneven ones it takes between `max(slowest, sum / max_workers)` and
#   `sum / max_workers + slowest`.
#
# ## Exercises
#
# Solutions are in `02_threads_solutions.ipynb`.
#
# **Exercise 2.1.** Repair the thread-per-prompt version: write `run_all(prompts)` that returns a list where item
# `i` is the answer to `prompts[i]`, or the exception its call raised. Use a `ThreadPoolExecutor` with at most 3
# workers.

# %%
if target.is_simulator:
    target.simulator.configure(fault_on={"beta": "500"}, latency=None)


def run_all(prompts: list[str]) -> list:
    return []  # your code here


# %%
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
# **Exercise 2.2.** Ten calls of 0.4 s each on 4 workers. Predict the wall time in seconds and store it in
# `predicted_wall`; the check then runs it.

# %%
predicted_wall = None  # your prediction

# %%
if target.is_simulator:
    target.simulator.configure(fault_on={}, latency=0.4)
ten = run_threads(call, [f"Reply: {i}" for i in range(10)], workers=4)
check(
    predicted_wall is not None and abs(predicted_wall - ten.wall) < 0.2 * ten.wall,
    "ceil(10 / 4) = 3 rounds of 0.4 s.",
    "how many rounds does the pool need when only 4 calls fit at once?",
)

# %% [markdown]
# **Exercise 2.3.** With `submit` + `as_completed` on the three prompts of this lesson (the `beta` one still
# fails), store in `first_index` the index of the prompt whose **successful** answer arrives first.

# %%
if target.is_simulator:
    target.simulator.configure(fault_on={"beta": "500"}, latency=None)
first_index = None  # your code here

# %%
check(
    first_index == 2,
    "the shortest answer finishes first, whatever its position in the list.",
    "keep a {future: index} dictionary; skip futures whose result() raises; take the first index that succeeds.",
)
