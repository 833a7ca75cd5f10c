"""Work that computes instead of waiting, for threads and processes to compete on (lesson 08).

``count_tokens(text)`` counts tokens the way the simulator does, one character at a time in pure Python: it
never waits, so it holds the GIL the whole time. It lives in a module, not in a notebook cell, because a
``ProcessPoolExecutor`` sends its workers the function by module and name: under the *spawn* and *forkserver*
start methods (the default on macOS and Windows, and on Linux from Python 3.14) a function defined in a
notebook cannot be found by the worker processes. Import it as ``from helpers.cpu import count_tokens``.

What shows the difference between threads and processes is not the wall clock, which anything else running on
the machine can stretch, but the CPU: :func:`count_and_clock` also says how many seconds of CPU a count took
and in which process, so that a run's CPU seconds per wall second (how many cores' worth it computed at once)
can be measured. With the GIL, threads of one process never reach more than one core's worth; processes reach
one per free core. :class:`Machine` measures how busy the rest of the machine was meanwhile, so that a lesson
can tell "processes did not help" from "there was no free core to help with".
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

__all__ = ["Counted", "Machine", "cores", "count_and_clock", "count_tokens"]

_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGITS = frozenset("0123456789")


def count_tokens(text: str) -> int:
    """Tokens in ``text``, counted character by character in pure Python: CPU-bound (lesson 08).

    The same rule as the simulator's token counts: a run of letters is a token per 6 letters (rounded up), a
    run of digits a token per 3 digits, any other character that is not a space a token of its own. About a
    second of work for 10-20 million characters, depending on the machine.
    """
    if not isinstance(text, str):
        raise TypeError(f"count_tokens() takes a string (got {type(text).__name__})")
    tokens = 0
    run_kind = ""  # "letters", "digits" or "" (neither) for the run the previous character belongs to
    run_length = 0
    for char in text:
        if char in _LETTERS:
            kind = "letters"
        elif char in _DIGITS:
            kind = "digits"
        else:
            kind = ""
        if kind != run_kind and run_length:
            tokens += _run_tokens(run_kind, run_length)
            run_length = 0
        run_kind = kind
        if kind:
            run_length += 1
        elif not char.isspace():
            tokens += 1
    if run_length:
        tokens += _run_tokens(run_kind, run_length)
    return tokens


def _run_tokens(kind: str, length: int) -> int:
    per_token = 6 if kind == "letters" else 3
    return (length + per_token - 1) // per_token


class Counted(NamedTuple):
    """A token count, the CPU seconds its counting took, and the process that counted (lesson 08)."""

    tokens: int
    cpu: float
    pid: int


def count_and_clock(text: str) -> Counted:
    """:func:`count_tokens`, with the CPU time of the thread that counted (``time.thread_time()``) and its pid.

    The thread's own CPU clock, not the process's: on a thread pool the other threads' work is not counted."""
    began = time.thread_time()
    tokens = count_tokens(text)
    return Counted(tokens, time.thread_time() - began, os.getpid())


def _machine_busy() -> float | None:
    """CPU seconds the whole machine (every core, every process) has spent busy since it booted; None where the
    system does not say (``/proc/stat`` is Linux's)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(value) for value in fields[1:9]]  # user nice system idle iowait irq softirq steal
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Machine:
    """How busy the rest of the machine was while a block ran (lesson 08)::

        with Machine() as machine:
            ...  # the run
        machine.others(own_cpu)  # cores' worth of CPU other programs used meanwhile

    On Linux it reads the machine's CPU counters (``/proc/stat``) before and after: what the machine computed,
    less ``own_cpu`` (the CPU seconds your own processes used, which you measure), divided by the wall time.
    Elsewhere it falls back to the load average (``os.getloadavg()``) at the start, which includes your own
    work of the last minute: a rougher answer.
    """

    def __init__(self) -> None:
        self.wall = 0.0
        self._busy: tuple[float | None, float | None] = (None, None)
        self._load: float | None = None

    def __enter__(self) -> Machine:
        self._load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        self._started = time.perf_counter()
        self._busy = (_machine_busy(), None)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._started
        self._busy = (self._busy[0], _machine_busy())

    def others(self, own_cpu: float) -> float | None:
        """Cores' worth of CPU that other programs used during the block (None if it cannot be told)."""
        before, after = self._busy
        if before is not None and after is not None and self.wall > 0:
            return max(0.0, (after - before - own_cpu) / self.wall)
        return self._load

    def free_cores(self, own_cpu: float) -> float | None:
        """Cores the block could have had to itself: the cores less what other programs used."""
        others = self.others(own_cpu)
        return None if others is None else max(0.0, cores() - others)
