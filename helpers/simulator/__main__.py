"""Run the simulator by hand: ``python -m helpers.simulator --port 8765`` (see ``--help``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time

from ._config import FAULT_HELP, PROFILES, ConfigError, SimulatorConfig

DESCRIPTION = """\
A local, seeded, OpenAI-compatible LLM simulator for the workbook. It listens on 127.0.0.1 only and
answers POST /v1/chat/completions (also streaming and tool calls), POST /v1/responses and GET /v1/models.
Point lessons at it with:  LLM_BASE_URL=http://127.0.0.1:PORT/v1  LLM_MODEL=sim-1
Steer and watch it while it runs: GET /admin/stats, POST /admin/reset, GET/POST /admin/config."""

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
  SIM_API_KEY=classroom-key python -m helpers.simulator --port 8765   (the key is then required)"""
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
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0 picks a free one; default 8765)")
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
    if not 0 <= args.port <= 65535:
        print(f"simulator: --port must be 0-65535 (got {args.port})", file=sys.stderr)
        return 2
    if not 0.1 <= args.request_timeout <= 3600:
        print(f"simulator: --request-timeout must be 0.1-3600 seconds (got {args.request_timeout:g})", file=sys.stderr)
        return 2
    if args.max_connections is not None and args.max_connections < 1:
        print(f"simulator: --max-connections must be at least 1 (got {args.max_connections})", file=sys.stderr)
        return 2

    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on such sockets (else +40 ms per reused call)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    if sys.platform != "win32":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", args.port))
    except OSError as exc:
        print(
            f"simulator: cannot listen on 127.0.0.1:{args.port} ({exc.strerror}); "
            "choose another --port, or 0 for a free one",
            file=sys.stderr,
        )
        return 2
    sock.listen(2048)
    port = sock.getsockname()[1]

    import uvicorn  # imported late: --help and bad flags answer at once

    from ._app import create_app
    from ._guard import ACCEPTS_PER_TICK, GuardedH11, GuardedServer, QuietAccepts, connection_cap, fd_limit

    GuardedH11.request_timeout = args.request_timeout
    GuardedH11.max_connections = args.max_connections or connection_cap(fd_limit())
    app = create_app(config, pose_as_provider=args.pose_as_provider)
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
    quiet = QuietAccepts()
    logging.getLogger("asyncio").addFilter(quiet)
    logging.getLogger("uvicorn.error").addFilter(quiet)
    server = GuardedServer(uvicorn_config)
    url = f"http://127.0.0.1:{port}"
    if args.exit_with_parent:
        threading.Thread(target=_watch_parent, daemon=True).start()
        print(f"READY {url}", flush=True)
        sys.stdout = sys.stderr
    else:
        print(
            f"LLM simulator listening on {url}  (seed {config.seed}"
            + ("; posing as a real provider" if args.pose_as_provider else "")
            + "; stop with Ctrl+C)\n"
            f"  point the workbook at it:  export LLM_BASE_URL={url}/v1 LLM_MODEL={config.models[0]}"
            + ("  LLM_API_KEY=<the key>" if config.api_key else ""),
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
