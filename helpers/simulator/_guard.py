"""Connections that cannot stall the simulator: a deadline for every request, a cap on connections, quiet logs.

uvicorn waits for a request's headers and body as long as a client cares to send them, one byte at a time if it
likes. With enough such connections a server runs out of file descriptors and stops accepting anyone (and
asyncio logs a traceback for every refused accept). :class:`GuardedH11` is uvicorn's h11 protocol with three
changes:

- **a deadline**: a request must arrive whole (headers and body) within ``request_timeout`` seconds of its first
  byte, or of the connection opening; otherwise it is answered 408 in OpenAI's error shape and closed. A
  connection idle between two requests is left to uvicorn's keep-alive timeout, as before;
- **a cap**: at most ``max_connections`` connections at once, below the process's file-descriptor limit. A new
  connection over the cap closes the one that has waited longest for its request to arrive (a slow client loses
  its place, not a new one), else the one idle longest between requests; if every connection is busy with a
  request, the new one gets a 503 in OpenAI's error shape;
- **one log line a minute** for each kind of event (slow connections closed, connections refused, an accept
  that ran out of descriptors, requests that are not HTTP), with the count since the last line, instead of one
  per event; and requests that are not HTTP get OpenAI's error shape, not plain text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["ACCEPTS_PER_TICK", "GuardedH11", "GuardedServer", "QuietAccepts", "Throttled", "connection_cap", "fd_limit"]

ACCEPTS_PER_TICK = 128
"""How many connections the event loop accepts at a time before the guard can close any: the headroom kept."""
LISTEN_BACKLOG = 2048

_log = logging.getLogger("uvicorn.error")


class Throttled:
    """Logs an event at most once a minute, with how many happened since the last line."""

    def __init__(self, message: str, every: float = 60.0) -> None:
        self.message, self.every = message, every
        self.count = 0
        self.last = -float("inf")

    def __call__(self, *args: Any) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= self.every:
            _log.warning(self.message + f" ({self.count} since the last such line)", *args)
            self.last, self.count = now, 0


def _raw_error(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": None}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a request deadline and a connection cap (see the module's docstring)."""

    request_timeout = 10.0
    max_connections = 1000
    _slow = Throttled("closed connections that did not send a whole request within %.0f s")
    _full = Throttled("refused new connections: %d connections open, all busy with requests")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None
        self._idle_since = time.monotonic()
        self._arm()
        if len(self.connections) > self.max_connections and not self._make_room():
            self._full(len(self.connections) - 1)
            self._refuse(503, "Service Unavailable", "The simulator has too many connections open; try again soon.")

    def data_received(self, data: bytes) -> None:
        if self._waiting_since is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self.conn.their_state is not h11.SEND_BODY:
            self._disarm()  # the whole request is here (or the connection is closing)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._waiting_since = time.monotonic()
        self._deadline = self.loop.call_later(self.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._waiting_since = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self._waiting_since is None or self.transport.is_closing():
            return
        self._slow(self.request_timeout)
        if self.conn.their_state is h11.IDLE:  # the headers are not all here: no response has begun
            message = f"The request did not arrive whole within {self.request_timeout:g} s; the connection is closed."
            self._refuse(408, "Request Timeout", message)
        else:  # the body is late: the app is waiting for it and sees the client gone
            self._waiting_since = None
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A request HTTP itself cannot read (a bad Content-Length, a broken chunk, a TLS hello): OpenAI's error
        shape, not uvicorn's plain text."""
        self._disarm()
        message = f"{msg} The request is not valid HTTP/1.1; the connection is closed."
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})
        head = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
        head += f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        if not self.transport.is_closing():
            self.transport.write(head.encode() + body.encode())
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._idle_since = time.monotonic()

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for its request, else the one idle longest between two
        requests (a kept-alive connection); False if every other connection is busy with a request."""
        waiting: list[tuple[float, GuardedH11]] = []
        idle: list[tuple[float, GuardedH11]] = []
        for other in self.connections:
            if other is self or not isinstance(other, GuardedH11):
                continue
            if other._waiting_since is not None:
                waiting.append((other._waiting_since, other))
            elif other.conn.their_state is h11.IDLE and other.cycle is not None and other.cycle.response_complete:
                idle.append((other._idle_since, other))
        if not waiting and not idle:
            return False
        _, oldest = min(waiting or idle, key=lambda pair: pair[0])
        if waiting:
            oldest._slow(self.request_timeout)
        oldest._disarm()
        oldest.transport.close()
        return True

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_raw_error(status, reason, message))
            self.transport.close()


class QuietAccepts(logging.Filter):
    """Lets through, once a minute and with a count, the lines a flood would repeat: asyncio's "socket.accept()
    out of system resource" and uvicorn's "Invalid HTTP request received."."""

    def __init__(self) -> None:
        super().__init__()
        self.accepts = Throttled("could not accept connections: out of file descriptors (raise `ulimit -n`)")
        self.invalid = Throttled("answered requests that were not valid HTTP with 400")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "out of system resource" in message:
            self.accepts()
            return False
        if message.startswith("Invalid HTTP request received"):
            self.invalid()
            return False
        return True


class GuardedServer(uvicorn.Server):
    """uvicorn's server, accepting at most :data:`ACCEPTS_PER_TICK` connections per turn of the event loop.

    asyncio uses one number for the listen queue and for how many connections it accepts in one go; uvicorn
    passes its ``backlog``. Run with ``backlog=ACCEPTS_PER_TICK`` (so that a burst of connections cannot take
    every file descriptor before the guard closes any), then the listen queue is set back to
    :data:`LISTEN_BACKLOG`, so that a lesson's 1,000 calls at once still queue in the kernel, not fail."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for sock in sockets or []:
            sock.listen(LISTEN_BACKLOG)


def connection_cap(limit: int) -> int:
    """Connections allowed at once for a file-descriptor ``limit``: what is left after the process's own files
    and the accepts of a few turns of the event loop."""
    return max(16, limit - 64 - 3 * ACCEPTS_PER_TICK) if limit >= 1024 else max(16, limit // 2)


def fd_limit() -> int:
    """The process's file-descriptor limit, raised to the hard limit (at most 65,536) where the system allows."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to raise
        return 8192
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return 65_536 if soft == resource.RLIM_INFINITY else int(soft)
