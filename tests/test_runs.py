"""Runs of many prompts (helpers.runs) against the real local simulator: order, failures, caps, guards, cancel.

Latencies are chosen so that outcomes never depend on scheduling luck: with ``profile="fixed"``, ``ttft`` 0.02 s
and 20 tokens per second, ``"Reply: <k words>"`` takes 0.02 + k / 20 s, so a 10-word prompt (0.52 s) finishes
long after a 1-word one (0.07 s). Timing assertions are generous, to hold on a loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from helpers.calls import ask, ask_async
from helpers.runs import (
    STRATEGIES,
    AgentThreadPool,
    Answer,
    CallRecord,
    RunReport,
    run,
    run_agent_async,
    run_agent_threads,
    run_async,
    run_in_new_loop,
    run_naive_async,
    run_naive_threads,
    run_sequential,
    run_threads,
)
from helpers.settings import Target, connect

SIM_SETTINGS = {"profile": "fixed", "ttft": 0.02, "tokens_per_second": 20.0, "seed": 5}
WORDS = [
    "alpha",
    "bravo",
    "delta",
    "echo",
    "golf",
    "hotel",
    "india",
    "kilo",
    "lima",
    "mike",
    "oscar",
    "papa",
    "romeo",
    "sierra",
    "tango",
    "zulu",
]


def reply(*words: str) -> str:
    return "Reply: " + " ".join(words)


def answer_of(prompt: str) -> str:
    return prompt.removeprefix("Reply: ")


# Slow first, fast last: completion order is the reverse of input order, by 0.2 s or more.
SLOW, MID, FAST = reply(*WORDS[:10]), reply(*WORDS[10:15]), reply(WORDS[15])  # 0.52 s, 0.27 s, 0.07 s
ORDERED = [SLOW, MID, FAST]
ONE_WORD = [reply(w) for w in WORDS[:6]]


def _settle(target: Target) -> Target:
    """Wait until no request of an earlier test is still in flight, then reset the numbering and the stats."""
    sim = target.simulator
    assert sim is not None
    deadline = time.monotonic() + 5.0
    while sim.stats(records=False)["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    sim.reset()
    return target


@pytest.fixture
def target() -> Target:
    return _settle(connect(env={}, **SIM_SETTINGS))


LATENCY = 0.2


@pytest.fixture
def slow_target() -> Target:
    """Every call takes 0.2 s: long enough that calls meant to overlap always do."""
    return _settle(connect(env={}, **SIM_SETTINGS, latency=LATENCY))


@pytest.fixture
def call(target: Target) -> Iterator[Callable[[str], str]]:
    with target.client(connections=10) as client:
        yield lambda prompt: ask(client, target.model, prompt)


def stats(target: Target) -> dict[str, Any]:
    assert target.simulator is not None
    return target.simulator.stats()


def prompt_of_request(target: Target, number: int) -> str:
    """The prompt the simulator saw as request ``number`` (counted from the last reset)."""
    return next(r["prompt"] for r in stats(target)["records"] if r["n"] == number)


def run_async_on(target: Target, prompts: Any, *, fail_on: str | None = None, **options: Any) -> RunReport:
    """``run_async`` with one shared ``AsyncClient``, on a fresh loop; ``fail_on`` makes that prompt raise."""

    async def go() -> RunReport:
        async with target.async_client(connections=20) as client:

            async def acall(prompt: str) -> str:
                if prompt == fail_on:
                    raise RuntimeError(f"boom on {prompt}")
                return await ask_async(client, target.model, prompt)

            return await run_async(acall, prompts, **options)

    return run_in_new_loop(go())


def failing_on(bad: str, call: Callable[[str], str]) -> Callable[[str], str]:
    def wrapped(prompt: str) -> str:
        if prompt == bad:
            raise RuntimeError(f"boom on {prompt}")
        return call(prompt)

    return wrapped


# --- order of delivery --------------------------------------------------------------------------------------


def assert_answers(report: RunReport, prompts: list[str]) -> None:
    assert report.n == len(prompts)
    assert [r.prompt for r in report.records] == prompts
    assert report.answers == [answer_of(p) for p in prompts]
    assert report.failures == []


def test_sequential_is_input_order(target: Target, call: Callable[[str], str]) -> None:
    report = run_sequential(call, ORDERED)
    assert_answers(report, ORDERED)
    assert report.delivery_order == [0, 1, 2]
    assert report.peak_in_flight == 1
    assert report.records[0].end <= report.records[1].start <= report.records[1].end <= report.records[2].start
    assert stats(target)["peak_in_flight"] == 1


def test_threads_input_order_waits_for_the_slow_one(target: Target, call: Callable[[str], str]) -> None:
    report = run_threads(call, ORDERED, workers=3, order="input")
    assert report.strategy == "threads"
    assert_answers(report, ORDERED)
    assert report.delivery_order == [0, 1, 2]
    slow, _, fast = report.records
    assert fast.end < slow.end  # the fast call finished first ...
    assert fast.delivered is not None and fast.delivered >= slow.end  # ... but was handed over after the slow one


def test_threads_completion_order(target: Target, call: Callable[[str], str]) -> None:
    report = run_threads(call, ORDERED, workers=3, order="completion")
    assert report.strategy == "threads-completion"
    assert_answers(report, ORDERED)
    assert report.delivery_order == [2, 1, 0]
    slow, _, fast = report.records
    assert fast.delivered is not None and fast.delivered < slow.end


def test_asyncio_gather_is_input_order(target: Target) -> None:
    report = run_async_on(target, ORDERED, limit=3, order="input")
    assert report.strategy == "asyncio"
    assert_answers(report, ORDERED)
    assert report.delivery_order == [0, 1, 2]
    slow, _, fast = report.records
    assert fast.end < slow.end
    assert fast.delivered is not None and fast.delivered >= slow.end


def test_asyncio_as_completed_is_completion_order(target: Target) -> None:
    report = run_async_on(target, ORDERED, limit=3, order="completion")
    assert report.strategy == "asyncio-completion"
    assert_answers(report, ORDERED)
    assert report.delivery_order == [2, 1, 0]
    slow, _, fast = report.records
    assert fast.delivered is not None and fast.delivered < slow.end


def test_naive_threads_deliver_in_completion_order(target: Target, call: Callable[[str], str]) -> None:
    report = run_naive_threads(call, ORDERED)
    assert report.strategy == "naive-threads"
    assert_answers(report, ORDERED)
    assert report.delivery_order == [2, 1, 0]


def test_naive_asyncio_answers_in_input_order(target: Target) -> None:
    report = run_in_new_loop(run_naive_async(target.base_url, target.model, ORDERED))
    assert report.strategy == "naive-asyncio"
    assert_answers(report, ORDERED)
    assert report.delivery_order == [0, 1, 2]


def test_on_result_sees_every_record_in_delivery_order(target: Target, call: Callable[[str], str]) -> None:
    seen: list[int] = []
    report = run_threads(call, ORDERED, workers=3, order="completion", on_result=lambda r: seen.append(r.index))
    assert seen == report.delivery_order == [2, 1, 0]


# --- one failure never stops the others -----------------------------------------------------------------------

FAULTY = [reply(w) for w in WORDS[:5]]


def _run_kind(kind: str, target: Target, call: Callable[[str], str], prompts: list[str]) -> RunReport:
    if kind == "sequential":
        return run_sequential(call, prompts)
    if kind.startswith("threads-"):
        return run_threads(call, prompts, workers=3, order=kind.removeprefix("threads-"))
    if kind.startswith("asyncio-"):
        return run_async_on(target, prompts, limit=3, order=kind.removeprefix("asyncio-"))
    if kind == "naive-threads":
        return run_naive_threads(call, prompts)
    assert kind == "naive-asyncio"
    return run_in_new_loop(run_naive_async(target.base_url, target.model, prompts))


RUNNERS = [
    "sequential",
    "threads-input",
    "threads-completion",
    "asyncio-input",
    "asyncio-completion",
    "naive-threads",
    "naive-asyncio",
]


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_server_error_fails_only_its_own_call(kind: str, target: Target, call: Callable[[str], str]) -> None:
    target.simulator.configure(script={3: "500"})
    report = _run_kind(kind, target, call, FAULTY)
    assert report.n == len(FAULTY)
    assert [r.index for r in report.records] == list(range(len(FAULTY)))
    assert len(report.failures) == 1
    failed = report.failures[0]
    # Which prompt was request 3 depends on arrival order when calls overlap: ask the simulator.
    assert failed.prompt == prompt_of_request(target, 3)
    assert "500" in failed.error
    assert failed.answer is None and report.answers[failed.index] is None
    assert failed.exception is not None
    for record in report.records:
        if record is not failed:
            assert record.ok and record.answer == answer_of(record.prompt)
    assert sorted(report.delivery_order) == list(range(len(FAULTY)))  # the failed one is delivered too
    assert stats(target)["by_status"] == {"200": 4, "500": 1}
    if kind == "sequential":
        assert failed.index == 2


@pytest.mark.parametrize("kind", [k for k in RUNNERS if k != "naive-asyncio"])
def test_an_exception_in_the_call_fails_only_its_own_call(
    kind: str, target: Target, call: Callable[[str], str]
) -> None:
    bad = FAULTY[1]
    if kind.startswith("asyncio-"):
        report = run_async_on(target, FAULTY, fail_on=bad, limit=3, order=kind.removeprefix("asyncio-"))
    else:
        report = _run_kind(kind, target, failing_on(bad, call), FAULTY)
    assert report.n == len(FAULTY)
    assert [r.index for r in report.failures] == [1]
    failed = report.failures[0]
    assert failed.error == f"RuntimeError: boom on {bad}"
    assert isinstance(failed.exception, RuntimeError)
    assert report.answers == [None if p == bad else answer_of(p) for p in FAULTY]
    assert stats(target)["requests"] == len(FAULTY) - 1


def test_answer_objects_fill_the_record(target: Target) -> None:
    report = run_sequential(lambda p: Answer(text=p.upper(), attempts=3, waited=1.5, tokens=7), ["a", "b"])
    assert report.answers == ["A", "B"]
    assert all(r.attempts == 3 and r.waited == 1.5 and r.tokens == 7 for r in report.records)


# --- how many calls are in flight -------------------------------------------------------------------------


def test_threads_workers_cap_calls_in_flight(slow_target: Target) -> None:
    with slow_target.client(connections=2) as client:
        report = run_threads(lambda p: ask(client, slow_target.model, p), ONE_WORD, workers=2)
    assert_answers(report, ONE_WORD)
    assert report.peak_in_flight == 2
    assert stats(slow_target)["peak_in_flight"] == 2
    assert {r.worker for r in report.records} <= {"thread_0", "thread_1"}


def test_asyncio_limit_caps_calls_in_flight(slow_target: Target) -> None:
    report = run_async_on(slow_target, ONE_WORD, limit=2)
    assert_answers(report, ONE_WORD)
    assert report.peak_in_flight == 2
    assert stats(slow_target)["peak_in_flight"] == 2
    assert {r.worker for r in report.records} == {"slot 1", "slot 2"}


def test_unbounded_asyncio_puts_every_call_in_flight(slow_target: Target) -> None:
    prompts = [reply(w) for w in WORDS[:10]]
    report = run_async_on(slow_target, prompts, limit=None)
    assert_answers(report, prompts)
    assert report.workers is None
    assert report.peak_in_flight == 10
    assert stats(slow_target)["peak_in_flight"] == 10


def test_threads_and_asyncio_beat_sequential(slow_target: Target) -> None:
    prompts = ONE_WORD[:4]
    with slow_target.client(connections=4) as client:

        def one(prompt: str) -> str:
            return ask(client, slow_target.model, prompt)

        sequential = run_sequential(one, prompts)
        threads = run_threads(one, prompts, workers=4)
    concurrent = run_async_on(slow_target, prompts, limit=4)
    assert sequential.wall >= 4 * LATENCY
    assert threads.wall < 0.8 * sequential.wall
    assert concurrent.wall < 0.8 * sequential.wall
    assert threads.overlap > 1.25 and concurrent.overlap > 1.25
    assert 0.9 < sequential.overlap <= 1.0 + 1e-9


# --- bad input is refused with a message that says what to change ------------------------------------------


def _echo(prompt: str) -> str:
    return prompt


@pytest.mark.parametrize("workers", [0, -1, 1.5, "3", True, None])
def test_bad_workers(workers: Any, target: Target) -> None:
    with pytest.raises(ValueError, match=r"^workers must be"):
        run_threads(_echo, ["a"], workers=workers)
    with pytest.raises(ValueError, match=r"^workers must be"):
        run("threads", ["Reply: a"], target=target, workers=workers)
    with pytest.raises(ValueError, match=r"^workers must be"):
        run_agent_threads(lambda: None, ["a"], workers=workers)
    assert stats(target)["requests"] == 0


@pytest.mark.parametrize("limit", [0, -2, 2.5, "3", False])
def test_bad_limit(limit: Any) -> None:
    async def acall(prompt: str) -> str:
        return prompt

    with pytest.raises(ValueError, match=r"^limit must be"):
        run_in_new_loop(run_async(acall, ["a"], limit=limit))


def test_workers_message_says_what_it_means() -> None:
    with pytest.raises(ValueError, match="at least 1 .*in flight"):
        run_threads(_echo, ["a"], workers=0)
    with pytest.raises(ValueError, match=r"whole number .*\(got 1\.5\)"):
        run_threads(_echo, ["a"], workers=1.5)


def test_unknown_strategy_lists_the_strategies(target: Target) -> None:
    with pytest.raises(ValueError, match="unknown strategy 'fastest'") as info:
        run("fastest", ["Reply: a"], target=target)
    for name in STRATEGIES:
        assert name in str(info.value)


def test_bad_order(target: Target) -> None:
    async def acall(prompt: str) -> str:
        return prompt

    with pytest.raises(ValueError, match="order must be 'input' or 'completion'.*'random'"):
        run_threads(_echo, ["a"], order="random")
    with pytest.raises(ValueError, match="order must be"):
        run_in_new_loop(run_async(acall, ["a"], order="random"))
    with pytest.raises(ValueError, match="order must be"):
        run("threads", ["Reply: a"], target=target, order="random")
    assert stats(target)["requests"] == 0


def test_prompts_as_one_string(target: Target) -> None:
    async def acall(prompt: str) -> str:
        return prompt

    message = "prompts must be a list of strings, not one string"
    with pytest.raises(ValueError, match=message):
        run_sequential(_echo, "Reply: a")
    with pytest.raises(ValueError, match=message):
        run_threads(_echo, "Reply: a")
    with pytest.raises(ValueError, match=message):
        run_naive_threads(_echo, "Reply: a")
    with pytest.raises(ValueError, match=message):
        run_in_new_loop(run_async(acall, "Reply: a"))
    for strategy in STRATEGIES:
        with pytest.raises(ValueError, match=message):
            run(strategy, "Reply: a", target=target)
    assert stats(target)["requests"] == 0


def test_a_prompt_that_is_not_a_string(target: Target) -> None:
    with pytest.raises(ValueError, match=r"prompts\[1\] must be a string \(got int\)"):
        run_threads(_echo, ["a", 3])
    for strategy in STRATEGIES:
        with pytest.raises(ValueError, match=r"prompts\[1\] must be a string"):
            run(strategy, ["Reply: a", None], target=target)
    assert stats(target)["requests"] == 0


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_no_prompts_is_an_empty_report(strategy: str, target: Target) -> None:
    report = run(strategy, [], target=target)
    assert report.n == 0 and report.records == [] and report.failures == [] and report.answers == []
    assert report.delivery_order == [] and not report.cancelled
    assert report.summary()["calls"] == 0
    assert stats(target)["requests"] == 0


def test_prompts_may_be_any_iterable(target: Target, call: Callable[[str], str]) -> None:
    report = run_threads(call, (p for p in ONE_WORD[:3]), workers=2)
    assert_answers(report, ONE_WORD[:3])


# --- run(): every strategy, one entry point ---------------------------------------------------------------


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_run_every_strategy(strategy: str, slow_target: Target) -> None:
    slow_target.simulator.configure(latency=0.15)
    report = run(strategy, ONE_WORD, target=slow_target, workers=2)
    assert report.strategy == strategy
    assert_answers(report, ONE_WORD)
    assert sorted(report.delivery_order) == list(range(len(ONE_WORD)))
    seen = stats(slow_target)
    assert seen["requests"] == len(ONE_WORD) and seen["by_status"] == {"200": len(ONE_WORD)}
    # The report's numbers hold together: no more in flight than allowed, so never better than ideal.
    assert report.overlap <= report.peak_in_flight + 1e-9
    assert report.efficiency <= 1.0 + 1e-9
    if strategy == "sequential":
        assert report.workers == 1
        assert report.peak_in_flight == seen["peak_in_flight"] == 1
    elif strategy.startswith("naive"):
        assert report.workers is None
        if strategy == "naive-threads":  # one thread per prompt: all at once
            assert report.peak_in_flight == seen["peak_in_flight"] == len(ONE_WORD)
    else:
        # workers=2 caps the calls in flight, whichever way the strategy enforces it: a semaphore, a pool, or
        # the agent's max_concurrency (whose queue is waiting time, not part of a call).
        assert report.workers == 2
        assert report.peak_in_flight == seen["peak_in_flight"] == 2


@pytest.mark.parametrize("strategy", ["threads-completion", "asyncio-completion"])
def test_run_completion_order_by_name(strategy: str, target: Target) -> None:
    report = run(strategy, ORDERED, target=target, workers=3)
    assert report.delivery_order == [2, 1, 0]
    assert_answers(report, ORDERED)


def test_run_passes_max_tokens(target: Target) -> None:
    report = run("asyncio", [reply(*WORDS[:6])], target=target, max_tokens=2)
    assert report.answers == ["alpha bravo"]


def test_run_reports_server_errors(target: Target) -> None:
    target.simulator.configure(script={2: "500"})
    report = run("sequential", ONE_WORD[:3], target=target)
    assert [r.ok for r in report.records] == [True, False, True]
    assert "HTTP 500" in report.records[1].error


def test_agent_runners_directly(target: Target) -> None:
    from pydantic_ai import Agent

    report = run_agent_threads(lambda: Agent(target.chat_model()), ORDERED, workers=3, order="completion")
    assert report.strategy == "agent-threads"
    assert_answers(report, ORDERED)
    assert report.delivery_order == [2, 1, 0]

    async def go() -> RunReport:
        async with Agent(target.chat_model()) as agent:
            return await run_agent_async(agent, ORDERED, limit=3, order="completion")

    report = run_in_new_loop(go())
    assert report.strategy == "agent-asyncio"
    assert_answers(report, ORDERED)
    assert report.delivery_order == [2, 1, 0]


# --- a pool kept from one run to the next --------------------------------------------------------------------


def test_threads_on_a_pool_of_your_own(target: Target, call: Callable[[str], str]) -> None:
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="mine") as pool:
        first = run_threads(call, ORDERED, executor=pool)
        second = run_threads(failing_on(MID, call), ORDERED, executor=pool, order="completion", workers=99)
        assert_answers(first, ORDERED)
        assert first.workers == second.workers == 3  # the pool's own size
        assert {r.worker for r in second.records} <= {r.worker for r in first.records}  # no new thread
        assert all(r.worker.startswith("mine") for r in first.records)
        assert [r.ok for r in second.records] == [True, False, True]
        assert second.delivery_order == [1, 2, 0]  # the failed call first: it failed at once
        assert pool.submit(lambda: "still open").result() == "still open"


def test_cancel_on_a_pool_of_your_own_drops_only_this_runs_calls(slow_target: Target) -> None:
    stop = threading.Event()
    with slow_target.client() as client, ThreadPoolExecutor(max_workers=1) as pool:
        report = run_threads(
            lambda p: ask(client, slow_target.model, p),
            ONE_WORD[:5],
            executor=pool,
            on_result=lambda record: stop.set(),
            cancel=stop,
        )
        assert report.cancelled and report.records[0].ok
        assert all("cancelled" in r.error for r in report.records[2:])
        assert pool.submit(lambda: 7).result() == 7  # the pool itself goes on


def test_executor_must_be_a_thread_pool(call: Callable[[str], str]) -> None:
    with pytest.raises(ValueError, match="ThreadPoolExecutor"):
        run_threads(call, ORDERED, executor="four threads")  # type: ignore[arg-type]


def test_agent_thread_pool_keeps_its_agents_between_runs(target: Target) -> None:
    from pydantic_ai import Agent

    built: list[int] = []

    def make_agent() -> Any:
        built.append(threading.get_ident())
        return Agent(target.chat_model())

    with AgentThreadPool(make_agent, workers=3) as pool:
        pool.warm()
        assert len(built) == 3 and len(set(built)) == 3  # one agent on each thread
        assert stats(target)["requests"] == 3
        first = pool.run(ORDERED, order="completion")
        second = pool.run(ONE_WORD[:4])
        assert "3 agents built" in repr(pool)
    assert len(built) == 3  # no new agent for the runs
    assert first.strategy == second.strategy == "agent-threads"
    assert first.label == "agent-threads (3 workers)"
    assert_answers(first, ORDERED)
    assert first.delivery_order == [2, 1, 0]
    assert_answers(second, ONE_WORD[:4])
    assert "closed" in repr(pool)
    with pytest.raises(RuntimeError, match="closed"):
        pool.run(ORDERED)


def test_agents_sharing_one_model_across_threads_are_refused(target: Target) -> None:
    from pydantic_ai import Agent

    from helpers.runs import SharedModelError

    model = target.chat_model()  # built once, outside the threads: the course material's pitfall
    with pytest.raises(SharedModelError, match="Build the model inside make_agent"):
        run_agent_threads(lambda: Agent(model), ONE_WORD[:6], workers=3)
    with AgentThreadPool(lambda: Agent(model), workers=2) as pool, pytest.raises(SharedModelError):
        pool.warm()
        pool.run(ONE_WORD[:4])
    one_thread = run_agent_threads(lambda: Agent(model), ONE_WORD[:2], workers=1)  # one thread, one loop: fine
    assert_answers(one_thread, ONE_WORD[:2])


def test_agent_thread_pool_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        AgentThreadPool(lambda: None, workers=0)
    with pytest.raises(TypeError, match="make_agent"):
        AgentThreadPool("an agent", workers=2)  # type: ignore[arg-type]


# --- the quota guard for real providers ------------------------------------------------------------------

# A "real provider" nobody listens to: port 9 (discard) is closed, so a call that slipped through would fail.
PROVIDER = Target(base_url="http://127.0.0.1:9/v1", model="m")


def test_provider_target_is_capped_at_three() -> None:
    assert PROVIDER.max_in_flight == 3


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "sequential"])
def test_quota_guard_refuses_too_many_in_flight(strategy: str) -> None:
    prompts = ONE_WORD[:4]  # 4 prompts: too many for the naive strategies, which start them all at once
    with pytest.raises(ValueError, match="quota guard allows at most 3") as info:
        run(strategy, prompts, target=PROVIDER, workers=5 if not strategy.startswith("naive") else 3)
    assert strategy in str(info.value)


def test_quota_guard_acts_before_any_call(target: Target) -> None:
    # The simulator's address, but a Target without a simulator: treated as a real provider.
    provider = Target(base_url=target.base_url, model=target.model)
    with pytest.raises(ValueError, match="quota guard"):
        run("threads", ONE_WORD, target=provider, workers=5)
    with pytest.raises(ValueError, match="quota guard"):
        run("naive-asyncio", ONE_WORD, target=provider)
    assert stats(target)["requests"] == 0
    # Within the guard, the same run goes ahead.
    report = run("threads", ONE_WORD[:3], target=provider, workers=3)
    assert_answers(report, ONE_WORD[:3])
    assert stats(target)["requests"] == 3


def test_sequential_is_always_within_the_guard() -> None:
    # One call at a time whatever workers says; against the closed port every call fails, none is lost.
    report = run("sequential", ONE_WORD[:2], target=PROVIDER, workers=5)
    assert report.n == 2 and len(report.failures) == 2


# --- cancel --------------------------------------------------------------------------------------------------


def test_cancel_threads(slow_target: Target) -> None:
    stop = threading.Event()
    prompts = ONE_WORD[:5]
    with slow_target.client() as client:
        report = run_threads(
            lambda p: ask(client, slow_target.model, p),
            prompts,
            workers=1,
            on_result=lambda record: stop.set(),
            cancel=stop,
        )
    assert report.cancelled
    first, second, *later = report.records
    assert first.ok and first.answer == answer_of(prompts[0])
    # The call already running when the event was set is let finish (a thread cannot be interrupted) ...
    assert second.ok or "cancelled" in second.error
    # ... and none of the others starts.
    for record in later:
        assert not record.ok and "cancelled" in record.error
    assert report.n == len(prompts)
    assert report.delivery_order in ([0], [0, 1])  # calls that never started are not delivered
    assert stats(slow_target)["requests"] <= 2
    assert report.wall < 3 * LATENCY + 0.5  # all five would take 1 s


def test_cancel_sequential(slow_target: Target) -> None:
    stop = threading.Event()
    with slow_target.client() as client:
        report = run_sequential(
            lambda p: ask(client, slow_target.model, p), ONE_WORD[:5], on_result=lambda r: stop.set(), cancel=stop
        )
    assert report.cancelled
    assert [r.ok for r in report.records] == [True, False, False, False, False]
    assert all("cancelled" in r.error for r in report.records[1:])
    assert stats(slow_target)["requests"] == 1


def test_cancel_asyncio(slow_target: Target) -> None:
    stop = threading.Event()
    prompts = ONE_WORD[:5]
    report = run_async_on(
        slow_target, prompts, limit=1, order="completion", on_result=lambda r: stop.set(), cancel=stop
    )
    assert report.cancelled
    first, *later = report.records
    assert first.ok and first.answer == answer_of(prompts[0])
    for record in later:
        assert not record.ok and "cancelled" in record.error
    assert report.n == len(prompts)
    assert report.delivery_order == [0]
    assert stats(slow_target)["requests"] <= 2
    assert report.wall < 3 * LATENCY + 0.5


def test_cancel_before_the_run_starts_no_call() -> None:
    stop = threading.Event()
    stop.set()
    started: list[str] = []

    def call(prompt: str) -> str:
        started.append(prompt)
        return prompt

    async def acall(prompt: str) -> str:
        started.append(prompt)
        return prompt

    for report in (
        run_sequential(call, ["a", "b", "c"], cancel=stop),
        run_threads(call, ["a", "b", "c"], workers=2, cancel=stop),
        run_threads(call, ["a", "b", "c"], workers=2, order="completion", cancel=stop),
        run_in_new_loop(run_async(acall, ["a", "b", "c"], limit=2, cancel=stop)),
        run_in_new_loop(run_async(acall, ["a", "b", "c"], limit=None, order="completion", cancel=stop)),
    ):
        assert report.cancelled and report.n == 3
        assert [r.error for r in report.records] == ["cancelled before it started"] * 3
        assert report.delivery_order == []
    assert started == []


def test_unused_cancel_event_changes_nothing(target: Target, call: Callable[[str], str]) -> None:
    prompts = ONE_WORD[:4]
    for report in (
        run_sequential(call, prompts, cancel=threading.Event()),
        run_threads(call, prompts, workers=2, cancel=threading.Event()),
        run_threads(call, prompts, workers=2, order="completion", cancel=threading.Event()),
        run_async_on(target, prompts, limit=2, cancel=threading.Event()),
        run_async_on(target, prompts, limit=2, order="completion", cancel=threading.Event()),
    ):
        assert_answers(report, prompts)
        assert not report.cancelled
        assert sorted(report.delivery_order) == [0, 1, 2, 3]


# --- run_in_new_loop -------------------------------------------------------------------------------------------


def test_run_in_new_loop_inside_a_running_loop(target: Target) -> None:
    """What a Jupyter cell does: the kernel's loop is already running when the cell calls run()."""

    async def cell() -> tuple[RunReport, RunReport]:
        assert asyncio.get_running_loop().is_running()
        direct = run_async_on(target, ONE_WORD[:3], limit=3)
        by_name = run("asyncio", ONE_WORD[:3], target=target, workers=3)
        return direct, by_name

    direct, by_name = asyncio.run(cell())
    assert_answers(direct, ONE_WORD[:3])
    assert_answers(by_name, ONE_WORD[:3])


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_run_from_inside_a_running_loop(strategy: str, target: Target) -> None:
    """Every strategy works from a Jupyter cell, whose thread already runs an event loop."""

    async def cell() -> RunReport:
        return run(strategy, ONE_WORD[:2], target=target, workers=2)

    assert_answers(asyncio.run(cell()), ONE_WORD[:2])


