"""The checkpoint of helpers.batch under what can go wrong around it: a second writer (real processes), a file
that is not a checkpoint, inputs that changed since their answers were saved, and a disk that refuses a write.

Every case ends the same way: nothing saved is lost or silently reused. Calls go to the real simulator; the
runs that must be separate processes are ``python -m helpers.batch`` (or a small ``python -c``) in a subprocess.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
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
from helpers.batch import read_checkpoint, run_batch
from helpers.calls import ask

FAST = {"attempts": 3, "base": 0.01, "progress": False}


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
    """Every line of the file, each of which must be whole JSON."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def requests(sim: simulator.Simulator) -> int:
    return int(sim.stats(records=False)["requests"])


def cli_env(sim: simulator.Simulator) -> dict[str, str]:
    """The environment of a ``python -m helpers.batch`` that calls the shared simulator."""
    env = {k: v for k, v in os.environ.items() if k not in ("LLM_API_KEY", "LLM_MAX_CALLS", "LLM_MAX_TOKENS")}
    return env | {"LLM_BASE_URL": sim.api_url, "LLM_MODEL": "sim-1"}


def cli(source: Path, checkpoint: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "helpers.batch", str(source), str(checkpoint), "--no-progress", *options]


def write_items(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


# --- 8. one writer at a time -------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_first_which_keeps_every_result(
    sim: simulator.Simulator, tmp_path: Path
) -> None:
    """The issue's case: a second ``--limit 0`` started while a first run writes to a long checkpoint. It must
    refuse, naming the first process, and the first run must end with every one of its results in the file."""
    sim.configure(latency=0.05)
    items = items_of(60)
    source, path = write_items(tmp_path / "items.jsonl", items), tmp_path / "labels.jsonl"
    old = [{"id": f"old-{n:06d}", "ok": True, "answer": "billing", "attempts": 1} for n in range(40_000)]
    path.write_text("".join(json.dumps(entry) + "\n" for entry in old))  # a long checkpoint: slow to read
    prefilled = path.stat().st_size
    env = cli_env(sim)
    first = subprocess.Popen(
        cli(source, path, "--workers", "2"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while path.stat().st_size == prefilled and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # until the first run has saved a result: it holds the checkpoint now
        assert first.poll() is None, "the first run ended before the second started"
        second = subprocess.run(cli(source, path, "--limit", "0"), env=env, capture_output=True, timeout=60)
    finally:
        out, err = first.communicate(timeout=60)
    message = second.stderr.decode()
    assert second.returncode == 2, f"the second run was not refused: {(second.stdout + second.stderr).decode()}"
    assert "in use by another run" in message and f"pid {first.pid}" in message, message
    assert first.returncode == 0, err.decode()[-500:]
    assert "0 not done yet" in out.decode()
    saved = Counter(entry["id"] for entry in lines(path))  # every line whole
    assert saved == Counter([entry["id"] for entry in old] + [item["id"] for item in items])  # all kept, each once
    assert requests(sim) == 60
    assert not Path(f"{path}.lock").exists()  # the holder's note is gone with it


def test_two_runs_started_at_once_call_each_item_once(sim: simulator.Simulator, tmp_path: Path) -> None:
    sim.configure(latency=0.1)
    items = items_of(40)
    source, path = write_items(tmp_path / "items.jsonl", items), tmp_path / "labels.jsonl"
    command = cli(source, path, "--workers", "2")
    env = cli_env(sim)
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for run in runs:  # each either did the batch, or was refused with the reason
        out, err = (text.decode() for text in run.communicate(timeout=60))
        assert run.returncode == 0 or (run.returncode == 2 and "in use by another run" in err), (out, err[-500:])
    assert Counter(entry["id"] for entry in lines(path)) == Counter(item["id"] for item in items)  # once each
    assert requests(sim) == 40  # no item called twice


def test_a_second_run_in_the_same_process_is_refused_and_touches_nothing(
    sim: simulator.Simulator, call: Any, tmp_path: Path
) -> None:
    """A run on a thread holds the checkpoint (its call waits); a second run_batch on it is refused before it
    reads, repairs or calls anything; read_checkpoint needs no lock; once the first ends, the next run may start."""
    path = tmp_path / "labels.jsonl"
    run_batch(call, items_of(3), checkpoint=path, **FAST)
    with path.open("ab") as file:
        file.write(b'{"id":"item-003","ok":tr')  # a cut last line: a run that got the checkpoint would repair it
    before = path.read_bytes()
    started, release = threading.Event(), threading.Event()

    def slow(text: str) -> str:
        started.set()
        release.wait(10)
        return call(text)

    outcome: list[Any] = []
    holder = threading.Thread(target=lambda: outcome.append(run_batch(slow, items_of(5), checkpoint=path, **FAST)))
    holder.start()
    try:
        assert started.wait(10)
        held = path.read_bytes()  # repaired by the holder, which is now waiting in a call
        assert held == before[: before.rindex(b"\n") + 1]
        sim.reset()
        with pytest.raises(OSError, match=rf"in use by another run \(pid {os.getpid()}\b"):
            run_batch(call, items_of(5), checkpoint=path, **FAST)
        assert path.read_bytes() == held and requests(sim) == 0  # not a byte changed, no call
        assert sorted(entry["id"] for entry in read_checkpoint(path)) == ["item-000", "item-001", "item-002"]
    finally:
        release.set()
        holder.join(20)
    assert outcome and outcome[0].answered == 2  # item-003 (cut) and item-004
    again = run_batch(call, items_of(5), checkpoint=path, **FAST)  # the lock went with the first run
    assert again.skipped == 5 and again.n == 0


def test_a_killed_holder_leaves_the_checkpoint_free(sim: simulator.Simulator, call: Any, tmp_path: Path) -> None:
    sim.configure(latency=0.05)
    items = items_of(100)
    source, path = write_items(tmp_path / "items.jsonl", items), tmp_path / "labels.jsonl"
    holder = subprocess.Popen(
        cli(source, path, "--workers", "2"), env=cli_env(sim), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    while len(read_checkpoint(path)) < 5 and holder.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    holder.send_signal(signal.SIGKILL) if hasattr(signal, "SIGKILL") else holder.kill()
    _, err = holder.communicate(timeout=10)
    assert holder.returncode != 0, f"the run finished before it was killed ({err.decode()[-300:]})"
    saved = len(read_checkpoint(path))
    rest = run_batch(call, items, checkpoint=path, workers=8, **FAST)  # not refused: the kill freed the lock
    assert rest.skipped == saved and rest.remaining == 0
    assert Counter(entry["id"] for entry in lines(path)) == Counter(item["id"] for item in items)
    assert not Path(f"{path}.lock").exists()


# --- 9. only our own files ---------------------------------------------------------------------------------------

NOT_CHECKPOINTS = {
    "settings": b'{"theme":"dark"}\n',
    "settings without a newline": b'{"theme":"dark"}',
    "csv": b"id,text\n1,hello\n",
    "one csv line without a newline": b"id,text",
    "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00",
    "a JSON list": b"[1, 2, 3]\n",
    "ok is not true or false": b'{"id": "a", "ok": "yes"}\n',
    "a result, then something else": b'{"id":"a","ok":true,"answer":"x"}\n{"theme":"dark"}\n',
    "results in UTF-16": '{"id":"a","ok":true,"answer":"x"}\n'.encode("utf-16"),
    "results in UTF-32": '{"id":"a","ok":true,"answer":"x"}\n'.encode("utf-32"),
    "results in UTF-16 without a byte order mark": '{"id":"a","ok":true,"answer":"x"}\n'.encode("utf-16-le"),
}


@pytest.mark.parametrize("content", NOT_CHECKPOINTS.values(), ids=NOT_CHECKPOINTS.keys())
def test_a_file_that_is_not_a_checkpoint_is_refused_untouched(
    content: bytes, sim: simulator.Simulator, call: Any, tmp_path: Path
) -> None:
    path = tmp_path / "notes.json"
    path.write_bytes(content)
    stamp = path.stat().st_mtime_ns
    with pytest.raises(ValueError, match="not a checkpoint|not a result") as refused:
        run_batch(call, items_of(2), checkpoint=path, **FAST)
    assert str(path) in str(refused.value)
    with pytest.raises(ValueError, match="not a checkpoint|not a result"):
        read_checkpoint(path)
    assert path.read_bytes() == content and path.stat().st_mtime_ns == stamp  # byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.json"] and requests(sim) == 0


def test_hand_written_checkpoints_and_empty_or_missing_files_are_taken(
    sim: simulator.Simulator, call: Any, tmp_path: Path
) -> None:
    """Lesson 09's own loop writes lines with no input digest (``json.dumps``, spaces and all): run_batch takes
    that file over, repairs its cut last line, and matches those lines by id. A lone cut line (a kill during the
    first write) is ours too. An empty or a missing file is a new checkpoint."""
    items = items_of(6)
    path = tmp_path / "labels.jsonl"
    mine = [{"id": "item-000", "ok": True, "answer": "item-000"}, {"id": "item-001", "ok": False, "error": "HTTP 500"}]
    mine += [{"id": "item-002", "ok": True, "answer": "item-002", "input_tokens": 9, "output_tokens": 2}]
    path.write_text("".join(json.dumps(line) + "\n" for line in mine) + json.dumps(mine[0])[:-12])
    report = run_batch(call, items, checkpoint=path, retry_failed=True, **FAST)
    assert report.repaired is not None and "cut short" in report.repaired
    assert (report.skipped, report.answered, requests(sim)) == (2, 4, 4)  # item-001 (failed) and three new
    assert report.answers == [item["id"] for item in items]
    assert lines(path)[:3] == mine  # the hand-written lines as they were
    for start in (b"", b'{"id": "item-0', b"\n"):  # empty, a lone cut line, a blank line
        fresh = tmp_path / f"fresh-{len(start)}.jsonl"
        fresh.write_bytes(start)
        assert run_batch(call, items[:2], checkpoint=fresh, **FAST).answered == 2
    assert run_batch(call, items[:2], checkpoint=tmp_path / "missing.jsonl", **FAST).answered == 2


# --- 10. an answer belongs to its input --------------------------------------------------------------------------


def test_changed_texts_are_refused_naming_the_ids_or_redone_when_asked(
    sim: simulator.Simulator, call: Any, tmp_path: Path
) -> None:
    path = tmp_path / "labels.jsonl"
    old = [{"id": f"i{n}", "text": f"Reply: old-{n}"} for n in range(5)]
    new = [{"id": f"i{n}", "text": f"Reply: new-{n}" if n < 3 else f"Reply: old-{n}"} for n in range(5)]
    run_batch(call, old, checkpoint=path, **FAST)
    before = path.read_bytes()
    sim.reset()
    with pytest.raises(ValueError, match=r"'i0', 'i1', 'i2'.*redo_changed=True") as refused:
        run_batch(call, new, checkpoint=path, **FAST)
    assert "3 items" in str(refused.value) and "'i3'" not in str(refused.value)
    assert requests(sim) == 0 and path.read_bytes() == before  # no call, not a byte written

    redo = run_batch(call, new, checkpoint=path, redo_changed=True, **FAST)
    assert requests(sim) == 3 and (redo.answered, redo.skipped, redo.redone) == (3, 2, 3)
    assert redo.answers == ["new-0", "new-1", "new-2", "old-3", "old-4"]
    assert len(lines(path)) == 8  # the old lines stay; the last line of an id counts
    sim.reset()
    again = run_batch(call, new, checkpoint=path, **FAST)
    assert requests(sim) == 0 and again.answers == redo.answers
    with pytest.raises(ValueError, match="'i0', 'i1', 'i2'"):  # and the old texts are now the changed ones
        run_batch(call, old, checkpoint=path, **FAST)


def test_ids_1_and_string_1_are_different_items(sim: simulator.Simulator, call: Any, tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    run_batch(call, [{"id": 1, "text": "Reply: one"}], checkpoint=path, **FAST)
    sim.reset()
    other = run_batch(call, [{"id": "1", "text": "Reply: one"}], checkpoint=path, **FAST)  # same text, other id
    assert (other.skipped, other.answered, requests(sim)) == (0, 1, 1)
    assert [entry["id"] for entry in lines(path)] == [1, "1"]
    sim.reset()
    both = run_batch(call, [{"id": 1, "text": "Reply: one"}], checkpoint=path, **FAST)
    assert both.skipped == 1 and requests(sim) == 0
    with pytest.raises(ValueError, match="duplicate id.*differ only in type"):  # in one list: surely a mistake
        run_batch(call, [{"id": 1, "text": "Reply: a"}, {"id": "1", "text": "Reply: b"}], checkpoint=path, **FAST)


# --- 11. a disk that refuses a write -----------------------------------------------------------------------------

FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of a kill
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from helpers.batch import main
raise SystemExit(main(sys.argv[2:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_write_the_os_refuses_stops_the_run_cleanly_and_the_next_run_finishes(
    sim: simulator.Simulator, tmp_path: Path
) -> None:
    """A real refusal from the operating system: the run's process may not make a file larger than a limit
    (``RLIMIT_FSIZE``), which the checkpoint reaches a dozen lines in, in the middle of a line."""
    sim.configure(latency=0.02)
    items = items_of(60)
    source, path = write_items(tmp_path / "items.jsonl", items), tmp_path / "labels.jsonl"
    env = cli_env(sim)
    ten = subprocess.run(cli(source, path, "--limit", "10"), env=env, capture_output=True, timeout=60)
    assert ten.returncode == 1 and len(lines(path)) == 10  # 1: not done yet
    limit = path.stat().st_size + 2000
    sim.reset()
    full = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(limit), *cli(source, path, "--workers", "4")[3:]],
        env=env,
        capture_output=True,
        timeout=60,
    )
    message = full.stderr.decode()
    assert full.returncode == 2 and "Traceback" not in message, message[-1500:]
    saved = lines(path)  # every line whole: the cut one was taken back
    assert path.read_bytes().endswith(b"\n") and path.stat().st_size <= limit
    assert 10 < len(saved) < 60 and len({entry["id"] for entry in saved}) == len(saved)
    assert str(path) in message and "File too large" in message
    assert f"{len(saved)} of 60 items have a result" in message and "run it again" in message, message
    assert requests(sim) < 50  # it stopped at the refused write, and did not go on calling the rest
    sim.reset()
    rest = subprocess.run(cli(source, path), env=env, capture_output=True, timeout=60)
    assert rest.returncode == 0, rest.stderr.decode()[-500:]
    assert requests(sim) == 60 - len(saved) and b"cut short" not in rest.stderr
    assert Counter(entry["id"] for entry in lines(path)) == Counter(item["id"] for item in items)


def test_a_full_disk_is_a_clear_error_and_leaves_no_cut_line(
    sim: simulator.Simulator, call: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC in the middle of a line (as a full disk gives it: part of the line written, then the error)."""
    items, path = items_of(60), tmp_path / "labels.jsonl"
    run_batch(call, items, checkpoint=path, limit=5, **FAST)
    inode, room = path.stat().st_ino, 900  # about six more lines fit
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        nonlocal room
        if os.fstat(fd).st_ino != inode:
            return real_write(fd, data)
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real_write(fd, bytes(data[:room]))
        room -= written
        return written

    monkeypatch.setattr(os, "write", write)
    sim.reset()
    with pytest.raises(OSError, match="No space left on device") as full:
        run_batch(call, items, checkpoint=path, workers=3, **FAST)
    stopped = time.time()
    monkeypatch.undo()
    saved = lines(path)  # every line whole
    message = str(full.value)
    assert full.value.errno == errno.ENOSPC and str(path) in message
    assert f"{len(saved)} of 60 items have a result" in message and "run it again" in message, message
    assert 5 < len(saved) < 60 and requests(sim) < 50  # it stopped at the refused write
    calls = sim.stats()["records"]  # and it left no call running behind it: each had ended before it returned
    assert all(record["received"] < stopped and record["status"] == 200 for record in calls)
    sim.reset()
    rest = run_batch(call, items, checkpoint=path, workers=3, **FAST)
    assert rest.repaired is None and rest.skipped == len(saved) and rest.remaining == 0
    assert requests(sim) == 60 - len(saved)  # nothing saved was called again
    assert Counter(entry["id"] for entry in lines(path)) == Counter(item["id"] for item in items)


# --- 12. what cannot be saved, and files of the checkpoint's names that are not ours -----------------------------


class Label:
    """An answer that is not JSON data."""

    def __init__(self, text: str) -> None:
        self.text = text


def test_an_answer_that_is_not_json_data_stops_the_batch_with_a_clear_error(
    sim: simulator.Simulator, call: Any, tmp_path: Path
) -> None:
    path = tmp_path / "labels.jsonl"
    run_batch(call, items_of(2), checkpoint=path, **FAST)
    sim.reset()
    with pytest.raises(
        TypeError, match=r"item 'item-002' is a Label.*a str, a number, a list, a dict.*pydantic"
    ) as bad:
        run_batch(lambda text: Label(call(text)), items_of(6), checkpoint=path, workers=1, **FAST)
    assert len(bad.traceback) <= 2, bad.traceback  # raised from run_batch, not from deep inside json
    assert "2 of 6 items have a result" in str(bad.value)
    assert requests(sim) <= 2  # it stopped at the first such answer (one more may have been in flight)
    assert sorted(entry["id"] for entry in lines(path)) == ["item-000", "item-001"]  # every line whole (any order)


def test_a_pydantic_answer_is_saved_as_its_json_dump_and_a_lone_surrogate_reads_back(
    sim: simulator.Simulator, call: Any, tmp_path: Path
) -> None:
    import pydantic

    class Reply(pydantic.BaseModel):
        label: str
        when: datetime.date

    path = tmp_path / "labels.jsonl"
    first = run_batch(
        lambda text: Reply(label=call(text), when=datetime.date(2024, 5, 1)), items_of(2), checkpoint=path, **FAST
    )
    expected = [{"label": f"item-00{i}", "when": "2024-05-01"} for i in range(2)]
    assert first.answers == expected and sorted((e["answer"] for e in lines(path)), key=str) == expected
    again = run_batch(call, items_of(2), checkpoint=path, **FAST)
    assert again.skipped == 2 and again.answers == expected
    odd = tmp_path / "odd.jsonl"
    done = run_batch(lambda text: call(text) + "\udcff", items_of(1), checkpoint=odd, **FAST)
    assert done.answers == ["item-000\udcff"]
    assert odd.read_bytes().decode("utf-8") and lines(odd)[0]["answer"] == "item-000\udcff"  # valid UTF-8 JSON
    assert run_batch(call, items_of(1), checkpoint=odd, **FAST).answers == ["item-000\udcff"]


@pytest.mark.parametrize(
    "key", ["a\ud800", 2**63, -(2**63) - 1, 10**5000], ids=["surrogate", "2**63", "-2**63-1", "huge"]
)
def test_an_id_the_checkpoint_cannot_hold_is_refused_before_any_call(
    key: Any, sim: simulator.Simulator, call: Any, tmp_path: Path
) -> None:
    path = tmp_path / "labels.jsonl"
    with pytest.raises(ValueError, match=r"items\[1\] has .*id"):
        run_batch(call, [{"id": 1, "text": "Reply: a"}, {"id": key, "text": "Reply: b"}], checkpoint=path, **FAST)
    assert requests(sim) == 0 and not path.exists()


def note_kinds(where: Path) -> dict[str, Callable[[Path], None]]:
    return {
        "fifo": lambda note: os.mkfifo(note),
        "dangling symlink": lambda note: note.symlink_to(where / "elsewhere" / "x"),
        "empty file": lambda note: note.write_bytes(b""),
        "someone else's JSON with a pid": lambda note: note.write_text('{"pid": 1, "note": "mine"}\n'),
    }


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and symlinks")
@pytest.mark.parametrize("kind", ["fifo", "dangling symlink", "empty file", "someone else's JSON with a pid"])
def test_a_lock_note_name_that_is_not_ours_is_left_alone(kind: str, sim: simulator.Simulator, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    source, path = write_items(tmp_path / "items.jsonl", items_of(3)), tmp_path / "labels.jsonl"
    note = Path(f"{path}.lock")
    note_kinds(tmp_path)[kind](note)
    before = os.lstat(note)
    content = None if kind in ("fifo", "dangling symlink") else note.read_bytes()
    run = subprocess.run(cli(source, path), env=cli_env(sim), capture_output=True, timeout=60)  # a FIFO hung it
    assert run.returncode == 0, run.stderr.decode()[-500:]
    assert len(lines(path)) == 3
    after = os.lstat(note)  # still there, the same kind of thing, unchanged
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert not (tmp_path / "elsewhere" / "x").exists()
    if content is not None:
        assert note.read_bytes() == content


def test_a_refused_writer_does_not_take_someone_elses_note_for_the_holders(
    sim: simulator.Simulator, call: Any, tmp_path: Path
) -> None:
    path = tmp_path / "labels.jsonl"
    note = Path(f"{path}.lock")
    note.write_text('{"pid": 1, "host": "", "started": "yesterday"}\n')  # not written by helpers.batch
    started, release = threading.Event(), threading.Event()

    def slow(text: str) -> str:
        started.set()
        release.wait(10)
        return call(text)

    holder = threading.Thread(target=lambda: run_batch(slow, items_of(1), checkpoint=path, **FAST))
    holder.start()
    try:
        assert started.wait(10)
        with pytest.raises(OSError, match="in use by another run .its pid is not known"):
            run_batch(call, items_of(1), checkpoint=path, **FAST)
    finally:
        release.set()
        holder.join(20)
    assert note.read_text() == '{"pid": 1, "host": "", "started": "yesterday"}\n'


@pytest.mark.skipif(sys.platform == "win32", reason="/dev/null and FIFOs")
def test_a_checkpoint_that_is_not_a_regular_file_is_refused_before_any_call(
    sim: simulator.Simulator, call: Any, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    for path in (Path(os.devnull), fifo):
        with pytest.raises(ValueError, match="is not a regular file"):
            run_batch(call, items_of(2), checkpoint=path, **FAST)
    assert requests(sim) == 0
    real, link = tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    link.symlink_to(real)  # a symlink to a (missing, then) regular file is still fine
    assert run_batch(call, items_of(2), checkpoint=link, **FAST).answered == 2
    assert link.is_symlink() and len(lines(real)) == 2


def test_the_exit_status_is_the_final_state_of_every_item(sim: simulator.Simulator, tmp_path: Path) -> None:
    source, path = write_items(tmp_path / "items.jsonl", items_of(3)), tmp_path / "labels.jsonl"
    sim.configure(fault_on={"item-001": "500"})
    env = cli_env(sim)
    first = subprocess.run(cli(source, path, "--attempts", "1"), env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 1 and "1 end failed" in first.stdout, first.stdout
    second = subprocess.run(cli(source, path), env=env, capture_output=True, text=True, timeout=60)
    assert "3 skipped" in second.stdout and "2 of 3 items answered, 1 end failed" in second.stdout, second.stdout
    assert second.returncode == 1  # the checkpoint still holds a failure for item-001
    sim.configure(fault_on={})
    fixed = subprocess.run(cli(source, path, "--retry-failed"), env=env, capture_output=True, text=True, timeout=60)
    assert fixed.returncode == 0 and "3 of 3 items answered, 0 end failed" in fixed.stdout, fixed.stdout


def test_a_hand_written_result_without_an_answer_has_answer_none(
    sim: simulator.Simulator, call: Any, tmp_path: Path
) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text('{"id": "item-000", "ok": true}\n{"id": "item-001", "ok": true, "answer": "hand"}\n')
    report = run_batch(call, items_of(3), checkpoint=path, **FAST)
    assert report.answers == [None, "hand", "item-002"] and report.skipped == 2


def test_a_utf8_byte_order_mark_is_tolerated_and_kept(sim: simulator.Simulator, call: Any, tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "item-000", "ok": true, "answer": "old"}\r\n')  # as Notepad saves it
    report = run_batch(call, items_of(2), checkpoint=path, **FAST)
    assert report.answers == ["old", "item-001"] and requests(sim) == 1
    assert path.read_bytes().startswith(b'\xef\xbb\xbf{"id": "item-000"') and len(read_checkpoint(path)) == 2
