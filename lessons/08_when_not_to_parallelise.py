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
# # 08 · When not to parallelise
#
# Parallel calls shorten the wait only when the calls are independent, when the work is waiting rather than
# computing, and when the server has room for them. This lesson looks at each of those conditions failing, and
# at the one thing parallelism never changes: what the calls cost.
#
# **In this lesson you will**
# - see why the turns of a conversation must run one after another, and parallelise *across* conversations
#   instead;
# - measure CPU-bound work on threads and on processes (`ProcessPoolExecutor`);
# - watch a server with a fixed capacity flatten the speed-up and stretch every call's latency;
# - remember what parallelism never changes: what the calls cost.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers import connect
from helpers.exercises import check, environment, plain

# Fixed speed: every call takes 0.15 s, whatever it asks.
target = connect(seed=7, profile="fixed", latency=0.15)
environment(target)

# %% [markdown]
# ## 8.1 A conversation is a chain
#
# In a chat, each request carries the whole conversation so far: the user's messages and the model's answers.
# The second question is often written *from* the first answer. Here the follow-up needs the number the first
# call returns, so it cannot be sent before that answer is back.

# %%
from helpers.calls import answer_from

client = target.client()


def chat(messages: list[dict]) -> str:
    """One call with the whole conversation so far; returns the model's answer."""
    response = client.post("/chat/completions", json={"model": target.model, "messages": messages})
    return answer_from(response)


messages = [{"role": "user", "content": "What is 17 + 25? Answer with the number only."}]
first = chat(messages)
follow_up = f"What is {plain(first)} * 2? Answer with the number only."  # written from the first answer
messages += [{"role": "assistant", "content": first}, {"role": "user", "content": follow_up}]
second = chat(messages)
for message in messages + [{"role": "assistant", "content": second}]:
    print(f"{message['role']:>9}: {message['content']}")

# %%
assert plain(first) in follow_up  # turn 2's prompt holds turn 1's answer
if target.is_simulator:
    assert plain(second) == "84"

# %% [markdown]
# **Predict:** what happens if you send both turns at once, to save time? The second prompt then has to be
# written before the first answer exists, so the best it can do is point at it:

# %%
from concurrent.futures import ThreadPoolExecutor

question = "What is 17 + 25? Answer with the number only."
blind = "Multiply the answer to my previous question by 2. Answer with the number only."
with ThreadPoolExecutor(max_workers=2) as pool:
    turns = [[{"role": "user", "content": question}], [{"role": "user", "content": blind}]]
    first_at_once, second_at_once = pool.map(chat, turns)
print("turn 2, sent at the same time as turn 1:", second_at_once[:70])

# %%
if target.is_simulator:
    assert plain(second_at_once) != "84"  # fast, and wrong: the call never saw the first answer

# %% [markdown]
# Fast, and useless: the second call knew nothing of the first. Calls that depend on each other (turns of
# a conversation, an agent's plan-then-act steps, "summarise, then translate the summary") form a chain, and a
# chain takes the sum of its latencies. What you can do is run **many chains side by side**.
#
# ## 8.2 Parallel across conversations, sequential within
#
# Three conversations of two turns each. Inside a conversation the turns stay in order; the conversations
# themselves are independent. To draw the turns, each call is recorded (who made it, when it started and ended)
# in a `CallRecord`, the same record the runners of `helpers.runs` keep; the bookkeeping is in the next cell.

# %%
import itertools
import time
from contextlib import contextmanager

from helpers import CallRecord, RunReport

calls: list[CallRecord] = []  # every call of the current run
numbers = itertools.count()


@contextmanager
def recorded(who: str, prompt: str):
    record = CallRecord(next(numbers), prompt, worker=who, start=time.perf_counter())
    try:
        yield record
    finally:
        record.end = time.perf_counter()
        calls.append(record)


def as_report(label: str, started: float) -> RunReport:
    """The calls recorded since ``started`` as one run, times in seconds since it started."""
    for record in calls:
        record.start, record.end = record.start - started, record.end - started
    report = RunReport(label, list(calls), wall=time.perf_counter() - started, label=label)
    calls.clear()
    return report


