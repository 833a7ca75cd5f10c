"""Retries done right: backoff with jitter, the server's ``retry-after`` honoured, only what is worth it (lesson 06).

A failed call is tried again only when another try can succeed: a rate limit (429), a server error (5xx), a
timeout or a dropped connection. A bad request (400), a bad key (401), an unknown model (404) or an exhausted
quota (``insufficient_quota``) fails the same way every time, so it is raised at once.

Between tries the wait grows (``base``, ``2·base``, ``4·base``, ... up to ``cap``) and is drawn at random below
that ceiling ("full jitter"), so that many callers that failed together do not come back together. When the
server says how long to wait (``retry-after``), the wait is never shorter than that. ``attempts`` caps the
tries and ``max_wait`` the total time spent waiting: a run always ends.

:func:`retry` returns an :class:`~helpers.runs.Answer`, so a run's records show the attempts and the waiting.
When it gives up it raises the last error, with ``.attempts`` and ``.waited`` set on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from .calls import APIError
from .runs import Answer, Attempt

__all__ = ["backoff", "is_retryable", "retry", "retry_after", "retry_async", "with_retries"]

# Timeouts, refused or reset connections, and a server that closed the connection half-way through.
# Not every transport error: an unsupported URL scheme or a malformed request fails the same way every time.
_TRANSIENT: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    TimeoutError,  # a deadline passed: asyncio.timeout(), asyncio.wait_for(), future.result(timeout=...)
)
try:  # the same errors from httpx2, which the openai SDK and pydantic-ai use underneath
    import httpx2

    _TRANSIENT += (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)
except ImportError:  # pragma: no cover - httpx2 comes with openai
    pass


def is_retryable(exc: BaseException) -> bool:
    """Can another try of the same call succeed? Yes for 429 (not ``insufficient_quota``), 408, 409, 5xx,
    timeouts and dropped connections; no for everything else (400, 401, 404, a bug in the calling code)."""
    for error in _causes(exc):
        if isinstance(error, APIError):
            return error.retryable
        if isinstance(error, _TRANSIENT):
            return True
        status = getattr(error, "status_code", None)  # openai.APIStatusError, pydantic-ai's ModelHTTPError
        if isinstance(status, int) and not isinstance(status, bool):
            if _error_code(error) == "insufficient_quota":
                return False
            return status in (408, 409, 429) or status >= 500
    return False


def retry_after(exc: BaseException) -> float | None:
    """How long the server asked us to wait (``retry-after-ms`` or ``retry-after``, in seconds), if it did."""
    for error in _causes(exc):
        if isinstance(error, APIError):
            return error.retry_after
        response = getattr(error, "response", None)  # the openai SDK's errors carry the response
        headers = getattr(response, "headers", None)
        if headers is not None:
            for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
                try:
                    seconds = float(headers.get(name)) / scale
                except (TypeError, ValueError):
                    continue
                if math.isfinite(seconds) and seconds >= 0:
                    return seconds
    return None


def backoff(attempt: int, *, base: float = 0.5, cap: float = 8.0, rng: random.Random | None = None) -> float:
    """The wait after failed try number ``attempt`` (1, 2, ...): random between 0 and ``base·2^(attempt-1)``,
    at most ``cap`` ("full jitter")."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return (rng or random).uniform(0, ceiling)


