"""One user's share of the simulator: its settings, counters, rate-limit buckets and per-request records.

A simulator run by one learner has one sandbox. A class server (``--students``) has one per student, so that a
student's faults, latency, limits, stats and resets touch only their own requests (see ``_scopes``)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from typing import Any

from ._config import SimulatorConfig
from ._wire import duration

MAX_RECORDS = 20_000  # per sandbox; the oldest are forgotten first


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

    def fill(self) -> dict[str, float]:
        """How full it is now: for the dashboard."""
        self._refill()
        return {"level": round(max(0.0, self.level), 2), "limit": self.limit, "per_minute": self.per_minute}

    def headers(self, kind: str) -> dict[str, str]:
        self._refill()
        return {
            f"x-ratelimit-limit-{kind}": str(self.per_minute),
            f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(self.level))),
            f"x-ratelimit-reset-{kind}": duration((self.limit - self.level) / self.rate),
        }


class Sandbox:
    """Everything the server remembers for one user (or the one learner): settings, counters, buckets, records."""

    def __init__(self, config: SimulatorConfig, name: str | None = None) -> None:
        self.config = config
        self.name = name  # the student's name on a class server; None for a simulator of one
        self.in_flight = 0
        self.serving = 0
        self.active: dict[int, dict[str, Any]] = {}  # records of the requests in flight now, by number
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
        self.use(self.config.updated(changes))

    def use(self, new: SimulatorConfig) -> None:
        old = self.config
        self.config = new
        if (new.capacity, new.rpm, new.tpm, new.burst) != (old.capacity, old.rpm, old.tpm, old.burst):
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
        if self.name is not None:
            data["student"] = self.name
        if with_records:
            data["records"] = list(self.records)
        return data

    def counts(self) -> dict[str, int]:
        """Calls, errors (neither 2xx nor 429) and 429s since the last reset: the dashboard's columns."""
        limited = sum(n for status, n in self.by_status.items() if status == "429")
        ok = sum(n for status, n in self.by_status.items() if status.startswith("2"))
        done = sum(self.by_status.values())
        return {"calls": self.number, "errors": done - ok - limited, "rate_limited": limited}
