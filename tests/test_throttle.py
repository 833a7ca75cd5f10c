"""The RPM/TPM throttle (helpers.throttle): turns handed out at the rate asked, from threads, from asyncio
tasks and from several event loops at once, and clear errors for limits that make no sense.

A throttle never lets a call start early, so lower bounds are exact (up to clock granularity); upper bounds are
generous, for a loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import httpx
import pytest

from helpers import simulator
from helpers.calls import ask, ask_async
from helpers.runs import run_async, run_in_new_loop, run_threads
from helpers.throttle import Throttle

EPS = 0.005  # clock granularity


def assert_paced(times: list[float], began: float, per_second: float, burst: int = 1) -> None:
    """Turn k (in the order they were given) never comes before (k + 1 - burst) / rate seconds from the start."""
    for k, t in enumerate(sorted(times)):
        assert t - began >= (k + 1 - burst) / per_second - EPS, f"turn {k} came {t - began:.3f} s after the start"


# --- the bucket's arithmetic, without sleeping -----------------------------------------------------------------


def test_reservations_are_spaced_by_the_rate() -> None:
    throttle = Throttle(rpm=600)  # one request every 0.1 s
    waits = [throttle.reserve() for _ in range(5)]
    assert waits[0] == pytest.approx(0.0, abs=EPS)
    for k in range(1, 5):
        assert waits[k] == pytest.approx(0.1 * k, abs=0.02)


def test_burst_lets_a_few_go_back_to_back() -> None:
    throttle = Throttle(rpm=600, burst=3)
    waits = [throttle.reserve() for _ in range(5)]
    assert waits[:3] == pytest.approx([0.0, 0.0, 0.0], abs=EPS)
    assert waits[3:] == pytest.approx([0.1, 0.2], abs=0.02)


def test_tokens_per_minute() -> None:
    throttle = Throttle(tpm=6000)  # 100 tokens a second, a second's worth in the bucket
    waits = [throttle.reserve(50) for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.0, 0.5, 1.0], abs=0.02)
    assert throttle.reserve(0) == pytest.approx(0.0, abs=EPS)  # a call of no tokens does not wait on tokens


def test_a_call_bigger_than_the_bucket_goes_when_it_is_full_and_leaves_a_debt() -> None:
    throttle = Throttle(tpm=6000)
    assert throttle.reserve(300) == pytest.approx(0.0, abs=EPS)
    assert throttle.reserve(10) == pytest.approx(2.1, abs=0.02)  # 300 tokens used of a 100-token, 100/s bucket


def test_both_limits_at_once_wait_for_the_slower() -> None:
    throttle = Throttle(rpm=600, tpm=6000)
    assert throttle.reserve(100) == pytest.approx(0.0, abs=EPS)
    assert throttle.reserve(100) == pytest.approx(1.0, abs=0.02)  # tokens, not requests, set the pace here
    assert throttle.reserve(0) == pytest.approx(1.1, abs=0.02)  # the next request slot after that one


# --- real waiting from threads and from asyncio ------------------------------------------------------------------


def test_threads_share_the_pace() -> None:
    throttle = Throttle(rpm=600)
    times: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            throttle.acquire()
            with lock:
                times.append(time.monotonic())

    began = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    assert len(times) == 20
    assert_paced(times, began, per_second=10)
    assert 1.9 - EPS <= elapsed < 5.0  # 20 turns, 0.1 s apart
    assert throttle.acquired == 20 and throttle.waited > 0


def test_asyncio_tasks_share_the_pace_without_blocking_the_loop() -> None:
    throttle = Throttle(rpm=600)
    times: list[float] = []
    ticks = 0

    async def task() -> None:
        await throttle.acquire_async()
        times.append(time.monotonic())

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    async def go() -> float:
        stop = asyncio.Event()
        tick = asyncio.ensure_future(ticker(stop))
        began = time.monotonic()
        await asyncio.gather(*(task() for _ in range(20)))
        stop.set()
        await tick
        return began

    began = asyncio.run(go())
    assert len(times) == 20
    assert_paced(times, began, per_second=10)
    assert max(times) - began < 5.0
    assert ticks >= 20  # the loop kept running other tasks while the 20 waited (about 190 ticks unloaded)


def test_several_event_loops_and_threads_share_one_throttle() -> None:
    throttle = Throttle(rpm=1200)  # 20 a second
    times: list[float] = []
    lock = threading.Lock()

    async def many(n: int) -> None:
        async def one() -> None:
            await throttle.acquire_async()
            with lock:
                times.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(n)))

    def in_thread() -> None:
        for _ in range(5):
            throttle.acquire()
            with lock:
                times.append(time.monotonic())

    began = time.monotonic()
    workers = [threading.Thread(target=asyncio.run, args=(many(5),)) for _ in range(2)]
    workers.append(threading.Thread(target=in_thread))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(times) == 15
    assert_paced(times, began, per_second=20)
    assert max(times) - began < 5.0


def test_cancelled_waiter_gives_up_its_turn() -> None:
    throttle = Throttle(rpm=60)  # one a second

    async def go() -> None:
        await throttle.acquire_async()  # the first goes at once
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(throttle.acquire_async(), timeout=0.05)  # booked for 1 s, cancelled

    began = time.monotonic()
    asyncio.run(go())
    starts_at = time.monotonic() + throttle.reserve()
    assert starts_at - began >= 2.0 - EPS  # the cancelled turn (at 1 s) is not given again


# --- wrapped calls in the runners, against the simulator ------------------------------------------------------


def test_wrapped_call_in_run_threads(sim: simulator.Simulator) -> None:
    throttle = Throttle(rpm=1200)
    prompts = [f"Reply: t{i}" for i in range(10)]
    with httpx.Client(base_url=sim.api_url, timeout=10.0) as client:
        call = throttle.wrap(lambda p: ask(client, "sim-1", p))
        report = run_threads(call, prompts, workers=4)
    assert report.answers == [f"t{i}" for i in range(10)]
    received = [r["received"] for r in sim.stats()["records"]]  # when the server saw each request
    assert len(received) == 10
    assert max(received) - min(received) >= 9 * 0.05 - 0.02  # 10 starts, 0.05 s apart


def test_wrapped_coroutine_in_run_async(sim: simulator.Simulator) -> None:
    throttle = Throttle(rpm=1200)
    prompts = [f"Reply: a{i}" for i in range(10)]

    async def go() -> Any:
        async with httpx.AsyncClient(base_url=sim.api_url, timeout=10.0) as client:

            async def acall(prompt: str) -> str:
                return await ask_async(client, "sim-1", prompt)

            return await run_async(throttle.wrap(acall), prompts, limit=None)

    report = run_in_new_loop(go())
    assert report.answers == [f"a{i}" for i in range(10)]
    received = [r["received"] for r in sim.stats()["records"]]
    assert max(received) - min(received) >= 9 * 0.05 - 0.02


# --- bad limits ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"rpm": 0}, "rpm"),
        ({"rpm": -60}, "rpm"),
        ({"rpm": "60"}, "rpm"),
        ({"rpm": True}, "rpm"),
        ({"rpm": math.nan}, "rpm"),
        ({"rpm": math.inf}, "rpm"),
        ({"tpm": 0}, "tpm"),
        ({"tpm": -1.5}, "tpm"),
        ({"tpm": [1000]}, "tpm"),
        ({}, "rpm"),
        ({"rpm": 60, "burst": 0}, "burst"),
        ({"rpm": 60, "burst": 1.5}, "burst"),
    ],
)
def test_bad_limits_are_clear_errors(options: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Throttle(**options)


@pytest.mark.parametrize("tokens", [-1, 1.5, "10", None])
def test_bad_token_counts_are_clear_errors(tokens: Any) -> None:
    throttle = Throttle(rpm=60, tpm=6000)
    with pytest.raises(ValueError, match="tokens"):
        throttle.acquire(tokens)
    with pytest.raises(ValueError, match="tokens"):
        throttle.wrap(lambda p: p, tokens=tokens)


def test_repr_shows_limits_and_use() -> None:
    throttle = Throttle(rpm=600, tpm=90000, burst=2)
    throttle.reserve(10)
    assert repr(throttle).startswith("Throttle(rpm=600, tpm=90000, burst=2; 1 turns given")
