"""The simulator's HTTP API: an OpenAI-compatible Starlette app with latency, capacity, rate limits and faults.

Endpoints a client sees: ``POST /v1/chat/completions`` (plain and streaming, tools), ``POST /v1/responses``,
``GET /v1/models``. Endpoints a lesson uses to steer and observe it: ``GET /health``, ``GET /admin/stats``,
``POST /admin/reset``, ``GET``/``POST /admin/config``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import _text
from ._config import ConfigError, SimulatorConfig
from ._requests import (
    MAX_BODY_BYTES,
    MAX_OUTPUT_TOKENS,
    NOT_JSON,
    Ask,
    BadRequest,
    load_json,
    parse_chat,
    parse_responses,
)

VERSION = "1"
SIMULATOR_HEADER = "x-llm-simulator"
MAX_RECORDS = 20_000

# --- OpenAI's error bodies --------------------------------------------------------------------------------


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


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``120ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


class _Drop(Exception):
    """Raised after part of a response was sent, so that the server closes the connection mid-answer."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _Drop)


# --- rate limits ------------------------------------------------------------------------------------------


class Bucket:
    """A token bucket refilled continuously (as OpenAI documents). A full bucket holds ``burst`` seconds' worth:
    a minute's, like OpenAI's, unless a lesson wants the steady rate to show at once. It never holds less than 1."""

    def __init__(self, per_minute: int, burst: float = 60.0) -> None:
        self.limit = max(1.0, per_minute * burst / 60.0)
        self.level = float(self.limit)
        self.rate = per_minute / 60.0
        self.per_minute = per_minute
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.limit, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 when it is available now)."""
        self._refill()
        if amount <= self.level:
            return 0.0
        if amount > self.per_minute:
            return math.inf
        amount = min(amount, self.limit)  # a short burst: a large call goes when the bucket is full, then owes
        return (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount

    def headers(self, kind: str) -> dict[str, str]:
        self._refill()
        return {
            f"x-ratelimit-limit-{kind}": str(self.per_minute),
            f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(self.level))),
            f"x-ratelimit-reset-{kind}": _duration((self.limit - self.level) / self.rate),
        }


# --- the simulator's state --------------------------------------------------------------------------------


class State:
    """Everything the server remembers: its settings, counters, rate-limit buckets and per-request records."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.started = time.time()
        self.in_flight = 0
        self.serving = 0
        self.reset()

    def reset(self) -> None:
        # Requests still in flight stay counted (they finish later); only the history is forgotten.
        self.number = 0
        self.peak_in_flight = self.in_flight
        self.peak_serving = self.serving
        self.accepted = 0
        self.by_status: Counter[str] = Counter()
        self.by_fault: Counter[str] = Counter()
        self.retries_seen = 0
        self.records: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDS)
        self.encoded: dict[int, bytes] = {}  # a finished record's JSON, by its number: /admin/stats encodes it once
        self.generation = getattr(self, "generation", 0) + 1  # a request from before a reset is not of this one
        self.seen_bodies: Counter[str] = Counter()
        self.apply_limits()

    def apply_limits(self) -> None:
        cfg = self.config
        self.capacity = asyncio.Semaphore(cfg.capacity) if cfg.capacity else None
        self.rpm = Bucket(cfg.rpm, cfg.burst) if cfg.rpm else None
        self.tpm = Bucket(cfg.tpm, cfg.burst) if cfg.tpm else None

    def update(self, changes: dict[str, Any]) -> None:
        new = self.config.updated(changes)
        limits_changed = (new.capacity, new.rpm, new.tpm, new.burst) != (
            self.config.capacity,
            self.config.rpm,
            self.config.tpm,
            self.config.burst,
        )
        self.config = new
        if limits_changed:
            self.apply_limits()

    def stats(self, with_records: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "requests": self.number,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "serving": self.serving,
            "peak_serving": self.peak_serving,
            "by_status": dict(self.by_status),
            "by_fault": dict(self.by_fault),
            "retries_seen": self.retries_seen,
        }
        if with_records:
            data["records"] = list(self.records)
        return data


