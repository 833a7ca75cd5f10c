"""The projector view: ``GET /dashboard``, a live page of everyone's calls, pushed by Server-Sent Events.

The instructor opens ``/dashboard?token=INSTRUCTOR_KEY`` once; the server answers with a cookie (a random
session id, never the key) and sends the browser on to ``/dashboard``, so the key leaves the address bar. Without
the cookie the page and its events answer 401 and show nothing of the class; a wrong token is a 403. A simulator
of one without a key opens it to anyone on its loopback address (its learner); with ``SIM_API_KEY`` the key is
the token.

Every half second ``/dashboard/events`` sends one JSON snapshot: the calls in flight now, the calls that finished
since the last snapshot, each student's counts, the class in flight now and at peak, and the class bucket's fill.
The page draws them as a live timeline, one lane group per student (``dashboard.html``). Its controls use the
ordinary ``/admin/*`` endpoints with the cookie and the ``x-sim-dashboard`` header.
"""

from __future__ import annotations

import asyncio
import json
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from ._sandbox import Sandbox
    from ._scopes import Room

COOKIE = "sim_dashboard"
TICK = 0.5  # seconds between two snapshots
HISTORY = 60.0  # seconds of finished calls a newly opened page gets
SECURITY = {
    "content-security-policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}
_CLOSED = """<!doctype html><meta charset="utf-8"><title>Class dashboard</title>
<body style="font: 20px system-ui, sans-serif; margin: 3em"><h1>Class dashboard</h1><p>{message}</p></body>"""


def bar(box: Sandbox, record: dict[str, Any]) -> list[Any]:
    """A finished call as the page draws it: student, number, received, started, ended, status, streamed."""
    return [
        box.name or "",
        record["n"],
        round(record["received"], 3),
        round(record["started"], 3) if record["started"] else None,
        round(record["ended"], 3),
        record["status"],
        record["stream"],
    ]


def _allowed(request: Request) -> bool:
    room: Room = request.app.state.room
    return not room.needs_key or room.dashboard_caller(request.cookies.get(COOKIE)) is not None


async def page(request: Request) -> Response:
    room: Room = request.app.state.room
    token = request.query_params.get("token")
    if token is not None:
        session = room.open_session(token)
        if session is None:
            message = "That token is not the instructor's key. Open /dashboard?token=&lt;SIM_INSTRUCTOR_KEY&gt;."
            return HTMLResponse(_CLOSED.format(message=message), status_code=403, headers=SECURITY)
        response = RedirectResponse("/dashboard", status_code=303, headers=SECURITY)
        response.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/")
        return response
    if not _allowed(request):
        message = (
            "This page is for the instructor. Open it once as /dashboard?token=&lt;SIM_INSTRUCTOR_KEY&gt; "
            "(the key the class server was started with); the browser keeps a cookie after that."
        )
        return HTMLResponse(_CLOSED.format(message=message), status_code=401, headers=SECURITY)
    html = resources.files(__package__).joinpath("dashboard.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers=SECURITY)


def snapshot(room: Room, since: tuple[int, int]) -> tuple[dict[str, Any], tuple[int, int]]:
    """What the page needs now, with the calls that finished after ``since`` (the class's reset count and the
    number of its last finished call the page has)."""
    now = time.time()
    fresh = since[0] != room.epoch  # a new page, or the class was reset since
    since = (room.epoch, 0) if fresh else since
    if fresh:
        done = [entry for _, entry in room.done if entry[4] >= now - HISTORY]
    else:
        done = []
        for seq, entry in reversed(room.done):
            if seq <= since[1]:
                break
            done.append(entry)
        done.reverse()
    active = [
        [box.name or "", r["n"], round(r["received"], 3), round(r["started"], 3) if r["started"] else None, r["stream"]]
        for box in room.sandboxes.values()
        for r in box.active.values()
    ]
    cfg = room.defaults if room.classroom else next(iter(room.sandboxes.values())).config
    data = {
        "now": round(now, 3),
        "classroom": room.classroom,
        "fresh": fresh,
        "in_flight": room.in_flight,
        "peak_in_flight": room.peak_in_flight,
        "buckets": {"rpm": room.rpm.fill() if room.rpm else None, "tpm": room.tpm.fill() if room.tpm else None},
        "settings": {
            "latency": cfg.latency,
            "profile": cfg.profile,
            "fail_rate": cfg.fail_rate,
            "fail_kinds": list(cfg.fail_kinds),
            "class_rpm": room.class_rpm,
            "class_tpm": room.class_tpm,
        },
        "students": [
            {"name": box.name or "", "in_flight": box.in_flight, **box.counts()} for box in room.sandboxes.values()
        ],
        "active": active,
        "done": done,
    }
    return data, (room.epoch, room.seq)


async def events(request: Request) -> Response:
    if not _allowed(request):
        return Response("", status_code=401, headers=SECURITY)
    room: Room = request.app.state.room

    async def stream() -> Any:
        since = (-1, 0)
        while True:
            data, since = snapshot(room, since)
            yield b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
            await asyncio.sleep(TICK)

    headers = {**SECURITY, "x-accel-buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def routes() -> list[Route]:
    return [Route("/dashboard", page, methods=["GET"]), Route("/dashboard/events", events, methods=["GET"])]
