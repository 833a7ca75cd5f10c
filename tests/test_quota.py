"""The quota guard (helpers.quota) on the real-provider path, without a real provider: a Target pointed at the
simulator but built without its handle is treated as a real provider, so every client it builds goes through
the guard, and the simulator's stats show what reached the server.

Checked: at most 3 calls in flight from threads, asyncio tasks, pydantic-ai and the openai SDK (and all of them
at once); calls and tokens counted; a spent budget refuses the next call before it is sent; ``check_run``
refuses a run before its first request; the simulator itself stays unguarded; keys never show.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from helpers import quota, simulator
from helpers.calls import ask, ask_async
from helpers.quota import PRICES, PRICES_AS_OF, QuotaExceeded, QuotaGuard, estimate_cost, price_of
from helpers.runs import run, run_threads
from helpers.settings import Secret, SetupError, Target, connect

SECRET = "sk-quota-secret-0123456789"
TEN = [f"Reply: w{i}" for i in range(10)]
TEN_ANSWERS = [f"w{i}" for i in range(10)]


@pytest.fixture(autouse=True)
def fresh_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new session guard for each test, with the default limits (the real one is left as it was)."""
    monkeypatch.setattr(quota, "_session", None)
    monkeypatch.delenv("LLM_MAX_CALLS", raising=False)
    monkeypatch.delenv("LLM_MAX_TOKENS", raising=False)


@pytest.fixture
def slow(sim: simulator.Simulator) -> simulator.Simulator:
    """Calls of 0.2 s, long enough to overlap."""
    sim.configure(latency=0.2)
    return sim


def provider(sim: simulator.Simulator, **options: Any) -> Target:
    """The simulator's address, but no simulator handle: a real provider as far as the Target knows."""
    return Target(base_url=sim.api_url, model="sim-1", **options)


def peak(sim: simulator.Simulator) -> int:
    return int(sim.stats(records=False)["peak_in_flight"])


def requests(sim: simulator.Simulator) -> int:
    return int(sim.stats(records=False)["requests"])


def server_tokens(sim: simulator.Simulator) -> int:
    return sum(r["prompt_tokens"] + r["completion_tokens"] for r in sim.stats()["records"])


# --- a real provider gets the session's guard -------------------------------------------------------------------


def test_a_real_provider_target_has_the_session_guard(sim: simulator.Simulator) -> None:
    target = provider(sim)
    guard = target.quota
    assert guard is not None and not target.is_simulator
    assert (guard.max_in_flight, guard.max_calls, guard.max_tokens) == (3, 100, 50_000)
    assert target.max_in_flight == 3
    assert guard.model == "sim-1"
    assert "budget 100 calls / 50,000 tokens" in target.describe()
    # Another Target (another model) shares the same budget: it is the session's.
    other = Target(base_url=sim.api_url, model="gpt-4o-mini")
    with target.client() as client:
        ask(client, "sim-1", "Reply: one")
    assert other.quota is not None and other.quota.calls == 1 and other.quota.model == "gpt-4o-mini"


def test_the_simulator_is_not_guarded(slow: simulator.Simulator) -> None:
    target = Target(base_url=slow.api_url, model="sim-1", simulator=slow)
    assert target.quota is None and target.max_in_flight is None
    with target.client() as client, ThreadPoolExecutor(10) as pool:
        assert list(pool.map(lambda p: ask(client, "sim-1", p), TEN)) == TEN_ANSWERS
    assert peak(slow) > 3  # nothing held them back
    assert connect(env={}).quota is None


# --- at most 3 in flight, whoever calls -----------------------------------------------------------------------


def test_ten_threads_never_put_more_than_three_in_flight(slow: simulator.Simulator) -> None:
    target = provider(slow)
    with target.client() as client, ThreadPoolExecutor(10) as pool:
        assert list(pool.map(lambda p: ask(client, "sim-1", p), TEN)) == TEN_ANSWERS
    assert peak(slow) <= 3
    guard = target.quota
    assert guard is not None
    assert guard.calls == 10 and guard.in_flight == 0 and guard.peak_in_flight == 3
    assert guard.tokens == server_tokens(slow) > 0