# %% [markdown]
# A conversation is an ordinary function: turn 1, then turn 2 written from its answer.

# %%
only = " Answer with the number only."
conversations = [
    ("conversation A", "What is 17 + 25?" + only, "What is {} * 2?" + only),
    ("conversation B", "What is 9 * 8?" + only, "What is {} - 2?" + only),
    ("conversation C", "What is 100 - 37?" + only, "What is {} + 10?" + only),
]


def recorded_chat(who: str, messages: list[dict]) -> str:
    with recorded(who, messages[-1]["content"]):
        return chat(messages)


def converse(who: str, question: str, follow_up: str) -> list[str]:
    messages = [{"role": "user", "content": question}]
    first = recorded_chat(who, messages)
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": follow_up.format(plain(first))}]
    return [first, recorded_chat(who, messages)]


# %% [markdown]
# **Predict:** six calls of 0.15 s. How long one conversation after another, and how long with the three
# conversations on three threads?

# %%
started = time.perf_counter()
one_by_one = [converse(*conversation) for conversation in conversations]
sequential = as_report("one conversation after another", started)

started = time.perf_counter()
with ThreadPoolExecutor(max_workers=3) as pool:
    side_by_side = list(pool.map(lambda conversation: converse(*conversation), conversations))
threaded = as_report("three conversations on three threads", started)
side_by_side

# %% [markdown]
# The same with asyncio: a coroutine per conversation, awaiting its turns in order, and `gather` over the
# conversations.

# %%
import asyncio

async_client = target.async_client()


async def achat(who: str, messages: list[dict]) -> str:
    with recorded(who, messages[-1]["content"]):
        response = await async_client.post("/chat/completions", json={"model": target.model, "messages": messages})
        return answer_from(response)


async def aconverse(who: str, question: str, follow_up: str) -> list[str]:
    messages = [{"role": "user", "content": question}]
    first = await achat(who, messages)
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": follow_up.format(plain(first))}]
    return [first, await achat(who, messages)]


started = time.perf_counter()
gathered = await asyncio.gather(*(aconverse(*conversation) for conversation in conversations))
in_asyncio = as_report("three conversations with asyncio.gather", started)

# %%
from helpers import draw

draw(sequential, threaded, in_asyncio, title="Turns in order within a conversation, conversations side by side")

# %% [markdown]
# Each lane is a conversation. Its two bars never overlap, and the second starts only when the first ends: that
# is the dependency. The lanes overlap each other freely.

# %%
# NBVAL_IGNORE_OUTPUT
for report in (sequential, threaded, in_asyncio):
    print(f"{report.label:40} {report.wall:.2f} s")

# %%
for report in (threaded, in_asyncio):
    for who in ("conversation A", "conversation B", "conversation C"):
        turn_1, turn_2 = sorted((r for r in report.records if r.worker == who), key=lambda r: r.start)
        assert turn_2.start >= turn_1.end  # within a conversation: one after the other
    assert report.wall < 0.6 * sequential.wall  # across conversations: side by side
if target.is_simulator:  # a real model may word the same answer differently from one run to the next
    assert one_by_one == side_by_side == gathered == [["42", "84"], ["72", "70"], ["63", "73"]]
    assert threaded.wall > 0.9 * 2 * 0.15  # never shorter than one chain: two turns of 0.15 s

# %% [markdown]
# A whole conversation is one long task for the pool. When every turn takes the same time, many conversations
# take about `ceil(conversations / workers) × turns × latency`; when they differ, the bounds of lesson 02 hold with
# each conversation's total as its length: at least the longest conversation, at most the total shared out plus
# the longest. Either way parallelism divides the number of conversations, never the length of one. The same goes
# for any pipeline of dependent steps: run many items through it at once, each item's steps in order.
#
# ## 8.3 CPU-bound work: processes, not threads
#
# Some work around LLM calls computes instead of waiting: counting tokens before a batch, splitting documents,
# parsing and checking answers. Lesson 01 showed threads taking turns on such work, because only one thread runs
# Python code at a time (the GIL). Separate **processes** each have their own interpreter, so they compute at the
# same time, one per free CPU core.
#
# `helpers.cpu.count_and_clock(text)` counts tokens the way the simulator does, character by character in pure
# Python, and also says how many seconds of CPU the counting took and in which process. The function lives in a
# module rather than in this notebook on purpose: a `ProcessPoolExecutor` sends each worker the function's module
# and name, and under the *spawn* start method (the default on macOS and Windows; Linux moves to *forkserver* in
# Python 3.14) a worker process cannot find a function defined in a notebook. This lesson asks for spawn
# explicitly, so it behaves the same everywhere.

