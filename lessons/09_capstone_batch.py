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
# # 09 · Capstone: a batch that survives
#
# Two hundred customer messages must each get a label: billing, technical, account or feedback. Sequentially that
# is 200 calls end to end; in parallel it is a few seconds. But a real batch also meets failing calls, a laptop
# that goes to sleep, a kernel that dies at item 143. This lesson puts the pieces of the workbook together into
# one pipeline that is fast *and* loses nothing.
#
# **In this lesson you will**
# - write a checkpointed batch yourself: a bounded pool, one line of JSON per finished item, skip what is saved;
# - kill it half-way for real, run it again, and see that only the missing items are called;
# - hand over to the workbook's pipeline for what the small loop lacks: retries, a throttle, repair of a cut
#   line, progress;
# - keep failures as results, and retry them when the cause is gone;
# - read the final report: counts, attempts, tokens, cost and the timeline;
# - run the same code against a real provider, on three items, inside the quota guard.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers import connect
from helpers.exercises import check, environment

# Fixed speed: every call takes 0.06 s, so 200 calls on 8 workers take about 1.5 s.
target = connect(seed=8, profile="fixed", latency=0.06)
environment(target)

# %% [markdown]
# ## 9.1 The messages and the call
#
# The workbook comes with 200 short messages written for this lesson (`data/messages.jsonl`), one JSON object a
# line with an `id`, the `text`, and the label a person would give it:

# %%
from collections import Counter

from helpers.batch import DATASET, load_items

items = load_items(DATASET)
print(len(items), "messages:", dict(Counter(item["label"] for item in items)))
items[:3]

# %% [markdown]
# The call is `helpers.batch.classify`: one chat completion that asks for JSON matching a schema in which `label`
# must be one of the four words (OpenAI's structured output, `response_format`), and returns that label with the
# tokens the call used, read from the answer's `usage`. It is a dozen lines of httpx; `classify??` shows them.
# A label outside the four raises an error instead of slipping into the results.

# %%
from helpers.batch import UsageAnswer, classify

client = target.client(connections=8)  # one client, shared by all the threads


def call(text: str) -> UsageAnswer:
    return classify(client, target.model, text)


call(items[0]["text"])

# %% [markdown]
# (The simulator does not read. It picks a label whose word appears in the message, or else a seeded guess, so
# its labels are right only by luck. A real model gets most of them right; that is not what this lesson
# measures.)
#
# ## 9.2 A checkpointed batch, by hand
#
# First, a server with trouble, as real ones have: one request in seven fails with a 500 or a 503 (worth a
# retry), and two messages, the ones that mention PayPal and Zapier, fail every time.

# %%
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if target.is_simulator:
    target.simulator.configure(
        fail_rate=0.15, fail_kinds=["500", "503"], fault_on={"PayPal": "500", "Zapier": "503"}
    )
folder = Path(tempfile.mkdtemp(prefix="lesson09-"))  # a temporary folder, not the repository
script, checkpoint = folder / "my_batch.py", folder / "labels.jsonl"

# %% [markdown]
# Before the workbook's pipeline, write the heart of one yourself. A batch that survives a crash needs three
# things: a bounded pool of workers (lesson 02), a **checkpoint** to which each result is appended as one line of
# JSON the moment it arrives, and, at the start, a look at the checkpoint to skip the items it already holds. A
# long batch usually runs as a script in a process of its own, so the cell below writes it to a file
# (`%%writefile`); it takes the items and the checkpoint as arguments. A failed call is written too: a failure is a
# result, and a rerun should not mistake it for an item never tried.

# %%
# %%writefile {script}
"""Classify every message of a JSONL file into a checkpoint, one JSON line per finished item; rerun to resume."""
import json
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from helpers import connect
from helpers.batch import classify, load_items

items, checkpoint = load_items(sys.argv[1]), Path(sys.argv[2])
target = connect()  # the simulator, or the endpoint LLM_BASE_URL names
client = target.client(connections=8)

done = set()  # the ids the checkpoint holds already: skip them
if checkpoint.exists():
    for line in checkpoint.read_text().splitlines():
        done.add(json.loads(line)["id"])
