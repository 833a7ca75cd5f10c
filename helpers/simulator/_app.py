"""The simulator's HTTP API: an OpenAI-compatible Starlette app with latency, capacity, rate limits and faults.

Endpoints a client sees: ``POST /v1/chat/completions`` (plain and streaming, tools), ``POST /v1/responses``,
``GET /v1/models``. Endpoints a lesson uses to steer and observe it: ``GET /health``, ``GET /admin/stats``,
``POST /admin/reset``, ``GET``/``POST /admin/config``; on a class server they act on the caller's own sandbox
(``_scopes``). ``GET /dashboard`` is the live page for the projector (``_dashboard``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import _admin, _dashboard, _plan, _wire
from ._config import SimulatorConfig
from ._requests import Ask, BadRequest, load_json, parse_chat, parse_responses
from ._sandbox import MAX_RECORDS, Sandbox
from ._scopes import Room, who
from ._wire import SIMULATOR_HEADER, JSONOut, error_body

VERSION = "1"


class _Drop(Exception):
    """Raised after part of a response was sent, so that the server closes the connection mid-answer."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _Drop)


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


def _room(request: Request) -> Room:
    room: Room = request.app.state.room
    return room


def _headers(room: Room, box: Sandbox, record: dict[str, Any], extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {
        SIMULATOR_HEADER: "helpers.simulator",
        "x-request-id": record["id"],
        "openai-processing-ms": str(round((time.time() - record["received"]) * 1000)),
        "openai-version": "2020-10-01",
    }
    rpm, tpm = box.rpm or room.rpm, box.tpm or room.tpm  # the student's own limit, else the class's
    if rpm:
        headers.update(rpm.headers("requests"))
    if tpm:
        headers.update(tpm.headers("tokens"))
    if extra:
        headers.update(extra)
    return headers


class _Call:
    """One request being served: where it belongs and what the server records about it."""

    def __init__(self, room: Room, box: Sandbox, record: dict[str, Any]) -> None:
        self.room, self.box, self.record = room, box, record

    def json(self, status: int, body: Any, extra: dict[str, str] | None = None) -> Response:
        self.record["status"] = status
        return JSONOut(body, status_code=status, headers=_headers(self.room, self.box, self.record, extra))

    def bad(self, message: str, param: str | None = None, status: int = 400, code: str | None = None) -> Response:
        return self.json(status, error_body(message, "invalid_request_error", code, param))


class _Raw(Response):
    """A response sent piece by piece with pauses: SSE streams, dropped connections, hangs."""

    def __init__(
        self,
        call: _Call,
        pieces: list[tuple[float, bytes]],
        *,
        media_type: str,
        drop: bool = False,
        length: int | None = None,
    ) -> None:
        self.call, self.pieces, self.drop = call, pieces, drop
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
        record = self.call.record
        headers = _headers(self.call.room, self.call.box, record, {"content-type": self.media_type or ""})
        if self.media_type == "text/event-stream":
            headers["cache-control"] = "no-cache"
        if self.length is not None:
            headers["content-length"] = str(self.length)
        record["status"] = 200
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )
        for delay, chunk in self.pieces:
            if await pause(receive, delay):
                record["outcome"] = "client disconnected"
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if self.drop:
            record["outcome"] = "connection dropped"
            raise _Drop("connection dropped on purpose by the simulator")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _rate_limited(call: _Call, ask: Ask, kind: str, wait: float, whose: str) -> Response:
    """OpenAI's 429 for a bucket that is empty: the sandbox's own, or the class's (``whose="class"``)."""
    owner = call.room if whose == "class" else call.box
    bucket = owner.rpm if kind == "requests" else owner.tpm
    assert bucket is not None
    requested = 1 if kind == "requests" else ask.prompt_tokens + (ask.max_tokens or 0)
    used = round(bucket.limit - max(0.0, bucket.level))
    again = "never: the request is larger than the whole limit" if wait == math.inf else f"{wait:.3g}s"
    org = "org-class (shared by the whole class)" if whose == "class" else "org-simulator"
    message = _wire.rate_limit_message(ask.model, org, kind, bucket.per_minute, used, requested, again)
    wait = 60.0 if wait == math.inf else wait
    extra = {"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(max(1, math.ceil(wait * 1000)))}
    if whose == "class":
        extra |= bucket.headers(kind)
    return call.json(429, error_body(message, kind, "rate_limit_exceeded"), extra)


def _scripted_rate_limit(call: _Call, ask: Ask) -> Response:
    message = _wire.rate_limit_message(ask.model, "org-simulator", "requests", 3, 3, 1, "1s")
    extra = {"retry-after": "1", "retry-after-ms": "1000"}
    if not call.box.rpm:  # the request-limit headers a real 429 carries, matching the message
        extra |= {
            "x-ratelimit-limit-requests": "3",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1s",
        }
    return call.json(429, error_body(message, "requests", "rate_limit_exceeded"), extra)


# --- the model endpoints ----------------------------------------------------------------------------------


async def _handle(request: Request, api: str) -> Response:
    caller = who(request)
    if isinstance(caller, Response):
        return caller
    room, box = _room(request), caller.sandbox
    box.number += 1
    record: dict[str, Any] = {
        "n": box.number,
        "id": f"req_{box.config.seed & 0xFFFF:04x}{box.number:08d}",
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
    if box.name is not None:
        record["student"] = box.name
    if record["retry"] > 0:
        box.retries_seen += 1
    generation = box.generation
    if len(box.records) == MAX_RECORDS:
        box.encoded.pop(box.records[0]["n"], None)
    box.records.append(record)
    box.active[record["n"]] = record
    box.in_flight += 1
    box.peak_in_flight = max(box.peak_in_flight, box.in_flight)
    room.in_flight += 1
    room.peak_in_flight = max(room.peak_in_flight, room.in_flight)
    call = _Call(room, box, record)
    response: Response | None = None
    try:
        response = await _serve(request, call, api)
    except BadRequest as bad:
        error = error_body(bad.message, "invalid_request_error", bad.code, bad.param)
        # A body too large is not read: the connection closes after the answer, so the rest is never taken in.
        extra = {"connection": "close"} if bad.status == 413 else None
        response = call.json(bad.status, error, extra)
    except ClientDisconnect:
        record["status"], record["outcome"] = 499, "client disconnected"
        response = Response(status_code=499)
    except Exception:  # a bug in the simulator: an OpenAI-shaped 500 for the client, one traceback in the log
        _log_bug(request)
        record["outcome"] = "simulator error"
        response = call.json(500, _wire.SERVER_ERROR)
    finally:
        _after(response, lambda: _finished(call, generation))
    return response


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


def _finished(call: _Call, generation: int) -> None:
    room, box, record = call.room, call.box, call.record
    box.in_flight -= 1
    room.in_flight -= 1
    box.active.pop(record["n"], None)
    if record["ended"] is None:
        record["ended"] = time.time()
    if generation == box.generation:
        box.encoded[record["n"]] = _wire.dumps(record)
        box.by_status[str(record["status"])] += 1
        if record["fault"]:
            box.by_fault[record["fault"]] += 1
        room.seq += 1
        room.done.append((room.seq, _dashboard.bar(box, record)))


def _retry_count(value: str | None) -> int:
    try:
        return max(0, int(value or 0))
    except ValueError:
        return 0


async def _serve(request: Request, call: _Call, api: str) -> Response:
    room, box, record = call.room, call.box, call.record
    raw = await _wire.read_body(request)
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
    cfg = box.config
    if ask.model not in cfg.models:
        return call.bad(
            f"The model `{ask.model[:100]}` does not exist or you do not have access to it. "
            f"This simulator serves: {', '.join(cfg.models)}.",
            status=404,
            code="model_not_found",
        )
    if record["stream"] and api == "responses":
        return call.bad(
            "This simulator answers /v1/responses without streaming only; use /v1/chat/completions for streaming.",
            param="stream",
        )

    # Rate limits first, as a provider's gateway would: the sandbox's own, then the class's shared bucket.
    tokens = ask.prompt_tokens + (ask.max_tokens or 0)
    for whose, owner in (("own", box), ("class", room)):
        if owner.rpm and (wait := owner.rpm.wait_for(1)) > 0:
            return _rate_limited(call, ask, "requests", wait, whose)
        if owner.tpm and (wait := owner.tpm.wait_for(tokens)) > 0:
            return _rate_limited(call, ask, "tokens", wait, whose)
    for owner in (box, room):
        if owner.rpm:
            owner.rpm.take(1)
        if owner.tpm:
            owner.tpm.take(tokens)

    fault = _plan.fault(box, record, ask)
    box.seen_bodies[ask.key] += 1
    if fault is None and cfg.quota_requests is not None and box.accepted >= cfg.quota_requests:
        fault = "quota"
    record["fault"] = fault
    if fault == "quota":
        return call.json(429, _wire.QUOTA)
    if fault == "429":
        return _scripted_rate_limit(call, ask)
    box.accepted += 1

    slots = box.capacity  # kept: a reset or new limits replace box.capacity while this request waits
    if slots is not None:
        await slots.acquire()
    box.serving += 1
    box.peak_serving = max(box.peak_serving, box.serving)
    room.serving += 1
    room.peak_serving = max(room.peak_serving, room.serving)
    record["started"] = time.time()

    def release() -> None:
        box.serving -= 1
        room.serving -= 1
        if slots is not None:
            slots.release()

    response: Response | None = None
    try:
        response = await _answer(request, call, ask, body, api, fault)
        return response
    finally:
        _after(response, release)


async def _answer(
    request: Request, call: _Call, ask: Ask, body: dict[str, Any], api: str, fault: str | None
) -> Response:
    record, cfg = call.record, call.box.config
    began = time.thread_time()
    try:
        plan = _plan.plan(cfg, ask)
    finally:
        record["cpu_ms"] = round(record["cpu_ms"] + (time.thread_time() - began) * 1000, 3)
    record["planned_latency"] = round(plan["total"], 6)
    receive = request.receive
    if fault == "hang":
        await pause(receive, cfg.hang_seconds)
        record["outcome"] = "hung until the client gave up"
        return call.json(504, error_body("Gateway timeout (the simulator hung on purpose).", "server_error"))
    if fault in ("500", "503"):
        if await pause(receive, plan["first"]):
            record["status"] = 499
            return Response(status_code=499)
        return call.json(int(fault), _wire.SERVER_ERROR if fault == "500" else _wire.OVERLOADED)

    record["completion_tokens"] = plan["out_tokens"]
    index = record["n"]
    if api == "chat" and body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        pieces = _wire.chat_stream(cfg.seed, ask, plan, index, include_usage, fault)
        # Nothing is held back: the stream is its own timing.
        return _Raw(call, pieces, media_type="text/event-stream", drop=fault == "drop")

    if await pause(receive, plan["total"]):
        record["status"] = 499
        record["outcome"] = "client disconnected"
        return Response(status_code=499)
    make = _wire.chat_body if api == "chat" else _wire.responses_body
    payload = make(cfg.seed, ask, plan, index)
    data = json.dumps(payload).encode()
    if fault == "malformed":
        record["outcome"] = "malformed body sent"
        return _Raw(call, [(0.0, data[: len(data) // 2] + b"<!-- truncated -->")], media_type="application/json")
    if fault == "drop":
        return _Raw(call, [(0.0, data[: len(data) // 2])], media_type="application/json", drop=True, length=len(data))
    record["outcome"] = "answered"
    return call.json(200, payload)


async def chat_completions(request: Request) -> Response:
    return await _handle(request, "chat")


async def responses(request: Request) -> Response:
    return await _handle(request, "responses")


async def models(request: Request) -> Response:
    caller = who(request)
    if isinstance(caller, Response):
        return caller
    room, cfg = _room(request), caller.sandbox.config
    data = [{"id": m, "object": "model", "created": int(room.started), "owned_by": "simulator"} for m in cfg.models]
    record = {"id": "req_models", "received": time.time()}
    return JSONResponse({"object": "list", "data": data}, headers=_headers(room, caller.sandbox, record))


async def health(request: Request) -> Response:
    room = _room(request)
    return JSONResponse(
        {
            "status": "ok",
            "simulator": "helpers.simulator",
            "version": VERSION,
            "models": list(room.defaults.models),
            "classroom": room.classroom,
        },
        headers={SIMULATOR_HEADER: "helpers.simulator"},
    )


async def _not_found(request: Request, exc: Exception) -> Response:
    """OpenAI's answer to a path or method it does not serve, instead of Starlette's plain text."""
    status = getattr(exc, "status_code", 404)
    message = f"Invalid URL ({request.method} {request.url.path[:200]})"
    if status == 405:
        message = f"Method not allowed: {request.method} {request.url.path[:200]}"
    return JSONOut(error_body(message, "invalid_request_error"), status_code=status)


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug outside the chat endpoints (those answer their own): OpenAI's 500 body, not plain text."""
    return JSONOut(_wire.SERVER_ERROR, status_code=500)


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


def create_app(
    config: SimulatorConfig | None = None, *, pose_as_provider: bool = False, room: Room | None = None
) -> Starlette:
    """The simulator as an ASGI app (served by uvicorn in its own process; see ``helpers.simulator``).
    ``room`` holds a class server's sandboxes and keys (``_scopes.Room``); by default a simulator of one.
    ``pose_as_provider`` leaves out its identifying header (see ``_PoseAsProvider``)."""
    app = Starlette(
        middleware=[Middleware(_PoseAsProvider)] if pose_as_provider else [],
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/responses", responses, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            *_admin.routes(),
            *_dashboard.routes(),
        ],
        exception_handlers={404: _not_found, 405: _not_found, 500: _server_error},
    )
    app.state.room = room or Room(config or SimulatorConfig())
    logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
    return app