def test_run_in_new_loop_hands_back_the_result_and_errors() -> None:
    async def value() -> int:
        await asyncio.sleep(0)
        return 42

    async def broken() -> None:
        raise KeyError("nope")

    assert run_in_new_loop(value()) == 42
    with pytest.raises(KeyError, match="nope"):
        run_in_new_loop(broken())


# --- RunReport arithmetic, on hand-built records (no server) --------------------------------------------


def _record(index: int, start: float, end: float, error: str | None = None) -> CallRecord:
    return CallRecord(index, f"p{index}", start=start, end=end, answer=None if error else f"a{index}", error=error)


def test_report_numbers() -> None:
    records = [_record(2, 0.5, 1.5), _record(0, 0.0, 1.0), _record(1, 0.0, 2.0, error="boom")]
    report = RunReport("threads", records, wall=2.5, cpu=0.1, workers=2)
    assert [r.index for r in report.records] == [0, 1, 2]  # sorted by index
    assert report.n == 3
    assert report.answers == ["a0", None, "a2"]
    assert [r.index for r in report.failures] == [1]
    assert report.sum_of_latencies == pytest.approx(4.0)
    assert report.slowest == pytest.approx(2.0)
    assert report.overlap == pytest.approx(4.0 / 2.5)
    assert report.peak_in_flight == 3  # 0.5 - 1.0: all three
    assert report.ideal == pytest.approx(2.0)  # max(slowest 2.0, 4.0 / 2 workers)
    assert report.efficiency == pytest.approx(2.0 / 2.5)
    assert report.label == "threads (2 workers)"
    assert report.records[1].outcome == "error: boom" and report.records[0].outcome == "a0"


