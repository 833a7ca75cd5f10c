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
  byte as it was, and so is a file in UTF-16 or UTF-32 (it starts with their byte order mark) or one with NUL
  bytes in a line before its last. A UTF-8 byte order mark at the start is tolerated (and kept). A missing or
  empty file is a new checkpoint. The checkpoint must be a regular file (or a symlink to one): a device such
  as ``/dev/null`` or a FIFO is refused with a ``ValueError``.
- **Only JSON data.** A line is JSON: an answer that is not JSON data raises ``TypeError`` before anything is
  written, and a string with a lone surrogate (``"\\ud800"``, which UTF-8 cannot hold) is written escaped
  (``ensure_ascii``), so that it reads back the same.
- **The note is never someone else's.** The holder's note is only written where no file of that name exists, or
  over a regular file that is a note of ours (left by a killed run); a FIFO, a symlink or any other file of that
  name is left alone (the run goes on without a note), and the note is read without ever blocking.
- **A refused write stops cleanly.** When the disk is full (``ENOSPC``) or the file may not grow (``EFBIG``),
  the part of the line that was written is cut off again, so every line stays whole, and the error is raised
  for the caller to stop on (``run_batch`` turns it into a :class:`CheckpointError` that says what is saved and
  how to resume). If even that cut fails, the next run finds the cut line and repairs it.

:func:`input_digest` is the fingerprint ``run_batch`` stores with each result (``"input"``), so that an answer
is never reused for a text it was not given; :func:`id_key` keeps ids of different types apart (``1`` is not
``"1"``).
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import re
import socket
import stat
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
    "encode_line",
    "input_digest",
    "read_checkpoint",
]

_START = b'{"id":'  # how a result line begins, as run_batch and lesson 09's loop write it
_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_MARK = "helpers.batch"  # the note's "written_by": a file of the note's name without it is not ours
_NOTE_KEYS = {"pid", "host", "started", "written_by"}
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


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
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        return []
    try:
        _require_regular(fd, path)
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read()
    finally:
        os.close(fd)
    return _parse(data, path)[0]


def _require_regular(fd: int, path: Path) -> None:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise ValueError(
            f"checkpoint {path} is not a regular file (a device, a FIFO or a socket): a checkpoint must be a file "
            "it can read back, e.g. labels.jsonl"
        )


def encode_line(entry: Mapping[str, Any]) -> bytes:
    """One result as one line of UTF-8 JSON. A string with a lone surrogate is escaped (``ensure_ascii``), so it
    reads back the same; a value that is not JSON data raises ``TypeError`` naming its type."""
    try:
        text = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:  # ValueError: a circular reference, an int too long to write
        raise TypeError(f"a checkpoint line must be JSON data: {exc}") from None
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(entry, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")


def _parse(data: bytes, path: Path) -> tuple[list[dict[str, Any]], int, str | None]:
    """The results of a checkpoint's bytes, the length of its sound part, and what is wrong with its end.

    A kill can leave the last line cut short (no end of line) or, in a file system that lost data, a last line
    that is not valid JSON: that line is reported, not trusted. Any other line that is not a result (a bad
    line before the last, or a last line that is complete JSON but not a result) is not what a crash leaves
    behind: it is an error that names the line, and nothing is changed. So is text in UTF-16 or UTF-32 (a byte
    order mark, or NUL bytes in a line before the last)."""
    if data.startswith(_WIDE_BOMS):
        raise ValueError(
            f"{path} is not a checkpoint: it starts with a UTF-16 or UTF-32 byte order mark ({data[:4]!r}), and "
            "a checkpoint is UTF-8. It is left as it is: give the path of a new file, or of a checkpoint."
        )
    sound = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0  # tolerated, and kept
    lines = data[sound:].split(b"\n")
    tail = lines.pop()  # after the last newline: b"" when the file ends cleanly
    entries: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, 1):
        if b"\x00" in raw and (number < len(lines) or tail):
            raise ValueError(
                f"{path} is not a checkpoint: its line {number} holds NUL bytes ({raw[:40]!r}), as binary data or "
                "UTF-16 text do; only the end of a file can hold them after a crash. It is left as it is."
            )
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
        value = json.loads(raw.decode("utf-8"))  # UTF-8 only: json.loads of bytes would also take UTF-16
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
        self._note: dict[str, Any] = {}
        self._sound = self._size = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Checkpoint:
        """Lock the file (creating it if it is missing), then read it. Raises :class:`CheckpointInUse` when
        another run holds it and ``ValueError`` when it is not a checkpoint, in both cases changing nothing."""
        self = cls(path)
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        self._fd = os.open(self.path, flags, 0o644)
        try:
            _require_regular(self._fd, self.path)
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
        was written is cut off again, and the ``OSError`` is raised. An entry that is not JSON data raises
        ``TypeError``, writing nothing (:func:`encode_line`)."""
        assert self._fd is not None, "open() first"
        line = encode_line(entry)
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
            if self._read_note(raw=True) == self._note:  # still ours: not replaced by someone else meanwhile
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
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        self._note = {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "written_by": _MARK}
        data = (json.dumps(self._note) + "\n").encode("utf-8")
        try:  # a new note; else only over a regular file that is a note of ours (left by a killed run)
            try:
                fd = os.open(self.note, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
            except FileExistsError:
                old = self._open_note(os.O_RDWR)
                if old is None:
                    return  # a FIFO, a symlink, or a file that is not a note of ours: leave it alone
                fd = old
                try:
                    ours = self._note_in(fd) is not None
                    if ours:
                        os.ftruncate(fd, 0)
                        os.lseek(fd, 0, os.SEEK_SET)
                except BaseException:
                    os.close(fd)
                    raise
                if not ours:
                    os.close(fd)
                    return
            try:
                os.write(fd, data)  # a few dozen bytes: written at once
                self._noted = True
            finally:
                os.close(fd)
        except OSError:
            pass  # a folder we may not write to: a refused writer then cannot name us, that is all

    def _open_note(self, mode: int) -> int | None:
        """The note opened without following a symlink or blocking, if it is a regular file; else None."""
        try:
            if not stat.S_ISREG(os.lstat(self.note).st_mode):
                return None
            fd = os.open(self.note, mode | _NOFOLLOW)
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    @staticmethod
    def _note_in(fd: int) -> dict[str, Any] | None:
        """The note in an open file, if it is exactly a note of ours."""
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            note = json.loads(os.read(fd, 4096).decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(note, dict) or set(note) != _NOTE_KEYS or note["written_by"] != _MARK:
            return None
        if isinstance(note["pid"], bool) or not isinstance(note["pid"], int):
            return None
        return note if isinstance(note["host"], str) and isinstance(note["started"], str) else None

    def _read_note(self, raw: bool = False) -> Any:
        fd = self._open_note(os.O_RDONLY)
        if fd is None:
            return None
        try:
            note = self._note_in(fd)
        finally:
            os.close(fd)
        if note is None or raw:
            return note
        return note["pid"], note["host"], note["started"]

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