def retry(
    call: Callable[[str], Any],
    prompt: str,
    *,
    attempts: int = 4,
    base: float = 0.5,
    cap: float = 8.0,
    max_wait: float = 30.0,
    rng: random.Random | int | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> Answer:
    """``call(prompt)``, tried again after retryable failures, at most ``attempts`` tries and ``max_wait``
    seconds of waiting in all (lesson 06). ``rng`` (a ``random.Random`` or a seed) makes the jitter repeatable;
    ``sleep`` is how to wait (``time.sleep``)."""
    _check(attempts, base, cap, max_wait)
    rng = _rng(rng)
    waited = 0.0
    tries: list[Attempt] = []
    for attempt in range(1, attempts + 1):
        began = time.perf_counter()
        try:
            result = call(prompt)
        except Exception as error:
            tries.append(Attempt(began, time.perf_counter(), _what(error)))
            wait = _next_wait(error, attempt, attempts, waited, base, cap, max_wait, rng)
            if wait is None:  # not worth another try, or no tries or waiting time left
                _mark(error, attempt, waited, tries)
                raise
            sleep(wait)
            waited += wait
        else:
            tries.append(Attempt(began, time.perf_counter()))
            return _answer(result, attempt, waited, tries)
    raise AssertionError("unreachable: the last attempt returns or raises")


async def retry_async(
    acall: Callable[[str], Awaitable[Any]],
    prompt: str,
    *,
    attempts: int = 4,
    base: float = 0.5,
    cap: float = 8.0,
    max_wait: float = 30.0,
    rng: random.Random | int | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> Answer:
    """:func:`retry` for a coroutine function: ``await acall(prompt)``, waiting with ``asyncio.sleep``."""
    _check(attempts, base, cap, max_wait)
    rng = _rng(rng)
    waited = 0.0
    tries: list[Attempt] = []
    for attempt in range(1, attempts + 1):
        began = time.perf_counter()
        try:
            result = await acall(prompt)
        except Exception as error:
            tries.append(Attempt(began, time.perf_counter(), _what(error)))
            wait = _next_wait(error, attempt, attempts, waited, base, cap, max_wait, rng)
            if wait is None:
                _mark(error, attempt, waited, tries)
                raise
            await sleep(wait)
            waited += wait
        else:
            tries.append(Attempt(began, time.perf_counter()))
            return _answer(result, attempt, waited, tries)
    raise AssertionError("unreachable: the last attempt returns or raises")


def with_retries(call: Callable[[str], Any], **options: Any) -> Callable[[str], Any]:
    """``call`` with retries, ready for ``run_threads`` (or, for a coroutine function, ``run_async``).

    ``options`` are those of :func:`retry`: ``with_retries(ask_one, attempts=5, max_wait=20)``. A seed (``rng=1``)
    becomes one ``random.Random`` shared by all the calls, so that they do not all draw the same waits.
    """
    unknown = sorted(set(options) - {"attempts", "base", "cap", "max_wait", "rng", "sleep"})
    if unknown:
        raise TypeError(f"unknown retry option(s) {', '.join(unknown)}; use attempts, base, cap, max_wait, rng, sleep")
    _check(options.get("attempts", 4), options.get("base", 0.5), options.get("cap", 8.0), options.get("max_wait", 30.0))
    if options.get("rng") is not None:
        options["rng"] = _rng(options["rng"])
    if inspect.iscoroutinefunction(call):

        @functools.wraps(call)
        async def retrying_async(prompt: str) -> Answer:
            return await retry_async(call, prompt, **options)

        return retrying_async

    @functools.wraps(call)
    def retrying(prompt: str) -> Answer:
        return retry(call, prompt, **options)

    return retrying


# --- the small pieces ------------------------------------------------------------------------------------


def _next_wait(
    error: BaseException,
    attempt: int,
    attempts: int,
    waited: float,
    base: float,
    cap: float,
    max_wait: float,
    rng: random.Random,
) -> float | None:
    """Seconds to wait before the next try, or None to give up now."""
    if not is_retryable(error) or attempt >= attempts:
        return None
    wait = backoff(attempt, base=base, cap=cap, rng=rng)
    asked = retry_after(error)
    if asked is not None:
        wait = max(wait, asked)  # never come back sooner than the server said
    if waited + wait > max_wait:
        return None  # waiting that long would break the promise on total wait
    return wait


def _what(error: BaseException) -> str:
    """What ended a try, in a few words: ``APIError: HTTP 503 ...``, ``ReadTimeout: ...``."""
    text = str(error) or type(error).__name__
    return text if text.startswith(type(error).__name__) else f"{type(error).__name__}: {text[:120]}"


def _mark(error: BaseException, attempts: int, waited: float, tries: list[Attempt]) -> None:
    """Mark the last error with how many tries it took, how long we waited in between, and each try's times."""
    try:
        error.attempts = attempts  # type: ignore[attr-defined]
        error.waited = waited  # type: ignore[attr-defined]
        error.tries = tries  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - an exception class with __slots__
        pass
    if attempts > 1:
        error.add_note(f"(gave up after {attempts} attempts and {waited:.2f} s of waiting)")


def _answer(result: Any, attempts: int, waited: float, tries: list[Attempt]) -> Answer:
    if isinstance(result, Answer):  # the call reported tokens (or retried inside): keep that, add ours
        inner = result.tries if attempts == 1 and result.tries else tries
        return dataclasses.replace(
            result, attempts=result.attempts + attempts - 1, waited=result.waited + waited, tries=inner
        )
    return Answer(result, attempts, waited, tries=tries)


def _causes(exc: BaseException) -> list[BaseException]:
    """The error and what it was raised from (the SDKs wrap the httpx error in their own)."""
    chain: list[BaseException] = []
    error: BaseException | None = exc
    while error is not None and len(chain) < 5 and error not in chain:
        chain.append(error)
        error = error.__cause__
    return chain


def _error_code(error: BaseException) -> str | None:
    code = getattr(error, "code", None)
    if isinstance(code, str):
        return code
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("code"), str):
            return str(inner["code"])
    return None


def _rng(rng: random.Random | int | None) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if rng is None or (isinstance(rng, int) and not isinstance(rng, bool)):
        return random.Random(rng)
    raise ValueError(f"rng must be a random.Random, a whole-number seed or None (got {rng!r})")


def _check(attempts: Any, base: Any, cap: Any, max_wait: Any) -> None:
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be a whole number of at least 1 (got {attempts!r}); 1 means no retries")
    for name, value in (("base", base), ("cap", cap), ("max_wait", max_wait)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a number of seconds, 0 or more (got {value!r})")
