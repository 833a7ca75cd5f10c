"""Faults and limits as a client sees them: each scripted fault kind through the openai SDK (retries off) and
raw httpx, faults by seeded rate, requests- and tokens-per-minute limits with OpenAI's 429 body and headers,
and the SDK's own hidden retries made visible by the server's stats."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from helpers import simulator


def user(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}]


def chat(client: openai.OpenAI, prompt: str = "Tell me about queues", **options: Any) -> Any:
    return client.chat.completions.create(model="sim-1", messages=user(prompt), **options)


DURATION = re.compile(r"^(\d+ms|\d+(\.\d+)?s|\d+m\d+s)$")  # OpenAI's reset format: 120ms, 1.5s, 6m0s


# --- each fault kind, scripted, through the openai SDK -----------------------------------------------------


def test_429_is_rate_limit_error_with_headers(client: openai.OpenAI, sim: simulator.Simulator) -> None:
    sim.configure(script={1: "429"})
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert isinstance(error.body, dict) and error.body["message"].startswith("Rate limit reached for sim-1")
    headers = error.response.headers
    assert int(headers["retry-after"]) >= 1
    assert int(headers["retry-after-ms"]) >= 1
    assert headers["x-ratelimit-limit-requests"].isdigit()
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert DURATION.match(headers["x-ratelimit-reset-requests"])
    # Only request 1 was scripted: the next one is answered.
    assert chat(client, "Reply: ok").choices[0].message.content == "ok"
    assert sim.stats(records=False)["by_fault"] == {"429": 1}


def test_fault_on_fails_every_prompt_with_that_text(client: openai.OpenAI, sim: simulator.Simulator) -> None:
    sim.configure(fault_on={"beta": "500"})
    for _ in range(2):  # every time, not once: it is tied to the prompt, not to a request number
        with pytest.raises(openai.InternalServerError):
            chat(client, "Reply: beta")
    assert chat(client, "Reply: alpha").choices[0].message.content == "alpha"
    assert sim.stats(records=False)["by_fault"] == {"500": 2}
    with pytest.raises(simulator.ConfigError, match="unknown fault 'boom'"):
        sim.configure(fault_on={"beta": "boom"})
    with pytest.raises(simulator.ConfigError, match="fault_on keys"):
        sim.configure(fault_on={"": "500"})


def test_quota_is_rate_limit_error_insufficient_quota(client: openai.OpenAI, sim: simulator.Simulator) -> None:
    sim.configure(script={1: "quota"})
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    assert caught.value.status_code == 429
    assert caught.value.code == "insufficient_quota"
    assert caught.value.type == "insufficient_quota"


def test_quota_after_n_requests(client: openai.OpenAI, sim: simulator.Simulator) -> None:
    sim.configure(quota_requests=2)
    chat(client)
    chat(client)
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    assert caught.value.code == "insufficient_quota"


def test_500_is_internal_server_error(client: openai.OpenAI, sim: simulator.Simulator) -> None:
    sim.configure(script={1: "500"})
    with pytest.raises(openai.InternalServerError) as caught:
        chat(client)
    assert caught.value.status_code == 500
    assert caught.value.type == "server_error"
    assert caught.value.message.endswith("The server had an error while processing your request. Sorry about that!")


def test_503_is_status_error_503(client: openai.OpenAI, sim: simulator.Simulator) -> None:
    sim.configure(script={1: "503"})
    with pytest.raises(openai.APIStatusError) as caught:
        chat(client)
    assert caught.value.status_code == 503
    assert isinstance(caught.value, openai.InternalServerError)  # the SDK's class for every 5xx


def test_hang_times_out_and_leaves_nothing_in_flight(
    client: openai.OpenAI, sim: simulator.Simulator, settle: Callable[..., dict[str, Any]]
) -> None:
    sim.configure(script={1: "hang"}, hang_seconds=30)  # far longer than the test waits
    began = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        chat(client, timeout=0.5)
    assert time.monotonic() - began < 20  # the client gave up; the server did not end the hang
    stats = settle(sim, timeout=10)
    assert stats["in_flight"] == 0  # the server noticed the client hung up, well before hang_seconds
    assert stats["by_fault"] == {"hang": 1}
    (record,) = sim.stats()["records"]
    assert record["outcome"] == "hung until the client gave up"


def test_hang_ends_after_hang_seconds(sim: simulator.Simulator) -> None:
    sim.configure(script={1: "hang"}, hang_seconds=0.2)
    response = httpx.post(sim.api_url + "/chat/completions", json={"model": "sim-1", "messages": user("x")}, timeout=10)
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "server_error"


def test_drop_is_connection_error(client: openai.OpenAI, sim: simulator.Simulator) -> None:
    sim.configure(script={1: "drop"})
    with pytest.raises(openai.APIConnectionError) as caught:
        chat(client)
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert sim.stats()["records"][0]["outcome"] == "connection dropped"


def test_drop_mid_stream_fails_while_iterating(client: openai.OpenAI, sim: simulator.Simulator) -> None:
    sim.configure(script={1: "drop"})
    stream = chat(client, stream=True)  # the headers and the first chunks arrive: no error yet
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            received.append(chunk)
    assert len(received) >= 2  # it broke half-way, not at the start
    assert all(c.choices and c.choices[0].finish_reason is None for c in received)


def test_malformed_body_raises_json_decode_error(client: openai.OpenAI, sim: simulator.Simulator) -> None:
    # HTTP 200 with a truncated JSON body: the SDK does not wrap this one, it surfaces the JSON error.
    sim.configure(script={1: "malformed", 2: "malformed"})
    with pytest.raises(json.JSONDecodeError):
        chat(client)
    with pytest.raises(json.JSONDecodeError):
        list(chat(client, stream=True))


# --- the same faults through raw httpx ---------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "status"), [("429", 429), ("quota", 429), ("500", 500), ("503", 503)])
def test_raw_httpx_status_codes(sim: simulator.Simulator, kind: str, status: int) -> None:
    sim.configure(script={1: kind})
    response = httpx.post(sim.api_url + "/chat/completions", json={"model": "sim-1", "messages": user("x")}, timeout=10)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert response.headers["x-request-id"]


def test_raw_httpx_malformed_drop_hang(sim: simulator.Simulator, settle: Callable[..., dict[str, Any]]) -> None:
    sim.configure(script={1: "malformed", 2: "drop", 3: "hang"}, hang_seconds=30)
    body = {"model": "sim-1", "messages": user("x")}
    with httpx.Client(base_url=sim.api_url, timeout=10) as raw:
        malformed = raw.post("/chat/completions", json=body)
        assert malformed.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            malformed.json()
        with pytest.raises(httpx.RemoteProtocolError):
            raw.post("/chat/completions", json=body)
        with pytest.raises(httpx.ReadTimeout):
            raw.post("/chat/completions", json=body, timeout=httpx.Timeout(10, read=0.5))
    assert settle(sim)["in_flight"] == 0


# --- faults by seeded rate -----------------------------------------------------------------------------


def _failing_prompts(sim: simulator.Simulator, prompts: list[str]) -> set[str]:
    sim.configure(fail_rate=0.5, fail_kinds=["500"], latency=0.01)
    sim.reset()
    failed = set()
    with httpx.Client(base_url=sim.api_url, timeout=10) as raw:
        for prompt in prompts:
            response = raw.post("/chat/completions", json={"model": "sim-1", "messages": user(prompt)})
            assert response.status_code in (200, 500)
            if response.status_code == 500:
                failed.add(prompt)
    sim.configure(fail_rate=0.0)
    return failed


def test_fault_rate_is_seeded_across_processes(
    twins: tuple[simulator.Simulator, simulator.Simulator, simulator.Simulator],
) -> None:
    prompts = [f"Tell me fact number {i}" for i in range(24)]
    first, second, other_seed = twins
    failed_1 = _failing_prompts(first, prompts)
    failed_2 = _failing_prompts(second, prompts)
    failed_3 = _failing_prompts(other_seed, prompts)
    assert failed_1 == failed_2
    assert 0 < len(failed_1) < len(prompts)
    assert failed_3 != failed_1


def test_fault_rate_retry_of_same_body_can_succeed(sim: simulator.Simulator) -> None:
    # The n-th try of the same request body draws again: a retry is not doomed to fail the same way.
    sim.configure(fail_rate=0.5, fail_kinds=["503"])
    body = {"model": "sim-1", "messages": user("Retry me")}
    with httpx.Client(base_url=sim.api_url, timeout=10) as raw:
        statuses = [raw.post("/chat/completions", json=body).status_code for _ in range(16)]
    assert set(statuses) == {200, 503}


# --- rate limits ---------------------------------------------------------------------------------------------


def test_rpm_limit_gives_openai_429(sim: simulator.Simulator) -> None:
    sim.configure(rpm=3)
    body = {"model": "sim-1", "messages": user("Reply: hi")}
    with httpx.Client(base_url=sim.api_url, timeout=10) as raw:
        ok = [raw.post("/chat/completions", json=body) for _ in range(3)]
        limited = raw.post("/chat/completions", json=body)

    assert [r.status_code for r in ok] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in ok] == ["2", "1", "0"]
    assert limited.status_code == 429
    data = limited.json()
    assert set(data) == {"error"}
    error = data["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "requests"
    assert error["param"] is None
    assert error["code"] == "rate_limit_exceeded"
    assert re.match(
        r"Rate limit reached for sim-1 .*on requests per min \(RPM\): Limit 3, Used 3, Requested 1\. "
        r"Please try again in \d+(\.\d+)?s\.",
        error["message"],
    ), error["message"]
    headers = limited.headers
    assert headers["retry-after"].isdigit() and 1 <= int(headers["retry-after"]) <= 21  # one slot: ~20 s
    assert int(headers["retry-after-ms"]) > 1000
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert DURATION.match(headers["x-ratelimit-reset-requests"])
    stats = sim.stats(records=False)
    assert stats["by_status"] == {"200": 3, "429": 1}


def test_a_short_burst_shows_the_steady_rate_at_once(sim: simulator.Simulator) -> None:
    """``burst=0.5`` at 600 rpm: the bucket holds 5 requests, not a minute's 600, and refills 10 a second;
    the headers still report the per-minute limit."""
    sim.configure(rpm=600, burst=0.5, latency=0)
    body = {"model": "sim-1", "messages": user("Reply: hi")}
    with httpx.Client(base_url=sim.api_url, timeout=10) as raw:
        statuses = [raw.post("/chat/completions", json=body).status_code for _ in range(8)]
        limited = raw.post("/chat/completions", json=body)
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
    assert limited.headers["x-ratelimit-limit-requests"] == "600"
    assert "Limit 600," in limited.json()["error"]["message"]
    assert 0 < int(limited.headers["retry-after-ms"]) <= 150  # a tenth of a second per request, not 20 s
    with pytest.raises(simulator.ConfigError, match="burst"):
        sim.configure(burst=0)


def test_rpm_limit_through_the_sdk(client: openai.OpenAI, sim: simulator.Simulator) -> None:
    sim.configure(rpm=2)
    chat(client)
    chat(client)
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "requests"


def test_tpm_limit_gives_openai_429(sim: simulator.Simulator) -> None:
    sim.configure(tpm=60)
    body = {"model": "sim-1", "messages": user("Reply: hi"), "max_tokens": 20}
    with httpx.Client(base_url=sim.api_url, timeout=10) as raw:
        first = raw.post("/chat/completions", json=body)
        requested = first.json()["usage"]["prompt_tokens"] + 20  # the limit counts prompt + max_tokens
        answers = [first] + [raw.post("/chat/completions", json=body) for _ in range(60 // requested - 1)]
        limited = raw.post("/chat/completions", json=body)

    assert all(r.status_code == 200 for r in answers)
    assert limited.status_code == 429
    error = limited.json()["error"]
    assert error["type"] == "tokens"
    assert error["code"] == "rate_limit_exceeded"
    assert error["param"] is None
    assert re.match(
        rf"Rate limit reached for sim-1 .*on tokens per min \(TPM\): Limit 60, Used \d+, Requested {requested}\. "
        r"Please try again in \d+(\.\d+)?s\.",
        error["message"],
    ), error["message"]
    headers = limited.headers
    assert headers["retry-after"].isdigit() and int(headers["retry-after"]) >= 1
    assert int(headers["retry-after-ms"]) >= 1
    assert headers["x-ratelimit-limit-tokens"] == "60"
    assert int(headers["x-ratelimit-remaining-tokens"]) < requested
    assert DURATION.match(headers["x-ratelimit-reset-tokens"])


def test_request_bigger_than_tpm_is_refused(sim: simulator.Simulator) -> None:
    sim.configure(tpm=10)
    response = httpx.post(
        sim.api_url + "/chat/completions", json={"model": "sim-1", "messages": user("hi"), "max_tokens": 50}, timeout=10
    )
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "tokens"
    assert int(response.headers["retry-after"]) >= 1


# --- the SDK's hidden retries ------------------------------------------------------------------------------


def test_sdk_retries_are_visible(sim: simulator.Simulator) -> None:
    sim.configure(script={1: "500"})
    with openai.OpenAI(base_url=sim.api_url, api_key="sk-unused", timeout=10) as default_client:  # 2 retries
        answer = chat(default_client, "Reply: survived")
    assert answer.choices[0].message.content == "survived"
    stats = sim.stats()
    assert stats["retries_seen"] >= 1
    assert stats["by_status"] == {"500": 1, "200": 1}
    first, second = stats["records"]
    assert (first["retry"], first["status"]) == (0, 500)
    assert (second["retry"], second["status"]) == (1, 200)


# --- stats stay right when reset while requests are in flight -----------------------------------------------


def test_reset_while_in_flight_keeps_counts_consistent(
    sim: simulator.Simulator, settle: Callable[..., dict[str, Any]]
) -> None:
    sim.configure(latency=0.6, capacity=1)
    results: list[int] = []

    def call() -> None:
        response = httpx.post(
            sim.api_url + "/chat/completions", json={"model": "sim-1", "messages": user("x")}, timeout=10
        )
        results.append(response.status_code)

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 10
    while sim.stats(records=False)["in_flight"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    sim.reset()
    during = sim.stats(records=False)
    worker.join(15)
    after = settle(sim)
    assert results == [200]
    assert during["in_flight"] == 1 and during["serving"] == 1 and during["requests"] == 0
    assert after["in_flight"] == 0 and after["serving"] == 0
    # The capacity slot held across the reset came back once: two more calls still go one at a time.
    sim.configure(latency=0.3)  # no reset here: a reset would build a fresh semaphore and hide a leaked slot
    pair = [threading.Thread(target=call) for _ in range(2)]
    for one in pair:
        one.start()
    for one in pair:
        one.join(15)
    stats = sim.stats(records=False)
    assert results == [200, 200, 200]
    assert stats["peak_in_flight"] == 2 and stats["peak_serving"] == 1
