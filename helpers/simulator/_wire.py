"""OpenAI's wire format as the simulator reads and writes it: request bodies (at most ``MAX_BODY_BYTES``), error
bodies, chat completions (whole and streamed) and Responses API answers. Checked against the openai SDK and
pydantic-ai in ``tests/test_simulator_api.py``."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ._requests import MAX_BODY_BYTES, Ask, BadRequest

SIMULATOR_HEADER = "x-llm-simulator"  # every answer carries it: helpers.connect() tells the simulator by it

# --- errors -----------------------------------------------------------------------------------------------


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


SERVER_ERROR = error_body("The server had an error while processing your request. Sorry about that!", "server_error")
OVERLOADED = error_body("The server is overloaded or not ready yet.", "server_error")
QUOTA = error_body(
    "You exceeded your current quota, please check your plan and billing details. For more information on "
    "this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
    "insufficient_quota",
    "insufficient_quota",
)
NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer "
    "auth (i.e. Authorization: Bearer YOUR_KEY)."
)
WRONG_KEY = "Incorrect API key provided. Check the key you set (LLM_API_KEY)."  # never echoes any of the key


def rate_limit_message(model: str, org: str, kind: str, limit: int, used: int, requested: int, again: str) -> str:
    label = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    return (
        f"Rate limit reached for {model} in organization {org} on {label}: Limit {limit}, Used {used}, "
        f"Requested {requested}. Please try again in {again}. Visit https://platform.openai.com/account/rate-limits "
        "to learn more."
    )


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``120ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


class JSONOut(JSONResponse):
    """A JSON answer that can always be sent: text that is not valid Unicode goes out as ``\\u`` escapes."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 once it is longer than MAX_BODY_BYTES (never read past that)."""
    too_long = BadRequest(
        f"The request body is larger than this simulator accepts ({MAX_BODY_BYTES // 1024 // 1024} MB). Send fewer "
        "or shorter messages.",
        status=413,
        code="request_too_large",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_long
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_long
        chunks.append(chunk)
    return b"".join(chunks)


# --- answers ----------------------------------------------------------------------------------------------


def completion_id(seed: int, index: int, prefix: str) -> str:
    return f"{prefix}-sim{seed & 0xFFFF:04x}{index:08d}"


def usage(ask: Ask, plan: dict[str, Any]) -> dict[str, Any]:
    return {
        "prompt_tokens": ask.prompt_tokens,
        "completion_tokens": plan["out_tokens"],
        "total_tokens": ask.prompt_tokens + plan["out_tokens"],
    }


def tool_call(plan: dict[str, Any], index: int) -> dict[str, Any]:
    return {
        "id": f"call_sim{index:08d}",
        "type": "function",
        "function": {"name": plan["tool"]["name"], "arguments": plan["content"]},
    }


def chat_body(seed: int, ask: Ask, plan: dict[str, Any], index: int) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if plan["tool"] else plan["content"],
        "refusal": None,
    }
    if plan["tool"]:
        message["tool_calls"] = [tool_call(plan, index)]
    return {
        "id": completion_id(seed, index, "chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": ask.model,
        "system_fingerprint": "fp_simulator",
        "choices": [{"index": 0, "message": message, "finish_reason": plan["finish"], "logprobs": None}],
        "usage": usage(ask, plan),
    }


def chat_stream(
    seed: int, ask: Ask, plan: dict[str, Any], index: int, include_usage: bool, fault: str | None
) -> list[tuple[float, bytes]]:
    """The SSE events of a streamed chat completion, each with the pause before it."""
    ident, created = completion_id(seed, index, "chatcmpl"), int(time.time())

    def event(choices: list[dict[str, Any]], usage_: Any = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": ask.model,
            "system_fingerprint": "fp_simulator",
            "choices": choices,
        }
        if include_usage:
            chunk["usage"] = usage_
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def delta(d: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]

    pieces: list[tuple[float, bytes]] = [(plan["first"], event(delta({"role": "assistant", "content": ""})))]
    rest = max(0.0, plan["total"] - plan["first"])
    if plan["tool"]:
        call = tool_call(plan, index)
        args = call["function"].pop("arguments")
        call["function"]["arguments"] = ""
        pieces.append((0.0, event(delta({"tool_calls": [{"index": 0, **call}]}))))
        size = max(16, math.ceil(len(args) / 50))  # at most 50 events, as for text
        parts = [args[i : i + size] for i in range(0, len(args), size)] or [""]
        for part in parts:
            pieces.append(
                (rest / len(parts), event(delta({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})))
            )
    else:
        words = [w for w in plan["content"].split(" ")]
        # At most 50 events per answer: long answers send several words per event.
        group = max(1, math.ceil(len(words) / 50))
        groups = [" ".join(words[i : i + group]) for i in range(0, len(words), group)]
        for i, text in enumerate(groups):
            piece = text if i == len(groups) - 1 else text + " "
            pieces.append((rest / len(groups), event(delta({"content": piece}))))
    if fault == "drop":
        return pieces[: max(2, len(pieces) // 2)]
    if fault == "malformed":
        half = max(2, len(pieces) // 2)
        return pieces[:half] + [(0.0, b'data: {"id": "' + ident.encode() + b'", "choices": [{"delta": \n\n')]
    pieces.append((0.0, event(delta({}, plan["finish"]))))
    if include_usage:
        pieces.append((0.0, event([], usage(ask, plan))))
    pieces.append((0.0, b"data: [DONE]\n\n"))
    return pieces


def responses_body(seed: int, ask: Ask, plan: dict[str, Any], index: int) -> dict[str, Any]:
    if plan["tool"]:
        output: list[dict[str, Any]] = [
            {
                "type": "function_call",
                "id": f"fc_sim{index:08d}",
                "call_id": f"call_sim{index:08d}",
                "name": plan["tool"]["name"],
                "arguments": plan["content"],
                "status": "completed",
            }
        ]
    else:
        output = [
            {
                "type": "message",
                "id": f"msg_sim{index:08d}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": plan["content"], "annotations": [], "logprobs": []}],
            }
        ]
    incomplete = plan["finish"] == "length"
    return {
        "id": completion_id(seed, index, "resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if incomplete else "completed",
        "model": ask.model,
        "output": output,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None,
        "instructions": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "top_p": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": ask.prompt_tokens,
            "output_tokens": plan["out_tokens"],
            "total_tokens": ask.prompt_tokens + plan["out_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }
