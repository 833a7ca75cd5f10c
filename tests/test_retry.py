"""Retries (helpers.retry) against the real simulator: scripted faults are retried when another try can
succeed and raised at once when not; the server's retry-after is honoured; attempts and total waiting are
capped; every record says how many attempts it took and how long it waited.

Waiting is recorded instead of slept (a ``sleep`` that only notes the seconds), except in one test that
really sleeps through a 1-second retry-after.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from helpers import simulator
from helpers.calls import APIError, ask, ask_async
from helpers.quota import QuotaExceeded
from helpers.retry import backoff, is_retryable, retry, retry_after, retry_async, with_retries
from helpers.runs import Answer, run_async, run_in_new_loop, run_threads


class Sleeps:
    """A ``sleep`` that records the waits instead of sleeping (and an async one sharing the record)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def http(sim: simulator.Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.api_url, timeout=10.0) as client:
        yield client


def asker(client: httpx.Client) -> Any:
    def call(prompt: str) -> str:
        return ask(client, "sim-1", prompt)

    return call


def requests(sim: simulator.Simulator) -> int:
    return int(sim.stats(records=False)["requests"])


# --- retried until answered ----------------------------------------------------------------------------------


def test_500_then_429_then_answer(sim: simulator.Simulator, http: httpx.Client) -> None:
    sim.configure(script={1: "500", 2: "429"})
    sleeps = Sleeps()
    answer = retry(asker(http), "Reply: alpha", rng=1, sleep=sleeps)
    assert answer == Answer("alpha", attempts=3, waited=pytest.approx(sum(sleeps.waits)))
    assert len(sleeps.waits) == 2
    assert [t.error.split(":")[0] if t.error else None for t in answer.tries] == ["APIError", "APIError", None]
    assert "HTTP 500" in (answer.tries[0].error or "") and "HTTP 429" in (answer.tries[1].error or "")
    assert all(t.start <= t.end for t in answer.tries)
    assert 0 <= sleeps.waits[0] <= 0.5  # after the 500: random below base
    assert sleeps.waits[1] >= 1.0  # after the 429: never sooner than its retry-after (1 s)
    assert requests(sim) == 3


def test_jitter_is_repeatable_with_a_seed() -> None:
    def fails(prompt: str) -> str:
        raise APIError(503, "overloaded")

    runs = []
    for _ in range(2):
        sleeps = Sleeps()
        with pytest.raises(APIError):
            retry(fails, "x", attempts=5, rng=random.Random(7), sleep=sleeps)
        runs.append(sleeps.waits)
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == 4  # random, not constant
    # The ceiling doubles from base and stops at cap.
    rng = random.Random(1)
    assert all(0 <= backoff(n, base=0.5, cap=2.0, rng=rng) <= min(2.0, 0.5 * 2 ** (n - 1)) for n in range(1, 10))


def test_hang_with_a_short_timeout_is_retried(sim: simulator.Simulator) -> None:
    sim.configure(script={1: "hang"})
    sleeps = Sleeps()
    with httpx.Client(base_url=sim.api_url, timeout=httpx.Timeout(0.5, connect=5.0)) as client:
        answer = retry(asker(client), "Reply: patient", rng=1, sleep=sleeps)
    assert (answer.text, answer.attempts) == ("patient", 2)
    assert requests(sim) == 2


def test_dropped_connection_is_retried(sim: simulator.Simulator, http: httpx.Client) -> None:
    sim.configure(script={1: "drop"})
    answer = retry(asker(http), "Reply: again", rng=1, sleep=Sleeps())
    assert (answer.text, answer.attempts) == ("again", 2)
    assert sim.stats(records=False)["by_fault"] == {"drop": 1}


def test_retry_after_is_really_waited(sim: simulator.Simulator, http: httpx.Client) -> None:
    sim.configure(script={1: "429"})
    began = time.monotonic()
    answer = retry(asker(http), "Reply: later", rng=1)  # real time.sleep
    elapsed = time.monotonic() - began
    assert (answer.text, answer.attempts) == ("later", 2)
    assert answer.waited >= 1.0
    assert elapsed >= 1.0


# --- raised at once: another try cannot succeed ---------------------------------------------------------------


def test_insufficient_quota_is_not_retried(sim: simulator.Simulator, http: httpx.Client) -> None:
    sim.configure(script={1: "quota"})
    sleeps = Sleeps()
    with pytest.raises(APIError) as caught:
        retry(asker(http), "Reply: x", sleep=sleeps)
    assert caught.value.code == "insufficient_quota"
    assert (caught.value.attempts, caught.value.waited) == (1, 0.0)  # type: ignore[attr-defined]
    assert sleeps.waits == []
    assert requests(sim) == 1


