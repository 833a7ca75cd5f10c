"""Many requests at once: 100 concurrent calls are all in flight together; capacity queues the rest.

Counts come from the server's stats; the only wall-clock checks are generous lower bounds."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
import pytest

from helpers import simulator


def user(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}]


async def _concurrent(sim: simulator.Simulator, n: int) -> tuple[float, list[httpx.Response]]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=sim.api_url, limits=limits, timeout=30) as client:
        began = time.perf_counter()
        responses = await asyncio.gather(
            *(
                client.post("/chat/completions", json={"model": "sim-1", "messages": user(f"Reply: {i}")})
                for i in range(n)
            )
        )
        return time.perf_counter() - began, list(responses)


def test_100_concurrent_requests_all_in_flight(sim: simulator.Simulator, capsys: pytest.CaptureFixture[str]) -> None:
    latency = 0.5
    sim.configure(latency=latency)
    wall, responses = asyncio.run(_concurrent(sim, 100))

    stats = sim.stats()
    with capsys.disabled():
        print(
            f"\n100 concurrent requests, latency {latency} s: peak in flight {stats['peak_in_flight']}, "
            f"wall {wall:.2f} s"
        )
    assert [r.status_code for r in responses] == [200] * 100
    assert [r.json()["choices"][0]["message"]["content"] for r in responses] == [str(i) for i in range(100)]
    assert stats["peak_in_flight"] == 100
    assert stats["by_status"] == {"200": 100}
    assert all(r["planned_latency"] == latency for r in stats["records"])
    assert wall >= latency * 0.9  # lower bound only: they ran together, none was answered early


def test_capacity_queues_the_rest(sim: simulator.Simulator) -> None:
    latency = 0.3
    sim.configure(latency=latency, capacity=2)
    wall, responses = asyncio.run(_concurrent(sim, 6))

    stats = sim.stats()
    assert [r.status_code for r in responses] == [200] * 6
    assert stats["peak_serving"] == 2
    assert stats["peak_in_flight"] == 6
    assert wall >= 3 * latency * 0.9  # three rounds of two; lower bound only
    # Queued requests started serving later than they arrived.
    waits = sorted(r["started"] - r["received"] for r in stats["records"])
    assert waits[-1] >= latency * 0.9


def test_reused_connection_adds_no_hidden_delay(sim: simulator.Simulator) -> None:
    # With Nagle's algorithm on the server socket, each answer on a kept-alive connection waited for the
    # client's delayed ACK (40 ms or more on Linux). The median of 20 calls with zero latency shows it.
    sim.configure(latency=0.0)
    body = {"model": "sim-1", "messages": user("Reply: x")}
    times = []
    with httpx.Client(base_url=sim.api_url, timeout=10) as client:
        client.post("/chat/completions", json=body)
        for _ in range(20):
            began = time.perf_counter()
            client.post("/chat/completions", json=body)
            times.append(time.perf_counter() - began)
    assert statistics.median(times) < 0.035, f"median round trip {statistics.median(times) * 1000:.0f} ms"
