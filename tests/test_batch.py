"""The batch pipeline (helpers.batch) against the real simulator: input order, the checkpoint (resume, a cut last
line, idempotent reruns, failures kept), bad input, the real-provider guards, and a pipeline killed with
``kill -9`` three times that still ends with every item exactly once and no item called after it was saved.

Calls are short (``latency`` 0.02-0.05 s, ``profile="fixed"`` unless the test needs a spread) and retries wait
0.01 s, so the file runs in well under a minute on a loaded 2-core machine.
"""

from __future__ import annotations

import _thread
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import simulator
from helpers.batch import (
    DATASET,
    LABELS,
    BatchReport,
    classify,
    load_items,
    read_checkpoint,
    run_batch,
)
from helpers.calls import ask
from helpers.quota import QuotaExceeded, QuotaGuard
from helpers.runs import RunReport
from helpers.settings import Target
from helpers.timeline import draw

FAST = {"attempts": 4, "base": 0.01, "progress": False}


@pytest.fixture
def http(sim: simulator.Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.api_url, timeout=10.0, limits=httpx.Limits(max_keepalive_connections=16)) as c:
        yield c


@pytest.fixture
def call(http: httpx.Client) -> Callable[[str], str]:
    def one(text: str) -> str:
        return ask(http, "sim-1", text)

    return one


def items_of(n: int, prefix: str = "item") -> list[dict[str, Any]]:
    """``n`` items whose text is ``Reply: <id>``: the simulator answers each with its own id."""
    return [{"id": f"{prefix}-{i:03d}", "text": f"Reply: {prefix}-{i:03d}"} for i in range(n)]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def requests(sim: simulator.Simulator) -> int:
    return int(sim.stats(records=False)["requests"])


# --- order, resume, idempotence -----------------------------------------------------------------------------


def test_answers_come_back_in_input_order(sim: simulator.Simulator, call: Any, tmp_path: Path) -> None:
    sim.configure(latency=0.05, profile="uniform", spread=0.9)  # calls finish in a shuffled order
    items = items_of(40)
    report = run_batch(call, items, checkpoint=tmp_path / "c.jsonl", workers=8, **FAST)
    assert report.answers == [item["id"] for item in items]
    assert report.delivery_order != sorted(report.delivery_order)  # they did finish out of order
    assert [r.index for r in report.records] == list(range(40))
    assert [r.prompt for r in report.records] == [item["text"] for item in items]
    assert sorted(e["id"] for e in lines(tmp_path / "c.jsonl")) == [item["id"] for item in items]
    assert (report.total, report.answered, report.failed, report.skipped, report.remaining) == (40, 40, 0, 0, 0)
    assert report.attempts == 40 and report.n == 40 and report.peak_in_flight <= 8


def test_a_rerun_calls_only_the_items_without_a_result(sim: simulator.Simulator, call: Any, tmp_path: Path) -> None:
    items, path = items_of(20), tmp_path / "c.jsonl"
    first = run_batch(call, items, checkpoint=path, workers=4, limit=8, **FAST)
    assert (first.answered, first.remaining, requests(sim)) == (8, 12, 8)
    assert first.answers[:8] == [item["id"] for item in items[:8]] and first.answers[8:] == [None] * 12
    sim.reset()
    second = run_batch(call, items, checkpoint=path, workers=4, **FAST)
    assert (second.skipped, second.answered, second.remaining) == (8, 12, 0)
    asked = {r["prompt"] for r in sim.stats()["records"]}
    assert asked == {item["text"] for item in items[8:]} and requests(sim) == 12
    assert second.answers == [item["id"] for item in items]  # the saved answers and the new ones, in order
    assert sorted(Counter(e["id"] for e in lines(path)).values()) == [1] * 20


def test_a_finished_batch_makes_no_call(sim: simulator.Simulator, call: Any, tmp_path: Path) -> None:
    items, path = items_of(15), tmp_path / "c.jsonl"
    run_batch(call, items, checkpoint=path, workers=4, **FAST)
    before = path.read_bytes()
    sim.reset()
    again = run_batch(call, items, checkpoint=path, workers=4, **FAST)
    assert requests(sim) == 0 and again.n == 0 and again.attempts == 0
    assert (again.skipped, again.answered, again.failed) == (15, 0, 0)
    assert again.answers == [item["id"] for item in items]
    assert path.read_bytes() == before  # not a byte written