def test_ten_asyncio_tasks_never_put_more_than_three_in_flight(slow: simulator.Simulator) -> None:
    target = provider(slow)

    async def go() -> list[str]:
        async with target.async_client() as client:
            return await asyncio.gather(*(ask_async(client, "sim-1", p) for p in TEN))

    assert asyncio.run(go()) == TEN_ANSWERS
    assert peak(slow) <= 3
    assert target.quota is not None and target.quota.calls == 10
    assert target.quota.tokens == server_tokens(slow)


def test_a_pydantic_ai_gather_of_ten_never_puts_more_than_three_in_flight(slow: simulator.Simulator) -> None:
    from pydantic_ai import Agent

    target = provider(slow)

    async def go() -> list[str]:
        async with Agent(target.chat_model()) as agent:
            results = await asyncio.gather(*(agent.run(p) for p in TEN))
        return [r.output for r in results]

    assert asyncio.run(go()) == TEN_ANSWERS
    assert peak(slow) <= 3
    assert target.quota is not None and target.quota.calls == 10
    assert target.quota.tokens == server_tokens(slow)


def test_an_agent_reused_on_a_new_event_loop_stays_guarded(sim: simulator.Simulator) -> None:
    from pydantic_ai import Agent

    target = provider(sim)
    agent = Agent(target.chat_model())
    clients = []

    async def go() -> list[str]:
        async with agent:  # leaving it closes the guarded client; entering again builds a new one, guarded too
            results = await asyncio.gather(*(agent.run(p) for p in TEN[:4]))
            clients.append(agent.model.client._client)  # type: ignore[union-attr]
        return [r.output for r in results]

    assert asyncio.run(go()) == TEN_ANSWERS[:4]
    assert asyncio.run(go()) == TEN_ANSWERS[:4]
    assert clients[0] is not clients[1] and all(c.is_closed for c in clients)
    assert target.quota is not None and target.quota.calls == 8


def test_the_responses_api_is_guarded_and_counted(sim: simulator.Simulator) -> None:
    from pydantic_ai import Agent

    target = provider(sim)

    async def go() -> list[str]:
        async with Agent(target.responses_model()) as agent:
            return [(await agent.run(p)).output for p in TEN[:2]]

    assert asyncio.run(go()) == TEN_ANSWERS[:2]
    assert target.quota is not None and target.quota.calls == 2
    assert target.quota.tokens == server_tokens(sim) > 0