# %%
# NBVAL_IGNORE_OUTPUT
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from helpers.cpu import Machine, cores, count_and_clock, count_tokens

workers = min(2, cores())
sentence = "a model answers each request with a reply of 42 tokens, more or less."
texts = [f"Document {i}: {sentence} " * 10_000 for i in range(4)]
print(f"{cores()} CPU cores; {len(texts)} texts of {len(texts[0]):,} characters; {workers} processes")

# %% [markdown]
# Starting processes takes a moment (each one starts a Python interpreter and imports `helpers.cpu`), so the pool
# is started once and warmed up before the runs. The wall clock is a poor judge here: other programs busy on the
# machine stretch any run. What tells the strategies apart is the CPU: how many seconds of counting each run did
# per second of wall time, that is, how many cores' worth it used at once. `Machine` also measures how much of the
# machine other programs used meanwhile.
#
# **Predict:** four texts, each a fraction of a second of counting. Sequential, two threads, two processes: how
# many cores' worth will each use?

# %%
from helpers import run_sequential, run_threads

processes = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
list(processes.map(count_and_clock, ["warm up"] * workers))


def in_a_process(text: str):
    return processes.submit(count_and_clock, text).result()  # this thread waits; a process computes


runs = {}
for name, run in {
    "sequential": lambda: run_sequential(count_and_clock, texts),
    "threads": lambda: run_threads(count_and_clock, texts, workers=workers),
    "processes": lambda: run_threads(in_a_process, texts, workers=workers),
}.items():
    with Machine() as machine:
        report = run()
    counting = sum(counted.cpu for counted in report.answers)  # CPU seconds spent counting, wherever it ran
    own = report.cpu + (counting if name == "processes" else 0.0)  # this process, and the pool's when it counted
    runs[name] = (report, counting / report.wall, machine.free_cores(own))
processes.shutdown()

cpu_sequential, cpu_threads, cpu_processes = (report for report, _, _ in runs.values())
for record in cpu_processes.records:  # a lane per process that counted, not per thread that waited
    record.worker = f"process {record.answer.pid}"
cpu_processes.label = f"processes ({workers} workers)"
draw(cpu_sequential, cpu_threads, cpu_processes, title="Counting tokens: threads take turns, processes run at once")

# %%
# NBVAL_IGNORE_OUTPUT
for name, (report, rate, free) in runs.items():
    idle = "unknown" if free is None else f"{free:.1f}"
    print(
        f"{name:10} wall {report.wall:.2f} s · {rate:.2f} cores' worth of counting · "
        f"CPU of this process {report.cpu:.2f} s · cores free of other programs: {idle}"
    )

# %% [markdown]
# The threads' bars are stretched to about twice their length: two threads, taking turns. The processes' bars keep
# the sequential length and run side by side, one lane per process. The CPU says the same in numbers. Threads
# counted at most one core's worth at a time, whatever else the machine was doing: the GIL. Processes counted on
# two cores at once when two were free; with other programs busy on the machine they could only share what was
# left, and the last check below says which it was in this run. Meanwhile this notebook's own process hardly
# computed at all: with processes, the work happened elsewhere.

