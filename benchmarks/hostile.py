"""Does one hostile client stall everyone else? Attacks on the simulator, each measured from a bystander's side.

Run by hand (not a test):

    .venv/bin/python benchmarks/hostile.py [--only NAME,...] [--fds 1024]

Method. Each attack gets a fresh simulator process (``python -m helpers.simulator``, every call answered in a
fixed 0.05 s) with its file-descriptor limit set to ``--fds``. Beside the attack, a bystander process makes one
small call after another, each on a new connection, for the whole attack; its **stall** is the worst time one of its
calls took beyond the 0.05 s the server was asked to take. The table also gives the attack's own answer (status
and size, or the error), the server's resident memory at its peak (``VmHWM``), and how many bytes it wrote to its
log. A server that holds up is one whose bystander stall stays near 0 and whose attack gets a 4xx in OpenAI's
error shape.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import httpx

LATENCY = 0.05
CHAT = "/v1/chat/completions"


def chat(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "sim-1", "messages": [{"role": "user", "content": prompt}], **extra}


def schema_body(schema: dict[str, Any]) -> dict[str, Any]:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    return chat("Describe it.", response_format=fmt)


class Server:
    """A simulator process with a file-descriptor limit, its log in a temporary file."""

    def __init__(self, fds: int, *args: str) -> None:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the process, in stop())

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fds, fds))

        cmd = [sys.executable, "-m", "helpers.simulator", "--port", "0", "--latency", str(LATENCY)]
        self.process = subprocess.Popen(
            [*cmd, "--profile", "fixed", *args], stdout=subprocess.PIPE, stderr=self.log, preexec_fn=limit
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        self.url = line.split("listening on ")[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            for row in status:
                if row.startswith("VmHWM:"):
                    return int(row.split()[1]) / 1024
        return float("nan")

    def log_bytes(self) -> int:
        self.log.flush()
        return os.fstat(self.log.fileno()).st_size

    def stop(self) -> None:
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self.process.kill()
        self.process.wait()
        self.log.close()
        if self.process.stdout:
            self.process.stdout.close()


def bystander(url: str, done: Any, result: Any) -> None:
    """Small calls one after another, each on a new connection (as a new user would arrive), in a process of its
    own (so that the attacker's work in this process cannot hold it up); puts (worst delay beyond the server's
    latency, calls, errors) on ``result``."""
    worst, calls, errors = 0.0, 0, 0
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=url, timeout=60, limits=limits) as client:
        while not done.is_set():
            began = time.perf_counter()
            try:
                client.post(CHAT, json=chat("Reply: ok", max_tokens=5)).raise_for_status()
            except httpx.HTTPError:
                errors += 1
            worst = max(worst, time.perf_counter() - began - LATENCY)
            calls += 1
    result.put((worst, calls, errors))


def post(url: str, body: bytes, timeout: float = 120) -> str:
    began = time.perf_counter()
    try:
        response = httpx.post(url + CHAT, content=body, headers={"content-type": "application/json"}, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__} after {time.perf_counter() - began:.1f} s"
    shape = "json" if response.headers.get("content-type", "").startswith("application/json") else "text"
    return f"{response.status_code} {shape}, {len(response.content):,} B in {time.perf_counter() - began:.2f} s"


def slow_connections(server: Server, count: int) -> str:
    """``count`` connections that send a request's headers one byte every 0.1 s, for 20 s."""
    sockets: list[socket.socket] = []
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
    for _ in range(count):
        with contextlib.suppress(OSError):
            sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
    closed = 0
    end = time.monotonic() + 20
    position = 0
    while time.monotonic() < end:
        for sock in list(sockets):
            try:
                sock.send(request[position % len(request) : position % len(request) + 1])
            except OSError:
                closed += 1
                sockets.remove(sock)
        position += 1
        time.sleep(0.1)
    for sock in sockets:
        sock.close()
    return f"{count} slow connections: {closed} closed by the server within 20 s"


def attacks() -> dict[str, Callable[[Server], str]]:
    def body(data: Any) -> Callable[[Server], str]:
        return lambda server: post(server.url, json.dumps(data).encode())

    return {
        "digits-15k": body(chat("1" * 15_000)),
        "newlines-20k": body(chat("\n" * 20_000)),
        "digits-1M": body(chat("What is " + "1" * 1_000_000)),
        "spaces-4MB": body(chat(" " * 4_000_000)),
        "newlines-2M": body(chat("\n" * 2_000_000)),
        "words-4MB": body(chat("hello " * 666_000)),
        "min-items-1M": body(schema_body({"type": "array", "items": {"type": "string"}, "minItems": 1_000_000})),
        "max-tokens-1e30": body(chat("Tell me a story.", max_tokens=10**30)),
        "body-50MB": lambda server: post(server.url, json.dumps(chat("x" * 50_000_000)).encode()),
        "nested-100k": lambda server: post(server.url, b'{"model": "sim-1", "messages": ' + b"[" * 100_000),
        "slow-1100": lambda server: slow_connections(server, 1100),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated attack names")
    parser.add_argument("--fds", type=int, default=1024, help="file-descriptor limit of the server (default 1024)")
    args = parser.parse_args()
    chosen = {n: a for n, a in attacks().items() if not args.only or n in args.only.split(",")}
    print(f"{'attack':<16} {'bystander stall':>16} {'peak RSS':>9} {'log':>10}  answer to the attack")
    context = multiprocessing.get_context("spawn")
    for name, attack in chosen.items():
        server = Server(args.fds)
        try:
            done, result = context.Event(), context.Queue()
            watcher = context.Process(target=bystander, args=(server.url, done, result))
            watcher.start()
            time.sleep(1.0)  # the bystander is up and calling
            outcome = attack(server)
            time.sleep(0.3)
            done.set()
            worst, _, errors = result.get(timeout=60)
            watcher.join(10)
            print(
                f"{name:<16} {worst:>14.3f} s {server.peak_rss_mb():>6.0f} MB {server.log_bytes():>8,} B  "
                f"{outcome}" + (f" ({errors} bystander errors)" if errors else ""),
                flush=True,
            )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
