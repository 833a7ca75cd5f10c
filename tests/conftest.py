"""Shared fixtures: real simulator processes on 127.0.0.1, and clients that are closed after each test.

Every test talks HTTP to a real simulator process over loopback; nothing on the server side is mocked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from helpers import simulator

# The shared simulator's settings at the start of every test: fast, every call the same length.
BASE_SETTINGS: dict[str, Any] = {"seed": 1, "latency": 0.05, "profile": "fixed"}


def base_config() -> dict[str, Any]:
    """Every setting at its default except BASE_SETTINGS (so a test's configure() never leaks into the next)."""
    settings = simulator.SimulatorConfig(**BASE_SETTINGS).public()
    del settings["api_key"]
    return settings


def wait_until_idle(sim: simulator.Simulator, timeout: float = 10.0) -> dict[str, Any]:
    """Wait until the server has no request in flight (a hang or a stream from before may still be ending)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = sim.stats(records=False)
        if stats["in_flight"] == 0 or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


@pytest.fixture(scope="session")
def shared_sim() -> Iterator[simulator.Simulator]:
    sim = simulator.start(**BASE_SETTINGS)
    yield sim
    sim.stop()


@pytest.fixture
def sim(shared_sim: simulator.Simulator) -> simulator.Simulator:
    """The session's simulator, back at BASE_SETTINGS with fresh stats and request numbering."""
    assert wait_until_idle(shared_sim)["in_flight"] == 0, "a request from an earlier test is still in flight"
    shared_sim.configure(**base_config())
    shared_sim.reset()
    return shared_sim


@pytest.fixture(scope="session")
def twins() -> Iterator[tuple[simulator.Simulator, simulator.Simulator, simulator.Simulator]]:
    """Three separate processes: two with seed 7 and one with seed 8 (for determinism across processes)."""
    sims: list[simulator.Simulator] = []
    try:
        for seed in (7, 7, 8):
            sims.append(simulator.start(seed=seed))
        yield sims[0], sims[1], sims[2]
    finally:
        for one in sims:
            one.stop()


@pytest.fixture
def client(sim: simulator.Simulator) -> Iterator[openai.OpenAI]:
    """The official SDK pointed at the shared simulator, retries off so each fault shows as it is."""
    with openai.OpenAI(base_url=sim.api_url, api_key="sk-unused", max_retries=0, timeout=10.0) as oai:
        yield oai


@pytest.fixture
def sync_loop() -> Iterator[list[Any]]:
    """An event loop for pydantic-ai's ``run_sync`` (which runs on the thread's current loop).

    Append the models a test builds: their HTTP clients are closed on this loop before it is closed, so no
    socket or loop is left for the garbage collector to warn about.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    models: list[Any] = []
    try:
        yield models
    finally:
        for model in models:
            loop.run_until_complete(model.client.close())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)


@pytest.fixture
def settle() -> Any:
    """``settle(sim)`` waits until the simulator has nothing in flight and returns its stats."""
    return wait_until_idle
