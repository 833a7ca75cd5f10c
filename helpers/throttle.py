"""A requests-per-minute / tokens-per-minute throttle, for threads and for asyncio (lesson 07).

A concurrency cap (a semaphore, ``workers``) limits how many calls are *in flight*; a throttle limits how many
*start per minute*, which is what a provider's RPM and TPM limits count. With short calls, three workers can
still send far more than 60 requests a minute; with a throttle they wait for their turn instead of collecting
429s.

It is a token bucket: a bucket holds up to ``burst`` requests (and a second's worth of tokens) and refills
continuously at ``rpm / 60`` requests (``tpm / 60`` tokens) per second; each call takes one request (and its
tokens) out, waiting until the bucket has them. A call bigger than the token bucket is let through when the
bucket is full and leaves it in debt, so that the calls after it wait for the tokens it used. Turns are given
in the order callers ask (first come, first served): each caller reserves its start time under a lock, then
sleeps until then, with ``time.sleep`` in a thread and ``asyncio.sleep`` in a task, which never blocks the
event loop, whichever loop it is.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Throttle"]


class _Bucket:
    """One token bucket, kept as the time at which it will be full again (so it needs no background refill)."""

    def __init__(self, per_minute: float, capacity: float) -> None:
        self.rate = per_minute / 60.0  # units per second
        self.capacity = capacity
        self.full_at = 0.0  # monotonic time at which the bucket is full again; in the past: it is full

    def earliest(self, amount: float, now: float) -> float:
        """When ``amount`` can be taken: once the bucket holds it (or, for more than it holds, once it is full)."""
        needed = min(amount, self.capacity)
        return max(now, self.full_at - (self.capacity - needed) / self.rate)

    def take(self, amount: float, at: float) -> None:
        self.full_at = max(self.full_at, at) + amount / self.rate


class Throttle:
    """At most ``rpm`` requests and ``tpm`` tokens per minute, shared by every thread and task that uses it.

    ``throttle.acquire(tokens)`` (threads) and ``await throttle.acquire_async(tokens)`` (asyncio) wait for the
    caller's turn and return how long they waited. ``burst`` is how many requests may start back to back after
    a quiet spell (1: evenly spaced, ``60 / rpm`` seconds apart).
    """

    def __init__(self, rpm: float | None = None, tpm: float | None = None, *, burst: int = 1) -> None:
        if rpm is None and tpm is None:
            raise ValueError("give a limit: Throttle(rpm=60) for requests per minute, tpm=... for tokens, or both")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst must be a whole number of at least 1 (got {burst!r}): requests sent back to back")
        self.rpm = _limit("rpm (requests per minute)", rpm)
        self.tpm = _limit("tpm (tokens per minute)", tpm)
        self.burst = burst
        self._requests = _Bucket(self.rpm, burst) if self.rpm else None
        self._tokens = _Bucket(self.tpm, max(1.0, self.tpm / 60.0)) if self.tpm else None
        self._lock = threading.Lock()
        self.acquired = 0
        self.waited = 0.0

    def reserve(self, tokens: int = 0) -> float:
        """Book the next turn for a call of ``tokens`` tokens; returns the seconds to wait before starting it."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"tokens must be a whole number, 0 or more (got {tokens!r})")
        with self._lock:  # held for a moment only: nobody sleeps while holding it
            now = time.monotonic()
            start = now
            if self._requests:
                start = max(start, self._requests.earliest(1, now))
            if self._tokens and tokens:
                start = max(start, self._tokens.earliest(tokens, now))
            if self._requests:
                self._requests.take(1, start)
            if self._tokens and tokens:
                self._tokens.take(tokens, start)
            wait = start - now
            self.acquired += 1
            self.waited += wait
            return wait

    def acquire(self, tokens: int = 0) -> float:
        """Wait (in this thread) until a call of ``tokens`` tokens may start; returns the seconds waited."""
        wait = self.reserve(tokens)
        if wait > 0:
            time.sleep(wait)
        return wait

    async def acquire_async(self, tokens: int = 0) -> float:
        """Wait (in this task, without blocking the event loop) until a call may start; returns the seconds waited.

        A task cancelled while it waits gives up its turn: the turn is not reused, so the limit still holds.
        """
        wait = self.reserve(tokens)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait

    def wrap(self, call: Callable[[str], Any], *, tokens: int = 0) -> Callable[[str], Any]:
        """``call`` that first waits for its turn: for ``run_threads``, or ``run_async`` if ``call`` is async."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"tokens must be a whole number, 0 or more (got {tokens!r})")
        if inspect.iscoroutinefunction(call):

            @functools.wraps(call)
            async def throttled_async(prompt: str) -> Any:
                await self.acquire_async(tokens)
                return await call(prompt)

            return throttled_async

        @functools.wraps(call)
        def throttled(prompt: str) -> Any:
            self.acquire(tokens)
            return call(prompt)

        return throttled

    def __repr__(self) -> str:
        limits = ", ".join(
            part
            for part in (
                f"rpm={self.rpm:g}" if self.rpm else "",
                f"tpm={self.tpm:g}" if self.tpm else "",
                f"burst={self.burst}",
            )
            if part
        )
        return f"Throttle({limits}; {self.acquired} turns given, {self.waited:.2f} s waited)"


def _limit(name: str, value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number greater than 0 (got {value!r})")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a number greater than 0 (got {value!r}); leave it out for no limit")
    return float(value)