def test_report_ideal_is_limited_by_workers() -> None:
    records = [_record(i, 0.0, 1.0) for i in range(6)]
    assert RunReport("x", records, wall=3.0, workers=2).ideal == pytest.approx(3.0)  # 6 s of calls on 2 workers
    assert RunReport("x", records, wall=3.0, workers=3).efficiency == pytest.approx(2.0 / 3.0)
    assert RunReport("x", records, wall=1.0, workers=None).ideal == pytest.approx(1.0)  # all at once
    assert RunReport("x", records, wall=1.0, workers=10).ideal == pytest.approx(1.0)  # more workers than calls


def test_report_back_to_back_calls_do_not_overlap() -> None:
    records = [_record(0, 0.0, 1.0), _record(1, 1.0, 2.0), _record(2, 2.0, 2.5)]
    report = RunReport("sequential", records, wall=2.5, workers=1)
    assert report.peak_in_flight == 1
    assert report.overlap == pytest.approx(1.0)
    assert report.ideal == pytest.approx(2.5) and report.efficiency == pytest.approx(1.0)


def test_empty_report() -> None:
    report = RunReport("threads", [], wall=0.0, workers=3)
    assert (report.n, report.sum_of_latencies, report.slowest, report.peak_in_flight) == (0, 0, 0.0, 0)
    assert report.ideal == 0.0 and report.efficiency == 0.0 and report.overlap == 0.0