def test_a_cut_last_line_is_reported_removed_and_its_item_redone(
    sim: simulator.Simulator, call: Any, tmp_path: Path
) -> None:
    items, path = items_of(10), tmp_path / "c.jsonl"
    run_batch(call, items, checkpoint=path, workers=3, **FAST)
    data = path.read_bytes()
    last = json.loads(data.splitlines()[-1])
    path.write_bytes(data[: len(data) - 25])  # what a crash in the middle of writing the last line leaves
    assert len(read_checkpoint(path)) == 9
    sim.reset()
    again = run_batch(call, items, checkpoint=path, workers=3, **FAST)
    assert again.repaired is not None and "cut short" in again.repaired and "done again" in again.repaired
    assert (again.skipped, again.answered, requests(sim)) == (9, 1, 1)
    assert [r["prompt"] for r in sim.stats()["records"]] == [f"Reply: {last['id']}"]
    assert sorted(e["id"] for e in lines(path)) == [item["id"] for item in items]  # every line whole again
    assert again.answers == [item["id"] for item in items]


def test_a_last_line_that_is_not_json_is_redone_too(sim: simulator.Simulator, call: Any, tmp_path: Path) -> None:
    items, path = items_of(4), tmp_path / "c.jsonl"
    run_batch(call, items, checkpoint=path, workers=2, limit=3, **FAST)
    with path.open("ab") as file:
        file.write(b'{"id": "item-003", "ok": tr\x00\x00\n')
    again = run_batch(call, items, checkpoint=path, workers=2, **FAST)
    assert again.repaired is not None and (again.skipped, again.answered) == (3, 1)
    assert len(lines(path)) == 4


def test_a_bad_line_before_the_last_is_an_error_naming_it(call: Any, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "item-000", "ok": true, "answer": "x"}\nnot json\n{"id": "item-001", "ok": true}\n')
    with pytest.raises(ValueError, match="line 2"):
        run_batch(call, items_of(3), checkpoint=path, **FAST)


# --- failures -----------------------------------------------------------------------------------------------


def test_failures_are_recorded_and_retried_only_when_asked(sim: simulator.Simulator, call: Any, tmp_path: Path) -> None:
    items, path = items_of(12), tmp_path / "c.jsonl"
    sim.configure(fault_on={"item-004": "500", "item-009": "503"})
    report = run_batch(call, items, checkpoint=path, workers=4, **{**FAST, "attempts": 3})
    assert (report.answered, report.failed) == (10, 2)
    assert report.answers[4] is None and report.answers[9] is None and report.answers[5] == "item-005"
    failed = {e["id"]: e for e in lines(path) if not e["ok"]}
    assert set(failed) == {"item-004", "item-009"}
    assert "500" in failed["item-004"]["error"] and failed["item-004"]["attempts"] == 3
    assert report.attempts == 10 + 2 * 3
    assert {r.index for r in report.failures} == {4, 9}

    sim.configure(fault_on={})
    sim.reset()
    rerun = run_batch(call, items, checkpoint=path, workers=4, **FAST)
    assert requests(sim) == 0 and rerun.skipped == 12  # a failure is a result: not called again by default
    retried = run_batch(call, items, checkpoint=path, workers=4, retry_failed=True, **FAST)
    assert requests(sim) == 2 and (retried.answered, retried.skipped, retried.redone) == (2, 10, 2)
    assert retried.answers == [item["id"] for item in items]
    assert [e["ok"] for e in read_checkpoint(path) if e["id"] == "item-004"] == [False, True]  # the last one counts


def test_transient_faults_are_retried_and_counted(sim: simulator.Simulator, call: Any, tmp_path: Path) -> None:
    sim.configure(fail_rate=0.3, fail_kinds=["500", "503"])
    items = items_of(30)
    report = run_batch(call, items, checkpoint=tmp_path / "c.jsonl", workers=6, rng=1, **{**FAST, "attempts": 8})
    stats = sim.stats(records=False)
    assert report.failed == 0 and report.answers == [item["id"] for item in items]
    assert report.attempts == stats["requests"] > 30  # every retry is one more attempt, one more request
    assert any(r.attempts > 1 and r.waited > 0 for r in report.records)


def test_a_call_that_raises_is_a_failure_with_its_reason(tmp_path: Path) -> None:
    def call(text: str) -> str:
        if text.endswith("2"):
            raise KeyError("no such thing")
        return text.upper()

    items = [{"id": i, "text": f"t{i}"} for i in range(4)]
    report = run_batch(call, items, checkpoint=tmp_path / "c.jsonl", **FAST)
    assert report.answers == ["T0", "T1", None, "T3"] and report.failed == 1
    entry = next(e for e in lines(tmp_path / "c.jsonl") if e["id"] == 2)
    assert entry["ok"] is False and "KeyError" in entry["error"] and entry["attempts"] == 1  # not retryable


