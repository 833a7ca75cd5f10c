"""Many prompts, one strategy: run them and record what happened to every call (lessons 01-05).

Each runner returns a :class:`RunReport`: one :class:`CallRecord` per prompt (when it started and ended, on
which worker, how many attempts, the answer or the error) plus the wall time and the client's CPU time.
A failed call is a record with its error: no prompt is ever lost, and one failure never stops the others.
An interrupted run (the stop button in Jupyter, Ctrl+C) stops at once and keeps what had finished: the
``KeyboardInterrupt`` (or ``CancelledError``) carries the run's report as ``.report``, and ``on_result`` has
been given every call that finished.

The lessons write the ``ThreadPoolExecutor`` and the ``gather`` themselves; these runners do the same thing
with the bookkeeping added, so that every run can be drawn (``helpers.timeline``) and compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import inspect
import itertools
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "STRATEGIES",
    "AgentThreadPool",
    "Answer",
    "Attempt",
    "SharedModelError",
    "CallRecord",
    "RunReport",
    "run",
    "run_agent_async",
    "run_agent_threads",
    "run_async",
    "run_in_new_loop",
    "run_naive_async",
    "run_naive_threads",
    "run_sequential",
    "run_threads",
]

T = TypeVar("T")

STRATEGIES = {
    "sequential": "one call after another",
    "threads": "ThreadPoolExecutor.map: answers in input order",
    "threads-completion": "ThreadPoolExecutor.submit + as_completed: answers as they finish",
    "asyncio": "asyncio.gather with a semaphore: answers in input order",
    "asyncio-completion": "asyncio.as_completed with a semaphore: answers as they finish",
    "agent-threads": "pydantic-ai run_sync on a thread pool, one agent and model per thread",
    "agent-asyncio": "pydantic-ai run with asyncio.gather and a semaphore",
    "agent-max-concurrency": "pydantic-ai run with asyncio.gather, limited by the agent's max_concurrency",
    "naive-threads": "one threading.Thread per prompt appending to a shared list (teaching example)",
    "naive-asyncio": "a new httpx.AsyncClient per call, unbounded gather (teaching example)",
}


@dataclass
class Attempt:
    """One try of a call (lesson 06): when it started and ended, and the error that ended it (None: it answered).

    ``helpers.retry`` records them with ``time.perf_counter()``; a runner turns them into seconds since its run
    started, so that a timeline draws every failed try as a failure, even when a later one answered."""

    start: float
    end: float
    error: str | None = None


@dataclass
class Answer:
    """What a call may return instead of plain text, to report retries, waiting and tokens (lessons 05-07).

    ``waited`` is time spent waiting on the client: between tries (retries), or, with one try, before it (a
    throttle's turn). ``tries`` holds each try's times when they are known."""

    text: str
    attempts: int = 1
    waited: float = 0.0
    tokens: int | None = None
    tries: list[Attempt] = field(default_factory=list, repr=False, compare=False)


@dataclass
class CallRecord:
    """What happened to one prompt. Times are seconds since the run started."""

    index: int
    prompt: str
    start: float = 0.0
    end: float = 0.0
    worker: str = ""
    attempts: int = 1
    waited: float = 0.0
    answer: Any = None
    error: str | None = None
    tokens: int | None = None
    delivered: float | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)
    tries: list[Attempt] = field(default_factory=list, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def outcome(self) -> str:
        return self.answer if self.error is None else f"error: {self.error}"


@dataclass
class RunReport:
    """All the calls of one run, plus its wall time and the CPU time the client process spent."""

    strategy: str
    records: list[CallRecord]
    wall: float
    cpu: float = 0.0
    workers: int | None = None
    label: str = ""
    delivery_order: list[int] = field(default_factory=list)
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.records.sort(key=lambda r: r.index)
        if not self.label:
            self.label = _default_label(self.strategy, self.workers)

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def answers(self) -> list[Any]:
        """Answers in input order: ``answers[i]`` belongs to ``prompts[i]``; None where the call failed."""
        return [r.answer if r.ok else None for r in self.records]

    @property
    def failures(self) -> list[CallRecord]:
        return [r for r in self.records if not r.ok]

    @property
    def sum_of_latencies(self) -> float:
        """What the same calls would take one after another."""
        return sum(r.latency for r in self.records)

    @property
    def slowest(self) -> float:
        return max((r.latency for r in self.records), default=0.0)

    @property
    def overlap(self) -> float:
        """Sum of latencies divided by wall time: how many calls were in flight on average (1 for sequential).

        Not a speed-up: calls slowed down by the client (a new client per call) stretch their bars and raise it.
        A speed-up compares two runs' wall times (``draw`` and ``summary_table`` show it against a baseline)."""
        return self.sum_of_latencies / self.wall if self.wall > 0 else 0.0

    @property
    def peak_in_flight(self) -> int:
        events = sorted(
            [(r.start, 1) for r in self.records] + [(r.end, -1) for r in self.records], key=lambda e: (e[0], e[1])
        )
        peak = now = 0
        for _, step in events:
            now += step
            peak = max(peak, now)
        return peak

    @property
    def ideal(self) -> float:
        """The shortest wall time these calls allow with this many in flight: max(slowest, sum / workers)."""
        if not self.records:
            return 0.0
        width = self.workers or self.n
        return max(self.slowest, self.sum_of_latencies / max(1, min(width, self.n)))

    @property
    def efficiency(self) -> float:
        """Ideal wall time divided by actual wall time: 1.0 means no time lost to overhead or waiting."""
        return self.ideal / self.wall if self.wall > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "run": self.label,
            "calls": self.n,
            "failed": len(self.failures),
            "wall s": round(self.wall, 3),
            "sum of latencies s": round(self.sum_of_latencies, 3),
            "slowest s": round(self.slowest, 3),
            "overlap": round(self.overlap, 2),
            "efficiency": round(self.efficiency, 2),
            "peak in flight": self.peak_in_flight,
            "client CPU s": round(self.cpu, 3),
        }

    def __repr__(self) -> str:
        return (
            f"<RunReport {self.label}: {plural(self.n, 'call')}, {len(self.failures)} failed, wall {self.wall:.2f} s, "
            f"sum of latencies {self.sum_of_latencies:.2f} s>"
        )