todo = [item for item in items if item["id"] not in done]


def one(item: dict) -> dict:
    try:
        label = classify(client, target.model, item["text"])  # the label, and the tokens it cost
    except Exception as error:  # a failure is a result too
        return {"id": item["id"], "ok": False, "error": f"{type(error).__name__}: {error}"[:200]}
    return {"id": item["id"], "ok": True, "answer": label.text, "input_tokens": label.input_tokens,
            "output_tokens": label.output_tokens}


with open(checkpoint, "a") as out, ThreadPoolExecutor(max_workers=8) as pool:
    for future in as_completed([pool.submit(one, item) for item in todo]):
        out.write(json.dumps(future.result()) + "\n")
        out.flush()  # handed to the operating system now: the process can die, the line stays
print(f"{len(done)} items were done already; {len(todo)} done now")

# %% [markdown]
# Now start it on the 200 messages, wait until about half of the results are saved, and kill it with `SIGKILL`
# (the same as `kill -9`): no cleanup, no last words. Then run it again, as you would after a crash.
#
# **Predict:** how many requests will the second run send?

# %%
# NBVAL_IGNORE_OUTPUT
from helpers.batch import read_checkpoint

if target.is_simulator:
    env = os.environ | {"LLM_BASE_URL": target.base_url, "LLM_MODEL": target.model}
    command = [sys.executable, str(script), str(DATASET), str(checkpoint)]
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while len(read_checkpoint(checkpoint)) < 100 and first.poll() is None:
        time.sleep(0.01)
    first.kill()  # SIGKILL: the process ends at once, wherever it was
    first.wait()
    after_kill = read_checkpoint(checkpoint)
    print(f"killed with {len(after_kill)} of {len(items)} results saved")
    before = target.simulator.stats(records=False)["requests"]  # to count the second run's requests only
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    print("the second run:", second.stdout.strip() or second.stderr[-500:])
    sent = [record for record in target.simulator.stats()["records"] if record["n"] > before]
    print(f"it sent {len(sent)} requests")
else:
    print("Against a real provider the script is not run (a second process would have a quota guard of its own).")

# %% [markdown]
# The kill left complete lines, one per finished item; the calls in flight were lost, and nothing claims they
# were done. The second run read the checkpoint, skipped those items, and called only the others, one request
# each. Every item now has exactly one line:

# %%
# NBVAL_IGNORE_OUTPUT
if target.is_simulator:
    saved = read_checkpoint(checkpoint)
    lines_per_id = Counter(entry["id"] for entry in saved)
    missing = {item["text"][:80] for item in items if item["id"] not in {e["id"] for e in after_kill}}
    assert 100 <= len(after_kill) < len(items) and second.returncode == 0
    assert set(lines_per_id) == {item["id"] for item in items} and set(lines_per_id.values()) == {1}
    assert {record["prompt"] for record in sent} == missing  # the server keeps 80 characters
    assert len(sent) == len(missing)  # one request an item: this small loop never retries
    print(f"{sum(not e['ok'] for e in saved)} of the {len(saved)} lines are failures")

# %% [markdown]
# ## 9.3 What the small loop lacks: `run_batch`
#
# Thirty lines survive a `kill -9`. A batch you run for real needs more, and the small loop has none of it:
#
# - **retries** with backoff: it saved every passing 500 and 503 as a failure, and will never try them again;
# - a **throttle** for the provider's rate limit (lesson 07), and the quota guard's checks before the first call;
# - **`fsync`**: `flush` hands a line to the operating system, which survives the process dying, but a power cut
#   can still lose what the disk had not been given yet;
# - **repair of a cut line**: a crash in the middle of a write (or a full disk) leaves half a line at the end, and
#   the loop would append the next result to it, gluing two lines into one that is neither;
# - **one writer at a time**: start the script twice on one checkpoint (a second terminal, a second cell) and both
#   call every item; `run_batch` locks the checkpoint, and a second run is refused with the first one's pid;
# - **answers that match their questions**: the loop knows items by id only, so a new list with the same ids and
#   other texts gets the old answers; `run_batch` saves a digest of each text and refuses a changed one (or, with
#   `redo_changed=True`, asks again), and it refuses a file that is not a checkpoint instead of writing into it;
# - a **progress bar**, a **report** (counts, attempts, tokens, cost, a timeline), and answers in input order.
#
# `helpers.run_batch` is the same loop with those added: a thread pool (`run_threads`, lesson 02), retries
# (`helpers.retry`, lesson 06), an optional throttle, and a checkpoint in the same format, each line written with
# a single `write` and then `fsync`ed. So it can take over this very checkpoint. To see the repair, first cut the
# end of the last line off, as a crash in the middle of a write would leave it:

# %%
# NBVAL_IGNORE_OUTPUT
if target.is_simulator:
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[:-30])  # half a line at the end, as a crash in the middle of a write leaves it
    print(checkpoint.read_text()[-220:])
saved = read_checkpoint(checkpoint)  # the complete lines only

# %% [markdown]
# **Predict:** `run_batch` on the same checkpoint, with `retry_failed=True` and up to 5 attempts a call. Which
# items will it call?
#
# It reads the checkpoint first. Items whose last line is an answer are skipped; those whose last line is a failure
# are called again (`retry_failed=True`); the cut last line is reported, removed, and its item done again. The
# progress bar starts from what the checkpoint already holds.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers import run_batch

batch_items = items if target.is_simulator else items[:3]  # a real provider: three items (see 9.7)
workers = 8 if target.is_simulator else 3  # the quota guard allows 3 calls in flight
seen_before = target.simulator.stats(records=False)["requests"] if target.is_simulator else 0
report = run_batch(
    call,
    batch_items,
    checkpoint=checkpoint,
    workers=workers,
    target=target,
    retry_failed=True,
    attempts=5,
    base=0.05,
    rng=8,
)
print(report.describe())

# %% [markdown]
# The server's side of the story, its records of this run's requests: the prompts it received are exactly the items
# without an answer in the checkpoint, and every attempt (first tries and retries) is one request.

# %%
if target.is_simulator:
    this_run = [record for record in target.simulator.stats()["records"] if record["n"] > seen_before]
    last = {entry["id"]: entry for entry in saved}  # the last line of each id counts
    to_call = {item["text"][:80] for item in items if item["id"] not in last or not last[item["id"]]["ok"]}
    assert {record["prompt"] for record in this_run} == to_call  # only those were called
    assert report.answered + report.failed == len(to_call) and report.skipped == len(items) - len(to_call)
    assert len(this_run) == report.attempts > len(to_call)  # the retries show
    assert report.repaired is not None and "cut short" in report.repaired
assert report.remaining == 0

# %% [markdown]
# The answers come back **in input order**, whichever run produced them and whenever each call finished:
# `report.answers[i]` belongs to `items[i]`. The two messages that failed every time have `None`.

# %%
for item, answer in zip(batch_items[:6], report.answers[:6], strict=True):
    print(f"{item['id']}  {answer!s:9}  {item['text'][:60]}")

# %%
assert len(report.answers) == len(batch_items)
if target.is_simulator:
    failed_ids = {item["id"] for item, answer in zip(items, report.answers, strict=True) if answer is None}
    assert failed_ids == {item["id"] for item in items if "PayPal" in item["text"] or "Zapier" in item["text"]}

# %% [markdown]
# ## 9.4 Failures are results too
#
# A call that still fails after its retries is not dropped: its final error goes into the checkpoint like an
# answer, with the number of attempts. So nothing is silently lost, and a rerun does not hammer a server that
# keeps refusing the same item. `report.results` holds each item's result, its last line in the checkpoint:

# %%
failures = [entry for entry in report.results if entry is not None and not entry["ok"]]
for entry in failures:
    print(f"{entry['id']}: {entry['attempts']} attempts, {entry['error'][:64]}")

# %% [markdown]
# Once the cause is gone (here: the server stops failing those two), `retry_failed=True` calls the failed items
# again, and only them. The new line comes after the old one; for each id, the last line counts.

# %%
if target.is_simulator:
    target.simulator.configure(fault_on={})
    target.simulator.reset()
