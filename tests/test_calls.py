"""One-prompt calls (helpers.calls) against the real local simulator: answers, and errors that say what happened."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from helpers.calls import APIError, MalformedResponse, answer_from, ask, ask_async, chat_request
from helpers.settings import Target, connect

# Short, fixed latencies: "Reply: x" (one output token) takes 0.02 + 1/20 = 0.07 s.
SIM_SETTINGS = {"profile": "fixed", "ttft": 0.02, "tokens_per_second": 20.0, "seed": 11}


@pytest.fixture
def target() -> Target:
    """The shared simulator, reset to known settings, with no request left in flight and numbering from 1."""
    target = connect(env={}, **SIM_SETTINGS)
    sim = target.simulator
    assert sim is not None
    deadline = time.monotonic() + 5.0
    while sim.stats(records=False)["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    sim.reset()
    return target


@pytest.fixture
def client(target: Target):
    with target.client() as client:
        yield client


def test_chat_request_body() -> None:
    assert chat_request("m", "hi") == {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert chat_request("m", "hi", max_tokens=5)["max_tokens"] == 5


def test_ask_returns_the_answer(target: Target, client: httpx.Client) -> None:
    assert ask(client, target.model, "Reply: alpha") == "alpha"
    assert ask(client, target.model, "Reply: bravo delta") == "bravo delta"
    stats = target.simulator.stats()
    assert stats["by_status"] == {"200": 2}
    assert [r["prompt"] for r in stats["records"]] == ["Reply: alpha", "Reply: bravo delta"]


def test_ask_sends_max_tokens(target: Target, client: httpx.Client) -> None:
    # The answer is cut to at most 2 tokens by the server when max_tokens reaches it.
    assert ask(client, target.model, "Reply: alpha bravo delta echo golf", max_tokens=2) == "alpha bravo"


def test_rate_limit_error(target: Target, client: httpx.Client) -> None:
    target.simulator.configure(script={1: "429"})
    with pytest.raises(APIError) as info:
        ask(client, target.model, "Reply: alpha")
    error = info.value
    assert not isinstance(error, MalformedResponse)
    assert error.status == 429
    assert error.code == "rate_limit_exceeded"
    assert error.retry_after is not None and error.retry_after > 0
    assert error.retryable is True
    assert "Rate limit reached" in error.message
    assert str(error).startswith("HTTP 429 rate_limit_exceeded: ")
    # Only request 1 was scripted: the next call is answered.
    assert ask(client, target.model, "Reply: alpha") == "alpha"


def test_quota_error_is_not_retryable(target: Target, client: httpx.Client) -> None:
    target.simulator.configure(script={1: "quota"})
    with pytest.raises(APIError) as info:
        ask(client, target.model, "Reply: alpha")
    error = info.value
    assert error.status == 429
    assert error.code == "insufficient_quota"
    assert error.retryable is False
    assert "quota" in error.message


@pytest.mark.parametrize("kind", ["500", "503"])
def test_server_errors_are_retryable(target: Target, client: httpx.Client, kind: str) -> None:
    target.simulator.configure(script={1: kind})
    with pytest.raises(APIError) as info:
        ask(client, target.model, "Reply: alpha")
    error = info.value
    assert error.status == int(kind)
    assert error.retryable is True
    assert f"HTTP {kind}" in str(error)


def test_malformed_answer(target: Target, client: httpx.Client) -> None:
    target.simulator.configure(script={1: "malformed"})
    with pytest.raises(MalformedResponse) as info:
        ask(client, target.model, "Reply: alpha")
    error = info.value
    assert isinstance(error, APIError)
    assert error.status == 200
    assert "not a chat completion" in str(error)
    assert error.retryable is False


def test_unknown_model_is_a_404_with_the_servers_message(target: Target) -> None:
    wrong = Target(base_url=target.base_url, model="no-such-model", simulator=target.simulator)
    with wrong.client() as client, pytest.raises(APIError) as info:
        ask(client, wrong.model, "Reply: alpha")
    error = info.value
    assert error.status == 404
    assert error.code == "model_not_found"
    assert "no-such-model" in error.message and "does not exist" in error.message
    assert error.retryable is False


def test_ask_async_shares_one_client(target: Target) -> None:
    target.simulator.configure(script={2: "500"})
    prompts = ["Reply: alpha", "Reply: bravo", "Reply: delta"]

    async def main() -> list[object]:
        async with target.async_client(connections=3) as client:
            first = await ask_async(client, target.model, prompts[0])
            rest = await asyncio.gather(
                *(ask_async(client, target.model, p) for p in prompts[1:]), return_exceptions=True
            )
            return [first, *rest]

    results = asyncio.run(main())
    assert results[0] == "alpha"
    # Request 2 is whichever of the two concurrent calls arrived first: that one failed, the other is answered.
    second = next(r for r in target.simulator.stats()["records"] if r["n"] == 2)
    failed = prompts.index(second["prompt"])
    assert failed in (1, 2)
    assert isinstance(results[failed], APIError) and results[failed].status == 500
    other = 3 - failed
    assert results[other] == prompts[other].removeprefix("Reply: ")


def test_ask_async_errors(target: Target) -> None:
    target.simulator.configure(script={1: "429", 2: "malformed"})

    async def main() -> tuple[BaseException, BaseException]:
        async with target.async_client() as client:
            with pytest.raises(APIError) as limited:
                await ask_async(client, target.model, "Reply: alpha")
            with pytest.raises(MalformedResponse) as broken:
                await ask_async(client, target.model, "Reply: alpha")
            return limited.value, broken.value

    limited, broken = asyncio.run(main())
    assert limited.status == 429 and limited.code == "rate_limit_exceeded" and limited.retry_after
    assert "not a chat completion" in str(broken)


# --- answer_from on hand-made responses: no server needed -------------------------------------------------


def _response(status: int, body: object = None, *, text: str | None = None, headers: dict | None = None):
    request = httpx.Request("POST", "http://example.invalid/v1/chat/completions")
    if text is not None:
        return httpx.Response(status, text=text, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


def test_answer_from_reads_the_content() -> None:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}
    assert answer_from(_response(200, body)) == "hi"


def test_answer_from_prefers_retry_after_ms() -> None:
    body = {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}
    error = _error(_response(429, body, headers={"retry-after": "2", "retry-after-ms": "1500"}))
    assert error.retry_after == 1.5
    error = _error(_response(429, body, headers={"retry-after": "2"}))
    assert error.retry_after == 2.0
    assert _error(_response(429, body)).retry_after is None


def test_answer_from_error_without_json_body() -> None:
    error = _error(_response(502, text="<html>Bad gateway</html>"))
    assert error.status == 502 and error.code is None
    assert "Bad gateway" in error.message
    assert error.retryable is True
    assert _error(_response(400, {"error": {"message": "bad", "code": None}})).retryable is False


def test_answer_from_json_that_is_not_a_completion() -> None:
    with pytest.raises(MalformedResponse, match="not a chat completion"):
        answer_from(_response(200, {"choices": []}))


def _error(response: httpx.Response) -> APIError:
    with pytest.raises(APIError) as info:
        answer_from(response)
    return info.value
