"""How fast is each way of making many LLM calls? Every strategy against the local simulator, side by side.

Run by hand (not a test):

    .venv/bin/python benchmarks/strategies.py [--quick] [--repeats R] [--max-ideal SECONDS] [--out DIR]

The simulator answers every call in exactly 0.5 s (``profile="fixed"``, no capacity limit), so the shortest
possible wall time of a run is known: ``ceil(N / workers) x 0.5 s`` for a strategy with ``workers`` calls in
flight, 0.5 s for an unbounded one (every call at once), ``N x 0.5 s`` for sequential. Each cell (strategy,
workers, N) is run ``--repeats`` times with clients, thread pools and agents built and warmed up before the
clock starts (one batch of min(N, workers) calls); the table holds medians. See benchmarks/README.md for what
each strategy is and how to read the table.

Writes ``strategies.md`` (the table, the checks against the targets, the errors seen), ``strategies.json``
(every repeat) and ``strategies.png`` (efficiency against N, one panel per worker count) to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import math
import os
import platform
import queue
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from helpers import simulator
from helpers.calls import ask, ask_async
from helpers.runs import (
    AgentThreadPool,
    RunReport,
    run_agent_async,
    run_async,
    run_in_new_loop,
    run_naive_async,
    run_naive_threads,
    run_sequential,
    run_threads,
)
from helpers.settings import DEFAULT_TIMEOUT, Target

LATENCY = 0.5
NS = (3, 30, 300, 1000)
QUICK_NS = (3, 30, 300)
WORKERS = (3, 32, 100)
LARGE_WORKERS = (320, 1000)  # for N = 1000, strategies built for many calls in flight (1000: as many as naive)
SENSIBLE_BOUND = 32  # the worker count the targets are checked at for N = 1000
NAIVE = "naive-asyncio"  # the reference of the "vs naive" column
UNSAFE_CALL_TIMEOUT = 10.0
ROOT = Path(__file__).resolve().parent.parent


# --- what is measured -------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One run of one cell: medians over these make the table."""

    wall: float
    cpu: float
    sim_cpu: float
    errors: int
    timeouts: int = 0
    wrong: int = 0
    peak_in_flight: int | None = None
    hung: bool = False
    unfinished: int = 0
    messages: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "wall": round(self.wall, 4),
            "client_cpu": round(self.cpu, 4),
            "server_cpu": round(self.sim_cpu, 4),
            "errors": self.errors,
            "timeouts": self.timeouts,
            "wrong_answers": self.wrong,
            "server_peak_in_flight": self.peak_in_flight,
            "hung": self.hung,
            "unfinished": self.unfinished,
            "error_messages": dict(self.messages.most_common()),
        }


@dataclass
class Cell:
    strategy: str
    workers: int | None
    n: int
    ideal: float
    skipped: str | None = None
    runs: list[Measurement] = field(default_factory=list)
    seconds: float = 0.0  # how long the cell took, setup included

    def median(self, name: str) -> float:
        return statistics.median(getattr(m, name) for m in self.runs)

    @property
    def measured(self) -> bool:
        return bool(self.runs)

    @property
    def hung(self) -> bool:
        return any(m.hung for m in self.runs)

    @property
    def wall(self) -> float:
        return self.median("wall")

    @property
    def efficiency(self) -> float:
        return self.ideal / self.wall if self.wall > 0 else 0.0

    @property
    def errors(self) -> int:
        return int(statistics.median(m.errors for m in self.runs))

    @property
    def errors_max(self) -> int:
        return max(m.errors for m in self.runs)

    @property
    def messages(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for m in self.runs:
            total.update(m.messages)
        return total

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "strategy": self.strategy,
            "workers": self.workers,
            "n": self.n,
            "ideal": self.ideal,
            "skipped": self.skipped,
        }
        if self.measured:
            data.update(
                {
                    "median_wall": round(self.wall, 4),
                    "efficiency": round(self.efficiency, 4),
                    "median_client_cpu": round(self.median("cpu"), 4),
                    "median_server_cpu": round(self.median("sim_cpu"), 4),
                    "median_errors": self.errors,
                    "max_errors": self.errors_max,
                    "hung": self.hung,
                    "seconds_with_setup": round(self.seconds, 2),
                    "runs": [m.to_json() for m in self.runs],
                }
            )
        return data


def _normalise(message: str) -> str:
    """Error texts without the parts that differ per call (addresses, ids), so equal errors group together."""
    message = re.sub(r"0x[0-9a-fA-F]+", "0x…", message)
    message = re.sub(r"\b[0-9a-f]{8}-[0-9a-f-]{27,}\b", "<id>", message)
    return message[:160]


def expected(prompt: str) -> str:
    return prompt.removeprefix("Reply: ")


# --- the bench: one simulator, one target, the meters ------------------------------------------------------