# %%
# NBVAL_IGNORE_OUTPUT
_, thread_rate, _ = runs["threads"]
_, process_rate, free = runs["processes"]
assert [c.tokens for c in cpu_sequential.answers] == [c.tokens for c in cpu_threads.answers]
assert [c.tokens for c in cpu_threads.answers] == [c.tokens for c in cpu_processes.answers]
assert thread_rate < 1.15  # threads: one core's worth at most, busy machine or not (the GIL)
assert cpu_processes.cpu < 0.3 * cpu_processes.wall  # with processes, this process only waits
if workers >= 2 and free is not None and free >= 1.5:
    assert process_rate > 1.3  # processes: more than one core's worth at once, when two cores are free
    print(f"Checked: the processes counted {process_rate:.2f} cores' worth at once, with {free:.1f} cores free.")
else:
    print(f"Not checked: processes can only beat one core when {workers} cores are free, and "
          f"{'this machine has ' + str(cores()) + ' core(s)' if workers < 2 else 'other programs used them'}"
          f" (free during the run: {'unknown' if free is None else f'{free:.1f}'}).")

# %% [markdown]
# On two cores the best possible is two cores' worth, twice as fast as sequential; sending the texts to the
# processes and the counts back costs a little. Use processes for work that computes for a good while per item,
# and keep the pool for the whole batch: starting it again for every item costs more than small jobs gain. For
# the LLM calls themselves, threads and asyncio remain the tool: they wait, and waiting needs no core.
#
# ## 8.4 A saturated server
#
# More workers help only while the server has room for them. A local model server (Ollama, vLLM, llama.cpp)
# serves a fixed number of requests at once and queues the rest; the simulator does the same with its
# `capacity` setting. Sixteen calls of 0.06 s to a server that serves four at a time, with 1 to 16 workers:
#
# **Predict:** how will the time per call change from 4 to 16 workers?

# %%
def call(prompt: str) -> str:
    return chat([{"role": "user", "content": prompt}])


sixteen = [f"Reply: answer {i}" for i in range(16)]
saturation = {}
if target.is_simulator:
    target.simulator.configure(capacity=4, latency=0.06)
    for n in (1, 2, 4, 8, 16):
        target.simulator.reset()
        saturation[n] = run_threads(call, sixteen, workers=n)
    server_view = target.simulator.stats()  # what the server saw during the last run (16 workers)
    target.simulator.configure(capacity=None, latency=0.15)
else:
    print("Skipped: a real provider's capacity is not yours to set, and 80 calls would spend quota for nothing.")

# %%
import matplotlib.pyplot as plt

if saturation:
    counts = list(saturation)
    throughput = [report.n / report.wall for report in saturation.values()]
    latency = [sum(r.latency for r in report.records) / report.n for report in saturation.values()]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    left.plot(counts, throughput, marker="o", color="#0072B2")
    left.set(xlabel="workers", ylabel="calls per second", title="Throughput stops growing at the capacity")
    right.plot(counts, latency, marker="o", color="#D55E00")
    right.set(xlabel="workers", ylabel="mean seconds per call", title="Past it, each call waits longer")
    for axes in (left, right):
        axes.axvline(4, color="#555555", linestyle="--", linewidth=1)
        axes.text(4.2, axes.get_ylim()[0], " capacity 4", color="#555555", fontsize=8, va="bottom")
        axes.set_xscale("log", base=2)
        axes.set_xticks(counts, [str(n) for n in counts])
        axes.set_ylim(bottom=0)
        axes.grid(color="#dddddd", linewidth=0.6)
    figure.tight_layout()
    plt.show()

# %% [markdown]
# Up to the capacity, doubling the workers doubles the calls per second and every call still takes 0.06 s. Past it
# the calls per second stay flat: the extra calls only wait in the server's queue, and that wait is added to
# their latency. The server's own view of the 16-worker run shows the queue:

# %%
from helpers import draw_server

draw_server(server_view, title="16 workers, capacity 4: 4 served, the rest queued") if saturation else None

# %%
# NBVAL_IGNORE_OUTPUT
if saturation:
    for n, report in saturation.items():
        mean = sum(r.latency for r in report.records) / report.n
        print(f"{n:2} workers: wall {report.wall:.2f} s, {report.n / report.wall:5.1f} calls/s, {mean:.2f} s per call")