@pytest.mark.parametrize(("model", "max_tokens", "status"), [("sim-1", 0, 400), ("no-such-model", None, 404)])
def test_bad_request_and_unknown_model_are_not_retried(
    sim: simulator.Simulator, http: httpx.Client, model: str, max_tokens: int | None, status: int
) -> None:
    sleeps = Sleeps()
    with pytest.raises(APIError) as caught:
        retry(lambda p: ask(http, model, p, max_tokens=max_tokens), "Reply: x", sleep=sleeps)
    assert caught.value.status == status
    assert sleeps.waits == [] and requests(sim) == 1


def test_a_bug_in_the_calling_code_is_not_retried() -> None:
    calls = []

    def buggy(prompt: str) -> str:
        calls.append(prompt)
        raise KeyError("choices")

    with pytest.raises(KeyError):
        retry(buggy, "x", sleep=Sleeps())
    assert len(calls) == 1


# --- caps on attempts and on total waiting --------------------------------------------------------------------


def test_attempts_are_capped_and_the_last_error_says_so(sim: simulator.Simulator, http: httpx.Client) -> None:
    sim.configure(fail_rate=1.0, fail_kinds=["500"])
    sleeps = Sleeps()
    with pytest.raises(APIError) as caught:
        retry(asker(http), "Reply: never", attempts=3, base=0.2, cap=0.3, rng=2, sleep=sleeps)
    error = caught.value
    assert error.status == 500
    assert error.attempts == 3  # type: ignore[attr-defined]
    assert error.waited == pytest.approx(sum(sleeps.waits))  # type: ignore[attr-defined]
    assert len(sleeps.waits) == 2 and all(0 <= w <= 0.3 for w in sleeps.waits)
    assert any("gave up after 3 attempts" in note for note in error.__notes__)
    assert requests(sim) == 3


def test_total_wait_is_capped(sim: simulator.Simulator, http: httpx.Client) -> None:
    # Each scripted 429 asks for 1 s: a second wait would bring the total to 2 s, past max_wait.
    sim.configure(script={1: "429", 2: "429", 3: "429"})
    sleeps = Sleeps()
    with pytest.raises(APIError) as caught:
        retry(asker(http), "Reply: x", attempts=10, max_wait=1.5, rng=1, sleep=sleeps)
    assert caught.value.status == 429
    assert caught.value.attempts == 2  # type: ignore[attr-defined]
    assert sum(sleeps.waits) <= 1.5
    assert requests(sim) == 2


def test_a_retry_after_longer_than_max_wait_gives_up_at_once() -> None:
    def limited(prompt: str) -> str:
        raise APIError(429, "slow down", code="rate_limit_exceeded", retry_after=60.0)

    sleeps = Sleeps()
    with pytest.raises(APIError) as caught:
        retry(limited, "x", max_wait=30.0, sleep=sleeps)
    assert sleeps.waits == [] and caught.value.attempts == 1  # type: ignore[attr-defined]


# --- async, and the wrapper used by the runners ---------------------------------------------------------------


def test_retry_async(sim: simulator.Simulator) -> None:
    sim.configure(script={1: "503", 2: "429"})
    sleeps = Sleeps()

    async def go() -> Answer:
        async with httpx.AsyncClient(base_url=sim.api_url, timeout=10.0) as client:
            acall = lambda p: ask_async(client, "sim-1", p)  # noqa: E731
            return await retry_async(acall, "Reply: async", rng=3, sleep=sleeps.asleep)

    answer = asyncio.run(go())
    assert (answer.text, answer.attempts) == ("async", 3)
    assert answer.waited == pytest.approx(sum(sleeps.waits)) and sleeps.waits[1] >= 1.0


def test_records_show_attempts_and_waiting_in_a_threaded_run(sim: simulator.Simulator, http: httpx.Client) -> None:
    sim.configure(script={2: "500", 4: "429"})  # which prompts get them depends on the threads: not checked
    sleeps = Sleeps()
    prompts = [f"Reply: w{i}" for i in range(6)]
    report = run_threads(with_retries(asker(http), rng=1, sleep=sleeps), prompts, workers=3)
    assert report.answers == [f"w{i}" for i in range(6)]
    assert sum(r.attempts for r in report.records) == 8  # 6 prompts, 2 failed tries (one prompt may have both)
    assert sum(r.waited for r in report.records) == pytest.approx(sum(sleeps.waits))
    assert max(r.waited for r in report.records) >= 1.0  # the one after the 429


def test_records_show_a_final_failure_with_its_attempts(sim: simulator.Simulator, http: httpx.Client) -> None:
    sim.configure(fault_on={"doomed": "503"})
    sleeps = Sleeps()
    call = with_retries(asker(http), attempts=3, rng=1, sleep=sleeps)
    report = run_threads(call, ["Reply: fine", "Reply: doomed"], workers=2)
    ok, failed = report.records
    assert (ok.answer, ok.attempts, ok.waited) == ("fine", 1, 0.0)
    assert failed.error is not None and "503" in failed.error
    assert failed.attempts == 3
    assert failed.waited == pytest.approx(sum(sleeps.waits)) and failed.waited > 0