def test_summary_keys_and_values() -> None:
    records = [_record(0, 0.0, 1.0), _record(1, 0.0, 1.0, error="x")]
    summary = RunReport("asyncio", records, wall=1.25, cpu=0.0123, workers=2, label="mine").summary()
    assert list(summary) == [
        "run",
        "calls",
        "failed",
        "wall s",
        "sum of latencies s",
        "slowest s",
        "overlap",
        "efficiency",
        "peak in flight",
        "client CPU s",
    ]
    assert summary["run"] == "mine"
    assert (summary["calls"], summary["failed"], summary["peak in flight"]) == (2, 1, 2)
    assert summary["wall s"] == 1.25 and summary["sum of latencies s"] == 2.0 and summary["slowest s"] == 1.0
    assert summary["overlap"] == 1.6 and summary["efficiency"] == 0.8 and summary["client CPU s"] == 0.012


def test_report_repr_and_labels() -> None:
    assert RunReport("asyncio", [], wall=1.0).label == "asyncio"
    text = repr(RunReport("threads", [_record(0, 0.0, 1.0)], wall=1.0, workers=3))
    assert "threads (3 workers)" in text and "1 call," in text


def test_record_error_text_names_the_exception(target: Target) -> None:
    def call(prompt: str) -> str:
        if prompt == "empty":
            raise TimeoutError()
        raise httpx.ConnectError("connection refused")

    report = run_sequential(call, ["empty", "refused"])
    assert report.records[0].error == "TimeoutError"
    assert report.records[1].error == "ConnectError: connection refused"
