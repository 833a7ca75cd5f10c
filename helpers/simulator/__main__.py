"""Run the simulator by hand: ``python -m helpers.simulator --port 8765`` (see ``--help``), or a class server:
``SIM_INSTRUCTOR_KEY=... python -m helpers.simulator --students 30 --roster roster.csv`` (``docs/teaching.md``)."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path

from ._config import FAULT_HELP, PROFILES, ConfigError, SimulatorConfig
from ._scopes import MIN_INSTRUCTOR_KEY, Room, RosterError, make_roster, student_names

DESCRIPTION = """\
A local, seeded, OpenAI-compatible LLM simulator for the workbook. It listens on 127.0.0.1 only and
answers POST /v1/chat/completions (also streaming and tool calls), POST /v1/responses and GET /v1/models.
Point lessons at it with:  LLM_BASE_URL=http://127.0.0.1:PORT/v1  LLM_MODEL=sim-1
Steer and watch it while it runs: GET /admin/stats, POST /admin/reset, GET/POST /admin/config,
and the live page GET /dashboard.

A class server gives every student a sandbox of their own, reached with their key from the roster, and the
instructor (SIM_INSTRUCTOR_KEY in the environment) the whole class and the dashboard: see docs/teaching.md."""

EPILOG = (
    "fault kinds:\n"
    + "\n".join(f"  {k:<10} {v}" for k, v in FAULT_HELP.items())
    + """

examples:
  python -m helpers.simulator --port 8765
  python -m helpers.simulator --port 8765 --latency 0.5 --profile fixed --capacity 4
  python -m helpers.simulator --port 8765 --rpm 30 --fail-rate 0.2 --fail-kinds 500,429
  python -m helpers.simulator --port 8765 --script 3=429,5=500,7=hang
  python -m helpers.simulator --port 8765 --fault-on beta=500
  SIM_API_KEY=my-key python -m helpers.simulator --port 8765   (the key is then required)