def test_the_openai_sdk_is_guarded_and_its_streams_counted(slow: simulator.Simulator) -> None:
    target = provider(slow)

    def one(prompt: str) -> str:
        answer = client.chat.completions.create(model="sim-1", messages=[{"role": "user", "content": prompt}])
        return str(answer.choices[0].message.content)

    with target.openai_client(max_retries=0) as client, ThreadPoolExecutor(10) as pool:
        assert list(pool.map(one, TEN)) == TEN_ANSWERS
        stream = client.chat.completions.create(
            model="sim-1",
            messages=[{"role": "user", "content": "Reply: one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "one two three"
    assert peak(slow) <= 3
    assert target.quota is not None and target.quota.calls == 11
    assert target.quota.tokens == server_tokens(slow)  # the stream's usage came in its last event

    async def go() -> list[str]:
        async with target.async_openai_client(max_retries=0) as aclient:
            answers = await asyncio.gather(
                *(
                    aclient.chat.completions.create(model="sim-1", messages=[{"role": "user", "content": p}])
                    for p in TEN
                )
            )
        return [str(a.choices[0].message.content) for a in answers]

    slow.reset()
    assert asyncio.run(go()) == TEN_ANSWERS
    assert peak(slow) <= 3


def test_threads_and_event_loops_share_the_three_slots(slow: simulator.Simulator) -> None:
    target = provider(slow)
    answers: list[str] = []
    lock = threading.Lock()

    async def tasks(prompts: list[str]) -> None:
        async with target.async_client() as client:
            got = await asyncio.gather(*(ask_async(client, "sim-1", p) for p in prompts))
        with lock:
            answers.extend(got)

    def threads(prompts: list[str]) -> None:
        with target.client() as client, ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda p: ask(client, "sim-1", p), prompts))
        with lock:
            answers.extend(got)

    workers = [
        threading.Thread(target=asyncio.run, args=(tasks(TEN[:4]),)),
        threading.Thread(target=asyncio.run, args=(tasks(TEN[4:7]),)),
        threading.Thread(target=threads, args=(TEN[7:],)),
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(answers) == sorted(TEN_ANSWERS)
    assert peak(slow) <= 3
    assert target.quota is not None and target.quota.peak_in_flight <= 3 and target.quota.in_flight == 0


def test_failed_and_cancelled_calls_give_their_slot_back(sim: simulator.Simulator) -> None:
    target = provider(sim)
    guard = target.quota
    assert guard is not None
    sim.configure(script={1: "hang", 2: "drop", 3: "500"})
    with target.client(timeout=httpx.Timeout(0.3, connect=5.0)) as client:
        with pytest.raises(httpx.ReadTimeout):
            ask(client, "sim-1", "Reply: x")
        with pytest.raises(httpx.RemoteProtocolError):
            ask(client, "sim-1", "Reply: x")
        with pytest.raises(Exception, match="500"):
            ask(client, "sim-1", "Reply: x")
    assert (guard.calls, guard.in_flight) == (3, 0)

    sim.configure(latency=2.0)

    async def cancelled() -> None:
        async with target.async_client() as aclient:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ask_async(aclient, "sim-1", "Reply: slow"), timeout=0.2)

    asyncio.run(cancelled())
    assert (guard.calls, guard.in_flight) == (4, 0)


def test_a_stream_holds_its_slot_until_it_is_closed(sim: simulator.Simulator) -> None:
    target = provider(sim)
    guard = target.quota
    assert guard is not None
    body = {
        "model": "sim-1",
        "messages": [{"role": "user", "content": "Reply: a b c"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with target.client() as client:
        with client.stream("POST", "/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert guard.in_flight == 1
            lines = list(response.iter_lines())
        assert guard.in_flight == 0
    assert "data: [DONE]" in lines
    assert guard.tokens == server_tokens(sim) > 0


# --- the budget ------------------------------------------------------------------------------------------------


def test_a_spent_call_budget_refuses_the_next_call_before_it_is_sent(sim: simulator.Simulator) -> None:
    guard = QuotaGuard(max_calls=5)
    target = provider(sim, quota=guard)
    with target.client() as client:
        for i in range(5):
            assert ask(client, "sim-1", f"Reply: c{i}") == f"c{i}"
        with pytest.raises(QuotaExceeded) as caught:
            ask(client, "sim-1", "Reply: one more")
        assert requests(sim) == 5  # the sixth never reached the server
        message = str(caught.value)
        assert "5 calls" in message and "LLM_MAX_CALLS" in message and "set_limits(max_calls=" in message
        assert isinstance(caught.value, RuntimeError)
        # Raised on purpose, the limit lets more through.
        guard.set_limits(max_calls=6)
        assert ask(client, "sim-1", "Reply: granted") == "granted"
    assert (guard.calls, guard.refused) == (6, 1)


def test_threads_waiting_for_a_slot_are_refused_too_when_the_budget_runs_out(slow: simulator.Simulator) -> None:
    target = provider(slow, quota=QuotaGuard(max_calls=5))
    with target.client() as client, ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(ask, client, "sim-1", p) for p in TEN]
        outcomes = [f.exception(timeout=20) for f in futures]  # none left waiting for a slot
    assert sum(e is None for e in outcomes) == 5
    assert sum(isinstance(e, QuotaExceeded) for e in outcomes) == 5
    assert requests(slow) == 5 and peak(slow) <= 3


def test_a_spent_budget_stops_every_kind_of_client(sim: simulator.Simulator) -> None:
    from pydantic_ai import Agent

    guard = QuotaGuard(max_calls=1)
    target = provider(sim, quota=guard)
    with target.client() as client:
        ask(client, "sim-1", "Reply: last")
    with target.openai_client(max_retries=2) as sdk, pytest.raises(QuotaExceeded):  # not retried, not wrapped
        sdk.chat.completions.create(model="sim-1", messages=[{"role": "user", "content": "Reply: x"}])

    async def agent_call() -> None:
        async with Agent(target.chat_model()) as agent:
            await agent.run("Reply: x")

    with pytest.raises(QuotaExceeded):
        asyncio.run(agent_call())
    assert requests(sim) == 1


def test_a_run_past_the_budget_keeps_every_prompt(sim: simulator.Simulator) -> None:
    target = provider(sim, quota=QuotaGuard(max_calls=5))
    with target.client() as client:
        report = run_threads(lambda p: ask(client, "sim-1", p), TEN[:8], workers=3)
    assert report.n == 8
    assert len([r for r in report.records if r.ok]) == 5
    assert all("QuotaExceeded" in (r.error or "") for r in report.failures)
    assert requests(sim) == 5


def test_a_spent_token_budget(sim: simulator.Simulator) -> None:
    guard = QuotaGuard(max_tokens=30)
    target = provider(sim, quota=guard)
    with target.client() as client:
        answered = 0
        with pytest.raises(QuotaExceeded, match=r"30 tokens.*LLM_MAX_TOKENS.*set_limits\(max_tokens=60\)"):
            for _ in range(10):
                ask(client, "sim-1", "Reply: alpha")
                answered += 1
    assert guard.tokens >= 30 and guard.tokens - server_tokens(sim) == 0
    assert answered == requests(sim) == guard.calls < 10


# --- check_run: refused before the first request -----------------------------------------------------------------


def test_check_run_refuses_a_run_too_big_for_the_budget(sim: simulator.Simulator) -> None:
    target = provider(sim)
    assert target.quota is not None
    with pytest.raises(QuotaExceeded) as caught:
        target.quota.check_run(200, 400, workers=3)
    message = str(caught.value)
    assert "before any call" in message
    assert "200 calls" in message and "80,000 tokens" in message and "price unknown for sim-1" in message
    assert "LLM_MAX_CALLS=200" in message and "LLM_MAX_TOKENS=80000" in message and "set_limits(" in message
    with pytest.raises(QuotaExceeded, match="at most 3"):
        target.quota.check_run(3, 100, workers=5)
    estimate = target.quota.check_run(10, 400, workers=3)  # fits: the estimate comes back
    assert (estimate.calls, estimate.tokens) == (10, 4000)
    assert requests(sim) == 0


def test_check_run_shows_the_cost_where_the_price_is_known(sim: simulator.Simulator) -> None:
    target = Target(base_url=sim.api_url, model="gpt-4o-mini")
    assert target.quota is not None
    with pytest.raises(QuotaExceeded) as caught:
        target.quota.check_run(1000, 1000, workers=3)
    message = str(caught.value)
    # 1M tokens at $0.15 (input) to $0.60 (output) per 1M.
    assert "$0.1500 to $0.6000" in message and f"gpt-4o-mini list prices of {PRICES_AS_OF}" in message


def test_check_run_counts_what_was_already_used(sim: simulator.Simulator) -> None:
    target = provider(sim, quota=QuotaGuard(max_calls=10))
    assert target.quota is not None
    with target.client() as client:
        for p in TEN[:6]:
            ask(client, "sim-1", p)
    target.quota.check_run(4, 10)
    with pytest.raises(QuotaExceeded, match="4 of its 10 calls"):
        target.quota.check_run(5, 10)


def test_run_refuses_a_run_past_the_budget_before_any_request(sim: simulator.Simulator) -> None:
    target = provider(sim, quota=QuotaGuard(max_calls=20))
    prompts = [f"Reply: p{i}" for i in range(21)]
    for strategy in ("sequential", "threads", "asyncio", "agent-asyncio"):
        with pytest.raises(QuotaExceeded, match="21 calls"):
            run(strategy, prompts, target=target, workers=3)
    assert requests(sim) == 0
    report = run("asyncio", prompts[:3], target=target, workers=3)
    assert report.answers == ["p0", "p1", "p2"]
    assert target.quota is not None and target.quota.calls == 3


def test_run_naive_asyncio_goes_through_the_guard(slow: simulator.Simulator) -> None:
    target = provider(slow)
    report = run("naive-asyncio", TEN[:3], target=target)
    assert report.answers == TEN_ANSWERS[:3]
    assert target.quota is not None and target.quota.calls == 3


# --- limits from the environment, bad limits ------------------------------------------------------------------


def test_limits_from_the_environment_and_arguments() -> None:
    guard = QuotaGuard(env={"LLM_MAX_CALLS": "7", "LLM_MAX_TOKENS": "1_000"})
    assert (guard.max_calls, guard.max_tokens, guard.max_in_flight) == (7, 1000, 3)
    assert QuotaGuard(max_calls=9, env={"LLM_MAX_CALLS": "7"}).max_calls == 9  # an argument wins
    assert QuotaGuard(env={}).max_calls == 100


def test_connect_applies_the_environment_to_the_session_guard() -> None:
    env = {"LLM_BASE_URL": "https://api.example.com/v1", "LLM_MODEL": "gpt-4o-mini", "LLM_API_KEY": SECRET}
    target = connect(env=env | {"LLM_MAX_CALLS": "250"}, check=False)
    assert target.quota is not None and target.quota.max_calls == 250
    again = connect(env=env | {"LLM_MAX_TOKENS": "90000"}, check=False)
    assert again.quota is not None and (again.quota.max_calls, again.quota.max_tokens) == (250, 90_000)
    with pytest.raises(SetupError, match="LLM_MAX_CALLS"):
        connect(env=env | {"LLM_MAX_CALLS": "lots"}, check=False)
    with pytest.raises(SetupError, match="LLM_MAX_TOKENS"):
        connect(env=env | {"LLM_MAX_TOKENS": "0"}, check=False)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"max_calls": 0}, "max_calls"),
        ({"max_calls": -5}, "max_calls"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": "50000"}, "max_tokens"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"max_in_flight": True}, "max_in_flight"),
        ({"env": {"LLM_MAX_CALLS": "-1"}}, "LLM_MAX_CALLS"),
        ({"env": {"LLM_MAX_TOKENS": "many"}}, "LLM_MAX_TOKENS"),
    ],
)
def test_bad_limits_are_clear_errors(options: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        QuotaGuard(**options)


def test_bad_run_estimates_and_limit_changes_are_clear_errors() -> None:
    guard = QuotaGuard()
    with pytest.raises(ValueError, match="n_calls"):
        guard.check_run(-1, 100)
    with pytest.raises(ValueError, match="est_tokens_per_call"):
        guard.check_run(10, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers"):
        guard.check_run(10, 100, workers=0)
    with pytest.raises(ValueError, match="max_calls"):
        guard.set_limits(max_calls=0)
    with pytest.raises(TypeError, match="transport"):
        guard.wrap_transport(object())


# --- prices, usage from every answer shape, secrets --------------------------------------------------------------


def test_prices() -> None:
    assert price_of("gpt-4o-mini") == PRICES["gpt-4o-mini"] == (0.15, 0.60)
    assert price_of("gpt-4o-mini-2024-07-18") == PRICES["gpt-4o-mini"]  # a dated snapshot
    assert price_of("gpt-4o-2024-08-06") == PRICES["gpt-4o"]
    assert price_of("gpt-4.1-mini") == PRICES["gpt-4.1-mini"] != price_of("gpt-4.1")
    assert price_of("llama3.2") is None and price_of("sim-1") is None and price_of(None) is None
    assert estimate_cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert estimate_cost("llama3.2", 10, 10) is None


def usage_of(guard: QuotaGuard, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """Send one request through the guard to an in-process transport answering ``body``; return the usage."""
    transport = guard.wrap_transport(
        httpx.MockTransport(lambda request: httpx.Response(200, content=body, headers=headers))
    )
    with httpx.Client(transport=transport, base_url="http://provider.test/v1") as client:
        client.post("/chat/completions", json={})
    return guard.usage()


def test_usage_is_read_from_every_answer_shape() -> None:
    chat = json.dumps({"model": "gpt-4o-mini-2024-07-18", "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
    usage = usage_of(
        QuotaGuard(), gzip.compress(chat.encode()), {"content-type": "application/json", "content-encoding": "gzip"}
    )
    assert usage["tokens_by_model"] == {"gpt-4o-mini-2024-07-18": {"input": 7, "output": 3}}
    assert usage["cost_usd"] == pytest.approx((7 * 0.15 + 3 * 0.60) / 1e6)

    responses = json.dumps(
        {"model": "gpt-4.1-mini", "usage": {"input_tokens": 20, "output_tokens": 5, "total_tokens": 25}}
    )
    assert usage_of(QuotaGuard(), responses.encode(), {"content-type": "application/json"})["tokens"] == 25

    events = (
        'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
        'data: {"choices": [], "model": "m", "usage": {"prompt_tokens": 4, "completion_tokens": 2}}\n\n'
        "data: [DONE]\n\n"
    )
    assert usage_of(QuotaGuard(), events.encode(), {"content-type": "text/event-stream"})["tokens"] == 6

    completed = (
        "event: response.completed\n"
        'data: {"response": {"model": "m", "usage": {"input_tokens": 3, "output_tokens": 1}}}\n\n'
    )
    assert usage_of(QuotaGuard(), completed.encode(), {"content-type": "text/event-stream"})["tokens"] == 4

    unreadable = usage_of(QuotaGuard(), b"\x00\x01", {"content-type": "application/json", "content-encoding": "br"})
    assert (unreadable["calls"], unreadable["tokens"], unreadable["in_flight"]) == (1, 0, 0)


def test_a_guard_never_shows_a_key(sim: simulator.Simulator) -> None:
    target = provider(sim, api_key=Secret(SECRET))
    assert target.quota is not None
    with target.client() as client:
        ask(client, "sim-1", "Reply: shh")
    texts = [repr(target.quota), str(target.quota), str(target.quota.usage()), repr(target), target.describe()]
    for text in texts:
        assert SECRET not in text and "0123456789" not in text
    assert repr(target.quota).startswith("QuotaGuard(model='sim-1', at most 3 in flight; used 1/100 calls")


def test_a_guard_can_be_given_to_the_simulator_on_purpose(slow: simulator.Simulator) -> None:
    target = Target(base_url=slow.api_url, model="sim-1", simulator=slow, quota=QuotaGuard(max_in_flight=2))
    assert target.is_simulator and target.max_in_flight == 2

    def one(prompt: str) -> str:
        return ask(client, "sim-1", prompt)

    with target.client() as client, ThreadPoolExecutor(6) as pool:
        assert list(pool.map(one, TEN[:6])) == TEN_ANSWERS[:6]
    assert peak(slow) <= 2