retried = run_batch(
    call, batch_items, checkpoint=checkpoint, workers=workers, target=target, retry_failed=True, progress=False
)
retried.counts()

# %%
assert retried.failed == 0 and None not in retried.answers
if target.is_simulator:
    assert target.simulator.stats(records=False)["by_status"]["200"] == len(failures) == 2

# %% [markdown]
# ## 9.5 Run it once more: nothing to do
#
# **Predict:** the batch is complete. What does one more run cost?

# %%
if target.is_simulator:
    target.simulator.reset()
again = run_batch(call, batch_items, checkpoint=checkpoint, workers=workers, target=target, progress=False)
print(again)

# %%
assert again.n == 0 and again.skipped == len(batch_items) and again.answers == retried.answers
if target.is_simulator:
    assert target.simulator.stats(records=False)["requests"] == 0  # not a single request

# %% [markdown]
# Nothing. A batch whose every item has a result makes no call at all, so running it again after a doubt ("did it
# finish?") is free. That property has a name, **idempotent**, and it is what makes a batch safe to restart
# without thinking.
#
# ## 9.6 The report and the timeline
#
# `run_batch` returns a `BatchReport`: this run's counts (answered, failed, skipped because the checkpoint had
# them, attempts, tokens, cost) and its calls, which `draw` shows like any other run. In the first panel, the run
# that took over from the small loop: one lane per worker, each bar one item with all its tries, labelled with its
# position in `items` (`#76` is `items[76]`, id `m077`, one of the two that fail every time); each vermillion
# stretch is a failed try, orange hatching the wait before the next. In the second, the retry of the last two
# failures once the server had stopped failing them.

# %%
from helpers import draw

draw(report, retried, title="run_batch taking over the checkpoint, then retrying its last two failures")

# %% [markdown]
# For the whole batch, read the checkpoint: the last line of each id is its result. The simulator's model has no
# price, so the cost is worked out at the list price of a real small model (`helpers.quota.PRICES`).
# Parallel calls saved time, not money: the same 200 calls cost the same tokens one by one or eight at a time.

# %%
from helpers.quota import PRICES_AS_OF, estimate_cost

final = {entry["id"]: entry for entry in read_checkpoint(checkpoint)}  # the last line of each id counts
inputs = sum(entry.get("input_tokens", 0) for entry in final.values())
outputs = sum(entry.get("output_tokens", 0) for entry in final.values())
cost = estimate_cost("gpt-4o-mini", inputs, outputs)
print(f"{len(final)} items, {sum(e['ok'] for e in final.values())} answered, {inputs + outputs:,} tokens")
print(f"at gpt-4o-mini list prices ({PRICES_AS_OF}): about ${cost:.6f}, or ${cost / len(final) * 1e6:,.0f} a million items")

# %%
assert len(final) == len(batch_items) and all(entry["ok"] for entry in final.values())

# %% [markdown]
# ## 9.7 The same code against a real provider
#
# Pointed at a real provider (`LLM_BASE_URL` set), the cells above ran on the first three messages with three
# workers. `run_batch` takes the `target` for two checks before any call: no more workers than
# `target.max_in_flight` (3), and a batch that would not fit in what is left of the quota guard's budget is
# refused with the estimate of calls, tokens and cost (`quota.check_run`). The next cell shows both on a real
# provider: the whole batch refused, then a slice of three.

# %%
from helpers import QuotaExceeded

if target.is_simulator:
    print(
        "The simulator has no quota guard (nothing is capped or counted), so this step is skipped. Against a real "
        "provider, run_batch first refuses the 200-item batch, before any call (200 calls are more than the "
        "session's budget of 100), then classifies three messages with three workers."
    )
else:
    provider_checkpoint = checkpoint.with_name("provider.jsonl")
    try:
        run_batch(call, items, checkpoint=provider_checkpoint, workers=3, target=target, max_tokens=20)
    except QuotaExceeded as refusal:
        print(refusal)
    three = run_batch(call, items[:3], checkpoint=provider_checkpoint, workers=3, target=target, max_tokens=20)
    print(three.describe())
    for item, label in zip(items[:3], three.answers, strict=True):
        print(f"{item['label']:>9} expected, {label!s:9} answered: {item['text'][:50]}")
    print(target.quota)