def plural(count: int, word: str) -> str:
    """``plural(1, "worker")`` is "1 worker", ``plural(3, "worker")`` "3 workers"."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _default_label(strategy: str, workers: int | None) -> str:
    if workers is None or strategy == "sequential" or strategy.startswith("naive"):
        return strategy
    if strategy.startswith(("asyncio", "agent-asyncio", "agent-max")):
        return f"{strategy} ({workers} in flight)"
    return f"{strategy} ({plural(workers, 'worker')})"


# --- bookkeeping shared by all runners --------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def relative(self, tries: Sequence[Attempt]) -> list[Attempt]:
        """Tries timed with ``time.perf_counter()``, in seconds since this run started."""
        return [Attempt(t.start - self.t0, t.end - self.t0, t.error) for t in tries]

    def report(
        self,
        strategy: str,
        records: list[CallRecord],
        workers: int | None,
        delivered: list[int],
        cancelled: bool = False,
    ) -> RunReport:
        return RunReport(
            strategy,
            records,
            self.now(),
            time.process_time() - self.cpu0,
            workers,
            delivery_order=delivered,
            cancelled=cancelled,
        )


def _fill(record: CallRecord, result: Any, clock: _Clock) -> None:
    if isinstance(result, Answer):
        record.answer, record.attempts, record.waited, record.tokens = (
            result.text,
            result.attempts,
            result.waited,
            result.tokens,
        )
        record.tries = clock.relative(result.tries)
    else:
        record.answer = result


def _fail(record: CallRecord, exc: BaseException, clock: _Clock) -> None:
    record.exception = exc
    tries = getattr(exc, "tries", None)  # set by helpers.retry when it gives up
    if isinstance(tries, list) and all(isinstance(t, Attempt) for t in tries):
        record.tries = clock.relative(tries)
    text = str(exc) or exc.__class__.__name__
    record.error = f"{exc.__class__.__name__}: {text[:300]}" if not text.startswith(exc.__class__.__name__) else text
    attempts = getattr(exc, "attempts", None)  # set by helpers.retry when it gives up
    if isinstance(attempts, int) and not isinstance(attempts, bool):
        record.attempts = attempts
    waited = getattr(exc, "waited", None)
    if isinstance(waited, int | float) and not isinstance(waited, bool):
        record.waited = float(waited)


def _check_workers(workers: Any, name: str = "workers") -> int:
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise ValueError(f"{name} must be a whole number of at least 1 (got {workers!r})")
    if workers < 1:
        raise ValueError(f"{name} must be at least 1 (got {workers}); it is how many calls may be in flight at once")
    return workers


def _check_order(order: str) -> str:
    if order not in ("input", "completion"):
        raise ValueError(f"order must be 'input' or 'completion' (got {order!r})")
    return order


class PromptsError(TypeError, ValueError):
    """``prompts`` is not a list (or other iterable) of strings. A TypeError, and a ValueError as it was before."""


def _prompts(prompts: Iterable[str]) -> list[str]:
    """The one check every runner makes of its prompts: a list, tuple, generator... of strings, read once, in
    order. One string, bytes, a dict (whose keys iterating gives) and a set (which has no order, while
    ``answers[i]`` belongs to ``prompts[i]``) are refused before any call, and so is an item that is not a string."""
    if isinstance(prompts, str):
        raise PromptsError("prompts must be a list of strings, not one string: for one prompt use [prompt]")
    if isinstance(prompts, bytes | bytearray | memoryview):
        raise PromptsError("prompts must be a list of strings, not bytes: decode them, e.g. [data.decode()]")
    if isinstance(prompts, Mapping):
        raise PromptsError(
            f"prompts must be a list of strings, not a {type(prompts).__name__} (a run would only see its keys): "
            "for a dict of prompts use list(d.values()), or list(d) for its keys"
        )
    if isinstance(prompts, set | frozenset):
        raise PromptsError(
            f"prompts must be a list of strings, not a {type(prompts).__name__}: a report keeps the order of its "
            "prompts (answers[i] belongs to prompts[i]) and a set has none; use sorted(s), or a list"
        )
    try:
        each: Iterator[Any] | None = iter(prompts)
    except TypeError:
        each = None
    if each is None:  # raised here, not in the except: the message says it all
        raise PromptsError(
            f"prompts must be a list of strings (got {type(prompts).__name__}): pass a list of prompt strings, "
            "e.g. ['Reply: a', 'Reply: b']"
        )
    items = []
    for i, prompt in enumerate(each):
        if not isinstance(prompt, str):
            pairs = "; for a dict's prompts use list(d.values())" if isinstance(prompt, tuple) else ""
            raise PromptsError(f"prompts[{i}] must be a string (got {type(prompt).__name__}){pairs}")
        items.append(prompt)
    return items


def _check_call(call: Any, runner: str) -> None:
    """A plain function for the thread runners; an async one belongs to run_async."""
    if not callable(call):
        raise TypeError(f"{runner} needs a function that takes a prompt and returns its answer (got {call!r:.60})")
    if runner != "run_async" and inspect.iscoroutinefunction(call):
        raise TypeError(
            f"{getattr(call, '__name__', 'call')} is an async function: {runner} would only collect its unawaited "
            "coroutines. Use `await run_async(call, prompts)` for it, or give a plain (def) function."
        )


class _NotAwaitable(TypeError):
    """run_async was given a plain function: every call would fail the same way, so the run stops."""


def _check_abandon_after(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"abandon_after must be a number of seconds, 0 or more, or None to wait (got {value!r})")
    return float(value)


def _worker_name() -> str:
    name = threading.current_thread().name
    return "main" if name == "MainThread" else name


OnResult = Callable[[CallRecord], None]


def _deliver(record: CallRecord, clock: _Clock, delivered: list[int], on_result: OnResult | None) -> None:
    record.delivered = clock.now()
    delivered.append(record.index)
    if on_result is not None:
        on_result(record)


# How long an interrupted run waits for the calls in flight before it returns without their answers.
INTERRUPT_GRACE = 0.5
IN_FLIGHT_CANCELLED = "cancelled while in flight: the run stopped without waiting for its answer"


def _keep_interrupted(exc: BaseException, report: RunReport, runner: str) -> BaseException:
    """Hang the partial report on the interrupt, with a note saying where to find it; returns the interrupt to
    raise again, without the frames inside the call or the pool where it happened to land (a long traceback of
    library code says nothing about an interrupt, and Jupyter takes a while to print it)."""
    report.cancelled = True
    if getattr(exc, "report", None) is None:  # else an inner runner got there first
        exc.report = report  # type: ignore[attr-defined]
        finished = sum(1 for r in report.records if r.ok)
        exc.add_note(
            f"{runner} was interrupted after {finished} of {report.n} calls had answered; their records are kept "
            "in the report on this exception: sys.last_value.report in Jupyter (on_result saw each finished call)."
        )
    return exc.with_traceback(None)


# --- sequential and threads -------------------------------------------------------------------------------


def _timed(call: Callable[[str], Any], record: CallRecord, clock: _Clock) -> CallRecord:
    record.worker = _worker_name()
    record.start = clock.now()
    try:
        _fill(record, call(record.prompt), clock)
    except Exception as exc:  # a failed call is a record, never a crash of the run
        _fail(record, exc, clock)
    record.end = clock.now()
    return record


def run_sequential(
    call: Callable[[str], Any],
    prompts: Iterable[str],
    *,
    on_result: OnResult | None = None,
    cancel: threading.Event | None = None,
) -> RunReport:
    """Call ``call(prompt)`` for each prompt, one after another (lesson 01)."""
    _check_call(call, "run_sequential")
    items = _prompts(prompts)
    clock = _Clock()
    delivered: list[int] = []
    records = [CallRecord(i, p) for i, p in enumerate(items)]
    try:
        for record in records:
            if cancel is not None and cancel.is_set():
                _cancelled(record, clock)
                continue
            _timed(call, record, clock)
            _deliver(record, clock, delivered, on_result)
    except KeyboardInterrupt as exc:  # raised inside a call: that call was in flight, the rest never started
        for record in records:
            if record.worker and record.end == 0.0 and record.error is None and record.answer is None:
                record.end = clock.now()
                record.error = IN_FLIGHT_CANCELLED
            elif not record.worker:
                _cancelled(record, clock)
        raise _keep_interrupted(
            exc, clock.report("sequential", records, 1, delivered, True), "run_sequential"
        ) from None
    return clock.report("sequential", records, 1, delivered, _was_cancelled(cancel))


def _cancelled(record: CallRecord, clock: _Clock) -> None:
    record.start = record.end = clock.now()
    record.error = "cancelled before it started"
    record.worker = "not started"


def _was_cancelled(cancel: threading.Event | None) -> bool:
    return cancel is not None and cancel.is_set()


def run_threads(
    call: Callable[[str], Any],
    prompts: Iterable[str],
    *,
    workers: int = 3,
    order: str = "input",
    on_result: OnResult | None = None,
    cancel: threading.Event | None = None,
    abandon_after: float | None = None,
    executor: ThreadPoolExecutor | None = None,
) -> RunReport:
    """Run ``call(prompt)`` on a ``ThreadPoolExecutor`` with ``workers`` threads (lesson 02).

    ``order="input"`` uses ``pool.map``: answers arrive in input order, so a fast answer waits for a slower
    one before it. ``order="completion"`` uses ``submit`` + ``as_completed``: answers arrive as calls finish.

    When ``cancel`` is set, no new call starts. Calls already in flight cannot be interrupted (a thread blocked
    in a network read cannot be stopped from outside); by default the run waits for them and keeps their
    answers. With ``abandon_after=s`` it waits at most ``s`` seconds for them, then returns: those calls are
    recorded as cancelled, and their threads end on their own when their answers arrive (the lab uses this).
    Interrupted (Ctrl+C, Jupyter's stop button), it does the same with ``INTERRUPT_GRACE`` (0.5 s) unless
    ``abandon_after`` says otherwise, then raises the ``KeyboardInterrupt`` with the run so far as ``.report``.

    ``executor``, if given, is a pool of your own to run on instead of a new one: its threads (and whatever
    they keep, such as a ``threading.local`` agent) live on for the next run, and it is left open. ``workers``
    is then its ``max_workers``.
    """
    if executor is not None:
        if not isinstance(executor, ThreadPoolExecutor):
            raise ValueError(f"executor must be a concurrent.futures.ThreadPoolExecutor (got {executor!r:.60})")
        workers = executor._max_workers
    workers, order = _check_workers(workers), _check_order(order)
    _check_call(call, "run_threads")
    abandon_after = _check_abandon_after(abandon_after)
    items = _prompts(prompts)
    clock = _Clock()
    delivered: list[int] = []
    records = [CallRecord(i, p) for i, p in enumerate(items)]
    strategy = "threads" if order == "input" else "threads-completion"

    def task(record: CallRecord) -> CallRecord | None:
        if cancel is not None and cancel.is_set():
            _cancelled(record, clock)
            return None  # not delivered, like the calls the pool drops
        return _timed(call, record, clock)

    pool = executor if executor is not None else ThreadPoolExecutor(max_workers=workers, thread_name_prefix="thread")
    futures: list[Future[CallRecord | None]] = []
    deadline: list[float] = []  # set when the run is cancelled and abandon_after is given
    abandoned = False
    interrupted: BaseException | None = None
    try:
        for r in records:
            futures.append(pool.submit(task, r))
        stream = futures if order == "input" else as_completed(futures)
        for future in stream:
            if not _wait_or_cancel(future, cancel, futures, abandon_after, deadline):
                abandoned = True
                break
            done = None if future.cancelled() else future.result()
            if done is not None:
                _deliver(done, clock, delivered, on_result)
    except KeyboardInterrupt as exc:
        # Stopped from outside (Ctrl+C, Jupyter's stop button): no new call starts, the calls in flight get a
        # moment to finish, then the run gives up on them; their threads end on their own when answers arrive.
        interrupted, abandoned = exc, True  # a second interrupt while waiting below must not wait any longer
        _drop_queued(futures)
        wait(futures, timeout=INTERRUPT_GRACE if abandon_after is None else abandon_after)
        abandoned = not all(f.done() for f in futures)
    finally:
        _drop_queued(futures)
        while len(futures) < len(records):  # interrupted while submitting: the rest never started
            never: Future[CallRecord | None] = Future()
            never.cancel()
            futures.append(never)
        if executor is None:  # a pool of our own; a borrowed one is the caller's to close
            pool.shutdown(wait=not abandoned, cancel_futures=True)
    if interrupted is not None:  # every call that finished reaches on_result, even those after a slow one
        for future in futures:
            done = None if not future.done() or future.cancelled() else future.result()
            if done is not None and done.index not in delivered:
                _deliver(done, clock, delivered, on_result)
    if abandoned:
        now = clock.now()
        kept = []
        for record, future in zip(records, futures, strict=True):
            copy = dataclasses.replace(record)  # the thread may still write into the original later
            if not future.done():
                copy.end = now
                copy.error = IN_FLIGHT_CANCELLED
            kept.append(copy)
        records = kept
    for record, future in zip(records, futures, strict=True):
        if future.cancelled():
            _cancelled(record, clock)
    report = clock.report(strategy, records, workers, delivered, _was_cancelled(cancel))
    if interrupted is not None:
        raise _keep_interrupted(interrupted, report, "run_threads") from None
    return report


def _drop_queued(futures: Sequence[Future[Any]]) -> None:
    """Cancel this run's calls that have not started (a call already running cannot be cancelled)."""
    for future in futures:
        future.cancel()


def _wait_or_cancel(
    future: Future[Any],
    cancel: threading.Event | None,
    futures: Sequence[Future[Any]],
    abandon_after: float | None = None,
    deadline: list[float] | None = None,
) -> bool:
    """Wait for ``future``; if the run is cancelled meanwhile, drop the calls that have not started.

    Returns False when the run should stop waiting for calls in flight (``abandon_after`` has passed)."""
    if cancel is None:
        future.result()
        return True
    while not future.done():
        done, _ = wait([future], timeout=0.05, return_when=FIRST_COMPLETED)
        if not done and cancel.is_set():
            _drop_queued(futures)
            if abandon_after is None or deadline is None:
                future.exception()  # a call already running is let finish: its answer is kept
                return True
            if not deadline:
                deadline.append(time.monotonic() + abandon_after)
            wait([future], timeout=max(0.0, deadline[0] - time.monotonic()))
            return future.done()
    return True


# --- asyncio ----------------------------------------------------------------------------------------------

# The call this asyncio task is making. A limiter inside the call (an agent's max_concurrency) marks when the
# call really starts and ends: time spent in that limiter's queue is waiting, not latency, as for a semaphore.
_current_call: contextvars.ContextVar[tuple[CallRecord, _Clock] | None] = contextvars.ContextVar(
    "current_call", default=None
)


def _mark_call(edge: str) -> None:
    current = _current_call.get()
    if current is not None:
        record, clock = current
        setattr(record, edge, clock.now())


async def _timed_async(
    acall: Callable[[str], Awaitable[Any]],
    record: CallRecord,
    clock: _Clock,
    limit: asyncio.Semaphore | None,
    slots: list[int],
    cancel: threading.Event | None,
) -> CallRecord:
    if limit is not None:
        await limit.acquire()
    slot = slots.pop() if slots else None
    try:
        if cancel is not None and cancel.is_set():  # a call not started yet never starts once cancelled
            _cancelled(record, clock)
            raise asyncio.CancelledError
        task = asyncio.current_task()
        record.worker = f"slot {slot}" if slot is not None else (task.get_name() if task else "task")
        record.start = clock.now()
        _current_call.set((record, clock))  # in this task's own context
        try:
            pending = acall(record.prompt)
            if not inspect.isawaitable(pending):
                raise _NotAwaitable(
                    f"run_async needs an async function (async def, or one that returns a coroutine); "
                    f"{getattr(acall, '__name__', 'acall')} returned a {type(pending).__name__}. "
                    "Use run_threads for a plain function."
                )
            _fill(record, await pending, clock)
        except _NotAwaitable:
            raise
        except Exception as exc:
            _fail(record, exc, clock)
        if record.end <= record.start:  # not marked already by a limiter inside the call
            record.end = clock.now()
        return record
    finally:
        if slot is not None:
            slots.append(slot)
        if limit is not None:
            limit.release()


async def run_async(
    acall: Callable[[str], Awaitable[Any]],
    prompts: Iterable[str],
    *,
    limit: int | None = 3,
    order: str = "input",
    on_result: OnResult | None = None,
    cancel: threading.Event | None = None,
) -> RunReport:
    """Await ``acall(prompt)`` for every prompt at once, at most ``limit`` in flight (lesson 03).

    ``order="input"`` is ``asyncio.gather``: all answers come back together, in input order.
    ``order="completion"`` is ``asyncio.as_completed``: each answer as soon as its call finishes.
    ``limit=None`` means no semaphore: every call starts at once.
    Cancelled (Jupyter's stop button cancels an awaiting cell), it cancels its calls and raises the
    ``CancelledError`` with the run so far as ``.report``; ``on_result`` has been given every finished call.
    """
    if limit is not None:
        limit = _check_workers(limit, "limit")
    order = _check_order(order)
    _check_call(acall, "run_async")
    items = _prompts(prompts)
    clock = _Clock()
    delivered: list[int] = []
    records = [CallRecord(i, p) for i, p in enumerate(items)]
    semaphore = asyncio.Semaphore(limit) if limit is not None else None
    slots = list(range(limit, 0, -1)) if limit is not None else []
    strategy = "asyncio" if order == "input" else "asyncio-completion"
    tasks = [asyncio.ensure_future(_timed_async(acall, r, clock, semaphore, slots, cancel)) for r in records]
    watcher = asyncio.ensure_future(_watch_cancel(cancel, tasks))
    interrupted: BaseException | None = None
    try:
        if order == "input":
            done = await asyncio.gather(*tasks, return_exceptions=True)
            for result in done:
                if isinstance(result, _NotAwaitable):
                    raise result
                if isinstance(result, CallRecord):
                    _deliver(result, clock, delivered, on_result)
        else:
            for next_done in asyncio.as_completed(tasks):
                try:
                    _deliver(await next_done, clock, delivered, on_result)
                except asyncio.CancelledError:
                    if cancel is None or not cancel.is_set():
                        raise
    except _NotAwaitable as exc:
        raise TypeError(str(exc)) from None
    except (asyncio.CancelledError, KeyboardInterrupt) as exc:
        # This run itself was cancelled (Jupyter's stop button cancels an awaiting cell) or interrupted. Its calls
        # are cancelled below; the ones that finished are kept and delivered.
        interrupted = exc
    finally:
        watcher.cancel()
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # seen here, so that asyncio does not log it as never retrieved
            task.cancel()
    for record, task in zip(records, tasks, strict=True):
        finished = task.done() and not task.cancelled() and task.exception() is None
        finished = finished and isinstance(task.result(), CallRecord)
        if finished:
            if interrupted is not None and record.index not in delivered:
                _deliver(record, clock, delivered, on_result)
        elif record.error is None and record.answer is None:
            in_flight = interrupted is not None and record.start > 0 and not task.done()
            record.start = record.start or clock.now()
            record.end = clock.now()
            record.error = IN_FLIGHT_CANCELLED if in_flight else "cancelled"
            record.worker = record.worker or "not started"
    report = clock.report(strategy, records, limit, delivered, _was_cancelled(cancel))
    if interrupted is not None:
        raise _keep_interrupted(interrupted, report, "run_async") from None
    return report


async def _watch_cancel(cancel: threading.Event | None, tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel the calls once ``cancel`` is set. It also wakes the event loop every 50 ms, without which Jupyter's
    stop button (a callback the loop runs only when it next wakes) would wait for the next answer to arrive."""
    while cancel is None or not cancel.is_set():
        await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()


def run_in_new_loop(coro: Awaitable[T]) -> T:
    """Run a coroutine to completion on a fresh event loop in its own thread.

    Works from plain scripts and from inside Jupyter (whose loop is already running), without nest-asyncio.
    """
    box: list[Any] = []
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = []

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        running.append((asyncio.get_running_loop(), task))
        return await coro

    finished = threading.Event()

    def target() -> None:
        try:
            box.append((True, asyncio.run(main())))
        except BaseException as exc:  # handed back to the caller's thread
            box.append((False, exc))
        finally:
            finished.set()

    thread = threading.Thread(target=target, name="asyncio-runner", daemon=True)
    thread.start()
    try:
        # An Event, not thread.join(): on Python 3.11 a join interrupted by Ctrl+C marks the thread as ended,
        # and every later join returns at once.
        finished.wait()
    except KeyboardInterrupt as interrupt:
        # Interrupted in the caller's thread: cancel the coroutine too, so that its calls stop now rather than
        # run on unseen; a run cancelled that way hands back what it had finished (``.report``).
        _cancel_soon(running)
        finished.wait(INTERRUPT_JOIN)
        inner = box[0][1] if box and not box[0][0] else None
        report = getattr(inner, "report", None)
        if report is not None:
            interrupt.report = report  # type: ignore[attr-defined]
            for note in getattr(inner, "__notes__", []):
                interrupt.add_note(note)
        raise interrupt.with_traceback(None) from None  # where the wait was interrupted says nothing
    ok, value = box[0]
    if not ok:
        # Shown from the coroutine on: the frames of asyncio.run and its runner say nothing about the error.
        tb = value.__traceback__
        while tb is not None and tb.tb_frame.f_code is not main.__code__:
            tb = tb.tb_next
        raise value.with_traceback(tb.tb_next if tb is not None else value.__traceback__)
    return value


# How long an interrupted run_in_new_loop waits for its coroutine to finish cancelling.
INTERRUPT_JOIN = 2.0


def _cancel_soon(running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]]) -> None:
    for loop, task in running:
        with contextlib.suppress(RuntimeError):  # the loop has closed already: nothing left to cancel
            loop.call_soon_threadsafe(task.cancel)


# --- the naive versions, kept as teaching examples (lessons 02-03) ----------------------------------------


def run_naive_threads(call: Callable[[str], Any], prompts: Iterable[str]) -> RunReport:
    """One ``threading.Thread`` per prompt, appending to a shared list: no cap on threads, and the list
    fills in completion order. Errors are kept here; the classic version swallows them into None."""
    items = _prompts(prompts)
    clock, results = _Clock(), []
    lock = threading.Lock()
    counter = itertools.count(0)

    def work(record: CallRecord) -> None:
        _timed(call, record, clock)
        record.delivered = clock.now()
        with lock:
            results.append(record)

    records = [CallRecord(i, p) for i, p in enumerate(items)]
    threads = [threading.Thread(target=work, args=(r,), name=f"thread_{next(counter)}") for r in records]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except KeyboardInterrupt as exc:  # the threads cannot be stopped: keep what they have finished so far
        with lock:
            finished = {r.index for r in results}
            delivered = [r.index for r in results]
        kept = [dataclasses.replace(r) for r in records]
        for record in kept:
            if record.index not in finished:
                if record.worker:
                    record.end, record.error = clock.now(), IN_FLIGHT_CANCELLED
                else:
                    _cancelled(record, clock)
        partial = clock.report("naive-threads", kept, None, delivered, True)
        raise _keep_interrupted(exc, partial, "run_naive_threads") from None
    return clock.report("naive-threads", records, None, [r.index for r in results])


async def run_naive_async(
    base_url: str,
    model: str,
    prompts: Iterable[str],
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    max_tokens: int | None = None,
    make_client: Callable[[], Any] | None = None,
) -> RunReport:
    """A new ``httpx.AsyncClient`` for every call and an unbounded ``gather``: the pattern to avoid (lesson 03).

    ``make_client()``, if given, builds each call's client instead (``run`` passes ``target.async_client`` for a
    real provider, so that the quota guard sees these calls too). ``headers`` are kept as ``httpx.Headers``, whose
    repr masks the key: every call's frame can see them, and a failed call's traceback prints its locals."""
    import httpx

    from .calls import answer_from, chat_request

    masked = httpx.Headers(headers)
    del headers  # a dict would show the key in this frame's locals

    async def call(prompt: str) -> str:
        fresh = make_client() if make_client else httpx.AsyncClient(base_url=base_url, headers=masked, timeout=timeout)
        async with fresh as client:
            response = await client.post("/chat/completions", json=chat_request(model, prompt, max_tokens=max_tokens))
            return answer_from(response)

    name = ("naive-asyncio", "naive-asyncio (client per call)")
    with _relabelled(*name):
        report = await run_async(call, prompts, limit=None, order="input")
    return _named(report, *name)


def _named(report: RunReport, strategy: str, label: str, workers: int | None = None) -> RunReport:
    """Name a report built by an inner runner after the strategy that ran it."""
    report.strategy, report.label = strategy, label
    if workers is not None:
        report.workers = workers
    return report


@contextlib.contextmanager
def _relabelled(strategy: str, label: str, workers: int | None = None) -> Iterator[None]:
    """An interrupted run's partial report (``.report``) named like the finished one would be."""
    try:
        yield
    except (asyncio.CancelledError, KeyboardInterrupt) as exc:
        partial = getattr(exc, "report", None)
        if isinstance(partial, RunReport):
            _named(partial, strategy, label, workers)
        raise


# --- pydantic-ai (lesson 04) ------------------------------------------------------------------------------


def run_agent_threads(
    make_agent: Callable[[], Any],
    prompts: Iterable[str],
    *,
    workers: int = 3,
    order: str = "input",
    on_result: OnResult | None = None,
    cancel: threading.Event | None = None,
) -> RunReport:
    """``agent.run_sync`` on a thread pool, with one agent and one model per thread (lesson 04).

    Each worker thread runs its own event loop, and a model's HTTP client (its connections) belongs to the loop
    that first used it: a model shared by threads fails with "bound to a different event loop", whether or not
    the agents over it are. So each thread calls ``make_agent()`` once, which must build the model too
    (``lambda: Agent(target.chat_model())``, not ``lambda: Agent(model)``), and keeps the agent in a
    ``threading.local``; an agent whose model another thread's agent already uses is refused with
    :class:`SharedModelError`. The loops are made here rather than left to ``run_sync``, so that the agents'
    clients and the loops are closed at the end. For batch after batch, :class:`AgentThreadPool` keeps the
    threads and their agents instead.
    """
    agents = _ThreadAgents(make_agent)

    def call(prompt: str) -> Any:
        return agents.get().run_sync(prompt).output

    name = ("agent-threads", f"agent-threads ({plural(workers, 'worker')})")
    interrupted = False
    try:
        with _relabelled(*name):
            report = run_threads(call, prompts, workers=workers, order=order, on_result=on_result, cancel=cancel)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        # After an interrupt, calls may still be in flight on the loops: they are closed unwatched, once free.
        agents.close(wait=not interrupted)
    _raise_shared_model(report)
    return _named(report, *name)


class SharedModelError(ValueError):
    """``make_agent`` returned an agent over a model that another thread's agent already uses (lesson 04)."""


def _raise_shared_model(report: RunReport) -> None:
    for record in report.records:
        if isinstance(record.exception, SharedModelError):
            raise SharedModelError(str(record.exception)) from None


class _ThreadAgents:
    """One agent per thread, each built on first use together with the event loop it runs on, and closed together."""

    def __init__(self, make_agent: Callable[[], Any]) -> None:
        self._make_agent = make_agent
        self._local = threading.local()
        self._loops: list[asyncio.AbstractEventLoop] = []
        self._entered: list[tuple[asyncio.AbstractEventLoop, Any]] = []
        self._models: list[Any] = []  # each thread's agent's model: no two threads may share one
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._loops)

    def get(self) -> Any:
        """The calling thread's agent."""
        agent = getattr(self._local, "agent", None)
        if agent is None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)  # the loop run_sync uses in this thread
            self._loops.append(loop)
            agent = self._make_agent()
            model = getattr(agent, "model", None)
            if model is not None and not isinstance(model, str):
                with self._lock:
                    if any(model is other for other in self._models):
                        raise SharedModelError(
                            "make_agent returned an agent over a model that another thread's agent already uses: "
                            "a model holds the HTTP client, whose connections belong to one event loop, so threads "
                            "sharing it fail. Build the model inside make_agent, e.g. "
                            "lambda: Agent(target.chat_model(), ...)."
                        )
                    self._models.append(model)
            if hasattr(agent, "__aenter__"):  # entered, so that leaving it closes its HTTP client
                loop.run_until_complete(agent.__aenter__())
                self._entered.append((loop, agent))
            self._local.agent = agent
        return agent

    def close(self, *, wait: bool = True) -> None:
        """Close the agents' HTTP clients and their loops, in a thread of its own: the caller's thread may be
        running a loop (Jupyter's). ``wait=False`` leaves that thread to wait for calls still in flight."""
        closer = threading.Thread(
            target=_close_loops, args=(self._loops, self._entered), name="agent-cleanup", daemon=True
        )
        closer.start()
        if wait:
            closer.join()


