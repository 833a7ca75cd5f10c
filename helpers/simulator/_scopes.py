"""Who is calling, and what their call may touch: the one place where the simulator's scopes live.

A simulator for one learner has one sandbox; if it was started with a key (``SIM_API_KEY``), every ``/v1/*`` and
``/admin/*`` call must carry it. A **class server** (``--students``, ``--roster``, ``SIM_INSTRUCTOR_KEY``) has one
sandbox per student, each reached with that student's key from the roster:

- a student's calls are served with their own sandbox's settings and recorded there; their ``/admin/*`` calls act
  on that sandbox only (``configure``, ``reset`` and ``stats`` of ``helpers.connect().simulator``);
- the instructor's key reaches the whole class: ``/admin/config`` changes every sandbox at once, ``/admin/stats``
  shows everyone, ``/admin/reset`` resets everyone; ``?student=NAME`` addresses one student;
- one class-wide bucket (``--class-rpm``, ``--class-tpm``) stands for an organisation's shared quota.

No key, or a key the server does not know, is OpenAI's 401. Keys are compared by their SHA-256 digest, so a
lookup takes the same time whatever the key, and none is ever written to a log or an answer.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import secrets
import stat
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ._config import ConfigError, SimulatorConfig, _number
from ._dashboard import COOKIE
from ._sandbox import Bucket, Sandbox
from ._wire import NO_KEY, SIMULATOR_HEADER, WRONG_KEY, JSONOut, error_body

INSTRUCTOR = "instructor"  # the sandbox of the instructor's own /v1 calls on a class server
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
MAX_STUDENTS = 500
MIN_INSTRUCTOR_KEY = 12
DONE_LOG = 50_000  # finished requests kept for the dashboard
CLASS_SETTINGS = ("class_rpm", "class_tpm")
DASHBOARD_HEADER = "x-sim-dashboard"  # the dashboard's own admin calls carry it (with its cookie)


class RosterError(ValueError):
    """The roster or the class settings cannot be used; the message says what to change."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


# --- the roster -------------------------------------------------------------------------------------------


def student_names(spec: str) -> list[str]:
    """``--students``: a number (``30`` gives student01 ... student30) or a file of names, one per line."""
    if spec.strip().isdigit():
        count = int(spec)
        if not 1 <= count <= MAX_STUDENTS:
            raise RosterError(f"--students must be 1-{MAX_STUDENTS} (got {count})")
        width = max(2, len(str(count)))
        return [f"student{i:0{width}d}" for i in range(1, count + 1)]
    path = Path(spec)
    if not path.is_file():
        raise RosterError(f"--students takes a number or a file of names, one per line; {spec!r} is neither")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RosterError(f"cannot read the names in {spec} ({exc})") from None
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return _checked_names(names, spec)


def _checked_names(names: list[str], where: str) -> list[str]:
    if not names:
        raise RosterError(f"{where} holds no student names")
    if len(names) > MAX_STUDENTS:
        raise RosterError(f"{where} holds {len(names)} names; a class server takes at most {MAX_STUDENTS}")
    for number, name in enumerate(names, 1):
        if not NAME.fullmatch(name) or name == INSTRUCTOR:
            raise RosterError(
                f"{where}, name {number}: {name[:50]!r} is not a usable name (1-40 letters, digits, '.', '_' or '-', "
                f"starting with a letter or digit; not {INSTRUCTOR!r})"
            )
    repeated = [name for name, n in Counter(names).items() if n > 1]
    if repeated:
        raise RosterError(f"{where} names {repeated[0]!r} more than once")
    return names


