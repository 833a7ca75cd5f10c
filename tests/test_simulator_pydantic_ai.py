"""pydantic-ai agents against the simulator: Chat Completions and Responses, text, structured output and
streaming, sync and async. The models come from helpers.settings, as in the lessons."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent

from helpers import simulator
from helpers.settings import Target, connect


class Review(BaseModel):
    label: Literal["positive", "negative", "neutral"]


@pytest.fixture
def target(sim: simulator.Simulator) -> Target:
    """A Target at the shared test simulator (through connect(), as a lesson does with LLM_BASE_URL set)."""
    found = connect(env={"LLM_BASE_URL": sim.api_url, "LLM_MODEL": "sim-1"})
    assert found.is_simulator
    return found


def test_run_sync_chat_model(target: Target, sim: simulator.Simulator, sync_loop: list[Any]) -> None:
    model = target.chat_model()
    sync_loop.append(model)
    result = Agent(model).run_sync("Reply: alpha")
    assert result.output == "alpha"
    assert result.usage.requests == 1
    assert result.usage.output_tokens == 1
    (record,) = sim.stats()["records"]
    assert record["path"] == "chat" and record["status"] == 200


@pytest.mark.parametrize(("text", "label"), [("I love it", "positive"), ("This is terrible and broken", "negative")])
def test_structured_output(target: Target, sync_loop: list[Any], text: str, label: str) -> None:
    model = target.chat_model()
    sync_loop.append(model)
    result = Agent(model, output_type=Review).run_sync(text)
    assert isinstance(result.output, Review)
    assert result.output.label == label


def test_responses_model_text(target: Target, sim: simulator.Simulator, sync_loop: list[Any]) -> None:
    model = target.responses_model()
    sync_loop.append(model)
    result = Agent(model).run_sync("What is the capital of Japan?")
    assert result.output == "Tokyo"
    (record,) = sim.stats()["records"]
    assert record["path"] == "responses"


def test_responses_model_structured(target: Target, sync_loop: list[Any]) -> None:
    model = target.responses_model()
    sync_loop.append(model)
    assert Agent(model, output_type=Review).run_sync("I love it").output.label == "positive"


def test_async_run(target: Target, sim: simulator.Simulator) -> None:
    async def main() -> list[str]:
        agent = Agent(target.chat_model())
        async with agent:  # closes the provider's HTTP client on exit
            results = await asyncio.gather(*(agent.run(f"Reply: item{i}") for i in range(4)))
        return [r.output for r in results]

    assert asyncio.run(main()) == [f"item{i}" for i in range(4)]
    assert sim.stats(records=False)["by_status"] == {"200": 4}


def test_run_stream_text(target: Target, sim: simulator.Simulator) -> None:
    async def main() -> tuple[list[str], str, int]:
        agent = Agent(target.chat_model())
        async with agent, agent.run_stream("Tell me about the quiet river") as run:
            deltas = [d async for d in run.stream_text(delta=True, debounce_by=None)]
            output = await run.get_output()
            return deltas, output, run.usage.output_tokens

    deltas, output, tokens = asyncio.run(main())
    assert len(deltas) > 3  # it came in pieces
    assert "".join(deltas) == output
    assert 30 <= tokens <= 80
    (record,) = sim.stats()["records"]
    assert record["stream"] is True and record["status"] == 200