# %% [markdown]
# ## Summary
#
# - A batch that survives writes each result the moment it arrives: one complete line per item, keyed by id. Thirty
#   lines do it (a bounded pool, a write and a flush per result, a first look at the checkpoint), and a `kill -9`
#   then costs at most the calls in flight.
# - `run_batch` is that loop with what a real batch needs on top: retries, a throttle, `fsync`, repair of a cut
#   line, a lock against a second writer, a digest that keeps an old answer from a changed question, progress, a
#   report, and the quota guard's checks.
# - Resume by reading the checkpoint first: call only the items without a result. A half-written last line is
#   reported, removed and its item done again; a complete batch makes no call at all (idempotent).
# - Failures are results: the final error is saved with its attempts, and `retry_failed=True` retries them later.
# - Bounded concurrency (a thread pool), retries with backoff and a throttle are the pieces of lessons 02-07;
#   the checkpoint keeps answers in input order whichever run and whichever thread produced them.
# - Against a real provider the same code keeps three calls in flight, and the quota guard refuses a batch that
#   would not fit before the first call.
#
# ## Exercises
#
# Solutions are in `09_capstone_batch_solutions.ipynb`.
#
# **Exercise 9.1.** Write `failed_ids(path)`: the ids whose **last** line in a checkpoint is a failure. (An item
# that failed and then succeeded on a retry is not failed.) `read_checkpoint(path)` gives the lines in order.

# %%
import json

if target.is_simulator:
    target.simulator.configure(fail_rate=0)  # the server's trouble is over for the exercises
practice = checkpoint.with_name("practice.jsonl")
practice.write_text(
    "".join(
        json.dumps(line) + "\n"
        for line in [
            {"id": "a", "ok": True, "answer": "billing"},
            {"id": "b", "ok": False, "error": "HTTP 500"},
            {"id": "c", "ok": False, "error": "HTTP 503"},
            {"id": "b", "ok": True, "answer": "account"},
            {"id": "d", "ok": False, "error": "HTTP 500"},
        ]
    )
)


def failed_ids(path) -> set:
    return set()  # your code here


# %%
check(
    failed_ids(practice) == {"c", "d"},
    "b failed first and then succeeded: only its last line counts.",
    "keep the last line of each id (a dict from id to line, filled in order), then take those that are not ok.",
)

# %% [markdown]
# **Exercise 9.2.** Six messages with `rpm=240` (four requests a second, evenly spaced) and three workers. Predict
# the wall time in seconds and store it in `predicted_wall`; the check then runs it.

# %%
predicted_wall = None  # your prediction

# %%
paced_checkpoint = checkpoint.with_name("paced.jsonl")
paced_checkpoint.unlink(missing_ok=True)  # a fresh checkpoint every time the check runs
paced = run_batch(call, items[:6], checkpoint=paced_checkpoint, workers=3, target=target, rpm=240, progress=False)
check(
    predicted_wall is not None and abs(predicted_wall - paced.wall) < 0.3 * paced.wall,
    "the first call starts at once, then one every 0.25 s: about 5 × 0.25 s, plus the last call.",
    "the throttle, not the workers, sets the pace here: when does the sixth call start?",
)

# %% [markdown]
# **Exercise 9.3.** Process `items[:9]` into a new checkpoint in slices: call `run_batch` with `limit=3` again and
# again until nothing remains. Store the number of runs it took in `runs`, and the number of items answered in
# each run in `per_run`.

# %%
sliced = checkpoint.with_name("sliced.jsonl")
sliced.unlink(missing_ok=True)  # a fresh checkpoint every time this cell runs
runs, per_run = 0, []  # your code here

# %%
check(
    runs == 3 and per_run == [3, 3, 3] and len(read_checkpoint(sliced)) == 9,
    "three runs of three: each run skips what the checkpoint holds and takes the next three.",
    "loop: report = run_batch(call, items[:9], checkpoint=sliced, limit=3, ...) until report.remaining == 0.",
)