# %%
if saturation:
    rate = {n: report.n / report.wall for n, report in saturation.items()}
    queued = [r["started"] - r["received"] for r in server_view["records"]]  # the server's own clock
    assert rate[4] > 2 * rate[1]  # below the capacity, workers add throughput (ideally 4×) ...
    assert rate[16] < 1.05 * 4 / 0.06  # ... above it none: four at a time, 0.06 s each, is all the server does
    assert server_view["peak_serving"] == 4 and server_view["peak_in_flight"] == 16
    assert sum(queued) / len(queued) > 0.05  # ... and each call waits in its queue first (ideally 0.09 s on average)

# %% [markdown]
# A hosted provider hides its servers, but the same thing happens in another form: past the concurrency it
# grants you, it answers with 429 "Too Many Requests" or 503 "overloaded", or simply slower. Measure calls per
# second for a few worker counts, as here, and stop adding workers where the curve flattens.
#
# ## 8.5 What parallelism never changes
#
# The last condition is not about speed at all. A provider limits you in calls and tokens, not in seconds: each
# call in flight holds a slot of your concurrency limit, each call counts against requests per minute, and each
# token against tokens per minute and your bill. Parallel calls spend the same quota as sequential ones, only
# sooner, and lesson 07 measured it (7.3: the same tokens either way; 7.4: the quota guard counting them). So size
# `max_workers` (or the semaphore) from your limits, not from how fast you want to go: the concurrency your
# provider allows you, and requests and tokens per minute divided by what one call takes; then a throttle keeps
# the pace, and retries that honour `retry-after` catch what still gets refused (lessons 06 and 07).
#
# ## Summary
#
# - Dependent calls (the turns of a conversation, a step that needs the previous answer) run in order: a chain
#   takes the sum of its latencies. Parallelise across independent chains, each chain in order inside.
# - Threads do not speed up CPU-bound Python code: they compute at most one core's worth at once. A
#   `ProcessPoolExecutor` does, up to one process per free core. Its function must live in a module, not a notebook
#   cell (spawn and forkserver start methods). Judge it by the CPU per second of wall time, not the wall clock.
# - A server serves a limited number of calls at once. Past that capacity, more workers add no throughput and
#   make every call wait longer: measure, and stop where the curve flattens.
# - N calls in flight hold N slots of your provider's limits. Parallel calls cost the same calls and tokens as
#   sequential ones; they save time, not quota or money (lesson 07).
#
# ## Exercises
#
# Solutions are in `08_when_not_to_parallelise_solutions.ipynb`.
#
# **Exercise 8.1.** Three-turn conversations: each turn's question is written from the previous answer. Write
# `talk(start)` as a coroutine that asks `What is {start} + 1?`, then `What is {answer} * 3?`, then
# `What is {answer} - 4?` (each with "Answer with the number only."), one after another, and returns the three
# answers. Then run `talk(1)`, `talk(2)` and `talk(3)` side by side and store the lists in `results`.


# %%
async def talk(start: int) -> list[str]:
    return []  # your code here


results = []  # your code here

# %%
check(
    [[plain(a) for a in r] for r in results] == [["2", "6", "2"], ["3", "9", "5"], ["4", "12", "8"]],
    "each conversation in order, the three side by side.",
    "await each turn before writing the next question; gather the three talk(...) coroutines.",
)

# %% [markdown]
# **Exercise 8.2.** The simulator now serves at most 3 calls at once, each taking 0.2 s. Predict the wall time of
# 12 calls on 12 threads and store it in `predicted_wall`; the check then runs it.

# %%
predicted_wall = None  # your prediction

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
# **Exercise 8.3.** Write `count_all(texts)`: the token counts of `texts` (in input order), computed with
# `helpers.cpu.count_tokens` on a `ProcessPoolExecutor` of 2 processes (use the spawn context, as in 8.3).


# %%
def count_all(texts: list[str]) -> list[int]:
    return []  # your code here


# %%
few = ["one two three", "4 5 6 seven", "a much longer text " * 1000]
check(
    count_all(few) == [count_tokens(text) for text in few],
    "the counts in input order: pool.map keeps it, as it does for threads.",
    "make a ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context('spawn')) and map count_tokens.",
)