def test_with_retries_wraps_a_coroutine_function_for_run_async(sim: simulator.Simulator) -> None:
    sim.configure(script={1: "500"})
    sleeps = Sleeps()

    async def go() -> Any:
        async with httpx.AsyncClient(base_url=sim.api_url, timeout=10.0) as client:

            async def acall(prompt: str) -> str:
                return await ask_async(client, "sim-1", prompt)

            wrapped = with_retries(acall, rng=1, sleep=sleeps.asleep)
            assert inspect.iscoroutinefunction(wrapped)
            return await run_async(wrapped, ["Reply: a", "Reply: b"], limit=1)

    report = run_in_new_loop(go())
    assert report.answers == ["a", "b"]
    assert [r.attempts for r in report.records] == [2, 1]


# --- what is retryable, as the SDKs report it -------------------------------------------------------------------


def test_is_retryable_sorts_errors() -> None:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    assert is_retryable(APIError(429, "slow down", code="rate_limit_exceeded"))
    assert is_retryable(APIError(500, "oops")) and is_retryable(APIError(503, "busy"))
    assert is_retryable(APIError(408, "timeout"))
    for status in (400, 401, 403, 404, 422):
        assert not is_retryable(APIError(status, "no"))
    assert not is_retryable(APIError(429, "no money", code="insufficient_quota"))
    assert is_retryable(httpx.ReadTimeout("slow", request=request))
    assert is_retryable(httpx.ConnectError("refused", request=request))
    assert is_retryable(httpx.RemoteProtocolError("dropped", request=request))
    assert is_retryable(httpx.ReadError("reset", request=request))
    assert not is_retryable(httpx.UnsupportedProtocol("ftp://", request=request))
    assert not is_retryable(QuotaExceeded("the session's budget is spent"))
    assert not is_retryable(ValueError("bug"))


def test_openai_sdk_errors_are_sorted_too(sim: simulator.Simulator) -> None:
    sim.configure(script={1: "429", 2: "quota", 3: "drop", 4: "500"})
    with openai.OpenAI(base_url=sim.api_url, api_key="unused", max_retries=0, timeout=10.0) as client:
        errors = []
        for _ in range(4):
            try:
                client.chat.completions.create(model="sim-1", messages=[{"role": "user", "content": "Reply: x"}])
            except openai.OpenAIError as error:
                errors.append(error)
    limited, no_quota, dropped, server = errors
    assert is_retryable(limited) and retry_after(limited) == 1.0
    assert not is_retryable(no_quota)
    assert isinstance(dropped, openai.APIConnectionError) and is_retryable(dropped)  # through its cause
    assert is_retryable(server)


# --- bad options ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": 2.5}, "attempts"),
        ({"attempts": True}, "attempts"),
        ({"base": -1}, "base"),
        ({"cap": "8"}, "cap"),
        ({"max_wait": math.nan}, "max_wait"),
        ({"max_wait": math.inf}, "max_wait"),
        ({"rng": "seed"}, "rng"),
    ],
)
def test_bad_options_say_what_to_change(options: dict[str, Any], names: str) -> None:
    with pytest.raises(ValueError, match=names):
        retry(lambda p: p, "x", **options)
    with pytest.raises(ValueError, match=names):
        with_retries(lambda p: p, **options)


def test_with_retries_names_an_unknown_option() -> None:
    with pytest.raises(TypeError, match="attempt"):
        with_retries(lambda p: p, attempt=3)


def test_with_retries_shares_one_seeded_rng_between_calls() -> None:
    def fails(prompt: str) -> str:
        raise APIError(500, "oops")

    sleeps = Sleeps()
    call = with_retries(fails, attempts=2, rng=5, sleep=sleeps)
    for _ in range(2):
        with pytest.raises(APIError):
            call("x")
    assert len(sleeps.waits) == 2 and sleeps.waits[0] != sleeps.waits[1]  # not the same draw for every call


def test_an_asyncio_deadline_is_worth_another_try(sim: simulator.Simulator) -> None:
    """``asyncio.timeout`` raises the builtin TimeoutError: a hung call cut off by a deadline can succeed next
    time, like httpx's own ReadTimeout."""

    sim.configure(fault_on={"stuck": "hang"}, hang_seconds=2.0)
    try:

        async def cut_off() -> None:
            async with httpx.AsyncClient(base_url=sim.api_url) as client, asyncio.timeout(0.3):
                await ask_async(client, "sim-1", "Reply: stuck")

        with pytest.raises(TimeoutError) as caught:
            asyncio.run(cut_off())
        assert is_retryable(caught.value)
    finally:
        sim.configure(fault_on={}, hang_seconds=600.0)
