"""The checkpoint of a batch: one JSON line per result, safe from what can happen around it (lesson 09).

A checkpoint is a JSONL file of results, one line each, ``{"id": ..., "ok": true | false, ...}``, appended to as
each result arrives and read at the start of the next run (``helpers.batch.run_batch``). :class:`Checkpoint` is
its writer, and it guarantees this:

- **One writer at a time.** :meth:`Checkpoint.open` takes an exclusive lock from the operating system
  (``fcntl.flock`` on Linux and macOS; on Windows ``msvcrt.locking`` of a byte far past the end of the file, so
  that readers are not blocked) and holds it until :meth:`~Checkpoint.close`. The file is read after the lock is
  taken, so the repair of a cut last line and every append happen under it: a second run cannot cut off or
  repeat what the first one writes. The second writer gets :class:`CheckpointInUse`, naming the holder (its pid
  and start time, from a note ``CHECKPOINT.lock`` the holder keeps beside the file while it runs), and nothing
  is read or written. The operating system releases the lock when the holder ends, even by ``kill -9``; the note
  a killed run leaves behind is replaced by the next one. :func:`read_checkpoint` only reads: it needs no lock.
  Where the file system has no locks (some network shares) the writer says so on stderr and goes on unlocked.
- **Only its own files.** A file is a checkpoint when every complete line is a result (an object with an
  ``id`` and a boolean ``ok``; blank lines aside), except that its last line may be cut short by a crash: that
  line is repaired (cut off) when results come before it, or when it begins like a result (``{"id":``). Lines
  written by another program in that shape are results too, so lesson 09's own loop and ``run_batch`` share a
  checkpoint. Anything else (settings, a CSV, binary data) is refused with a ``ValueError`` and left byte for
  byte as it was. A missing or empty file is a new checkpoint.
- **A refused write stops cleanly.** When the disk is full (``ENOSPC``) or the file may not grow (``EFBIG``),
  the part of the line that was written is cut off again, so every line stays whole, and the error is raised
  for the caller to stop on (``run_batch`` turns it into a :class:`CheckpointError` that says what is saved and
  how to resume). If even that cut fails, the next run finds the cut line and repairs it.

:func:`input_digest` is the fingerprint ``run_batch`` stores with each result (``"input"``), so that an answer
is never reused for a text it was not given; :func:`id_key` keeps ids of different types apart (``1`` is not
``"1"``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointInUse",
    "id_key",
    "input_digest",
    "read_checkpoint",
]

_START = b'{"id":'  # how a result line begins, as run_batch and lesson 09's loop write it


class CheckpointError(OSError):
    """A checkpoint that cannot be used now: another run holds it, or a write to it failed (e.g. a full disk)."""


class CheckpointInUse(CheckpointError):
    """Another run (another process, or another thread of this one) is writing to the checkpoint."""


def input_digest(text: str) -> str:
    """A short fingerprint of an item's input: the first 16 hex digits of the SHA-256 of its JSON text."""
    return hashlib.sha256(json.dumps(text).encode("ascii")).hexdigest()[:16]


def id_key(value: Any) -> str:
    """The key of an id in a checkpoint: its JSON, so that ``1`` and ``"1"`` are different items."""
    return json.dumps(value, sort_keys=True)


