"""The admin endpoints: ``GET /admin/stats``, ``POST /admin/reset``, ``GET``/``POST /admin/config``.

They act on the caller's own sandbox (``helpers.connect().simulator`` in a lesson); on a class server the
instructor's key reaches the whole class, or one student with ``?student=NAME`` (the scopes are in ``_scopes``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import _wire
from ._config import ConfigError
from ._requests import NOT_JSON, BadRequest, load_json
from ._sandbox import Sandbox
from ._scopes import Caller, Room, RosterError, who
from ._wire import JSONOut, error_body


def _scope(request: Request, caller: Caller) -> Sandbox | Room | Response:
    room = request.app.state.room
    named = request.query_params.get("student")
    if named is None or (room.classroom and named == caller.sandbox.name):
        if caller.instructor and room.classroom:
            return room
        return caller.sandbox
    if not room.classroom:
        return _refused(404, "This simulator has no students (it is not a class server).")
    if not caller.instructor:
        return _refused(403, "A student's key reaches only that student's own sandbox.", "permission_denied")
    box = room.sandboxes.get(named)
    if box is None:
        return _refused(404, f"No student named {named[:50]!r} on this class server.")
    return box


def _refused(status: int, message: str, code: str | None = None) -> Response:
    return JSONOut(error_body(message, "invalid_request_error", code, "student"), status_code=status)


async def _admin_scope(request: Request) -> Sandbox | Room | Response:
    caller = who(request)
    if isinstance(caller, Response):
        return caller
    return _scope(request, caller)


async def admin_stats(request: Request) -> Response:
    """The stats, the records sent 500 at a time: between batches other requests take their turn, and a client
    that does not read holds up only its own answer (the next batch waits until the last one is taken). A
    finished record is encoded once, when it finishes."""
    scope = await _admin_scope(request)
    if isinstance(scope, Response):
        return scope
    boxes = list(scope.sandboxes.values()) if isinstance(scope, Room) else [scope]
    head = scope.class_stats() if isinstance(scope, Room) else scope.stats(with_records=False)
    if request.query_params.get("records", "1") in ("0", "false", "no"):
        return JSONOut(head)
    records = [(r, box.encoded) for box in boxes for r in list(box.records)]
    if len(boxes) > 1:
        records.sort(key=lambda pair: pair[0]["received"])

    async def pieces() -> Any:
        yield _wire.dumps(head)[:-1] + b',"records":['
        for start in range(0, len(records), 500):
            if start:
                await asyncio.sleep(0)
                yield b","
            yield b",".join(enc.get(r["n"]) or _wire.dumps(r) for r, enc in records[start : start + 500])
        yield b"]}"

    return StreamingResponse(pieces(), media_type="application/json")


async def admin_reset(request: Request) -> Response:
    scope = await _admin_scope(request)
    if isinstance(scope, Response):
        return scope
    scope.reset()
    return JSONResponse({"status": "reset", "scope": _scope_name(scope)})


def _scope_name(scope: Sandbox | Room) -> str:
    if isinstance(scope, Room):
        return "class"
    return "simulator" if scope.name is None else f"student {scope.name}"


async def admin_config(request: Request) -> Response:
    scope = await _admin_scope(request)
    if isinstance(scope, Response):
        return scope
    if request.method == "POST":
        example = 'send a JSON object of settings to change, e.g. {"fail_rate": 0.2}'
        try:
            raw = await _wire.read_body(request)
            changes = load_json(raw or b"{}")
            if "api_key" in changes:
                raise ConfigError("the API key is fixed when the simulator starts (SIM_API_KEY or --api-key)")
            if isinstance(scope, Room):
                scope.configure_class(changes)
            else:
                scope.update(changes)
        except BadRequest as bad:
            message = example if bad.message.startswith(NOT_JSON[:30]) else bad.message
            return JSONOut(error_body(message, "invalid_request_error", bad.code), status_code=bad.status)
        except (ConfigError, RosterError, TypeError, ValueError, OverflowError) as exc:
            return JSONOut(error_body(str(exc), "invalid_request_error"), status_code=400)
    if isinstance(scope, Room):
        return JSONOut(scope.class_config())
    return JSONOut(scope.config.public() | ({"student": scope.name} if scope.name is not None else {}))


def routes() -> list[Route]:
    return [
        Route("/admin/stats", admin_stats, methods=["GET"]),
        Route("/admin/reset", admin_reset, methods=["POST"]),
        Route("/admin/config", admin_config, methods=["GET", "POST"]),
    ]