def read_roster(path: Path) -> dict[str, str]:
    """The roster's students and their keys. Anything that is not a roster this server wrote is refused, and
    never overwritten."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return {}
    if not stat.S_ISREG(info.st_mode):
        raise RosterError(f"{path} is not a regular file (a link, a folder or a device): choose another --roster")
    if info.st_size > 1_000_000:
        raise RosterError(f"{path} is {info.st_size:,} bytes, too large for a roster: choose another --roster")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RosterError(f"cannot read the roster {path} ({exc}); choose another --roster") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != ["student", "key"]:
        raise RosterError(
            f"{path} is not a roster (its first line must be 'student,key'); it was left as it is: choose another "
            "--roster, or delete it to make a new one"
        )
    roster: dict[str, str] = {}
    for line, row in enumerate(rows[1:], 2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise RosterError(f"{path}, line {line}: a row is 'student,key' (got {len(row)} columns)")
        name, key = row[0].strip(), row[1].strip()
        if name in roster:
            raise RosterError(f"{path}, line {line}: {name[:50]!r} appears twice")
        if not re.fullmatch(r"[!-~]{16,200}", key) or "," in key:
            raise RosterError(f"{path}, line {line}: the key of {name[:50]!r} is not a usable key (16-200 characters)")
        roster[name] = key
    _checked_names(list(roster), str(path))
    if len({_digest(k) for k in roster.values()}) != len(roster):
        raise RosterError(f"{path}: two students have the same key; give each their own (or delete the file)")
    return roster


def new_key() -> str:
    return "sk-class-" + secrets.token_urlsafe(24)


def make_roster(path: Path, names: list[str] | None) -> tuple[dict[str, str], list[str]]:
    """Read the roster at ``path`` and add a key for each of ``names`` not in it yet (existing keys are kept).
    Written only when something was added: to a new file beside it, then renamed, readable by its owner only."""
    roster = read_roster(path)
    added = [name for name in names or [] if name not in roster]
    if not roster and not added:
        raise RosterError(f"{path} does not exist yet: say how many students with --students N (or a file of names)")
    if len(roster) + len(added) > MAX_STUDENTS:
        raise RosterError(f"the roster would hold {len(roster) + len(added)} students; at most {MAX_STUDENTS}")
    if added:
        for name in added:
            roster[name] = new_key()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["student", "key"])
        writer.writerows(roster.items())
        part = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(out.getvalue())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(part, path)
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise RosterError(f"cannot write the roster {path} ({exc.strerror or exc})") from None
    return roster, added


# --- callers and scopes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Whose request this is: their sandbox, and whether they may steer the whole class."""

    sandbox: Sandbox
    instructor: bool


