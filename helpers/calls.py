"""One prompt, one call, in each style the lessons compare (lessons 01-04).

``ask`` (sync httpx), ``ask_async`` (async httpx) and ``ask_agent`` (pydantic-ai) all send the same chat
completion and return the answer text. A failed call raises :class:`APIError` with the provider's own
message, status and error code, and ``retry_after`` when the server said how long to wait.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

__all__ = ["APIError", "MalformedResponse", "answer_from", "ask", "ask_agent", "ask_async", "chat_request"]


class APIError(Exception):
    """The endpoint answered with an error (HTTP 4xx/5xx): its status, error code and message."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type_: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status, self.message, self.code, self.type, self.retry_after = status, message, code, type_, retry_after
        label = f"HTTP {status}" + (f" {code}" if code else "")
        super().__init__(f"{label}: {message}")

    @property
    def retryable(self) -> bool:
        """Worth another try: rate limits and server errors, but not a bad request, a bad key or no quota."""
        if self.code == "insufficient_quota":
            return False
        return self.status in (408, 409, 429) or self.status >= 500


class MalformedResponse(APIError):
    """HTTP 200, but the body is not the chat completion JSON the API promises."""


def chat_request(model: str, prompt: str, *, max_tokens: int | None = None) -> dict[str, Any]:
    """The JSON body of one chat completion with a single user message."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def _retry_after(headers: httpx.Headers) -> float | None:
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return float(value) / scale
            except ValueError:
                continue
    return None


def answer_from(response: httpx.Response) -> str:
    """The answer text of a chat completion response, or an :class:`APIError` that says what went wrong."""
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message, code, kind = str(error.get("message")), error.get("code"), error.get("type")
        except (ValueError, KeyError, TypeError, AttributeError):
            message, code, kind = response.text[:200] or response.reason_phrase, None, None
        raise APIError(response.status_code, message, code=code, type_=kind, retry_after=_retry_after(response.headers))
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise MalformedResponse(
            response.status_code,
            f"the answer is not a chat completion ({exc.__class__.__name__}"
            f": {str(exc)[:80]}); body starts {response.text[:60]!r}. A wrong LLM_BASE_URL (an OpenAI-compatible "
            "one ends in /v1) or a proxy's error page answers like this; a truncated answer may succeed if tried again",
        ) from None
    return content if isinstance(content, str) else json.dumps(content)


def ask(client: httpx.Client, model: str, prompt: str, *, max_tokens: int | None = None) -> str:
    """Send one prompt with a shared sync client and return the answer (lesson 01)."""
    response = client.post("/chat/completions", json=chat_request(model, prompt, max_tokens=max_tokens))
    return answer_from(response)


async def ask_async(client: httpx.AsyncClient, model: str, prompt: str, *, max_tokens: int | None = None) -> str:
    """Send one prompt with a shared async client and return the answer (lesson 03)."""
    response = await client.post("/chat/completions", json=chat_request(model, prompt, max_tokens=max_tokens))
    return answer_from(response)


def ask_agent(agent: Any, prompt: str) -> str:
    """Run a pydantic-ai agent on one prompt from synchronous code (lesson 04)."""
    return str(agent.run_sync(prompt).output)