a class server (keys in roster.csv, dashboard at /dashboard?token=<SIM_INSTRUCTOR_KEY>):
  export SIM_INSTRUCTOR_KEY=$(python -c "import secrets; print(secrets.token_urlsafe(16))")
  python -m helpers.simulator --students 30 --roster roster.csv
  python -m helpers.simulator --students names.txt --roster roster.csv --host 0.0.0.0 --class-rpm 120"""
)


def _fault_on(text: str) -> dict[str, str]:
    faults: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        words, sep, kind = item.rpartition("=")
        if not sep or not words:
            raise argparse.ArgumentTypeError(f"--fault-on items look like beta=500 (prompt text=fault), got {item!r}")
        faults[words] = kind.strip()
    return faults


def _script(text: str) -> dict[int, str]:
    script: dict[int, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        number, sep, kind = item.partition("=")
        if not sep or not number.strip().isdigit():
            raise argparse.ArgumentTypeError(f"--script items look like 3=429 (request number=fault), got {item!r}")
        script[int(number)] = kind.strip()
    return script


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m helpers.simulator",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=8765, help="port to listen on (0 picks a free one; default 8765)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only); another, e.g. 0.0.0.0 for a class on "
        "a LAN, only for a class server (SIM_INSTRUCTOR_KEY set)",
    )
    p.add_argument(
        "--students",
        default=None,
        metavar="N|FILE",
        help="a class server: N students (student01 ...) or a file of names, one per line; needs "
        "SIM_INSTRUCTOR_KEY in the environment and writes their keys to --roster",
    )
    p.add_argument(
        "--roster",
        default=None,
        metavar="CSV",
        help="the class's roster, columns student,key (default roster.csv with --students); an existing roster "
        "keeps its keys, and names missing from it are added",
    )
    p.add_argument(
        "--class-rpm",
        type=int,
        default=None,
        help="requests per minute for the whole class together, like an organisation's shared limit (default none)",
    )
    p.add_argument("--class-tpm", type=int, default=None, help="tokens per minute for the whole class together")
    p.add_argument("--seed", type=int, default=0, help="seed for answers, latencies and random faults (default 0)")
    p.add_argument(
        "--latency",
        type=float,
        default=None,
        metavar="SECONDS",
        help="base latency of every call; default: time to first token + tokens / speed",
    )
    p.add_argument(
        "--profile",
        choices=PROFILES,
        default="uniform",
        help="latency spread: fixed (all equal), uniform (±spread), longtail (some calls 2-5x slower)",
    )
    p.add_argument("--spread", type=float, default=0.5, help="width of the uniform profile, 0-0.95 (default 0.5)")
    p.add_argument("--ttft", type=float, default=0.25, metavar="SECONDS", help="time to first token (default 0.25)")
    p.add_argument("--tokens-per-second", type=float, default=50.0, help="generation speed (default 50)")
    p.add_argument(
        "--capacity",
        type=int,
        default=None,
        help="requests served at once; the rest wait in a queue (default: no limit)",
    )
    p.add_argument("--rpm", type=int, default=None, help="requests per minute before HTTP 429 (default: no limit)")
    p.add_argument("--tpm", type=int, default=None, help="tokens per minute before HTTP 429 (default: no limit)")
    p.add_argument(
        "--burst",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how many seconds' worth of --rpm/--tpm a full bucket holds (default 60, a minute, like OpenAI; "
        "smaller: the steady rate shows at once)",
    )
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of requests that fail, 0-1 (default 0)")
    p.add_argument("--fail-kinds", default="500", help="comma-separated fault kinds for --fail-rate (default 500)")
    p.add_argument(
        "--script",
        type=_script,
        default={},
        metavar="N=KIND,...",
        help="faults for given request numbers, e.g. 3=429,5=500,7=hang,8=drop,9=malformed",
    )
    p.add_argument(
        "--fault-on",
        type=_fault_on,
        default={},
        metavar="TEXT=KIND,...",
        help="fail every request whose prompt contains TEXT, e.g. beta=500",
    )
    p.add_argument("--hang-seconds", type=float, default=600.0, help="how long a 'hang' lasts (default 600)")
    p.add_argument(
        "--quota-requests",
        type=int,
        default=None,
        help="answer insufficient_quota after this many requests (default: no quota)",
    )
    p.add_argument("--models", default="sim-1", help="comma-separated model names served (default sim-1)")
    p.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="require this key (Authorization: Bearer KEY); prefer SIM_API_KEY in the environment, "
        "which keeps the key out of the process list",
    )
    p.add_argument("--access-log", action="store_true", help="print one line per request")
    p.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="close a connection whose request has not arrived whole this long after its first byte (default 10)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="connections open at once; over it, the slowest waiting one is closed, or the new one gets 503 "
        "(default: what the file-descriptor limit leaves, e.g. 576 for 1024)",
    )
    p.add_argument(
        "--pose-as-provider",
        action="store_true",
        help="leave out the simulator's identifying header, so the workbook treats it as a real provider "
        "(quota guard on, simulator-only lesson steps skipped): to test that path offline",
    )
    # Used by helpers.simulator.start(): settings as JSON, and exit when the starting process goes away.
    p.add_argument("--config-json", default=None, help=argparse.SUPPRESS)
    p.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    return p


def _watch_parent() -> None:
    """Exit when stdin closes: the notebook kernel that started us is gone (also after kill -9)."""
    try:
        while sys.stdin.buffer.read(1024):
            pass
    except (OSError, ValueError):
        pass
    os._exit(0)


class _HideTokens(logging.Filter):
    """The access log never shows the dashboard's ``?token=`` (the instructor's key)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                re.sub(r"token=[^&\s]*", "token=***", arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _shown_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _lan_address(host: str) -> str:
    """An address of this machine that other machines can use (the host itself unless it is 0.0.0.0 or ::)."""
    if host not in ("0.0.0.0", "::", ""):
        return _shown_host(host)
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
        return str(probe.getsockname()[0])
    return "<this machine's address>"


def _host_problem(host: str, classroom: bool) -> str | None:
    if _is_loopback(host) or classroom:
        return None
    return (
        f"--host {host} would let other machines reach this simulator, and it has no instructor key. Only a class "
        "server may listen beyond this machine: set SIM_INSTRUCTOR_KEY and give --students (see docs/teaching.md), "
        "or leave out --host"
    )


def _listen(host: str, port: int) -> socket.socket | str:
    """A listening socket on host:port, or why there is none."""
    if not 0 <= port <= 65535:
        return f"--port must be 0-65535 (got {port})"
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP)[0][4]
    except (OSError, UnicodeError) as exc:
        return f"--host {host[:100]!r} is not an address of this machine ({exc}); try 127.0.0.1 or 0.0.0.0"
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on such sockets (else +40 ms per reused call)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    if sys.platform != "win32":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        return (
            f"cannot listen on {_shown_host(host)}:{port} ({exc.strerror}); choose another --port, or 0 for a free one"
        )
    sock.listen(2048)
    return sock