def read_checkpoint(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete result line of a checkpoint, in the order written; a last line cut short is left out.

    It only reads, with no lock, so it can watch a checkpoint another run is writing. A missing file has no
    lines; a file that is not a checkpoint raises ``ValueError``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return _parse(data, path)[0]


def _parse(data: bytes, path: Path) -> tuple[list[dict[str, Any]], int, str | None]:
    """The results of a checkpoint's bytes, the length of its sound part, and what is wrong with its end.

    A kill can leave the last line cut short (no end of line) or, in a file system that lost data, a last line
    that is not valid JSON: that line is reported, not trusted. Any other line that is not a result (a bad
    line before the last, or a last line that is complete JSON but not a result) is not what a crash leaves
    behind: it is an error that names the line, and nothing is changed."""
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: b"" when the file ends cleanly
    entries: list[dict[str, Any]] = []
    sound = 0
    for number, raw in enumerate(lines, 1):
        if raw.strip():
            entry, parsed = _entry(raw)
            if entry is None:
                last = number == len(lines) and not tail.strip()
                if last and not parsed and (entries or _begins_like_a_result(raw)):
                    return entries, sound, f"its last line ({len(raw)} bytes) is not a complete result"
                raise ValueError(_not_ours(path, number, raw, entries))
            entries.append(entry)
        sound += len(raw) + 1
    if tail.strip():
        entry, parsed = _entry(tail)
        if entry is None and (parsed or not (entries or _begins_like_a_result(tail))):
            raise ValueError(_not_ours(path, len(lines) + 1, tail, entries))
        return entries, sound, f"its last line was cut short ({len(tail)} bytes, no end of line)"
    return entries, sound, None


def _entry(raw: bytes) -> tuple[dict[str, Any] | None, bool]:
    """The result on a line, or None; and whether the line is valid JSON at all."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None, False
    if isinstance(value, dict) and "id" in value and isinstance(value.get("ok"), bool):
        return value, True
    return None, True


def _begins_like_a_result(raw: bytes) -> bool:
    if not raw.strip(b" \t\r\x00"):
        return True  # zeros where a file system lost the end of a write
    head = re.sub(rb"\s", b"", raw[:64])
    return head.startswith(_START) or _START.startswith(head)


def _not_ours(path: Path, number: int, raw: bytes, entries: list[dict[str, Any]]) -> str:
    if not entries:
        return (
            f"{path} is not a checkpoint: its line {number} is {raw[:60]!r}, not a result "
            '{"id": ..., "ok": true or false, ...}. It is left as it is: give the path of a new file (a missing '
            "or empty file starts a new checkpoint), or of a checkpoint."
        )
    return (
        f"checkpoint {path}, line {number}, is not a result written by run_batch: {raw[:60]!r}. Only the last "
        "line can be cut short by a crash; fix or remove this line (or use a new checkpoint)."
    )


# --- the lock -------------------------------------------------------------------------------------------------

if sys.platform == "win32":  # pragma: no cover - the workbook's tests run on Linux
    import errno
    import msvcrt

    _LOCKED_BYTE = 0x7FFFFFF0  # Windows locks are mandatory: lock a byte no reader reaches, far past the end

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _LOCKED_BYTE, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EDEADLOCK):
                return False
            raise
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, _LOCKED_BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


# --- the writer -----------------------------------------------------------------------------------------------


class Checkpoint:
    """An append-only JSONL file, locked while it is open: each result is one line, written whole, then synced.

    ``Checkpoint.open(path)`` locks and reads it (``entries``, ``problem``); :meth:`repair` cuts off a bad last
    line; :meth:`append` adds one result; :meth:`close` (or the end of a ``with`` block) lets it go.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.note = self.path.with_name(self.path.name + ".lock")  # who holds it: read by a refused writer
        self.entries: list[dict[str, Any]] = []
        self.problem: str | None = None
        self.whole = True  # False once a failed write may have left part of a line behind
        self.lock = threading.Lock()
        self._fd: int | None = None
        self._locked = self._noted = False
        self._sound = self._size = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Checkpoint:
        """Lock the file (creating it if it is missing), then read it. Raises :class:`CheckpointInUse` when
        another run holds it and ``ValueError`` when it is not a checkpoint, in both cases changing nothing."""
        self = cls(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0), 0o644)
        try:
            self._lock()
            data = self._read_all()
            self.entries, self._sound, self.problem = _parse(data, self.path)
            self._size = len(data)
        except BaseException:
            self.close()
            raise
        return self

    def repair(self) -> str | None:
        """Cut the file back to its sound part if its last line is bad; returns what was wrong, or None."""
        if self.problem is None:
            return None
        assert self._fd is not None, "open() first"
        if os.fstat(self._fd).st_size != self._size:  # a writer that takes no lock: cut nothing it wrote
            raise CheckpointError(
                f"checkpoint {self.path} grew while it was read: a program that takes no lock is writing to it. "
                "Let it finish, then run again."
            )
        os.ftruncate(self._fd, self._sound)
        os.fsync(self._fd)
        self._size = self._sound
        return self.problem

    def append(self, entry: Mapping[str, Any]) -> None:
        """Write one result as one line and sync it. If the write fails (a full disk), the part of the line that
        was written is cut off again, and the ``OSError`` is raised."""
        assert self._fd is not None, "open() first"
        line = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self.lock:
            try:
                view = memoryview(line)
                while view:  # a regular file takes it all at once unless it is out of room
                    written = os.write(self._fd, view)
                    view = view[written:]
                os.fsync(self._fd)  # on disk before the item counts as done
            except OSError:
                self._take_back()
                raise
            self._size += len(line)

    def _take_back(self) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._size)  # freeing space: possible on a full disk
            os.fsync(self._fd)
        except OSError:
            self.whole = False  # the next run finds the cut line, and repairs it

    def close(self) -> None:
        """Remove the holder's note and release the lock (in that order: the note is never someone else's)."""
        if self._noted:
            self._noted = False
            with contextlib.suppress(OSError):
                self.note.unlink()
        if self._fd is not None:
            if self._locked:
                self._locked = False
                with contextlib.suppress(OSError):  # closing the file releases it too
                    _unlock(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _lock(self) -> None:
        assert self._fd is not None
        try:
            locked = _try_lock(self._fd)
        except OSError as exc:  # a file system without locks: say so, and go on
            print(
                f"checkpoint {self.path.name}: cannot be locked here ({exc.strerror or exc}); make sure no other "
                "run uses it at the same time",
                file=sys.stderr,
            )
            return
        if not locked:
            raise CheckpointInUse(
                f"checkpoint {self.path} is in use by another run ({self._holder()}); wait for it to finish, or "
                "use another checkpoint. Nothing was read or written."
            )
        self._locked = True
        with contextlib.suppress(OSError):
            if self.note.stat().st_size and self._read_note() is None:
                return  # a file of that name that is not a note of ours (nor one cut short): leave it alone
        note = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            self.note.write_text(json.dumps(note) + "\n", encoding="utf-8")
            self._noted = True
        except OSError:
            pass  # a folder we may not write to: a refused writer then cannot name us, that is all

    def _read_note(self) -> tuple[int, str, str] | None:
        try:
            note = json.loads(self.note.read_text(encoding="utf-8"))
            return int(note["pid"]), str(note.get("host", "")), str(note.get("started", ""))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _holder(self) -> str:
        note = self._read_note()
        if note is None:
            return "its pid is not known: it may have just started"
        pid, host, started = note
        here = host in ("", socket.gethostname())
        where = "" if here else f" on {host}"
        when = f", started {started}" if started else ""
        this = ", in this very process" if here and pid == os.getpid() else ""
        return f"pid {pid}{where}{when}{this}"

    def _read_all(self) -> bytes:
        assert self._fd is not None
        os.lseek(self._fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(self._fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