# --- tokens, cost, rpm, progress, cancel, drawing ---------------------------------------------------------------


def test_report_counts_tokens_and_prices_them(sim: simulator.Simulator, http: httpx.Client, tmp_path: Path) -> None:
    items = load_items()[:12]
    report = run_batch(
        lambda text: classify(http, "sim-1", text), items, checkpoint=tmp_path / "c.jsonl", workers=4, **FAST
    )
    assert all(answer in LABELS for answer in report.answers)
    usage = [r for r in sim.stats()["records"]]
    assert report.input_tokens == sum(r["prompt_tokens"] for r in usage) > 0
    assert report.tokens == report.input_tokens + report.output_tokens
    assert report.cost is None  # no target: no model, no price
    price = report.cost_at("gpt-4o-mini")
    assert price is not None and price == pytest.approx((report.input_tokens * 0.15 + report.output_tokens * 0.6) / 1e6)
    assert {"items", "answered", "failed", "skipped (in checkpoint)", "attempts", "tokens", "cost"} <= set(
        report.counts()
    )
    assert "12 answered" in report.describe()
    saved = lines(tmp_path / "c.jsonl")[0]
    assert {"id", "ok", "answer", "attempts", "tokens", "input_tokens", "output_tokens", "written"} <= set(saved)


def test_dataset_has_200_labelled_messages() -> None:
    items = load_items(DATASET)
    assert len(items) == 200 and len({i["id"] for i in items}) == 200
    assert Counter(i["label"] for i in items) == dict.fromkeys(LABELS, 50)
    assert all(0 < len(i["text"]) < 120 for i in items)


def test_rpm_paces_every_attempt(sim: simulator.Simulator, call: Any, tmp_path: Path) -> None:
    sim.configure(latency=0.02)
    began = time.monotonic()
    report = run_batch(call, items_of(7), checkpoint=tmp_path / "c.jsonl", workers=7, rpm=1200, **FAST)
    assert time.monotonic() - began >= 6 * 0.05 * 0.9  # 20 a second: 6 gaps of 0.05 s
    arrived = sorted(r["received"] for r in sim.stats()["records"])
    assert report.answered == 7 and arrived[-1] - arrived[0] >= 6 * 0.05 * 0.9  # the server saw them spaced
    with pytest.raises(ValueError, match="rpm"):
        run_batch(call, items_of(1), checkpoint=tmp_path / "d.jsonl", rpm=0, **FAST)


def test_progress_bar_counts_the_checkpoint_too(call: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items, path = items_of(6), tmp_path / "c.jsonl"
    run_batch(call, items, checkpoint=path, workers=2, limit=2, **FAST)
    run_batch(call, items, checkpoint=path, workers=2, attempts=2, base=0.01, progress=True)
    err = capsys.readouterr().err
    assert "6/6" in err and "2/6" in err  # started from what the checkpoint had


def test_cancel_stops_starting_calls_and_keeps_what_finished(
    sim: simulator.Simulator, call: Any, tmp_path: Path
) -> None:
    sim.configure(latency=0.1)
    cancel = threading.Event()
    timer = threading.Timer(0.25, cancel.set)
    timer.start()
    items, path = items_of(40), tmp_path / "c.jsonl"
    report = run_batch(call, items, checkpoint=path, workers=2, cancel=cancel, **FAST)
    timer.join()
    assert report.cancelled and 0 < report.answered < 40 and report.remaining == 40 - report.answered
    assert len(lines(path)) == report.answered  # what finished is saved, nothing else
    rest = run_batch(call, items, checkpoint=path, workers=8, **FAST)
    assert rest.skipped == report.answered and rest.remaining == 0


def test_an_interrupted_run_keeps_what_finished(sim: simulator.Simulator, call: Any, tmp_path: Path) -> None:
    """Ctrl+C (Jupyter's stop button) in the middle of a batch: the results that arrived are in the checkpoint,
    and the next run does the rest, each item once."""
    sim.configure(latency=0.05)
    items, path = items_of(40), tmp_path / "c.jsonl"
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt) as stopped:
        run_batch(call, items, checkpoint=path, workers=2, **FAST)
    timer.join()
    partial = getattr(stopped.value, "report", None)
    if partial is not None:  # the runner hands over what it had: as a BatchReport, in the items' terms
        assert isinstance(partial, BatchReport) and partial.total == 40
        assert all(r.prompt == items[r.index]["text"] for r in partial.records)
    saved = len(read_checkpoint(path))
    assert 0 < saved < 40
    rest = run_batch(call, items, checkpoint=path, workers=8, **FAST)
    assert rest.skipped == saved and rest.answers == [item["id"] for item in items]
    assert sorted(Counter(e["id"] for e in lines(path)).values()) == [1] * 40