class Room:
    """Every sandbox the server holds, the keys that reach them, and what the class shares (bucket, peak, log)."""

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        instructor_key: str | None = None,
        roster: dict[str, str] | None = None,
        class_rpm: int | None = None,
        class_tpm: int | None = None,
    ) -> None:
        self.started = time.time()
        self.defaults = config
        self.classroom = instructor_key is not None
        self._keys: dict[bytes, Caller] = {}
        self.sandboxes: dict[str, Sandbox] = {}
        if self.classroom:
            assert instructor_key is not None
            if config.api_key:
                raise RosterError("a class server takes its keys from the roster: leave out SIM_API_KEY/--api-key")
            for name, key in (roster or {}).items():
                self.sandboxes[name] = box = Sandbox(config, name)
                self._keys[_digest(key)] = Caller(box, instructor=False)
            if _digest(instructor_key) in self._keys:
                raise RosterError("SIM_INSTRUCTOR_KEY is also a student's key in the roster: choose another")
            self.sandboxes[INSTRUCTOR] = box = Sandbox(config, INSTRUCTOR)
            self._keys[_digest(instructor_key)] = Caller(box, instructor=True)
            self.owner = None
        else:
            if roster:
                raise RosterError("a roster needs SIM_INSTRUCTOR_KEY (the instructor's key) in the environment")
            self.owner = Sandbox(config)
            self.sandboxes[""] = self.owner
            if config.api_key:
                self._keys[_digest(config.api_key)] = Caller(self.owner, instructor=True)
        self.class_rpm: int | None = None
        self.class_tpm: int | None = None
        self.set_class_limits({"class_rpm": class_rpm, "class_tpm": class_tpm})
        self.in_flight = 0
        self.serving = 0
        self.sessions: dict[str, float] = {}  # dashboard cookies (random, not the key) -> when they were made
        self.reset()

    # the whole class ----------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everyone's history, and refill the class bucket (an instructor's reset)."""
        for box in self.sandboxes.values():
            box.reset()
        self.peak_in_flight = self.in_flight
        self.peak_serving = self.serving
        self.epoch = getattr(self, "epoch", 0) + 1
        self.seq = 0
        self.done: deque[tuple[int, list[Any]]] = deque(maxlen=DONE_LOG)
        self._class_buckets()

    def _class_buckets(self) -> None:
        burst = self.defaults.burst
        self.rpm = Bucket(self.class_rpm, burst) if self.class_rpm else None
        self.tpm = Bucket(self.class_tpm, burst) if self.class_tpm else None

    def set_class_limits(self, changes: dict[str, Any]) -> None:
        values = {}
        for name in CLASS_SETTINGS:
            value = changes.get(name, getattr(self, name, None))
            if value is not None:
                value = _number(name, value, minimum=1, maximum=10**9, integer=True)
            values[name] = value
        if (values["class_rpm"] or values["class_tpm"]) and not self.classroom:
            raise ConfigError("class_rpm and class_tpm are for a class server (--students, SIM_INSTRUCTOR_KEY)")
        changed = (values["class_rpm"], values["class_tpm"]) != (getattr(self, "class_rpm", None), self.class_tpm)
        self.class_rpm, self.class_tpm = values["class_rpm"], values["class_tpm"]
        if changed and hasattr(self, "done"):
            self._class_buckets()

    def configure_class(self, changes: dict[str, Any]) -> None:
        """The instructor's change: every sandbox at once (and the class limits). Checked whole before any applies."""
        ours = {k: v for k, v in changes.items() if k not in CLASS_SETTINGS}
        defaults = self.defaults.updated(ours)
        per_box = {name: box.config.updated(ours) for name, box in self.sandboxes.items()}
        if any(k in changes for k in CLASS_SETTINGS):
            self.set_class_limits(changes)
        self.defaults = defaults
        for name, box in self.sandboxes.items():
            box.use(per_box[name])

    def class_config(self) -> dict[str, Any]:
        data = self.defaults.public()
        data.update(class_rpm=self.class_rpm, class_tpm=self.class_tpm, students=self.students())
        return data

    def students(self) -> list[str]:
        return [name for name in self.sandboxes if name != INSTRUCTOR]

    def class_stats(self) -> dict[str, Any]:
        """Everyone's stats (records come separately, see ``class_records``)."""
        by_status: Counter[str] = Counter()
        by_fault: Counter[str] = Counter()
        for box in self.sandboxes.values():
            by_status.update(box.by_status)
            by_fault.update(box.by_fault)
        return {
            "requests": sum(box.number for box in self.sandboxes.values()),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "serving": self.serving,
            "peak_serving": self.peak_serving,
            "by_status": dict(by_status),
            "by_fault": dict(by_fault),
            "retries_seen": sum(box.retries_seen for box in self.sandboxes.values()),
            "class_rpm": self.class_rpm,
            "class_tpm": self.class_tpm,
            "students": {name: {**box.counts(), "in_flight": box.in_flight} for name, box in self.sandboxes.items()},
        }

    # who is calling -----------------------------------------------------------------------------------------

    def caller(self, authorization: str) -> Caller | tuple[str, str | None]:
        """The caller a request's ``Authorization`` header names, or why not (message, OpenAI code)."""
        if not self._keys:  # a simulator of one without a key: open, as a local model server is
            assert self.owner is not None
            return Caller(self.owner, instructor=True)
        if not authorization:
            return NO_KEY, None
        scheme, _, key = authorization.partition(" ")
        found = self._keys.get(_digest(key.strip())) if scheme.lower() == "bearer" else None
        if found is None:
            return WRONG_KEY, "invalid_api_key"
        return found

    def dashboard_caller(self, session: str | None) -> Caller | None:
        """The instructor, if ``session`` is a dashboard cookie this server gave out."""
        if not session or session not in self.sessions:
            return None
        return next((c for c in self._keys.values() if c.instructor), None) or (
            Caller(self.owner, instructor=True) if self.owner is not None else None
        )

    def open_session(self, token: str) -> str | None:
        """A new dashboard cookie for the instructor's key (or the one learner's key), else None."""
        caller = self.caller(f"Bearer {token}") if token else None
        if not isinstance(caller, Caller) or not caller.instructor or not self._keys:
            return None
        if len(self.sessions) >= 100:  # the oldest goes
            self.sessions.pop(min(self.sessions, key=self.sessions.__getitem__))
        session = secrets.token_urlsafe(24)
        self.sessions[session] = time.time()
        return session

    @property
    def needs_key(self) -> bool:
        return bool(self._keys)


def unauthorized(message: str, code: str | None) -> Response:
    return JSONOut(
        error_body(message, "invalid_request_error", code),
        status_code=401,
        headers={SIMULATOR_HEADER: "helpers.simulator"},
    )


def who(request: Request) -> Caller | Response:
    """The caller, from the key the request carries (or the dashboard's cookie on its own admin calls)."""
    room: Room = request.app.state.room
    given = request.headers.get("authorization", "")
    if not given and request.headers.get(DASHBOARD_HEADER):
        found = room.dashboard_caller(request.cookies.get(COOKIE))
        if found is not None:
            return found
    caller = room.caller(given)
    if isinstance(caller, Caller):
        return caller
    return unauthorized(*caller)
