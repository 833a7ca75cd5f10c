"""A class of 30 on one class server: does it keep up, does every student see only their own faults, is anything lost?

Run by hand (not a test):

    .venv/bin/python benchmarks/classroom.py [--students 30] [--seconds 20] [--lanes 2]
                                             [--dashboard none|events|browser] [--screenshot docs/dashboard.png]

Method. One class server (``helpers.simulator.start_class``: 30 students, default latency model, uniform spread)
and the students in ``--processes`` worker processes (default 3, ten students each, one ``httpx.AsyncClient``
per student with that student's key). Each student runs ``--lanes`` loops of bursts: 3-10 calls at once, one in
five streamed, one in ten carrying the marker ``[x]`` in its prompt, then a pause of 0-0.5 s. Before the run,
every odd-numbered student sets ``fault_on={"[x]": "500"}`` in their own sandbox.

It reports, from the server's own records (joined to each client's by request id):

- **added latency**: how much longer than the latency the server planned a call took, measured on the server
  (``ended - received - planned``) and at the client (sent to last byte, minus planned; this one also holds the
  client processes' own CPU time on the same cores). Streamed and failed calls are left out;
- **in flight**: the class's peak as the server counted it;
- **isolation**: every ``[x]`` call of an odd student answered 500 and of an even student answered 200, and every
  other call 200, and each student's ``/admin/stats`` holds exactly their own calls;
- **lost**: calls a client sent that got no HTTP answer, or that the server has no record of.

``--dashboard events`` keeps one reader of ``/dashboard/events`` open through the run (what the page receives);
``browser`` opens the real page in Debian's Chromium (``/usr/bin/chromium``, via Playwright) and, with
``--screenshot``, saves a picture of it at the busiest moment. Compare ``--dashboard none`` with the others to see
what an open dashboard costs the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import random
import statistics
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import httpx

from helpers import simulator

MARKER = "[x]"


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _student(
    name: str, key: str, url: str, seconds: float, lanes: int, seed: int, start_at: float
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    results: list[dict[str, Any]] = []
    headers = {"authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=10 * lanes, max_keepalive_connections=10 * lanes)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:

        async def one(i: int, stream: bool, marked: bool) -> None:
            prompt = f"{name} call {i}" + (f" {MARKER}" if marked else "")
            body: dict[str, Any] = {"model": "sim-1", "messages": [{"role": "user", "content": prompt}]}
            sent = time.time()
            entry: dict[str, Any] = {"student": name, "marked": marked, "stream": stream, "sent": sent}
            try:
                if stream:
                    body["stream"] = True
                    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                        async for _ in response.aiter_bytes():
                            pass
                else:
                    response = await client.post("/v1/chat/completions", json=body)
                entry.update(status=response.status_code, id=response.headers.get("x-request-id"))
            except httpx.HTTPError as exc:
                entry.update(status=None, error=type(exc).__name__)
            entry["done"] = time.time()
            results.append(entry)

        async def lane(lane_no: int) -> None:
            # Students do not all press Run in the same millisecond: each starts within the first 2 s.
            await asyncio.sleep(max(0.0, start_at - time.time()) + rng.uniform(0, 2))
            end = time.monotonic() + seconds
            i = lane_no * 100_000
            while time.monotonic() < end:
                burst = rng.randint(3, 10)
                await asyncio.gather(*(one(i + j, rng.random() < 0.2, rng.random() < 0.1) for j in range(burst)))
                i += burst
                await asyncio.sleep(rng.uniform(0, 0.5))

        await asyncio.gather(*(lane(n) for n in range(lanes)))
    return results


def _worker(students: list[tuple[str, str]], url: str, seconds: float, lanes: int, start_at: float, out: Any) -> None:
    async def main() -> list[dict[str, Any]]:
        groups = await asyncio.gather(
            *(_student(name, key, url, seconds, lanes, zlib.crc32(name.encode()), start_at) for name, key in students)
        )
        return [r for group in groups for r in group]

    out.send(asyncio.run(main()))
    out.close()


def _read_events(url: str, cookie: str, stop: threading.Event, seen: list[int]) -> None:
    with (
        httpx.Client(base_url=url, cookies={"sim_dashboard": cookie}, timeout=None) as client,
        client.stream("GET", "/dashboard/events") as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(len(line))
            if stop.is_set():
                return


def _browser(
    url: str, token: str, stop: threading.Event, screenshot: Path | None, at: list[float], peak: list[int]
) -> None:
    """The real page in Chromium; the screenshot is taken at wall time ``at[0]`` (set once the run's start is known)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{url}/dashboard?token={token}")
        shown, taken = 0, False
        while not stop.is_set():
            time.sleep(0.5)
            shown = max(shown, int(page.inner_text("#in-flight") or 0))
            if screenshot and not taken and at and time.time() >= at[0]:
                page.screenshot(path=str(screenshot))
                taken = True
        peak.append(shown)
        browser.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    token = "instructor-" + str(random.SystemRandom().getrandbits(64))
    with tempfile.TemporaryDirectory() as tmp:
        roster_path = Path(tmp) / "roster.csv"
        sim = simulator.start_class(roster_path, args.students, instructor_key=token)
        roster = [tuple(line.split(",")) for line in roster_path.read_text().splitlines()[1:]]
    url = sim.base_url
    keys = dict(roster)
    for number, (_name, key) in enumerate(roster, 1):  # odd students: [x] fails, in their own sandbox only
        if number % 2:
            httpx.post(
                url + "/admin/config", json={"fault_on": {MARKER: "500"}}, headers={"authorization": f"Bearer {key}"}
            ).raise_for_status()
    stop = threading.Event()
    side: threading.Thread | None = None
    seen: list[int] = []
    shown_peak: list[int] = []
    shot_at: list[float] = []
    if args.dashboard == "events":
        cookie = httpx.get(url + f"/dashboard?token={token}", follow_redirects=False).cookies["sim_dashboard"]
        side = threading.Thread(target=_read_events, args=(url, cookie, stop, seen), daemon=True)
    elif args.dashboard == "browser":
        side = threading.Thread(
            target=_browser, args=(url, token, stop, args.screenshot, shot_at, shown_peak), daemon=True
        )
    if side:
        side.start()
        time.sleep(3 if args.dashboard == "browser" else 0.5)

    groups = [roster[i :: args.processes] for i in range(args.processes)]
    ctx = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    began = time.time() + 3.0  # the worker processes are up and idle by then
    shot_at.append(began + 2 + 0.6 * args.seconds)
    for group in groups:
        here, there = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(group, url, args.seconds, args.lanes, began, there))
        proc.start()
        pipes.append(here)
        procs.append(proc)
    client_rows = [row for here in pipes for row in here.recv()]
    for proc in procs:
        proc.join()
    wall = time.time() - began
    time.sleep(1.0)
    stop.set()
    if side:
        side.join(10)

    whole = sim.stats()
    records = {(r.get("student"), r["id"]): r for r in whole["records"]}
    server_added, client_added, isolation_errors, lost = [], [], [], 0
    steady: list[float] = []  # server-side, calls received after the first 2 s (once every student has started)
    for row in client_rows:
        record = records.get((row["student"], row.get("id")))
        if row["status"] is None or record is None:
            lost += 1
            continue
        odd = roster.index((row["student"], keys[row["student"]])) % 2 == 0  # student01 is index 0
        expected = 500 if row["marked"] and odd else 200
        if row["status"] != expected:
            isolation_errors.append((row["student"], row["marked"], row["status"]))
        if row["status"] == 200 and not row["stream"]:
            planned = record["planned_latency"]
            server_added.append(record["ended"] - record["received"] - planned)
            if record["received"] > began + 2:
                steady.append(server_added[-1])
            client_added.append(row["done"] - row["sent"] - planned)
    own_counts_ok = True
    for name, key in roster:
        mine = httpx.get(url + "/admin/stats", headers={"authorization": f"Bearer {key}"}, timeout=30).json()
        sent = sum(1 for row in client_rows if row["student"] == name)
        if mine["requests"] != sent or any(r.get("student") != name for r in mine["records"]):
            own_counts_ok = False
    sim.stop()
    return {
        "dashboard": args.dashboard,
        "students": args.students,
        "calls": len(client_rows),
        "calls_per_second": round(len(client_rows) / wall, 1),
        "peak_in_flight": whole["peak_in_flight"],
        "server_added_ms_p50": round(1000 * _percentile(server_added, 0.5), 1),
        "server_added_ms_p99": round(1000 * _percentile(server_added, 0.99), 1),
        "server_added_ms_p99_after_2s": round(1000 * _percentile(steady, 0.99), 1),
        "client_added_ms_p50": round(1000 * _percentile(client_added, 0.5), 1),
        "client_added_ms_p99": round(1000 * _percentile(client_added, 0.99), 1),
        "client_added_ms_mean": round(1000 * statistics.fmean(client_added), 1) if client_added else None,
        "isolation_errors": len(isolation_errors),
        "own_stats_exact": own_counts_ok,
        "lost": lost,
        "events_received": len(seen),
        "dashboard_showed_peak": shown_peak[0] if shown_peak else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--lanes", type=int, default=2, help="burst loops per student (default 2)")
    parser.add_argument("--processes", type=int, default=3, help="worker processes for the students (default 3)")
    parser.add_argument("--dashboard", choices=("none", "events", "browser"), default="none")
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    ok = result["server_added_ms_p99"] <= 50 and result["isolation_errors"] == 0 and result["lost"] == 0
    print(
        "targets (server-side added latency p99 <= 50 ms, no student sees another's faults, 0 lost): "
        + ("met" if ok and result["own_stats_exact"] else "NOT met"),
        file=sys.stderr,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