# --- helpers ----------------------------------------------------------------------------------------------


async def pause(receive: Receive, seconds: float) -> bool:
    """Sleep ``seconds``; stop early and return True if the client hangs up meanwhile."""
    if seconds <= 0:
        return False
    listener = asyncio.ensure_future(receive())
    try:
        done, _ = await asyncio.wait({listener}, timeout=seconds)
        return bool(done) and listener.result().get("type") == "http.disconnect"
    finally:
        if not listener.done():
            listener.cancel()


def _headers(state: State, record: dict[str, Any], extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {
        SIMULATOR_HEADER: "helpers.simulator",
        "x-request-id": record["id"],
        "openai-processing-ms": str(round((time.time() - record["received"]) * 1000)),
        "openai-version": "2020-10-01",
    }
    if state.rpm:
        headers.update(state.rpm.headers("requests"))
    if state.tpm:
        headers.update(state.tpm.headers("tokens"))
    if extra:
        headers.update(extra)
    return headers


class _JSON(JSONResponse):
    """A JSON answer that can always be sent: text that is not valid Unicode goes out as ``\\u`` escapes."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def _json(
    state: State, record: dict[str, Any], status: int, body: Any, extra: dict[str, str] | None = None
) -> Response:
    record["status"] = status
    return _JSON(body, status_code=status, headers=_headers(state, record, extra))


class _Raw(Response):
    """A response sent piece by piece with pauses: SSE streams, dropped connections, hangs."""

    def __init__(
        self,
        state: State,
        record: dict[str, Any],
        pieces: list[tuple[float, bytes]],
        *,
        media_type: str,
        drop: bool = False,
        length: int | None = None,
    ) -> None:
        self.state, self.record, self.pieces, self.drop = state, record, pieces, drop
        self.status_code = 200
        self.media_type = media_type
        self.length = length
        # Run once the body is sent (or the connection is gone): the request counts as served until then.
        self.when_sent: list[Callable[[], None]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._send(receive, send)
        finally:
            for done in self.when_sent:
                done()

    async def _send(self, receive: Receive, send: Send) -> None:
        headers = _headers(self.state, self.record, {"content-type": self.media_type or "application/json"})
        if self.media_type == "text/event-stream":
            headers["cache-control"] = "no-cache"
        if self.length is not None:
            headers["content-length"] = str(self.length)
        self.record["status"] = 200
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )
        for delay, chunk in self.pieces:
            if await pause(receive, delay):
                self.record["outcome"] = "client disconnected"
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if self.drop:
            self.record["outcome"] = "connection dropped"
            raise _Drop("connection dropped on purpose by the simulator")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _plan(state: State, ask: Ask) -> dict[str, Any]:
    """Decide the answer (text or tool call), its token count and its timing: all seeded.

    An answer is never longer than ``max_tokens`` (or the model's output limit): what would be longer is cut there,
    with ``finish_reason: "length"``, as a provider does; nothing longer than that limit is ever built."""
    cfg = state.config
    rng = _text.seeded_rng(cfg.seed, "answer", ask.key)
    tool = ask.tool_to_call()
    limit = ask.max_tokens or MAX_OUTPUT_TOKENS
    finish = "stop"
    try:
        if tool is not None:
            value, whole = _text.fill_schema(tool.get("parameters") or {}, ask.prompt, rng, limit)
            content, finish = json.dumps(value), "tool_calls" if whole else "length"
        elif ask.schema is not None:
            value, whole = _text.fill_schema(ask.schema, ask.prompt, rng, limit)
            content, finish = json.dumps(value), "stop" if whole else "length"
    except _text.NoFiniteValue as exc:
        where = "tools" if tool is not None else "response_format"
        raise BadRequest(f"Invalid schema for '{where}': it has no finite value ({exc}).", where) from None
    if tool is None and ask.schema is None:
        if ask.after_tool:
            result = _text.message_text(ask.messages[-1].get("content"))
            content = f"The tool returned: {result}"
        else:
            content = _text.rule_answer(ask.prompt) or _text.filler(rng, rng.randint(30, 80))
        too_long = ask.max_tokens is not None and ask.max_tokens < _text.count_tokens(content)
        if too_long and _text.rule_answer(ask.prompt) is None and not ask.after_tool:
            content = _text.filler(rng, limit)  # filler of exactly the length allowed
            finish = "length"
    if _text.count_tokens(content) > limit:
        content = _text.truncate(content, limit)
        finish = "length"
    out_tokens = max(1, _text.count_tokens(content))
    generation = out_tokens / cfg.tokens_per_second
    base = cfg.latency if cfg.latency is not None else cfg.ttft + generation
    lat_rng = _text.seeded_rng(cfg.seed, "latency", ask.key)
    if cfg.profile == "fixed":
        factor = 1.0
    elif cfg.profile == "uniform":
        factor = lat_rng.uniform(1 - cfg.spread, 1 + cfg.spread)
    else:  # longtail: most calls near the base, about one in seven much slower
        factor = lat_rng.uniform(2.0, 5.0) if lat_rng.random() < 0.15 else lat_rng.uniform(0.7, 1.3)
    total = base * factor
    first = total * (cfg.ttft / (cfg.ttft + generation)) if cfg.ttft + generation > 0 else 0.0
    return {
        "tool": tool,
        "content": content,
        "finish": finish,
        "out_tokens": out_tokens,
        "total": total,
        "first": first,
    }


def _fault(state: State, record: dict[str, Any], ask: Ask) -> str | None:
    cfg = state.config
    if record["n"] in cfg.script:
        return cfg.script[record["n"]]
    for text, kind in cfg.fault_on.items():
        if text in ask.prompt:
            return kind
    if cfg.fail_rate > 0:
        occurrence = state.seen_bodies[ask.key]
        rng = _text.seeded_rng(cfg.seed, "fault", ask.key, occurrence)
        if rng.random() < cfg.fail_rate:
            return rng.choice(cfg.fail_kinds)
    return None


def _rate_limited(state: State, record: dict[str, Any], ask: Ask, kind: str, wait: float) -> Response:
    bucket = state.rpm if kind == "requests" else state.tpm
    assert bucket is not None
    requested = 1 if kind == "requests" else ask.prompt_tokens + (ask.max_tokens or 0)
    label = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    used = round(bucket.limit - max(0.0, bucket.level))
    again = "never: the request is larger than the whole limit" if wait == math.inf else f"{wait:.3g}s"
    message = (
        f"Rate limit reached for {ask.model} in organization org-simulator on {label}: Limit "
        f"{bucket.per_minute}, Used {used}, Requested {requested}. Please try again in {again}. Visit "
        "https://platform.openai.com/account/rate-limits to learn more."
    )
    wait = 60.0 if wait == math.inf else wait
    extra = {"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(max(1, math.ceil(wait * 1000)))}
    return _json(state, record, 429, error_body(message, kind, "rate_limit_exceeded"), extra)


def _scripted_rate_limit(state: State, record: dict[str, Any], ask: Ask) -> Response:
    message = (
        f"Rate limit reached for {ask.model} in organization org-simulator on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in 1s. Visit "
        "https://platform.openai.com/account/rate-limits to learn more."
    )
    extra = {"retry-after": "1", "retry-after-ms": "1000"}
    if not state.rpm:  # the request-limit headers a real 429 carries, matching the message
        extra |= {
            "x-ratelimit-limit-requests": "3",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1s",
        }
    return _json(state, record, 429, error_body(message, "requests", "rate_limit_exceeded"), extra)


# --- endpoints --------------------------------------------------------------------------------------------


def _bad(
    state: State,
    record: dict[str, Any],
    message: str,
    param: str | None = None,
    status: int = 400,
    code: str | None = None,
) -> Response:
    return _json(state, record, status, error_body(message, "invalid_request_error", code, param))


def _auth(state: State, request: Request, record: dict[str, Any]) -> Response | None:
    key = state.config.api_key
    if not key:
        return None
    given = request.headers.get("authorization", "")
    if not given:
        return _bad(
            state,
            record,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            status=401,
        )
    if given != f"Bearer {key}":
        # Unlike some providers, never echo any part of the key back.
        return _bad(
            state,
            record,
            "Incorrect API key provided. Check the key you set (LLM_API_KEY).",
            status=401,
            code="invalid_api_key",
        )
    return None


async def _handle(request: Request, api: str) -> Response:
    state: State = request.app.state.sim
    state.number += 1
    record: dict[str, Any] = {
        "n": state.number,
        "id": f"req_{state.config.seed & 0xFFFF:04x}{state.number:08d}",
        "path": api,
        "model": None,
        "prompt": None,
        "stream": False,
        "received": time.time(),
        "started": None,
        "ended": None,
        "status": None,
        "fault": None,
        "outcome": None,
        "retry": _retry_count(request.headers.get("x-stainless-retry-count")),
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "planned_latency": None,
        "cpu_ms": 0.0,  # the server's CPU time spent reading the request and planning its answer
    }
    if record["retry"] > 0:
        state.retries_seen += 1
    generation = state.generation
    if len(state.records) == MAX_RECORDS:
        state.encoded.pop(state.records[0]["n"], None)
    state.records.append(record)
    state.in_flight += 1
    state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
    response: Response | None = None
    try:
        response = await _serve(request, state, record, api)
    except BadRequest as bad:
        error = error_body(bad.message, "invalid_request_error", bad.code, bad.param)
        # A body too large is not read: the connection closes after the answer, so the rest is never taken in.
        extra = {"connection": "close"} if bad.status == 413 else None
        response = _json(state, record, bad.status, error, extra)
    except ClientDisconnect:
        record["status"], record["outcome"] = 499, "client disconnected"
        response = Response(status_code=499)
    except Exception:  # a bug in the simulator: an OpenAI-shaped 500 for the client, one traceback in the log
        _log_bug(request)
        record["outcome"] = "simulator error"
        response = _json(state, record, 500, SERVER_ERROR)
    finally:
        _after(response, lambda: _finished(state, record, generation))
    return response


async def _body(request: Request) -> bytes:
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


_BUGS_LOGGED: set[str] = set()


def _log_bug(request: Request) -> None:
    """Log the traceback of an unexpected error once per kind and place, so that a flood of one bad request
    cannot fill the log."""
    import sys
    import traceback

    exc = sys.exc_info()[1]
    frames = traceback.extract_tb(exc.__traceback__) if exc else []
    where = f"{type(exc).__name__}@{frames[-1].filename}:{frames[-1].lineno}" if frames else repr(exc)
    if where in _BUGS_LOGGED:
        return
    _BUGS_LOGGED.add(where)
    logging.getLogger("uvicorn.error").exception(
        "the simulator failed on a request to %s (answered 500; later errors of this kind are not logged)",
        request.url.path,
    )


def _after(response: Response | None, done: Callable[[], None]) -> None:
    """Call ``done`` now, or once a response sent piece by piece (a stream) has been sent."""
    if isinstance(response, _Raw):
        response.when_sent.append(done)
    else:
        done()


def _finished(state: State, record: dict[str, Any], generation: int) -> None:
    state.in_flight -= 1
    if record["ended"] is None:
        record["ended"] = time.time()
    if generation == state.generation:
        state.encoded[record["n"]] = _dumps(record)
    state.by_status[str(record["status"])] += 1
    if record["fault"]:
        state.by_fault[record["fault"]] += 1


def _retry_count(value: str | None) -> int:
    try:
        return max(0, int(value or 0))
    except ValueError:
        return 0


async def _serve(request: Request, state: State, record: dict[str, Any], api: str) -> Response:
    denied = _auth(state, request, record)
    if denied:
        return denied
    raw = await _body(request)
    # Reading a large body is a few steps of some milliseconds each; between them other requests take their turn.
    cpu = 0.0
    try:
        await asyncio.sleep(0)
        began = time.thread_time()
        body = load_json(raw)
        cpu += time.thread_time() - began
        await asyncio.sleep(0)
        began = time.thread_time()
        ask = parse_chat(body) if api == "chat" else parse_responses(body)
        cpu += time.thread_time() - began
    finally:
        record["cpu_ms"] = round(cpu * 1000, 3)
    await asyncio.sleep(0)
    record["model"], record["prompt"] = ask.model[:80], ask.prompt[:80]
    record["stream"] = bool(body.get("stream"))
    record["prompt_tokens"] = ask.prompt_tokens
    if ask.model not in state.config.models:
        return _bad(
            state,
            record,
            f"The model `{ask.model[:100]}` does not exist or you do not have access to it. "
            f"This simulator serves: {', '.join(state.config.models)}.",
            status=404,
            code="model_not_found",
        )
    if record["stream"] and api == "responses":
        return _bad(
            state,
            record,
            "This simulator answers /v1/responses without streaming only; use /v1/chat/completions for streaming.",
            param="stream",
        )

    # Rate limits first, as a provider's gateway would.
    if state.rpm and (wait := state.rpm.wait_for(1)) > 0:
        return _rate_limited(state, record, ask, "requests", wait)
    tokens = ask.prompt_tokens + (ask.max_tokens or 0)
    if state.tpm and (wait := state.tpm.wait_for(tokens)) > 0:
        return _rate_limited(state, record, ask, "tokens", wait)
    if state.rpm:
        state.rpm.take(1)
    if state.tpm:
        state.tpm.take(tokens)

    fault = _fault(state, record, ask)
    state.seen_bodies[ask.key] += 1
    cfg = state.config
    if fault is None and cfg.quota_requests is not None and state.accepted >= cfg.quota_requests:
        fault = "quota"
    record["fault"] = fault
    if fault == "quota":
        return _json(state, record, 429, QUOTA)
    if fault == "429":
        return _scripted_rate_limit(state, record, ask)
    state.accepted += 1

    slots = state.capacity  # kept: a reset or new limits replace state.capacity while this request waits
    if slots is not None:
        await slots.acquire()
    state.serving += 1
    state.peak_serving = max(state.peak_serving, state.serving)
    record["started"] = time.time()

    def release() -> None:
        state.serving -= 1
        if slots is not None:
            slots.release()

    response: Response | None = None
    try:
        response = await _answer(request, state, record, ask, body, api, fault)
        return response
    finally:
        _after(response, release)


async def _answer(
    request: Request, state: State, record: dict[str, Any], ask: Ask, body: dict[str, Any], api: str, fault: str | None
) -> Response:
    began = time.thread_time()
    try:
        plan = _plan(state, ask)
    finally:
        record["cpu_ms"] = round(record["cpu_ms"] + (time.thread_time() - began) * 1000, 3)
    record["planned_latency"] = round(plan["total"], 6)
    receive = request.receive
    if fault == "hang":
        await pause(receive, state.config.hang_seconds)
        record["outcome"] = "hung until the client gave up"
        return _json(state, record, 504, error_body("Gateway timeout (the simulator hung on purpose).", "server_error"))
    if fault in ("500", "503"):
        if await pause(receive, plan["first"]):
            record["status"] = 499
            return Response(status_code=499)
        return _json(state, record, int(fault), SERVER_ERROR if fault == "500" else OVERLOADED)

    record["completion_tokens"] = plan["out_tokens"]
    index = record["n"]
    if api == "chat" and body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        pieces = _chat_stream(state, ask, plan, index, include_usage, fault)
        # Nothing is held back: the stream is its own timing.
        return _Raw(state, record, pieces, media_type="text/event-stream", drop=fault == "drop")

    if await pause(receive, plan["total"]):
        record["status"] = 499
        record["outcome"] = "client disconnected"
        return Response(status_code=499)
    payload = _chat_body(state, ask, plan, index) if api == "chat" else _responses_body(state, ask, plan, index)
    data = json.dumps(payload).encode()
    if fault == "malformed":
        record["outcome"] = "malformed body sent"
        return _Raw(
            state, record, [(0.0, data[: len(data) // 2] + b"<!-- truncated -->")], media_type="application/json"
        )
    if fault == "drop":
        return _Raw(
            state, record, [(0.0, data[: len(data) // 2])], media_type="application/json", drop=True, length=len(data)
        )
    record["outcome"] = "answered"
    return _json(state, record, 200, payload)


def _completion_id(state: State, index: int, prefix: str) -> str:
    return f"{prefix}-sim{state.config.seed & 0xFFFF:04x}{index:08d}"


def _usage(ask: Ask, plan: dict[str, Any]) -> dict[str, Any]:
    return {
        "prompt_tokens": ask.prompt_tokens,
        "completion_tokens": plan["out_tokens"],
        "total_tokens": ask.prompt_tokens + plan["out_tokens"],
    }


def _tool_call(state: State, plan: dict[str, Any], index: int) -> dict[str, Any]:
    return {
        "id": f"call_sim{index:08d}",
        "type": "function",
        "function": {"name": plan["tool"]["name"], "arguments": plan["content"]},
    }


def _chat_body(state: State, ask: Ask, plan: dict[str, Any], index: int) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if plan["tool"] else plan["content"],
        "refusal": None,
    }
    if plan["tool"]:
        message["tool_calls"] = [_tool_call(state, plan, index)]
    return {
        "id": _completion_id(state, index, "chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": ask.model,
        "system_fingerprint": "fp_simulator",
        "choices": [{"index": 0, "message": message, "finish_reason": plan["finish"], "logprobs": None}],
        "usage": _usage(ask, plan),
    }


def _chat_stream(
    state: State, ask: Ask, plan: dict[str, Any], index: int, include_usage: bool, fault: str | None
) -> list[tuple[float, bytes]]:
    ident, created = _completion_id(state, index, "chatcmpl"), int(time.time())

    def event(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": ask.model,
            "system_fingerprint": "fp_simulator",
            "choices": choices,
        }
        if include_usage:
            chunk["usage"] = usage
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def delta(d: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]

    pieces: list[tuple[float, bytes]] = [(plan["first"], event(delta({"role": "assistant", "content": ""})))]
    rest = max(0.0, plan["total"] - plan["first"])
    if plan["tool"]:
        call = _tool_call(state, plan, index)
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
        pieces.append((0.0, event([], _usage(ask, plan))))
    pieces.append((0.0, b"data: [DONE]\n\n"))
    return pieces


def _responses_body(state: State, ask: Ask, plan: dict[str, Any], index: int) -> dict[str, Any]:
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
        "id": _completion_id(state, index, "resp"),
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


async def chat_completions(request: Request) -> Response:
    return await _handle(request, "chat")


async def responses(request: Request) -> Response:
    return await _handle(request, "responses")


async def models(request: Request) -> Response:
    state: State = request.app.state.sim
    record = {"id": "req_models", "received": time.time()}
    denied = _auth(state, request, dict(record))
    if denied:
        return denied
    data = [
        {"id": m, "object": "model", "created": int(state.started), "owned_by": "simulator"}
        for m in state.config.models
    ]
    return JSONResponse({"object": "list", "data": data}, headers=_headers(state, record))


async def health(request: Request) -> Response:
    state: State = request.app.state.sim
    return JSONResponse(
        {"status": "ok", "simulator": "helpers.simulator", "version": VERSION, "models": list(state.config.models)},
        headers={SIMULATOR_HEADER: "helpers.simulator"},
    )


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


async def admin_stats(request: Request) -> Response:
    """The stats, the records sent 500 at a time: between batches other requests take their turn, and a client
    that does not read holds up only its own answer (the next batch waits until the last one is taken). A
    finished record is encoded once, when it finishes."""
    state: State = request.app.state.sim
    if request.query_params.get("records", "1") in ("0", "false", "no"):
        return _JSON(state.stats(with_records=False))
    head = state.stats(with_records=False)
    records = list(state.records)
    encoded = state.encoded

    async def pieces() -> Any:
        yield _dumps(head)[:-1] + b',"records":['
        for start in range(0, len(records), 500):
            if start:
                await asyncio.sleep(0)
                yield b","
            yield b",".join(encoded.get(r["n"]) or _dumps(r) for r in records[start : start + 500])
        yield b"]}"

    return StreamingResponse(pieces(), media_type="application/json")


async def admin_reset(request: Request) -> Response:
    state: State = request.app.state.sim
    state.reset()
    return JSONResponse({"status": "reset"})


async def admin_config(request: Request) -> Response:
    state: State = request.app.state.sim
    if request.method == "POST":
        example = 'send a JSON object of settings to change, e.g. {"fail_rate": 0.2}'
        try:
            raw = await _body(request)
            changes = load_json(raw or b"{}")
            if "api_key" in changes:
                raise ConfigError("the API key is fixed when the simulator starts (SIM_API_KEY or --api-key)")
            state.update(changes)
        except BadRequest as bad:
            message = example if bad.message.startswith(NOT_JSON[:30]) else bad.message
            return _JSON(error_body(message, "invalid_request_error", bad.code), status_code=bad.status)
        except (ConfigError, TypeError, ValueError, OverflowError) as exc:
            return _JSON(error_body(str(exc), "invalid_request_error"), status_code=400)
    return _JSON(state.config.public())


async def _not_found(request: Request, exc: Exception) -> Response:
    """OpenAI's answer to a path or method it does not serve, instead of Starlette's plain text."""
    status = getattr(exc, "status_code", 404)
    message = f"Invalid URL ({request.method} {request.url.path[:200]})"
    if status == 405:
        message = f"Method not allowed: {request.method} {request.url.path[:200]}"
    return _JSON(error_body(message, "invalid_request_error"), status_code=status)


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug outside the chat endpoints (those answer their own): OpenAI's 500 body, not plain text."""
    return _JSON(SERVER_ERROR, status_code=500)


class _PoseAsProvider:
    """ASGI middleware that drops the simulator's identifying header from every answer, so that
    ``helpers.connect()`` takes it for a real provider (quota guard on): the lessons' real-provider path,
    tested offline."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_without_header(message: Any) -> None:
            if message["type"] == "http.response.start":
                name = SIMULATOR_HEADER.encode()
                message["headers"] = [(k, v) for k, v in message.get("headers", []) if k.lower() != name]
            await send(message)

        await self.app(scope, receive, send_without_header)


def create_app(config: SimulatorConfig | None = None, *, pose_as_provider: bool = False) -> Starlette:
    """The simulator as an ASGI app (served by uvicorn in its own process; see ``helpers.simulator``).
    ``pose_as_provider`` leaves out its identifying header (see ``_PoseAsProvider``)."""
    app = Starlette(
        middleware=[Middleware(_PoseAsProvider)] if pose_as_provider else [],
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/responses", responses, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/admin/stats", admin_stats, methods=["GET"]),
            Route("/admin/reset", admin_reset, methods=["POST"]),
            Route("/admin/config", admin_config, methods=["GET", "POST"]),
        ],
        exception_handlers={404: _not_found, 405: _not_found, 500: _server_error},
    )
    app.state.sim = State(config or SimulatorConfig())
    logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
    return app
