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
# # 09 · Capstone: a batch that survives: solutions
#
# Worked solutions to the exercises of `09_capstone_batch.ipynb`. The first cell rebuilds the lesson's setup: the
# same simulator settings, messages and `call`, and a temporary folder for the checkpoints.

# %%
import json
import tempfile
from pathlib import Path

from helpers import connect, run_batch
from helpers.batch import DATASET, UsageAnswer, classify, load_items, read_checkpoint
from helpers.exercises import check

target = connect(seed=8, profile="fixed", latency=0.06)
items = load_items(DATASET)
client = target.client(connections=8)


def call(text: str) -> UsageAnswer:
    return classify(client, target.model, text)


checkpoint = Path(tempfile.mkdtemp(prefix="lesson08-")) / "labels.jsonl"

# %% [markdown]
# **Exercise 9.1.** Read the lines in order into a dictionary keyed by id: a later line for the same id replaces
# the earlier one, so what remains is each item's last result.

# %%
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
    last = {}
    for entry in read_checkpoint(path):
        last[entry["id"]] = entry
    return {key for key, entry in last.items() if not entry["ok"]}


check(
    failed_ids(practice) == {"c", "d"},
    "b failed first and then succeeded: only its last line counts.",
    "keep the last line of each id (a dict from id to line, filled in order), then take those that are not ok.",
)

# %% [markdown]
# **Exercise 9.2.** Three workers could start three calls at once, but the throttle lets one start every
# 60 / 240 = 0.25 s. The sixth call starts after five gaps, at 1.25 s, and the run ends when it returns: the
# calls themselves add only their latency.

# %%
predicted_wall = 5 * 60 / 240
paced_checkpoint = checkpoint.with_name("paced.jsonl")
paced_checkpoint.unlink(missing_ok=True)  # a fresh checkpoint every time the check runs
paced = run_batch(call, items[:6], checkpoint=paced_checkpoint, workers=3, target=target, rpm=240, progress=False)
check(
    predicted_wall is not None and abs(predicted_wall - paced.wall) < 0.3 * paced.wall,
    "the first call starts at once, then one every 0.25 s: about 5 × 0.25 s, plus the last call.",
    "the throttle, not the workers, sets the pace here: when does the sixth call start?",
)

# %% [markdown]
# **Exercise 9.3.** Each run reads the checkpoint, skips what it holds, and takes the next three items still to
# do; `remaining` says how many are left.

# %%
sliced = checkpoint.with_name("sliced.jsonl")
sliced.unlink(missing_ok=True)  # a fresh checkpoint every time this cell runs
runs, per_run = 0, []
while True:
    report = run_batch(call, items[:9], checkpoint=sliced, workers=3, target=target, limit=3, progress=False)
    runs += 1
    per_run.append(report.answered)
    if report.remaining == 0:
        break
check(
    runs == 3 and per_run == [3, 3, 3] and len(read_checkpoint(sliced)) == 9,
    "three runs of three: each run skips what the checkpoint holds and takes the next three.",
    "loop: report = run_batch(call, items[:9], checkpoint=sliced, limit=3, ...) until report.remaining == 0.",
)