class AgentThreadPool:
    """Worker threads that each keep their own agent, model, event loop and connections from one run to the next
    (lesson 04; the benchmark's agent-threads). ``make_agent`` must build the model too, as for
    :func:`run_agent_threads`: one model (HTTP client) per thread.

    ``run_agent_threads`` builds a pool, a loop and an agent per thread for one run and closes them after it.
    A program that runs batch after batch keeps them instead, as it keeps one HTTP client: then only the first
    batch pays for building the agents. ``warm()`` makes one call on every thread before the first run, so that
    even that run starts warm (it costs ``workers`` calls). Close the pool, or use it in a ``with`` block, to
    close the agents' HTTP clients and their loops.

        with AgentThreadPool(lambda: Agent(target.chat_model()), workers=3) as pool:
            first = pool.run(prompts)
            second = pool.run(more_prompts)  # same threads, same agents, warm connections
    """

    def __init__(self, make_agent: Callable[[], Any], *, workers: int = 3) -> None:
        self.workers = _check_workers(workers)
        if not callable(make_agent):
            raise TypeError(
                f"make_agent must be a function that builds an agent, e.g. lambda: Agent(model) "
                f"(got {make_agent!r:.60})"
            )
        self._agents = _ThreadAgents(make_agent)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="thread")
        self._closed = False

    def call(self, prompt: str) -> Any:
        """One prompt on the calling worker thread's own agent (built on first use)."""
        return self._agents.get().run_sync(prompt).output

    def warm(self, prompt: str = "Reply: warm", *, timeout: float = 60.0) -> None:
        """One call on every worker thread at once, so that each has built its agent and opened a connection."""
        self._check_open()
        barrier = threading.Barrier(self.workers, timeout=timeout)

        def one(_: int) -> None:
            barrier.wait()  # holds this thread until every thread has a warm-up call of its own
            self.call(prompt)

        list(self._executor.map(one, range(self.workers)))

    def run(
        self,
        prompts: Iterable[str],
        *,
        order: str = "input",
        on_result: OnResult | None = None,
        cancel: threading.Event | None = None,
    ) -> RunReport:
        """Like ``run_agent_threads``, on this pool's threads and agents."""
        self._check_open()
        name = ("agent-threads", f"agent-threads ({plural(self.workers, 'worker')})")
        with _relabelled(*name):
            report = run_threads(
                self.call, prompts, order=order, on_result=on_result, cancel=cancel, executor=self._executor
            )
        _raise_shared_model(report)
        return _named(report, *name)

    def close(self) -> None:
        """Wait for the calls in flight, then close the agents' HTTP clients and their loops."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._agents.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this AgentThreadPool is closed; build a new one")

    def __enter__(self) -> AgentThreadPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._agents)} agents built"
        return f"<AgentThreadPool {self.workers} workers, {state}>"


def _close_loops(loops: list[asyncio.AbstractEventLoop], entered: list[tuple[asyncio.AbstractEventLoop, Any]]) -> None:
    """Leave the agents (closing their HTTP clients) on the loops they used, then close those loops."""
    deadline = time.monotonic() + 120
    while any(loop.is_running() for loop in loops) and time.monotonic() < deadline:
        time.sleep(0.05)  # a call abandoned by an interrupted run is still running on it
    try:
        for loop, agent in entered:
            loop.run_until_complete(agent.__aexit__(None, None, None))
    finally:
        for loop in loops:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


async def run_agent_async(
    agent: Any,
    prompts: Iterable[str],
    *,
    limit: int | None = 3,
    order: str = "input",
    on_result: OnResult | None = None,
    cancel: threading.Event | None = None,
) -> RunReport:
    """``await agent.run(prompt)`` for every prompt, at most ``limit`` at once (lesson 04)."""

    async def call(prompt: str) -> Any:
        return (await agent.run(prompt)).output

    name = ("agent-asyncio", "agent-asyncio" + (f" ({limit} in flight)" if limit else ""))
    with _relabelled(*name):
        report = await run_async(call, prompts, limit=limit, order=order, on_result=on_result, cancel=cancel)
    return _named(report, *name)


def _marking_limiter(max_running: int) -> Any:
    """An agent's ``max_concurrency`` limiter that marks when each call gets its turn and when it gives it back."""
    from pydantic_ai.concurrency import ConcurrencyLimiter

    class MarkingLimiter(ConcurrencyLimiter):
        async def acquire(self, source: str) -> None:
            await super().acquire(source)
            _mark_call("start")

        def release(self) -> None:
            _mark_call("end")
            super().release()

    return MarkingLimiter(max_running)


