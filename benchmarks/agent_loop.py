"""Where does an agent call lose its time on one event loop? pydantic-ai on one loop vs on a thread each.

Run by hand (not a test), about a minute:

    .venv/bin/python benchmarks/agent_loop.py [--n 300] [--workers 32] [--repeats 3]

The simulator answers every call in exactly 0.5 s. Four strategies run the same N prompts with ``workers`` in
flight, warmed up first: plain httpx on threads and on asyncio, then pydantic-ai agents with ``agent.run`` on
one event loop and with ``run_sync`` on an ``AgentThreadPool`` (a thread, a loop and an agent each). For every
call, the simulator's own request log says when the request arrived and when it was answered, so each call's
time splits into: from its start to the server having the request ("before"), the 0.5 s at the server, and from
the answer to the call being done ("after"). The medians show where the client spends time. Writes
``results/agent_loop.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers import AgentThreadPool, simulator
from helpers.calls import ask, ask_async
from helpers.runs import RunReport, run_agent_async, run_async, run_threads
from helpers.settings import Target

LATENCY = 0.5
ROOT = Path(__file__).resolve().parent.parent


def split(sim: simulator.Simulator, report: RunReport, t0: float) -> tuple[float, float]:
    """Median time before the server had each request, and after it answered, in seconds."""
    seen = {r["prompt"]: r for r in sim.stats(records=True)["records"]}
    before = [seen[c.prompt]["received"] - t0 - c.start for c in report.records]
    after = [c.end - (seen[c.prompt]["ended"] - t0) for c in report.records]
    return statistics.median(before), statistics.median(after)


def _row(sim: simulator.Simulator, report: RunReport, t0: float) -> dict[str, float]:
    before, after = split(sim, report, t0)
    return {
        "wall": report.wall,
        "cpu": report.cpu / report.n,
        "before": before,
        "after": after,
        "failed": len(report.failures),
    }


def measure(sim: simulator.Simulator, run: Callable[[], RunReport], repeats: int) -> list[dict[str, float]]:
    out = []
    for _ in range(repeats):
        time.sleep(0.2)
        sim.reset()
        t0 = time.time()  # the run's clock starts right after this: its times are seconds since about now
        out.append(_row(sim, run(), t0))
    return out


async def measure_async(
    sim: simulator.Simulator, run: Callable[[], Awaitable[RunReport]], repeats: int
) -> list[dict[str, float]]:
    out = []
    for _ in range(repeats):
        await asyncio.sleep(0.2)
        sim.reset()
        t0 = time.time()
        out.append(_row(sim, await run(), t0))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300, help="calls per run (default 300)")
    p.add_argument("--workers", type=int, default=32, help="calls in flight (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="runs per strategy, medians shown (default 3)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where results go")
    args = p.parse_args()
    if args.n < 1 or args.workers < 1 or args.repeats < 1:
        raise SystemExit("--n, --workers and --repeats must be at least 1")
    from pydantic_ai import Agent

    n, w = args.n, args.workers
    prompts = [f"Reply: p{i}" for i in range(n)]
    warm = [f"Reply: warm{i}" for i in range(min(n, w))]
    rows: dict[str, list[dict[str, float]]] = {}
    with simulator.start(latency=LATENCY, profile="fixed", seed=0) as sim:
        target = Target(base_url=sim.api_url, model=sim._config.models[0], simulator=sim)
        with target.client(connections=w) as client, ThreadPoolExecutor(max_workers=w) as pool:

            def call(prompt: str) -> str:
                return ask(client, target.model, prompt)

            run_threads(call, warm, executor=pool)
            rows["httpx, threads"] = measure(sim, lambda: run_threads(call, prompts, executor=pool), args.repeats)

        async def on_one_loop() -> None:
            async with target.async_client(connections=w) as aclient:

                async def acall(prompt: str) -> str:
                    return await ask_async(aclient, target.model, prompt)

                await run_async(acall, warm, limit=w)
                rows["httpx, asyncio"] = await measure_async(
                    sim, lambda: run_async(acall, prompts, limit=w), args.repeats
                )
            async with Agent(target.chat_model()) as agent:
                await run_agent_async(agent, warm, limit=w)
                rows["pydantic-ai, agent.run on one loop"] = await measure_async(
                    sim, lambda: run_agent_async(agent, prompts, limit=w), args.repeats
                )

        asyncio.run(on_one_loop())
        with AgentThreadPool(lambda: Agent(target.chat_model()), workers=min(n, w)) as agents:
            agents.warm()
            rows["pydantic-ai, run_sync on a thread each"] = measure(sim, lambda: agents.run(prompts), args.repeats)

    ideal = math.ceil(n / w) * LATENCY
    lines = [
        f"| {n} calls, {w} in flight | wall s | efficiency | CPU/call ms | before the request left ms | "
        "after the answer came ms | failed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in rows.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        lines.append(
            f"| {name} | {med['wall']:.2f} | {ideal / med['wall']:.2f} | {med['cpu'] * 1000:.1f} | "
            f"{med['before'] * 1000:.1f} | {med['after'] * 1000:.1f} | {med['failed']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "agent_loop.md").write_text(
        "# pydantic-ai on one event loop vs a thread each\n\n"
        f"Written by `benchmarks/agent_loop.py` (--n {n} --workers {w} --repeats {args.repeats}) on "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC. Simulator at a fixed {LATENCY:g} s; ideal "
        f"{ideal:g} s; medians of {args.repeats}. *Before*: from a call's start to the simulator having its "
        "request; *after*: from the simulator's answer to the call being done (the simulator's own request log).\n\n"
        + table
        + "\n"
    )
    print(f"\nwrote {args.out / 'agent_loop.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