def test_draw_accepts_the_report(call: Any, tmp_path: Path) -> None:
    report = run_batch(call, items_of(5), checkpoint=tmp_path / "c.jsonl", workers=2, **FAST)
    assert isinstance(report, RunReport) and isinstance(report, BatchReport)
    assert report.label == "batch (5 items on 2 workers)"
    figure = draw(report)
    assert figure.axes and "batch (5 items on 2 workers)" in figure.axes[0].get_title(loc="left")
    one = run_batch(call, items_of(6), checkpoint=tmp_path / "c.jsonl", workers=2, **FAST)
    assert one.label == "batch (1 item on 1 worker)"  # what this run did, not the pool it had
    assert "5 items" in repr(report)


# --- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "options", "message"),
    [
        (items_of(2), {"workers": 0}, "workers must be at least 1"),
        (items_of(2), {"workers": 2.5}, "workers must be a whole number"),
        ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], {}, "duplicate id 'a'"),
        ([{"id": 1, "text": "x"}, {"id": "1", "text": "y"}], {}, "duplicate id"),
        ([{"id": "a"}], {}, r"items\[0\] \(id 'a'\) has no text"),
        ([{"id": "a", "text": "  "}], {}, "non-empty string"),
        ([{"id": "a", "text": 5}], {}, "has text 5"),
        ([{"text": "x"}], {}, "has no id"),
        ([{"id": None, "text": "x"}], {}, "id None"),
        (["just a string"], {}, "must be a dictionary"),
        ("Reply: x", {}, "must be a list"),
        (items_of(2), {"limit": -1}, "limit must be"),
        (items_of(2), {"attempts": 0}, "attempts must be"),
    ],
)
def test_bad_input_is_a_clear_value_error(
    items: Any, options: dict[str, Any], message: str, sim: simulator.Simulator, call: Any, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        run_batch(call, items, checkpoint=tmp_path / "c.jsonl", **{**FAST, **options})
    assert requests(sim) == 0


def test_a_checkpoint_that_cannot_be_written_is_refused(sim: simulator.Simulator, call: Any, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    for path, message in [
        (tmp_path / "a-file" / "c.jsonl", "is a file, not a folder"),
        (tmp_path / "no-such-folder" / "c.jsonl", "does not exist"),
        (tmp_path, "is a folder"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_batch(call, items_of(2), checkpoint=path, **FAST)
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="cannot write"):
            run_batch(call, items_of(2), checkpoint=locked / "c.jsonl", **FAST)
    with pytest.raises(ValueError, match="plain function"):

        async def acall(text: str) -> str:
            return text

        run_batch(acall, items_of(2), checkpoint=tmp_path / "c.jsonl", **FAST)
    assert requests(sim) == 0


# --- a real provider: the quota guard -------------------------------------------------------------------------------


def provider(sim: simulator.Simulator, **guard: Any) -> Target:
    """The simulator seen as a real provider: no simulator handle, so the target has a quota guard."""
    return Target(base_url=sim.api_url, model="sim-1", quota=QuotaGuard(env={}, **guard))


def test_a_real_provider_keeps_its_cap_and_budget(sim: simulator.Simulator, tmp_path: Path) -> None:
    target = provider(sim, max_calls=5)
    assert target.max_in_flight == 3
    with target.client(connections=3) as client:

        def call(text: str) -> str:
            return ask(client, target.model, text)

        with pytest.raises(ValueError, match="at most 3"):
            run_batch(call, items_of(3), checkpoint=tmp_path / "c.jsonl", workers=4, target=target, **FAST)
        with pytest.raises(QuotaExceeded, match="before any call"):
            run_batch(call, items_of(10), checkpoint=tmp_path / "c.jsonl", workers=3, target=target, **FAST)
        assert requests(sim) == 0 and target.quota is not None and target.quota.calls == 0
        report = run_batch(call, items_of(10)[:3], checkpoint=tmp_path / "c.jsonl", workers=3, target=target, **FAST)
        assert report.answered == 3 and target.quota.calls == 3 and target.quota.peak_in_flight <= 3
        # What is in the checkpoint is not asked again, so the rest of the batch is what the budget must hold.
        with pytest.raises(QuotaExceeded, match="7 calls"):
            run_batch(call, items_of(10), checkpoint=tmp_path / "c.jsonl", workers=3, target=target, **FAST)
        assert requests(sim) == 3


# --- kill -9, three times -----------------------------------------------------------------------------------------


def test_killed_three_times_every_item_once_and_nothing_called_after_it_was_saved(
    sim: simulator.Simulator, tmp_path: Path
) -> None:
    """The pipeline runs in a process of its own (``python -m helpers.batch``) on 500 items and is killed with
    SIGKILL at a random point, three times, then finishes. The simulator records every request it received,
    with the time and the prompt. After each kill the checkpoint's complete lines are the items that kill could
    not take away; no request for any of them may arrive after that kill. At the end every item has exactly one
    line. A kill between a call and its line may cost that call again: that is allowed, and counted."""
    sim.configure(latency=0.03, fail_rate=0.05, fail_kinds=["500", "503"])
    items = [{"id": f"k{i:03d}", "text": f"Item k{i:03d}: please classify this message."} for i in range(500)]
    source, path = tmp_path / "items.jsonl", tmp_path / "checkpoint.jsonl"
    source.write_text("".join(json.dumps(item) + "\n" for item in items))
    env = {k: v for k, v in os.environ.items() if k not in ("LLM_API_KEY", "LLM_MAX_CALLS", "LLM_MAX_TOKENS")}
    env |= {"LLM_BASE_URL": sim.api_url, "LLM_MODEL": "sim-1"}
    command = [sys.executable, "-m", "helpers.batch", str(source), str(path), "--workers", "8", "--base", "0.01"]
    command.append("--no-progress")
    rng = random.Random(20260808)
    saved_at_kill: list[tuple[float, set[str]]] = []  # (when, ids with a complete line by then)
    errors: list[bytes] = []
    torn = 0
    for round_ in range(3):
        before = len(read_checkpoint(path))
        goal = before + rng.randint(40, 110)  # kill somewhere after this many more results
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while len(read_checkpoint(path)) < goal and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.003)
        time.sleep(rng.uniform(0, 0.03))  # mid-flight: some calls started, some not
        process.send_signal(signal.SIGKILL) if hasattr(signal, "SIGKILL") else process.kill()
        _, err = process.communicate(timeout=10)
        assert process.returncode != 0, f"the run finished before it was killed ({err.decode()[-300:]})"
        errors.append(err)
        if round_ == 1:  # as if the kill had landed in the middle of writing a line
            data = path.read_bytes()
            path.write_bytes(data[:-7])
            torn += 1
        saved_at_kill.append((time.time(), {str(e["id"]) for e in read_checkpoint(path)}))
    assert 0 < len(saved_at_kill[0][1]) < len(saved_at_kill[-1][1]) < 500

    final = subprocess.run(command, env=env, capture_output=True, timeout=60)
    assert final.returncode == 0, final.stderr.decode()[-500:]
    assert b"cut short" in errors[2]  # the run after the torn line said so, and did that item again

    written = lines(path)  # every line whole: json.loads of each
    assert Counter(str(e["id"]) for e in written) == Counter(item["id"] for item in items)  # each exactly once
    assert all(e["ok"] for e in written)

    by_prompt = {item["text"][:80]: item["id"] for item in items}
    records = sim.stats()["records"]
    # A request cut off by a kill before its body arrived has no prompt; the server never answered it.
    unread = [r for r in records if r["prompt"] is None]
    assert len(unread) <= 3 * 8 and all(r["status"] != 200 for r in unread)
    records = [r for r in records if r["prompt"] is not None]
    assert len(records) >= 500 and all(r["prompt"] in by_prompt for r in records)
    for when, saved in saved_at_kill:
        late = [r for r in records if r["received"] > when and by_prompt[r["prompt"]] in saved]
        assert not late, f"{len(late)} requests for items already in the checkpoint, e.g. {late[0]}"
    answered = Counter(by_prompt[r["prompt"]] for r in records if r["status"] == 200)
    assert set(answered) == {item["id"] for item in items}
    again = sum(count - 1 for count in answered.values())
    assert again <= 3 * 40 + torn, f"{again} answers were thrown away by the kills"  # at most what was in flight