# --- one entry point for the lab panel and the benchmark --------------------------------------------------


def run(
    strategy: str,
    prompts: Iterable[str],
    *,
    target: Any,
    workers: int = 3,
    order: str | None = None,
    max_tokens: int | None = None,
    on_result: OnResult | None = None,
    cancel: threading.Event | None = None,
) -> RunReport:
    """Run ``prompts`` against ``target`` (from ``helpers.connect()``) with a strategy named in ``STRATEGIES``.

    Builds the clients the strategy needs, so the timing includes building them once per run.
    Against a real provider, more than ``target.max_in_flight`` calls at once is refused before any call, and so
    is a run that would not fit in what is left of the quota guard's budget (``target.quota``).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if not isinstance(getattr(target, "model", None), str) or not callable(getattr(target, "client", None)):
        raise ValueError(f"target must be where calls go, as helpers.connect() returns it (got {target!r:.60})")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be a whole number of at least 1, or None for no limit (got {max_tokens!r})")
    workers = _check_workers(workers)
    items = _prompts(prompts)
    if order is None:
        order = "completion" if strategy.endswith("-completion") else "input"
    order = _check_order(order)
    base = strategy.removesuffix("-completion")
    cap = getattr(target, "max_in_flight", None)
    in_flight = len(items) if base.startswith("naive") else (1 if base == "sequential" else workers)
    if cap is not None and in_flight > cap:
        raise ValueError(
            f"{strategy} would put {in_flight} calls in flight against a real provider; the quota "
            f"guard allows at most {cap}. Lower workers (or the number of prompts), or use the "
            "simulator."
        )
    quota = getattr(target, "quota", None)
    if quota is not None:  # a real provider: a run that would not fit in the session's budget never starts
        from .quota import estimate_tokens

        per_call = max((estimate_tokens(p, max_tokens) for p in items), default=0)
        quota.check_run(len(items), per_call, workers=max(1, in_flight))
    model = target.model
    if base in ("sequential", "threads", "naive-threads"):
        with target.client(connections=max(workers, len(items) if base == "naive-threads" else 1)) as client:
            from .calls import ask

            def call(prompt: str) -> str:
                return ask(client, model, prompt, max_tokens=max_tokens)

            if base == "sequential":
                return run_sequential(call, items, on_result=on_result, cancel=cancel)
            if base == "naive-threads":
                return run_naive_threads(call, items)
            return run_threads(call, items, workers=workers, order=order, on_result=on_result, cancel=cancel)
    if base == "asyncio":

        async def go_async() -> RunReport:
            from .calls import ask_async

            async with target.async_client(connections=workers) as client:

                async def acall(prompt: str) -> str:
                    return await ask_async(client, model, prompt, max_tokens=max_tokens)

                return await run_async(acall, items, limit=workers, order=order, on_result=on_result, cancel=cancel)

        return run_in_new_loop(go_async())
    if base == "naive-asyncio":
        guarded = None if quota is None else (lambda: target.async_client(timeout=60.0, connections=1))
        return run_in_new_loop(
            run_naive_async(
                target.base_url, model, items, headers=target._headers(), max_tokens=max_tokens, make_client=guarded
            )
        )
    from pydantic_ai import Agent

    if base == "agent-threads":
        return run_agent_threads(
            lambda: Agent(target.chat_model()), items, workers=workers, order=order, on_result=on_result, cancel=cancel
        )

    async def go_agent() -> RunReport:
        # Entered, so that leaving it closes its HTTP client before this run's event loop ends.
        if base == "agent-max-concurrency":
            async with Agent(target.chat_model(), max_concurrency=_marking_limiter(workers)) as agent:
                name = ("agent-max-concurrency", f"agent-max-concurrency ({workers})", workers)
                with _relabelled(*name):
                    report = await run_agent_async(
                        agent, items, limit=None, order=order, on_result=on_result, cancel=cancel
                    )
            return _named(report, *name)
        async with Agent(target.chat_model()) as agent:
            return await run_agent_async(agent, items, limit=workers, order=order, on_result=on_result, cancel=cancel)

    return run_in_new_loop(go_agent())