def _room(args: argparse.Namespace, config: SimulatorConfig) -> tuple[Room, str]:
    """The server's sandboxes and keys: one sandbox, or a class from the roster (made or extended here)."""
    instructor = os.environ.get("SIM_INSTRUCTOR_KEY") or None
    class_limits = {"class_rpm": args.class_rpm, "class_tpm": args.class_tpm}
    if instructor is None:
        if args.students or args.roster:
            raise RosterError(
                "a class server needs the instructor's key in the environment: SIM_INSTRUCTOR_KEY=... (make one with "
                'python -c "import secrets; print(secrets.token_urlsafe(16))")'
            )
        if args.class_rpm or args.class_tpm:
            raise RosterError("--class-rpm and --class-tpm are for a class server (--students, SIM_INSTRUCTOR_KEY)")
        return Room(config), ""
    if len(instructor) < MIN_INSTRUCTOR_KEY or not re.fullmatch(r"[!-~]+", instructor):
        raise RosterError(
            f"SIM_INSTRUCTOR_KEY must be at least {MIN_INSTRUCTOR_KEY} characters of letters, digits and punctuation "
            '(make one with python -c "import secrets; print(secrets.token_urlsafe(16))")'
        )
    if not args.students and not args.roster:
        raise RosterError("SIM_INSTRUCTOR_KEY starts a class server: say who is in it with --students N --roster FILE")
    path = Path(args.roster or "roster.csv")
    names = student_names(args.students) if args.students else None
    roster, added = make_roster(path, names)
    kept = len(roster) - len(added)
    if added and kept:
        note = f"roster {path}: kept the keys of {kept} students, added {len(added)}"
    elif added:
        note = f"roster {path}: wrote a key for each of {len(added)} students (hand each student their line)"
    else:
        note = f"roster {path}: {kept} students, their keys kept"
    return Room(config, instructor_key=instructor, roster=roster, **class_limits), note


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.config_json:
            settings = json.loads(args.config_json)
        else:
            settings = dict(
                seed=args.seed,
                profile=args.profile,
                latency=args.latency,
                ttft=args.ttft,
                tokens_per_second=args.tokens_per_second,
                spread=args.spread,
                capacity=args.capacity,
                rpm=args.rpm,
                tpm=args.tpm,
                burst=args.burst,
                fail_rate=args.fail_rate,
                fail_kinds=args.fail_kinds,
                script=args.script,
                fault_on=args.fault_on,
                hang_seconds=args.hang_seconds,
                quota_requests=args.quota_requests,
                models=tuple(args.models.split(",")),
            )
        settings["api_key"] = args.api_key or os.environ.get("SIM_API_KEY") or None
        config = SimulatorConfig(**settings)
    except ConfigError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    if not 0.1 <= args.request_timeout <= 3600:
        print(f"simulator: --request-timeout must be 0.1-3600 seconds (got {args.request_timeout:g})", file=sys.stderr)
        return 2
    if args.max_connections is not None and args.max_connections < 1:
        print(f"simulator: --max-connections must be at least 1 (got {args.max_connections})", file=sys.stderr)
        return 2

    try:
        room, roster_note = _room(args, config)
    except (RosterError, ConfigError) as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    problem = _host_problem(args.host, room.classroom)
    if problem:
        print(f"simulator: {problem}", file=sys.stderr)
        return 2
    sock = _listen(args.host, args.port)
    if isinstance(sock, str):
        print(f"simulator: {sock}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]

    import uvicorn  # imported late: --help and bad flags answer at once

    from ._app import create_app
    from ._guard import ACCEPTS_PER_TICK, GuardedH11, GuardedServer, QuietAccepts, connection_cap, fd_limit

    GuardedH11.request_timeout = args.request_timeout
    GuardedH11.max_connections = args.max_connections or connection_cap(fd_limit())
    app = create_app(pose_as_provider=args.pose_as_provider, room=room)
    uvicorn_config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=args.access_log,
        lifespan="off",
        http=GuardedH11,
        timeout_graceful_shutdown=1,
        timeout_keep_alive=75,  # longer than clients keep idle connections: no race on reuse
        backlog=ACCEPTS_PER_TICK,  # GuardedServer sets the listen queue back to 2048
    )
    if args.access_log:  # the log level above would drop uvicorn's access lines, which are INFO
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
        logging.getLogger("uvicorn.access").addFilter(_HideTokens())
    quiet = QuietAccepts()
    logging.getLogger("asyncio").addFilter(quiet)
    logging.getLogger("uvicorn.error").addFilter(quiet)
    server = GuardedServer(uvicorn_config)
    url = f"http://{_shown_host(args.host)}:{port}"
    if args.exit_with_parent:
        threading.Thread(target=_watch_parent, daemon=True).start()
        print(f"READY {url}", flush=True)
        sys.stdout = sys.stderr
    elif room.classroom:
        reach = url if _is_loopback(args.host) else f"http://{_lan_address(args.host)}:{port}"
        print(
            f"Class server for {len(room.students())} students listening on {url}  (seed {config.seed}; stop with "
            f"Ctrl+C)\n  {roster_note}\n"
            f"  each student sets:  LLM_BASE_URL={reach}/v1  LLM_MODEL={config.models[0]}  LLM_API_KEY=<their key>\n"
            f"  the projector view: {reach}/dashboard?token=<SIM_INSTRUCTOR_KEY>"
            + (f"\n  the class shares {room.class_rpm} requests per minute" if room.class_rpm else "")
            + (f"\n  the class shares {room.class_tpm} tokens per minute" if room.class_tpm else ""),
            flush=True,
        )
    else:
        print(
            f"LLM simulator listening on {url}  (seed {config.seed}"
            + ("; posing as a real provider" if args.pose_as_provider else "")
            + "; stop with Ctrl+C)\n"
            f"  point the workbook at it:  export LLM_BASE_URL={url}/v1 LLM_MODEL={config.models[0]}"
            + ("  LLM_API_KEY=<the key>" if config.api_key else "")
            + f"\n  watch it live:  {url}/dashboard"
            + ("?token=<the key>" if config.api_key else ""),
            flush=True,
        )
    started = time.monotonic()
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn shuts down cleanly on Ctrl+C, then raises it again
        server.run(sockets=[sock])
    if not args.exit_with_parent:
        print(f"simulator stopped after {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
