"""The simulator as a real client sees it: the official openai SDK (sync, async, streaming), raw httpx and
deterministic answers. Every call is real HTTP to the simulator process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from helpers import simulator


def user(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}]


# --- the openai SDK, sync ----------------------------------------------------------------------------------


def test_models_endpoint(client: openai.OpenAI, sim: simulator.Simulator) -> None:
    page = client.models.list()
    assert [m.id for m in page.data] == ["sim-1"]
    assert page.data[0].object == "model"

    raw = httpx.get(sim.api_url + "/models", timeout=10)
    assert raw.status_code == 200
    assert raw.headers[simulator.SIMULATOR_HEADER] == "helpers.simulator"
    assert raw.json()["object"] == "list"


def test_chat_completion_sync(client: openai.OpenAI, sim: simulator.Simulator) -> None:
    raw = client.chat.completions.with_raw_response.create(model="sim-1", messages=user("Reply: alpha"))
    completion = raw.parse()

    assert completion.object == "chat.completion"
    assert completion.model == "sim-1"
    assert completion.id.startswith("chatcmpl-")
    assert isinstance(completion.created, int)
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "alpha"
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None and usage.completion_tokens >= 1 and usage.prompt_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The headers a provider sends, which lessons read.
    assert raw.headers["x-request-id"].startswith("req_")
    assert int(raw.headers["openai-processing-ms"]) >= 0
    assert raw.headers[simulator.SIMULATOR_HEADER]

    stats = sim.stats()
    assert stats["requests"] == 1
    assert stats["by_status"] == {"200": 1}
    (record,) = stats["records"]
    assert record["prompt"] == "Reply: alpha" and record["status"] == 200 and record["outcome"] == "answered"
    assert record["planned_latency"] == pytest.approx(0.05)
    assert record["received"] <= record["started"] <= record["ended"]


def test_chat_completion_async(sim: simulator.Simulator) -> None:
    async def main() -> list[str | None]:
        async with openai.AsyncOpenAI(base_url=sim.api_url, api_key="sk-unused", max_retries=0) as aclient:
            answers = await asyncio.gather(
                *(aclient.chat.completions.create(model="sim-1", messages=user(f"Reply: word{i}")) for i in range(5))
            )
        return [a.choices[0].message.content for a in answers]

    assert asyncio.run(main()) == [f"word{i}" for i in range(5)]
    assert sim.stats(records=False)["by_status"] == {"200": 5}


# --- streaming ---------------------------------------------------------------------------------------------


def test_streaming_sync_with_usage(client: openai.OpenAI, sim: simulator.Simulator) -> None:
    prompt = user("Tell me about the river and the stone")
    plain = client.chat.completions.create(model="sim-1", messages=prompt)

    stream = client.chat.completions.create(
        model="sim-1", messages=prompt, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)  # ends: the iteration stops after data: [DONE]

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    *with_choices, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == plain.usage.completion_tokens  # type: ignore[union-attr]
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert with_choices[-1].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == plain.choices[0].message.content  # same request, same seed: same answer
    assert len(with_choices) > 3  # it really came in pieces

    assert sim.stats(records=False)["by_status"] == {"200": 2}


def test_streaming_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="sim-1", messages=user("Reply: beta"), stream=True))
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "beta"


def test_streaming_async(sim: simulator.Simulator) -> None:
    async def main() -> tuple[str, Any]:
        async with openai.AsyncOpenAI(base_url=sim.api_url, api_key="sk-unused", max_retries=0) as aclient:
            stream = await aclient.chat.completions.create(
                model="sim-1", messages=user("Reply: gamma"), stream=True, stream_options={"include_usage": True}
            )
            parts, usage = [], None
            async for chunk in stream:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                else:
                    usage = chunk.usage
        return "".join(parts), usage

    text, usage = asyncio.run(main())
    assert text == "gamma"
    assert usage is not None and usage.completion_tokens == 1


def test_stream_wire_format(sim: simulator.Simulator) -> None:
    body = {
        "model": "sim-1",
        "messages": user("Reply: delta"),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", sim.api_url + "/chat/completions", json=body, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    usage_chunk = json.loads(events[-2].removeprefix("data: "))
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 1


def test_stream_counts_as_in_flight_until_it_ends(sim: simulator.Simulator) -> None:
    sim.configure(latency=0.5)
    body = {"model": "sim-1", "messages": user("Tell me a story"), "stream": True}
    with httpx.stream("POST", sim.api_url + "/chat/completions", json=body, timeout=10) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        during = sim.stats(records=False)
        rest = list(lines)
    after = sim.stats(records=False)
    assert during["in_flight"] == 1 and during["serving"] == 1
    assert "data: [DONE]" in rest
    assert after["in_flight"] == 0 and after["serving"] == 0
    assert after["by_status"] == {"200": 1}


# --- the Responses API -------------------------------------------------------------------------------------


def test_responses_api(client: openai.OpenAI) -> None:
    response = client.responses.create(model="sim-1", input="Reply: epsilon")
    assert response.output_text == "epsilon"
    assert response.status == "completed"
    assert response.usage is not None and response.usage.output_tokens == 2  # "epsilon": 6 + 1 letters

    cut = client.responses.create(model="sim-1", input="Tell me a long story", max_output_tokens=16)
    assert cut.status == "incomplete"
    assert cut.usage is not None and cut.usage.output_tokens == 16


# --- deterministic answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [
        ("Reply: alpha", "alpha"),
        ("Reply with: two words", "two words"),
        ("What is the capital of Japan?", "Tokyo"),
        ("What is 2+2?", "4"),
        ("Compute 6 * 7", "42"),
    ],
)
def test_deterministic_answers(client: openai.OpenAI, prompt: str, answer: str) -> None:
    completion = client.chat.completions.create(model="sim-1", messages=user(prompt))
    assert completion.choices[0].message.content == answer


@pytest.mark.parametrize("max_tokens", [1, 5, 17, 29])  # filler is 30-80 tokens long unless cut
def test_filler_length_follows_max_tokens(client: openai.OpenAI, max_tokens: int) -> None:
    completion = client.chat.completions.create(
        model="sim-1", messages=user("Write a long essay about queues"), max_tokens=max_tokens
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens == max_tokens
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content


def test_filler_without_limit_stops_naturally(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="sim-1", messages=user("Write about queues"))
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and 30 <= completion.usage.completion_tokens <= 80
    roomy = client.chat.completions.create(model="sim-1", messages=user("Write about queues"), max_tokens=500)
    assert roomy.choices[0].finish_reason == "stop"
    assert roomy.usage is not None and 30 <= roomy.usage.completion_tokens <= 80
    # max_completion_tokens (the newer name) is honoured too
    cut = client.chat.completions.create(model="sim-1", messages=user("Write about queues"), max_completion_tokens=7)
    assert cut.usage is not None and cut.usage.completion_tokens == 7


def test_same_request_same_answer(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="sim-1", messages=user("Say something about pools"))
    again = client.chat.completions.create(model="sim-1", messages=user("Say something about pools"))
    other = client.chat.completions.create(model="sim-1", messages=user("Say something about loops"))
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content


# --- requests a provider rejects ---------------------------------------------------------------------------


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-nope", messages=user("hi"))
    assert caught.value.code == "model_not_found"


def test_bad_requests_are_400_with_openai_error_shape(sim: simulator.Simulator) -> None:
    with httpx.Client(base_url=sim.api_url, timeout=10) as raw:
        not_json = raw.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        no_messages = raw.post("/chat/completions", json={"model": "sim-1", "messages": []})
        bad_limit = raw.post("/chat/completions", json={"model": "sim-1", "messages": user("x"), "max_tokens": 0})
    for response in (not_json, no_messages, bad_limit):
        assert response.status_code == 400
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["message"]


# --- determinism across processes -------------------------------------------------------------------------

PROMPTS = [
    "Reply: one",
    "What is the capital of Japan?",
    "Tell me about rivers",
    "Tell me about clouds",
    "Describe a garden",
    "Explain thread pools",
    "Summarise the morning",
    "List three signals",
]


def _answers_and_latencies(sim: simulator.Simulator) -> tuple[list[str | None], list[float]]:
    sim.configure(latency=0.01)  # base time small; the profile (uniform, ±50 %) still spreads it per request
    sim.reset()
    with openai.OpenAI(base_url=sim.api_url, api_key="sk-unused", max_retries=0, timeout=10) as oai:
        answers = [
            oai.chat.completions.create(model="sim-1", messages=user(p)).choices[0].message.content for p in PROMPTS
        ]
    planned = [r["planned_latency"] for r in sim.stats()["records"]]
    return answers, planned


def test_same_seed_same_answers_and_latencies_across_processes(
    twins: tuple[simulator.Simulator, simulator.Simulator, simulator.Simulator],
) -> None:
    first, second, other_seed = twins
    assert first.process is not None and second.process is not None
    assert first.process.pid != second.process.pid

    answers_1, latencies_1 = _answers_and_latencies(first)
    answers_2, latencies_2 = _answers_and_latencies(second)
    answers_3, latencies_3 = _answers_and_latencies(other_seed)

    assert answers_1 == answers_2
    assert latencies_1 == latencies_2
    assert len(set(latencies_1)) == len(PROMPTS)  # spread out, not one constant
    assert latencies_3 != latencies_1
    assert answers_3[:2] == answers_1[:2]  # rule answers do not depend on the seed ...
    assert answers_3[2:] != answers_1[2:]  # ... filler does