class Bench:
    def __init__(self, sim: simulator.Simulator, unsafe_timeout: float) -> None:
        self.sim = sim
        self.target = Target(base_url=sim.api_url, model=sim._config.models[0], simulator=sim)
        self.model = self.target.model
        self.unsafe_timeout = unsafe_timeout
        self._pid = sim.process.pid if sim.process else None
        try:
            import psutil

            self._proc: Any = psutil.Process(self._pid) if self._pid else None
        except ImportError:
            self._proc = None

    # the server's CPU time, from psutil or /proc
    def sim_cpu(self) -> float:
        if self._proc is not None:
            times = self._proc.cpu_times()
            return float(times.user + times.system)
        if self._pid is None:
            return math.nan
        try:
            fields = Path(f"/proc/{self._pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return math.nan

    def prompts(self, n: int) -> list[str]:
        return [f"Reply: p{i}" for i in range(n)]

    def start_meter(self) -> float:
        """Right before the run: forget the server's counters (warm-up included) and read its CPU time."""
        self.sim.reset()
        return self.sim_cpu()

    def measurement(self, report: RunReport, sim_cpu0: float, prompts: Sequence[str]) -> Measurement:
        sim_cpu = self.sim_cpu() - sim_cpu0
        stats = self.sim.stats(records=False)
        messages: Counter[str] = Counter()
        timeouts = wrong = 0
        for record in report.records:
            if record.error is not None:
                messages[_normalise(record.error)] += 1
                exc = record.exception
                if isinstance(exc, TimeoutError | httpx.TimeoutException) or "Timeout" in record.error.split(":")[0]:
                    timeouts += 1
            elif str(record.answer) != expected(prompts[record.index]):
                wrong += 1
                messages["wrong answer"] += 1
        return Measurement(
            report.wall,
            report.cpu,
            sim_cpu,
            len(report.failures) + wrong,
            timeouts,
            wrong,
            stats.get("peak_in_flight"),
            messages=messages,
        )

    def sync_call(self, client: httpx.Client) -> Callable[[str], str]:
        model = self.model

        def call(prompt: str) -> str:
            return ask(client, model, prompt)

        return call

    def async_call(self, client: httpx.AsyncClient) -> Callable[[str], Any]:
        model = self.model

        async def acall(prompt: str) -> str:
            return await ask_async(client, model, prompt)

        return acall

    def chat_model(self) -> Any:
        return self.target.chat_model()


# --- the strategies -----------------------------------------------------------------------------------------
#
# Each measure function builds its client (or agent, or pool of threads) once and warms it up, then runs the cell
# ``repeats`` times with it: building them once and reusing them is the recommended practice being measured.
# Warm means what a program that has already sent a batch has: for the bounded strategies, one batch of
# min(N, workers) calls at once before the clock starts, so that every connection, worker thread and agent the
# run will use has been opened, started and built. The unbounded strategies and the naive ones get one warm-up
# call (their own, and nothing, respectively): they are the versions to compare against.

Measure = Callable[[Bench, int, int | None, int], list[Measurement]]


def warm_prompts(n: int, workers: int) -> list[str]:
    """The warm-up batch: as many calls at once as the run will have in flight."""
    return [f"Reply: warm{i}" for i in range(min(n, workers))]


def _warm_pool(workers: int, n: int, call: Callable[[str], Any]) -> ThreadPoolExecutor:
    """A pool whose threads, as many as the run will use, have each made one call (so, one per connection)."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="thread")
    used = min(n, workers)
    barrier = threading.Barrier(used, timeout=60)

    def one(prompt: str) -> Any:
        barrier.wait()  # holds each thread until all have a warm-up call of their own
        return call(prompt)

    list(pool.map(one, warm_prompts(n, workers)))
    return pool


def _pause() -> None:
    gc.collect()
    time.sleep(0.1)  # let the previous run's connections close


def _repeat_sync(b: Bench, repeats: int, run: Callable[[], RunReport], prompts: Sequence[str]) -> list[Measurement]:
    out = []
    for _ in range(repeats):
        _pause()
        meter = b.start_meter()
        out.append(b.measurement(run(), meter, prompts))
    return out


async def _repeat_async(b: Bench, repeats: int, run: Callable[[], Any], prompts: Sequence[str]) -> list[Measurement]:
    out = []
    for _ in range(repeats):
        gc.collect()
        await asyncio.sleep(0.1)
        meter = b.start_meter()
        out.append(b.measurement(await run(), meter, prompts))
    return out


def m_sequential(b: Bench, n: int, workers: int | None, repeats: int) -> list[Measurement]:
    prompts = b.prompts(n)
    with b.target.client(connections=1) as client:
        call = b.sync_call(client)
        call("Reply: warm")
        return _repeat_sync(b, repeats, lambda: run_sequential(call, prompts), prompts)


def m_threads(order: str) -> Measure:
    def measure(b: Bench, n: int, workers: int | None, repeats: int) -> list[Measurement]:
        assert workers is not None
        prompts = b.prompts(n)
        with b.target.client(connections=workers) as client:
            call = b.sync_call(client)
            pool = _warm_pool(workers, n, call)
            try:
                return _repeat_sync(b, repeats, lambda: run_threads(call, prompts, order=order, executor=pool), prompts)
            finally:
                pool.shutdown()

    return measure


def m_asyncio(order: str) -> Measure:
    def measure(b: Bench, n: int, workers: int | None, repeats: int) -> list[Measurement]:
        assert workers is not None
        prompts = b.prompts(n)

        async def go() -> list[Measurement]:
            async with b.target.async_client(connections=workers) as client:
                acall = b.async_call(client)
                await run_async(acall, warm_prompts(n, workers), limit=workers)
                return await _repeat_async(
                    b, repeats, lambda: run_async(acall, prompts, limit=workers, order=order), prompts
                )

        return asyncio.run(go())

    return measure


POOL_PER_CLIENT = 8  # asyncio-sharded: connections per client


def m_asyncio_sharded(b: Bench, n: int, workers: int | None, repeats: int) -> list[Measurement]:
    """Semaphore(workers) over ceil(workers / 8) httpx.AsyncClients of at most 8 connections each, calls dealt
    round-robin. Each time a request joins or leaves httpx 0.28's async pool, the pool checks every connection
    against every waiting request (work that grows with the square of its size), so many small pools cost
    far less CPU than one big one: 40 pools of 8 used about a third of the CPU of 10 pools of 32 here."""
    assert workers is not None
    prompts = b.prompts(n)
    shards = math.ceil(workers / POOL_PER_CLIENT)
    per_client = math.ceil(workers / shards)

    async def go() -> list[Measurement]:
        clients = [b.target.async_client(connections=per_client) for _ in range(shards)]
        try:
            calls = [b.async_call(client) for client in clients]
            dealt = itertools.count()

            async def acall(prompt: str) -> str:
                return await calls[next(dealt) % shards](prompt)

            await run_async(acall, warm_prompts(n, workers), limit=workers)
            return await _repeat_async(b, repeats, lambda: run_async(acall, prompts, limit=workers), prompts)
        finally:
            for client in clients:
                await client.aclose()

    return asyncio.run(go())


def m_asyncio_httpx2(b: Bench, n: int, workers: int | None, repeats: int) -> list[Measurement]:
    """Semaphore(workers), one shared httpx2.AsyncClient: httpx2 is the httpx fork that openai 3.x and
    pydantic-ai 2.x ship with; its connection pool was rewritten and stays cheap with hundreds of connections."""
    import httpx2

    assert workers is not None
    prompts = b.prompts(n)
    limits = httpx2.Limits(max_connections=workers, max_keepalive_connections=workers)

    async def go() -> list[Measurement]:
        timeout = httpx2.Timeout(DEFAULT_TIMEOUT.read, connect=DEFAULT_TIMEOUT.connect)
        async with httpx2.AsyncClient(base_url=b.target.base_url, timeout=timeout, limits=limits) as client:
            acall = b.async_call(client)  # type: ignore[arg-type]  # the same API as httpx.AsyncClient
            await run_async(acall, warm_prompts(n, workers), limit=workers)
            return await _repeat_async(b, repeats, lambda: run_async(acall, prompts, limit=workers), prompts)

    return asyncio.run(go())


def m_unbounded_shared(raised: bool) -> Measure:
    def measure(b: Bench, n: int, workers: int | None, repeats: int) -> list[Measurement]:
        prompts = b.prompts(n)

        async def go() -> list[Measurement]:
            if raised:  # as many connections (and keep-alive slots) as calls
                client = b.target.async_client(connections=max(n, 100))
            else:  # httpx's default limits: at most 100 connections, 20 kept alive
                client = httpx.AsyncClient(base_url=b.target.base_url, timeout=DEFAULT_TIMEOUT)
            async with client:
                acall = b.async_call(client)
                await acall("Reply: warm")
                return await _repeat_async(b, repeats, lambda: run_async(acall, prompts, limit=None), prompts)

        return asyncio.run(go())

    return measure


def m_naive_threads(b: Bench, n: int, workers: int | None, repeats: int) -> list[Measurement]:
    prompts = b.prompts(n)
    with b.target.client(connections=n) as client:
        call = b.sync_call(client)
        call("Reply: warm")
        return _repeat_sync(b, repeats, lambda: run_naive_threads(call, prompts), prompts)


def m_naive_asyncio(b: Bench, n: int, workers: int | None, repeats: int) -> list[Measurement]:
    prompts = b.prompts(n)

    async def go() -> list[Measurement]:  # nothing to warm: building a client per call is the point
        return await _repeat_async(b, repeats, lambda: run_naive_async(b.target.base_url, b.model, prompts), prompts)

    return asyncio.run(go())


def m_agent_threads(b: Bench, n: int, workers: int | None, repeats: int) -> list[Measurement]:
    """One agent per pool thread, kept from run to run (helpers.runs.AgentThreadPool): an agent's HTTP client
    belongs to the event loop that first used it, its own thread's, so the threads are kept and warmed up with
    them. The pool has as many threads as the run uses, min(N, workers): more would sit idle."""
    from pydantic_ai import Agent

    assert workers is not None
    prompts = b.prompts(n)
    with AgentThreadPool(lambda: Agent(b.chat_model()), workers=min(n, workers)) as pool:
        pool.warm()
        return _repeat_sync(b, repeats, lambda: pool.run(prompts), prompts)


def m_agent_asyncio(b: Bench, n: int, workers: int | None, repeats: int) -> list[Measurement]:
    from pydantic_ai import Agent

    assert workers is not None
    prompts = b.prompts(n)

    async def go() -> list[Measurement]:
        async with Agent(b.chat_model()) as agent:
            await run_agent_async(agent, warm_prompts(n, workers), limit=workers)
            return await _repeat_async(b, repeats, lambda: run_agent_async(agent, prompts, limit=workers), prompts)

    return asyncio.run(go())


def m_agent_max_concurrency(b: Bench, n: int, workers: int | None, repeats: int) -> list[Measurement]:
    from pydantic_ai import Agent

    assert workers is not None
    prompts = b.prompts(n)

    async def go() -> list[Measurement]:
        async with Agent(b.chat_model(), max_concurrency=workers) as agent:
            await run_agent_async(agent, warm_prompts(n, workers), limit=None)
            return await _repeat_async(b, repeats, lambda: run_agent_async(agent, prompts, limit=None), prompts)

    return asyncio.run(go())


def m_agent_shared_model_unsafe(b: Bench, n: int, workers: int | None, repeats: int) -> list[Measurement]:
    """The usual tutorial pattern: ``Agent(model).run_sync(prompt)`` on pool threads, a new Agent for every call
    over one model built once, so every thread's event loop shares the model's HTTP client. Each repeat runs in a
    new child process, because a hung thread cannot be stopped from Python but a process can; and a run over a
    shared model leaves its client broken for the next. Each call has a timeout, each run a deadline; after a
    hang there are no repeats."""
    assert workers is not None
    out: list[Measurement] = []
    for _ in range(repeats):
        _pause()
        out.append(_unsafe_once(b, n, workers))
        if out[-1].hung:
            break
    return out


def _unsafe_once(b: Bench, n: int, workers: int) -> Measurement:
    deadline = 4 * math.ceil(n / workers) * LATENCY + 20
    spec = {"base_url": b.target.base_url, "model": b.model, "n": n, "workers": workers, "timeout": b.unsafe_timeout}
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child-unsafe", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    prompts = b.prompts(n)
    messages: Counter[str] = Counter()
    done: set[int] = set()
    errors = timeouts = wrong = 0
    child_cpu0 = 0.0
    try:
        ready = lines.get(timeout=60)
        if not ready or not ready.startswith("READY"):
            raise RuntimeError(f"the unsafe-agent child did not start: {ready!r}")
        child_cpu0 = float(ready.split()[1])
        meter = b.start_meter()
        t0 = time.perf_counter()
        assert child.stdin is not None
        child.stdin.write("GO\n")
        child.stdin.flush()
        final: dict[str, Any] | None = None
        while final is None:
            left = deadline - (time.perf_counter() - t0)
            try:
                line = lines.get(timeout=max(0.0, left))
            except queue.Empty:
                break
            if line is None:
                break
            item = json.loads(line)
            if "final" in item:
                final = item
                continue
            done.add(item["i"])
            if item.get("error"):
                errors += 1
                messages[_normalise(item["error"])] += 1
                timeouts += bool(item.get("timeout"))
            elif item.get("answer") != expected(prompts[item["i"]]):
                errors += 1
                wrong += 1
                messages["wrong answer"] += 1
        wall = time.perf_counter() - t0
        hung = final is None
        if hung:
            try:
                import psutil

                times = psutil.Process(child.pid).cpu_times()
                cpu = float(times.user + times.system) - child_cpu0
            except Exception:
                cpu = math.nan
            messages[f"hung: {n - len(done)} calls unfinished at the {deadline:.0f} s deadline"] += 1
        else:
            assert final is not None
            wall, cpu = final["wall"], final["cpu"]
        sim_cpu = b.sim_cpu() - meter
        peak = b.sim.stats(records=False).get("peak_in_flight")
    finally:
        child.kill()
        child.wait()
    return Measurement(
        wall,
        cpu,
        sim_cpu,
        errors + (n - len(done) if hung else 0),
        timeouts,
        wrong,
        peak,
        hung=hung,
        unfinished=n - len(done),
        messages=messages,
    )


def child_unsafe(spec_text: str) -> None:
    """The child of m_agent_shared_model_unsafe: one model, warmed up on the main thread, and a new Agent over it
    for every call on a thread pool."""
    from pydantic_ai import Agent

    spec = json.loads(spec_text)
    # The simulator is attached, so the target is not treated as a real provider (no quota guard, no 3-call cap).
    sim = simulator.Simulator.attach(spec["base_url"])
    target = Target(base_url=spec["base_url"], model=spec["model"], simulator=sim)
    model = target.chat_model()
    Agent(model).run_sync("Reply: warm")
    print("READY", time.process_time(), flush=True)
    sys.stdin.readline()
    lock = threading.Lock()

    def call(prompt: str) -> Any:
        return Agent(model).run_sync(prompt, timeout=spec["timeout"]).output

    def emit(record: Any) -> None:
        line = {
            "i": record.index,
            "answer": record.answer if record.ok else None,
            "error": record.error,
            "timeout": isinstance(record.exception, TimeoutError),
        }
        with lock:
            print(json.dumps(line), flush=True)

    prompts = [f"Reply: p{i}" for i in range(spec["n"])]
    report = run_threads(call, prompts, workers=spec["workers"], order="completion", on_result=emit)
    print(json.dumps({"final": True, "wall": report.wall, "cpu": report.cpu}), flush=True)
    os._exit(0)  # leave at once, whatever the shared agent's loops still hold


@dataclass(frozen=True)
class Strategy:
    name: str
    what: str
    measure: Measure
    bounded: bool = True  # takes a worker count; else run once per N, every call in flight at once
    recommended: bool = False
    sequential: bool = False
    max_n: int | None = None  # larger N only with --full
    also_workers: tuple[int, ...] = ()  # extra worker counts, for N >= 1000 only


STRATEGIES = [
    Strategy("sequential", "one call after another, shared httpx.Client", m_sequential, bounded=False, sequential=True),
    Strategy(
        "threads",
        "ThreadPoolExecutor.map, one shared httpx.Client (connections = workers)",
        m_threads("input"),
        recommended=True,
    ),
    Strategy(
        "threads-completion",
        "ThreadPoolExecutor submit + as_completed, one shared httpx.Client",
        m_threads("completion"),
        recommended=True,
    ),
    Strategy(
        "asyncio",
        "gather, Semaphore(workers), one shared httpx.AsyncClient (connections = workers)",
        m_asyncio("input"),
        recommended=True,
    ),
    Strategy(
        "asyncio-completion",
        "as_completed, Semaphore(workers), one shared httpx.AsyncClient",
        m_asyncio("completion"),
        recommended=True,
    ),
    Strategy(
        "asyncio-sharded",
        "gather, Semaphore(workers), ceil(workers / 8) httpx.AsyncClients of <= 8 connections, round-robin",
        m_asyncio_sharded,
        recommended=True,
        also_workers=LARGE_WORKERS,
    ),
    Strategy(
        "asyncio-httpx2",
        "gather, Semaphore(workers), one shared httpx2.AsyncClient (the SDKs' fork of httpx)",
        m_asyncio_httpx2,
        recommended=True,
        also_workers=LARGE_WORKERS,
    ),
    Strategy(
        "asyncio-unbounded-shared",
        "gather with no bound, one shared AsyncClient, httpx default limits",
        m_unbounded_shared(raised=False),
        bounded=False,
    ),
    Strategy(
        "asyncio-unbounded-raised",
        "gather with no bound, one shared AsyncClient, limits raised to N",
        m_unbounded_shared(raised=True),
        bounded=False,
    ),
    Strategy(
        "naive-threads",
        "one threading.Thread per prompt, shared httpx.Client",
        m_naive_threads,
        bounded=False,
        max_n=300,
    ),
    Strategy(NAIVE, "a new httpx.AsyncClient per call, gather with no bound", m_naive_asyncio, bounded=False),
    Strategy(
        "agent-threads",
        "pydantic-ai run_sync on a thread pool, one Agent and its own model (HTTP client) per thread",
        m_agent_threads,
        recommended=True,
    ),
    Strategy(
        "agent-asyncio",
        "pydantic-ai await agent.run, gather with Semaphore(workers), one Agent",
        m_agent_asyncio,
        recommended=True,
    ),
    Strategy(
        "agent-max-concurrency",
        "pydantic-ai Agent(max_concurrency=workers), gather with no bound",
        m_agent_max_concurrency,
        recommended=True,
    ),
    Strategy(
        "agent-shared-model-unsafe",
        "UNSAFE: Agent(model).run_sync(prompt) on pool threads, a new Agent a call over one shared model",
        m_agent_shared_model_unsafe,
    ),
]
BY_NAME = {s.name: s for s in STRATEGIES}


def ideal_of(strategy: Strategy, n: int, workers: int | None) -> float:
    if strategy.sequential:
        return n * LATENCY
    if workers is None:
        return LATENCY
    return math.ceil(n / workers) * LATENCY


# --- the run ------------------------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[Cell]:
    ns = args.n or (QUICK_NS if args.quick else NS)
    workers = args.workers or WORKERS
    chosen = [BY_NAME[name] for name in args.only] if args.only else STRATEGIES
    cells = []
    for n in ns:
        for strategy in chosen:
            extra = [w for w in strategy.also_workers if n >= 1000 and w not in workers and not args.workers]
            for w in [*workers, *extra] if strategy.bounded else [None]:
                cell = Cell(strategy.name, w, n, ideal_of(strategy, n, w))
                if cell.ideal > args.max_ideal:
                    cell.skipped = f"ideal {cell.ideal:g} s > --max-ideal {args.max_ideal:g} s"
                elif strategy.max_n is not None and n > strategy.max_n and not args.full:
                    cell.skipped = f"{n} threads at once: only with --full"
                cells.append(cell)
    return cells


def warm_up(b: Bench) -> dict[str, float]:
    """Import and run every code path once, then measure what one call costs on a warm connection."""
    from pydantic_ai import Agent

    async def warm_async() -> None:
        async with b.target.async_client(connections=2) as client:
            await ask_async(client, b.model, "Reply: warm")
        async with Agent(b.chat_model()) as agent:
            await agent.run("Reply: warm")

    run_in_new_loop(warm_async())
    kept, fresh = [], []
    with b.target.client(connections=1) as client:
        ask(client, b.model, "Reply: warm")
        for i in range(5):
            t0 = time.perf_counter()
            ask(client, b.model, f"Reply: probe{i}")
            kept.append(time.perf_counter() - t0)
    for i in range(5):
        with b.target.client(connections=1) as client:
            t0 = time.perf_counter()
            ask(client, b.model, f"Reply: fresh{i}")
            fresh.append(time.perf_counter() - t0)
    return {
        "kept_alive": statistics.median(kept),
        "fresh_connection": statistics.median(fresh),
        "server_bursts": server_bursts(b),
    }


def server_bursts(b: Bench, sizes: Sequence[int] = (30, 100, 300, 1000)) -> dict[str, float]:
    """The simulator alone, with the cheapest possible client: k raw sockets, connected beforehand, each sending
    one request at the same moment. Returns, per k, how long after the latency the last answer arrived: the
    time the server itself needs for a burst of k calls (it serves them on one core)."""
    import selectors
    import socket

    host, port = httpx.URL(b.target.base_url).host, httpx.URL(b.target.base_url).port
    out: dict[str, float] = {}
    for k in sizes:
        socks: list[socket.socket] = []
        try:
            for _ in range(k):
                sock = socket.create_connection((host, port))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                socks.append(sock)
            payloads = []
            for i in range(k):
                body = json.dumps({"model": b.model, "messages": [{"role": "user", "content": f"Reply: b{i}"}]})
                head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                payloads.append(f"{head}Content-Length: {len(body)}\r\n\r\n{body}".encode())
            time.sleep(0.2)
            selector = selectors.DefaultSelector()
            t0 = time.perf_counter()
            for sock, payload in zip(socks, payloads, strict=True):
                sock.sendall(payload)
            for sock in socks:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, bytearray())
            left, last = k, 0.0
            while left and time.perf_counter() - t0 < 30:
                for key, _ in selector.select(timeout=1):
                    buf = key.data
                    buf += key.fileobj.recv(65536)  # type: ignore[union-attr]
                    head_end = buf.find(b"\r\n\r\n")
                    if head_end < 0:
                        continue
                    length = re.search(rb"(?i)content-length:\s*(\d+)", bytes(buf[:head_end]))
                    if length and len(buf) - head_end - 4 >= int(length.group(1)):
                        selector.unregister(key.fileobj)
                        left -= 1
                        last = time.perf_counter() - t0
            selector.close()
            out[str(k)] = round(last - LATENCY, 4) if not left else math.nan
        except OSError:  # e.g. too many open files: not measured
            out[str(k)] = math.nan
        finally:
            for sock in socks:
                sock.close()
    return out


def run_cells(b: Bench, cells: list[Cell], repeats: int, began: float) -> None:
    todo = [c for c in cells if not c.skipped]
    for k, cell in enumerate(todo, 1):
        strategy = BY_NAME[cell.strategy]
        t0 = time.perf_counter()
        try:
            cell.runs = strategy.measure(b, cell.n, cell.workers, repeats)
        except Exception as exc:  # a crash of the strategy itself: recorded, and the benchmark goes on
            cell.runs = [
                Measurement(
                    math.nan,
                    math.nan,
                    math.nan,
                    cell.n,
                    messages=Counter({_normalise(f"crashed: {type(exc).__name__}: {exc}"): 1}),
                )
            ]
        cell.seconds = time.perf_counter() - t0
        walls = " ".join(f"{m.wall:.2f}" for m in cell.runs)
        w = "-" if cell.workers is None else str(cell.workers)
        status = "HUNG " if cell.hung else ""
        print(
            f"[{k:3d}/{len(todo)}] {cell.strategy:<25} w={w:>3} N={cell.n:<5} wall {cell.wall:7.2f} s "
            f"({walls})  ideal {cell.ideal:6.2f}  eff {cell.efficiency:5.2f}  cpu {cell.median('cpu'):6.2f} s  "
            f"server {cell.median('sim_cpu'):5.2f} s  {status}errors {cell.errors}"
            f"  [{_clock(time.perf_counter() - began)}]",
            flush=True,
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s"


# --- the table ------------------------------------------------------------------------------------------------

COLUMNS = [
    "N",
    "strategy",
    "workers",
    "wall s",
    "ideal s",
    "efficiency",
    "over ideal",
    "client CPU s",
    "CPU/call ms",
    "server CPU s",
    "server peak",
    "errors",
    "vs naive",
]


def _over(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    return f"{seconds * 1000:+.0f} ms" if abs(seconds) < 1 else f"{seconds:+.2f} s"


def rows(cells: list[Cell]) -> list[list[str]]:
    naive = {c.n: c.wall for c in cells if c.strategy == NAIVE and c.measured}
    out = []
    for c in cells:
        w = "-" if c.workers is None else str(c.workers)
        if not c.measured:
            out.append([str(c.n), c.strategy, w, "", f"{c.ideal:g}", *[""] * 7, f"skipped: {c.skipped}"])
            continue
        wall = f"> {c.wall:.2f}" if c.hung else f"{c.wall:.2f}"
        sim_cpu, share = c.median("sim_cpu"), c.median("sim_cpu") / c.wall if c.wall else math.nan
        errors = "hung, " if c.hung else ""
        errors += str(c.errors) + (f" (max {c.errors_max})" if c.errors_max != c.errors else "")
        ratio = f"{c.wall / naive[c.n]:.3f}" if c.n in naive else "-"
        peak = statistics.median(m.peak_in_flight or 0 for m in c.runs)
        out.append(
            [
                str(c.n),
                c.strategy,
                w,
                wall,
                f"{c.ideal:g}",
                f"{c.efficiency:.2f}",
                _over(c.wall - c.ideal),
                f"{c.median('cpu'):.2f}",
                f"{c.median('cpu') / c.n * 1000:.1f}",
                f"{sim_cpu:.2f} ({share:.0%})",
                f"{peak:.0f}",
                errors,
                ratio,
            ]
        )
    return out


def text_table(cells: list[Cell]) -> str:
    table = [COLUMNS, *rows(cells)]
    widths = [max(len(r[i]) for r in table if not r[-1].startswith("skipped") or i < 5) for i in range(len(COLUMNS))]
    lines = []
    for r in table:
        if r[-1].startswith("skipped"):
            lines.append("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[-1])
        else:
            lines.append("  ".join(v.rjust(widths[i]) if i > 2 else v.ljust(widths[i]) for i, v in enumerate(r)))
    return "\n".join(lines)


def markdown_table(cells: list[Cell]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if i > 2 else "---" for i in range(len(COLUMNS))) + "|",
    ]
    for r in rows(cells):
        if r[-1].startswith("skipped"):
            r = [*r[:5], *[""] * (len(COLUMNS) - 6), r[-1]]
        lines.append("| " + " | ".join(r) + " |")
    return "\n".join(lines)


# --- the targets --------------------------------------------------------------------------------------------


def checks(cells: list[Cell]) -> list[tuple[str, str]]:
    """The targets of the benchmark, each PASS or FAIL (INFO: a figure worth reading, no target)."""
    measured = [c for c in cells if c.measured]
    recommended = [c for c in measured if BY_NAME[c.strategy].recommended]
    found: list[tuple[str, str]] = []

    def add(ok: bool | None, text: str) -> None:
        found.append(("INFO" if ok is None else "PASS" if ok else "FAIL", text))

    def listed(cs: list[Cell]) -> str:
        return ", ".join(f"{c.strategy} w={c.workers} N={c.n}: {c.efficiency:.2f}" for c in cs)

    small = [c for c in recommended if c.n <= 300 and c.workers in (3, SENSIBLE_BOUND)]
    low = [c for c in small if c.efficiency < 0.95]
    if small:
        add(
            not low,
            f"recommended strategies, N <= 300, workers 3 and {SENSIBLE_BOUND}: efficiency >= 0.95 in "
            f"{len(small) - len(low)} of {len(small)} cells" + (f"; below: {listed(low)}" if low else ""),
        )
    starved = [c for c in small if c.efficiency < 0.95 and c.workers is not None and c.n <= c.workers]
    if starved:
        # Every call starts at once, and the client's Python code runs on one core (the GIL): the calls' own CPU
        # time is spent one after another, around the one latency they all wait out together.
        add(
            None,
            "where those cells lose their time: all N calls start at once, and the client's CPU work for them runs "
            "one call after another on one core; the client CPU of the run against its time over ideal: "
            + ", ".join(
                f"{c.strategy} w={c.workers} N={c.n}: {c.median('cpu') * 1000:.0f} ms CPU "
                f"({c.median('cpu') / c.n * 1000:.1f} ms a call), {_over(c.wall - c.ideal)}"
                for c in starved
            ),
        )
    big = [c for c in recommended if c.n == 1000 and c.workers == SENSIBLE_BOUND]
    low = [c for c in big if c.efficiency < 0.9]
    if big:
        add(
            not low,
            f"recommended strategies, N = 1000, workers {SENSIBLE_BOUND}: efficiency >= 0.9 in "
            f"{len(big) - len(low)} of {len(big)} cells" + (f"; below: {listed(low)}" if low else ""),
        )
    hundred = [c for c in recommended if c.workers == 100 and c.n >= 300]
    if hundred:
        add(None, f"recommended strategies at 100 workers, N >= 300: {listed(hundred)}")
    three = [c for c in recommended if c.n == 3]
    over = [c for c in three if c.wall - c.ideal > 0.030]
    worst = max(three, key=lambda c: c.wall - c.ideal, default=None)
    if worst:
        add(
            not over,
            f"N = 3, warm clients: overhead over ideal <= 30 ms in {len(three) - len(over)} of "
            f"{len(three)} cells (worst {worst.strategy} w={worst.workers}: {_over(worst.wall - worst.ideal)})",
        )
    largest = max((c.n for c in measured), default=0)
    naive = next((c for c in measured if c.strategy == NAIVE and c.n == largest), None)
    bounded = [
        c for c in measured if c.n == largest and c.strategy.startswith("asyncio") and "unbounded" not in c.strategy
    ]
    if naive and bounded:
        best = min(bounded, key=lambda c: c.wall)
        at_bound = [c.wall for c in bounded if c.workers == SENSIBLE_BOUND]
        also = ""
        if at_bound and best.workers != SENSIBLE_BOUND:
            also = f"; at {SENSIBLE_BOUND} workers {naive.wall / min(at_bound):.1f}x"
        add(
            naive.wall / best.wall >= 10,
            f"N = {largest}: the fastest bounded asyncio cell ({best.strategy}, "
            f"{best.workers} workers, {best.wall:.2f} s) is {naive.wall / best.wall:.1f}x faster than {NAIVE} "
            f"({naive.wall:.2f} s){also}; target >= 10x",
        )
    bad = [c for c in recommended if c.errors_max or c.hung]
    add(
        not bad,
        "no recommended strategy errs or hangs"
        if not bad
        else "recommended strategies with errors: "
        + ", ".join(f"{c.strategy} w={c.workers} N={c.n}: {c.errors_max}" for c in bad),
    )
    served = [c for c in measured if not math.isnan(c.median("sim_cpu")) and c.wall > 0]
    if served:
        busiest = max(served, key=lambda c: c.median("sim_cpu") / c.wall)
        share = busiest.median("sim_cpu") / busiest.wall
        add(
            None,
            f"the simulator used at most {share:.0%} of one core over a run ({busiest.strategy}, workers "
            f"{busiest.workers or '-'}, N {busiest.n}: {busiest.median('sim_cpu'):.2f} s CPU in {busiest.wall:.2f} s)"
            + (": not the bottleneck" if share < 0.5 else ": it may be the bottleneck"),
        )
    return found


# --- the picture --------------------------------------------------------------------------------------------

STYLE = {
    "sequential": ("#555555", "s", "--"),
    "threads": ("#1f77b4", "o", "-"),
    "threads-completion": ("#6baed6", "^", "-"),
    "asyncio": ("#2ca02c", "o", "-"),
    "asyncio-completion": ("#98df8a", "^", "-"),
    "asyncio-sharded": ("#006400", "P", "-"),
    "asyncio-httpx2": ("#bcbd22", "X", "-"),
    "asyncio-unbounded-shared": ("#17becf", "D", "--"),
    "asyncio-unbounded-raised": ("#0b6e79", "d", "--"),
    "naive-threads": ("#8c564b", "v", ":"),
    NAIVE: ("#7f7f7f", "v", ":"),
    "agent-threads": ("#ff7f0e", "o", "-"),
    "agent-asyncio": ("#9467bd", "o", "-"),
    "agent-max-concurrency": ("#e377c2", "^", "-"),
    "agent-shared-model-unsafe": ("#d62728", "X", "-."),
}


def _failed_note(c: Cell) -> str:
    if c.hung:
        return "hung"
    if not c.errors_max:
        return ""
    share = c.errors_max / c.n
    return f"{share:.0%} failed" if share >= 0.01 else f"{c.errors_max} of {c.n} failed"


def plot(cells: list[Cell], path: Path, title: str) -> None:
    """Efficiency against N (log x), one panel per worker count and one for the strategies without a bound; below
    them, the wall time of every strategy at the largest N, one bar each, fastest first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [c for c in cells if c.measured and not math.isnan(c.wall)]
    ns = sorted({c.n for c in cells})
    # A worker count measured at one N only (the many-in-flight cells at N = 1000) has no line: its bar shows it.
    counts = Counter(c.workers for c in measured if c.workers is not None)
    panels: list[int | None] = sorted(
        w for w, k in counts.items() if len({c.n for c in measured if c.workers == w}) > 1
    )
    if any(c.workers is None for c in measured):
        panels.append(None)
    largest = max((c.n for c in measured), default=0)
    bars = sorted((c for c in measured if c.n == largest), key=lambda c: c.wall)
    cols = 2 if len(panels) > 1 else 1
    line_rows = math.ceil(len(panels) / cols)
    bar_height = 0.32 * len(bars) + 1.2 if bars else 0.0
    height = 4.6 * line_rows + bar_height + 1.6
    fig = plt.figure(figsize=(7.2 * cols, height))
    grid = fig.add_gridspec(
        line_rows + (1 if bars else 0), cols, height_ratios=[4.6] * line_rows + ([bar_height] if bars else [])
    )
    axes = [fig.add_subplot(grid[i // cols, i % cols]) for i in range(len(panels))]
    handles: dict[str, Any] = {}
    for ax, w in zip(axes, panels, strict=True):
        for strategy in STRATEGIES:
            mine = sorted((c for c in measured if c.strategy == strategy.name and c.workers == w), key=lambda c: c.n)
            if not mine:
                continue
            color, marker, line = STYLE.get(strategy.name, ("black", "o", "-"))
            label = strategy.name + ("  (NOT SAFE)" if strategy.name == "agent-shared-model-unsafe" else "")
            xs, ys = [c.n for c in mine], [min(c.efficiency, 1.1) for c in mine]
            (h,) = ax.plot(
                xs,
                ys,
                line,
                marker=marker,
                color=color,
                lw=2.4 if strategy.recommended else 1.5,
                ms=7,
                alpha=0.9,
                label=label,
            )
            handles.setdefault(label, h)
            for c, y in zip(mine, ys, strict=True):
                note = _failed_note(c)
                if note:
                    ax.annotate(note, (c.n, y), textcoords="offset points", xytext=(6, -12), color=color, fontsize=8.5)
        ax.axhline(0.95, color="#888888", lw=0.9, ls=":")
        ax.axhline(0.9, color="#bbbbbb", lw=0.9, ls=":")
        ax.set_xscale("log")
        ax.set_xticks(ns)
        ax.set_xticklabels([str(n) for n in ns])
        ax.minorticks_off()
        ax.set_ylim(-0.03, 1.15)
        ax.set_xlim(min(ns) / 1.6, max(ns) * 1.9)
        ax.grid(True, which="major", alpha=0.25)
        ax.set_xlabel("N (calls)")
        ax.set_ylabel("efficiency (ideal / wall)")
        if w is None:
            ax.set_title(f"no bound: ideal = {LATENCY:g} s (sequential: N x {LATENCY:g} s)", fontsize=11)
        else:
            ax.set_title(f"{w} workers: ideal = ceil(N / {w}) x {LATENCY:g} s", fontsize=11)
    if bars:
        ax = fig.add_subplot(grid[line_rows, :])
        names = [
            c.strategy + (f" ({c.workers})" if c.workers else "" if c.strategy == "sequential" else " (all)")
            for c in bars
        ]
        ys = list(range(len(bars)))[::-1]
        colors = [STYLE.get(c.strategy, ("black", "o", "-"))[0] for c in bars]
        ax.barh(ys, [c.wall for c in bars], color=colors, alpha=0.85, height=0.7)
        ax.scatter([c.ideal for c in bars], ys, marker="|", s=260, color="black", zorder=3, label="ideal")
        top = max(c.wall for c in bars)
        for y, c in zip(ys, bars, strict=True):
            note = _failed_note(c)
            ax.text(
                c.wall + top * 0.006, y, f"{c.wall:.1f} s" + (f"  ({note})" if note else ""), va="center", fontsize=9
            )
        ax.set_yticks(ys)
        ax.set_yticklabels(names, fontsize=9.5)
        ax.set_xlim(0, top * 1.13)
        ax.grid(True, axis="x", alpha=0.25)
        ax.set_xlabel("wall time, s (black tick: ideal; in brackets: calls in flight)")
        ax.set_title(f"N = {largest}: wall time of each strategy, fastest first", fontsize=11)
        handles["ideal wall time (black tick)"] = ax.collections[0]
    if axes:
        (t95,) = axes[0].plot([], [], ":", color="#888888")
        handles["efficiency 0.95 and 0.9 (dotted)"] = t95
    fig.suptitle(title, fontsize=13)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=4, fontsize=10, frameon=False)
    fig.tight_layout(rect=(0, 1.4 / height, 1, 1 - 0.5 / height))
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the report files -----------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    versions = {}
    for name in ("httpx", "httpcore", "httpx2", "openai", "pydantic-ai-slim", "uvicorn", "starlette"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "helpers"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit, dirty = "", ""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "packages": versions,
        "git_commit": commit,
        "helpers_modified": bool(dirty),
    }


def write_results(out: Path, cells: list[Cell], meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    found = checks(cells)
    env = meta["environment"]
    probe = meta["probe"]
    lines = [
        "# Strategies benchmark",
        "",
        f"Written by `benchmarks/strategies.py` on {meta['date']} ({meta['command']}); it took "
        f"{_clock(meta['seconds'])}. Simulator: fixed latency {LATENCY:g} s, no capacity limit, on 127.0.0.1. "
        f"Medians of {meta['repeats']} repeat(s). Warm: before the clock, each bounded strategy sent one batch of "
        "min(N, workers) calls at once, so its connections, worker threads and agents were open, started and "
        "built (the unbounded and naive strategies: one call, and none). Client CPU = CPU time of the benchmark "
        "process during the run (of its child process for agent-shared-model-unsafe); server CPU = CPU time of the "
        "simulator process (in brackets: share of one core over the wall time).",
        "",
        f"Machine: {env['cpus']} CPUs, Python {env['python']}, {env['platform']}; "
        + ", ".join(f"{k} {v}" for k, v in env["packages"].items())
        + f"; git {env['git_commit']}"
        + (" with uncommitted changes in helpers/" if env["helpers_modified"] else "")
        + ".",
        "",
        f"One call on a warm kept-alive connection took {probe['kept_alive'] * 1000:.1f} ms, on a fresh connection "
        f"{probe['fresh_connection'] * 1000:.1f} ms (latency {LATENCY * 1000:.0f} ms). The simulator alone, "
        "fed by raw pre-connected sockets, answered a burst of k simultaneous calls this long after the latency "
        "(its own serving time, on one core): "
        + ", ".join(f"k = {k}: {v * 1000:.0f} ms" for k, v in probe["server_bursts"].items())
        + ".",
        "",
        "**efficiency** = ideal / wall; ideal = ceil(N / workers) x 0.5 s, N x 0.5 s for sequential, 0.5 s for "
        f"unbounded strategies (workers `-`). **vs naive** = wall / wall of {NAIVE} for the same N (below 1 is "
        "faster). **server peak** = most calls the simulator held at once. **errors**: median over repeats.",
        "",
        markdown_table(cells),
        "",
        "## Targets",
        "",
        *[f"- {status}: {text}" for status, text in found],
        "",
        "## Errors seen",
        "",
    ]
    erring = [c for c in cells if c.measured and c.messages]
    if not erring:
        lines.append("None.")
    for c in erring:
        w = "-" if c.workers is None else c.workers
        shown = "; ".join(f"{count} x `{msg}`" for msg, count in c.messages.most_common(4))
        lines.append(f"- {c.strategy}, workers {w}, N {c.n} (all repeats): {shown}")
    lines.append("")
    (out / "strategies.md").write_text("\n".join(lines))
    data = {
        **meta,
        "latency": LATENCY,
        "checks": [{"status": st, "text": t} for st, t in found],
        "cells": [c.to_json() for c in cells],
    }
    (out / "strategies.json").write_text(json.dumps(data, indent=1) + "\n")
    plot(
        cells,
        out / "strategies.png",
        f"Efficiency of each strategy against a simulator at a fixed {LATENCY:g} s latency "
        f"({env['cpus']} CPUs, medians of {meta['repeats']})",
    )


# --- main ------------------------------------------------------------------------------------------------------


def _numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in names if x not in BY_NAME]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown strategies {unknown}; choose from {', '.join(BY_NAME)}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N in 3, 30, 300 and one repeat")
    p.add_argument("--repeats", type=int, default=None, help="runs per cell, the table shows medians (default 3)")
    p.add_argument(
        "--max-ideal",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="skip cells whose ideal wall time is longer (default 30)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where results go")
    p.add_argument("--full", action="store_true", help="also naive-threads with 1000 threads")
    p.add_argument("--only", type=_names, default=None, metavar="NAME,...", help="only these strategies")
    p.add_argument("--n", type=_numbers, default=None, metavar="N,...", help="numbers of calls (default 3,30,300,1000)")
    p.add_argument("--workers", type=_numbers, default=None, metavar="W,...", help="worker counts (default 3,32,100)")
    p.add_argument(
        "--unsafe-timeout",
        type=float,
        default=UNSAFE_CALL_TIMEOUT,
        metavar="SECONDS",
        help="per-call timeout of agent-shared-model-unsafe (default 10)",
    )
    p.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="measure nothing: write the table and plot again from a strategies.json (into --out)",
    )
    p.add_argument("--child-unsafe", default=None, help=argparse.SUPPRESS)
    return p


def load(path: Path) -> tuple[list[Cell], dict[str, Any]]:
    """The cells and the description of a run, from the strategies.json it wrote."""
    data = json.loads(path.read_text())
    cells = []
    for c in data["cells"]:
        cell = Cell(c["strategy"], c["workers"], c["n"], c["ideal"], c["skipped"])
        cell.seconds = c.get("seconds_with_setup", 0.0)
        for r in c.get("runs", []):
            cell.runs.append(
                Measurement(
                    r["wall"],
                    r["client_cpu"],
                    r["server_cpu"],
                    r["errors"],
                    r["timeouts"],
                    r["wrong_answers"],
                    r["server_peak_in_flight"],
                    r["hung"],
                    r["unfinished"],
                    Counter(r["error_messages"]),
                )
            )
        cells.append(cell)
    meta = {k: data[k] for k in ("date", "command", "repeats", "max_ideal", "seconds", "probe", "environment")}
    return cells, meta


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.child_unsafe:
        child_unsafe(args.child_unsafe)
        return 0
    if args.render:
        cells, meta = load(args.render)
        write_results(args.out, cells, meta)
        print(f"wrote {args.out}/strategies.md, .json, .png from {args.render}")
        return 0
    repeats = args.repeats or (1 if args.quick else 3)
    if repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    began = time.perf_counter()
    cells = plan(args)
    todo = [c for c in cells if not c.skipped]
    print(
        f"{len(todo)} cells x {repeats} repeat(s), {len(cells) - len(todo)} skipped; "
        f"simulator at a fixed {LATENCY:g} s latency",
        flush=True,
    )
    with simulator.start(latency=LATENCY, profile="fixed", seed=0) as sim:
        bench = Bench(sim, args.unsafe_timeout)
        probe = warm_up(bench)
        print(
            f"one call: {probe['kept_alive'] * 1000:.1f} ms on a warm kept-alive connection, "
            f"{probe['fresh_connection'] * 1000:.1f} ms on a fresh one",
            flush=True,
        )
        print(
            "the simulator alone (raw sockets) answers a burst of k simultaneous calls this late after the "
            "latency: " + ", ".join(f"k={k}: {v * 1000:.0f} ms" for k, v in probe["server_bursts"].items()),
            flush=True,
        )
        if probe["kept_alive"] - probe["fresh_connection"] > 0.02:
            print(
                "  warning: calls on kept-alive connections are slower than on fresh ones: the server's answers "
                "are held back (Nagle's algorithm and delayed ACKs: is TCP_NODELAY set on its sockets?)",
                flush=True,
            )
        run_cells(bench, cells, repeats, began)
    seconds = time.perf_counter() - began
    print()
    print(text_table(cells))
    print()
    for status, text in checks(cells):
        print(f"{status}  {text}")
    command = "python benchmarks/strategies.py" + (
        "" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "repeats": repeats,
        "max_ideal": args.max_ideal,
        "seconds": round(seconds, 1),
        "probe": probe,
        "environment": environment(),
    }
    write_results(args.out, cells, meta)
    print(f"\nwrote {args.out}/strategies.md, .json, .png; total time {_clock(seconds)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
