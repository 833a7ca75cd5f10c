"""Does the batch pipeline keep a rate limit busy while one call in five fails? (lesson 09)

Run by hand (not a test; it takes about a minute):

    .venv/bin/python benchmarks/pipeline.py [--items 500] [--rpm 600] [--fail-rate 0.2] [--workers 16]

The simulator allows ``--rpm`` requests a minute and fails ``--fail-rate`` of them with a retryable error
(500, 503 or 429 with ``retry-after: 1``). ``run_batch`` classifies ``--items`` messages with the same ``rpm`` in
its throttle, retries and a checkpoint. The best it can do is send requests at exactly the limit: a failed
attempt costs a request like any other, so items finish at about ``(1 - fail rate)`` of the limit. It prints
requests a second against the limit (the target: at least 90%), items a second, and checks every item was
answered and saved once.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from helpers.batch import classify, load_items, read_checkpoint, run_batch
from helpers.settings import connect


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=500, help="how many items (default 500)")
    parser.add_argument("--rpm", type=int, default=600, help="the simulator's and the throttle's limit (600)")
    parser.add_argument("--fail-rate", type=float, default=0.2, help="share of requests that fail (0.2)")
    parser.add_argument("--workers", type=int, default=16, help="threads (default 16)")
    parser.add_argument("--latency", type=float, default=0.3, help="seconds per call (default 0.3)")
    args = parser.parse_args()

    target = connect(seed=11, profile="uniform", latency=args.latency, spread=0.5)
    assert target.simulator is not None, "the benchmark runs against the built-in simulator (unset LLM_BASE_URL)"
    target.simulator.configure(rpm=args.rpm, fail_rate=args.fail_rate, fail_kinds=["500", "503", "429"])
    dataset = load_items()
    items = [{"id": f"b{i:04d}", "text": f"{dataset[i % len(dataset)]['text']} (case {i})"} for i in range(args.items)]
    limit_per_s = args.rpm / 60
    print(
        f"{args.items} items, simulator and throttle at {args.rpm} requests/min ({limit_per_s:g}/s), "
        f"{args.fail_rate:.0%} of requests failing (500, 503, 429), {args.workers} workers, "
        f"{args.latency} s per call (uniform ±50%)"
    )
    with tempfile.TemporaryDirectory() as folder, target.client(connections=args.workers) as client:
        checkpoint = Path(folder) / "benchmark.jsonl"
        began = time.monotonic()
        report = run_batch(
            lambda text: classify(client, target.model, text),
            items,
            checkpoint=checkpoint,
            workers=args.workers,
            target=target,
            rpm=args.rpm,
            attempts=10,
            max_wait=60,
            rng=1,
            progress=False,
        )
        wall = time.monotonic() - began
        saved = Counter(str(e["id"]) for e in read_checkpoint(checkpoint))
    stats = target.simulator.stats(records=False)
    sent = stats["requests"]
    received = sorted(r["received"] for r in target.simulator.stats()["records"])
    span = received[-1] - received[0] if len(received) > 1 else wall
    # Requests a second between the first and the last request: the rate the limit governs. N requests evenly
    # spaced at the limit span (N - 1) / limit seconds.
    rate = (sent - 1) / span if span > 0 else 0.0
    result = {
        "items": args.items,
        "answered": report.answered,
        "failed": report.failed,
        "requests": sent,
        "by_status": stats["by_status"],
        "rate_limited_by_server": stats["by_status"].get("429", 0) - stats["by_fault"].get("429", 0),
        "wall_s": round(wall, 2),
        "requests_per_s": round(rate, 2),
        "limit_per_s": limit_per_s,
        "share_of_limit": round(rate / limit_per_s, 3),
        "items_per_s": round(report.answered / wall, 2),
        "attempts": report.attempts,
    }
    print(json.dumps(result, indent=2))
    ok = (
        report.answered == args.items
        and report.failed == 0
        and set(saved.values()) == {1}
        and len(saved) == args.items
        and rate >= 0.9 * limit_per_s
    )
    print(
        f"{'PASS' if ok else 'FAIL'}: {report.answered}/{args.items} answered, each saved once; "
        f"{rate:.2f} requests/s = {rate / limit_per_s:.0%} of the limit of {limit_per_s:g}/s (target: 90% or more); "
        f"{report.answered / wall:.2f} items/s over {wall:.1f} s"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
