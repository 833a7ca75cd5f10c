"""The quota guard: against a real provider every call costs money and counts against its limits (lesson 07).

With a real provider (``LLM_BASE_URL`` set), every client a :class:`~helpers.settings.Target` builds (httpx,
the openai SDK, pydantic-ai models) sends its requests through the guard, whatever the lesson code does:

- at most ``max_in_flight`` requests (3) are in flight at once, across all threads and event loops of the
  Python process: the others wait for a free slot (an async caller waits without blocking its event loop);
- every request counts as a call, and the ``usage`` of every JSON answer (or of the last event of a stream)
  counts its tokens;
- once this session's budget is spent (``LLM_MAX_CALLS`` calls, ``LLM_MAX_TOKENS`` tokens; 100 and 50,000 by
  default) the next request is refused with :class:`QuotaExceeded` before anything is sent. Tokens are known
  only when answers come back, so the calls in flight when the token budget runs out may go a little past it.

``guard.check_run(n_calls, est_tokens_per_call, workers)`` refuses a whole run *before its first call* when it
would not fit in what is left, with the estimate (calls, tokens, cost where the price is known) and how to
raise the limit on purpose. Against the built-in simulator there is no guard: nothing is capped or counted.

The budget belongs to the Python process (the kernel session): restarting the kernel starts it again.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2

__all__ = [
    "DEFAULT_MAX_CALLS",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_TOKENS",
    "PRICES",
    "PRICES_AS_OF",
    "Estimate",
    "QuotaExceeded",
    "QuotaGuard",
    "estimate_cost",
    "estimate_tokens",
    "price_of",
    "session_guard",
]

DEFAULT_MAX_IN_FLIGHT = 3
DEFAULT_MAX_CALLS = 100
DEFAULT_MAX_TOKENS = 50_000

# Dollars per 1M tokens (input, output): OpenAI's list prices, standard tier, as of PRICES_AS_OF.
# Prices change: check https://openai.com/api/pricing before trusting a cost estimate.
PRICES_AS_OF = "2025-06"
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}

_MAX_BODY = 4_000_000  # bytes of one answer kept to find its usage (answers are a few kB)


class QuotaExceeded(RuntimeError):
    """The quota guard refused a call or a run; the message says what was used and how to allow more."""


def price_of(model: str | None) -> tuple[float, float] | None:
    """Dollars per 1M (input, output) tokens for ``model`` (a dated snapshot such as ``gpt-4o-mini-2024-07-18``
    counts as its model), or None when the price is not known here."""
    if not model:
        return None
    name = model.lower()
    known = [key for key in PRICES if name == key or name.startswith(key + "-")]
    return PRICES[max(known, key=len)] if known else None


def estimate_cost(model: str | None, input_tokens: int, output_tokens: int) -> float | None:
    """Dollars for these tokens at ``model``'s list price, or None when the price is unknown."""
    price = price_of(model)
    if price is None:
        return None
    return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000


def estimate_tokens(prompt: str, max_tokens: int | None = None) -> int:
    """A rough count of the tokens one call uses: about 4 characters a token, 10 more for the message around
    the prompt, plus the answer (``max_tokens``, or 300 when the answer's length is not capped)."""
    return len(prompt) // 4 + 10 + (300 if max_tokens is None else max_tokens)


@dataclass(frozen=True)
class Estimate:
    """What a run would use: calls, tokens, and the cost range (all tokens at the input price .. at the output
    price) where the price is known."""

    calls: int
    tokens_per_call: int
    model: str | None = None

    @property
    def tokens(self) -> int:
        return self.calls * self.tokens_per_call

    @property
    def cost_range(self) -> tuple[float, float] | None:
        price = price_of(self.model)
        if price is None:
            return None
        return self.tokens * min(price) / 1_000_000, self.tokens * max(price) / 1_000_000

    def __str__(self) -> str:
        text = f"{self.calls:,} calls × ~{self.tokens_per_call:,} tokens = ~{self.tokens:,} tokens"
        cost = self.cost_range
        if cost is None:
            return text + (f", price unknown for {self.model}" if self.model else ", price unknown")
        return text + f", ${cost[0]:.4f} to ${cost[1]:.4f} at {self.model} list prices of {PRICES_AS_OF}"


class _Ledger:
    """What all the views of one guard share: limits, usage, the in-flight slots, and one lock for all of it."""

    def __init__(self, max_in_flight: int, max_calls: int, max_tokens: int) -> None:
        self.cond = threading.Condition()  # an RLock inside: a finalizer may release a slot on this thread
        self.max_in_flight, self.max_calls, self.max_tokens = max_in_flight, max_calls, max_tokens
        self.calls = self.refused = self.in_flight = self.peak_in_flight = 0
        self.tokens: dict[str, list[int]] = {}  # model -> [input tokens, output tokens]

    def used_tokens(self) -> int:
        return sum(i + o for i, o in self.tokens.values())

    def refusal(self) -> QuotaExceeded | None:
        """The error to raise if the budget is spent, or None while it lasts (call with the lock held)."""
        tokens = self.used_tokens()
        if self.calls >= self.max_calls:
            what, variable, setting = f"{self.max_calls:,} calls", "LLM_MAX_CALLS", f"max_calls={2 * self.max_calls}"
        elif tokens >= self.max_tokens:
            what, variable, setting = (
                f"{self.max_tokens:,} tokens",
                "LLM_MAX_TOKENS",
                f"max_tokens={2 * self.max_tokens}",
            )
        else:
            return None
        return QuotaExceeded(
            f"The quota guard stopped this call before it was sent: this session has used its budget of {what} "
            f"({self.calls:,} of {self.max_calls:,} calls, {tokens:,} of {self.max_tokens:,} tokens). To allow more "
            f"on purpose, set {variable} before connect(), or call target.quota.set_limits({setting})."
        )

    def try_enter(self) -> bool:
        """Take a slot and count the call if a slot is free; refuse if the budget is spent (lock held)."""
        refusal = self.refusal()
        if refusal is not None:
            self.refused += 1
            self.cond.notify_all()  # the others waiting for a slot are refused too, rather than left waiting
            raise refusal
        if self.in_flight >= self.max_in_flight:
            return False
        self.in_flight += 1
        self.calls += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return True

    def enter(self) -> None:
        """Wait in this thread for a free slot, then count the call."""
        with self.cond:
            while not self.try_enter():
                self.cond.wait()

    async def enter_async(self) -> None:
        """Wait in this task for a free slot without blocking the event loop (any loop), then count the call."""
        delay = 0.001
        while True:
            with self.cond:  # held for a moment only: it is never waited on while held here
                if self.try_enter():
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    def leave(self, model: str | None, input_tokens: int, output_tokens: int) -> None:
        with self.cond:
            self.in_flight -= 1
            if input_tokens or output_tokens:
                counts = self.tokens.setdefault(model or "unknown", [0, 0])
                counts[0] += input_tokens
                counts[1] += output_tokens
            self.cond.notify()


class QuotaGuard:
    """A cap on calls in flight and a budget of calls and tokens, shared by every client built on it.

    ``max_in_flight``, ``max_calls`` and ``max_tokens`` left as None come from ``LLM_MAX_CALLS`` and
    ``LLM_MAX_TOKENS`` in ``env`` (the environment), else 3, 100 and 50,000. ``model`` names the model whose
    price is used for estimates; :meth:`for_model` gives a view of the same budget for another model.
    """

    def __init__(
        self,
        *,
        max_in_flight: int | None = None,
        max_calls: int | None = None,
        max_tokens: int | None = None,
        model: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self._ledger = _Ledger(
            _whole("max_in_flight", DEFAULT_MAX_IN_FLIGHT if max_in_flight is None else max_in_flight),
            _whole("max_calls", _from_env(env, "LLM_MAX_CALLS", DEFAULT_MAX_CALLS) if max_calls is None else max_calls),
            _whole(
                "max_tokens", _from_env(env, "LLM_MAX_TOKENS", DEFAULT_MAX_TOKENS) if max_tokens is None else max_tokens
            ),
        )
        self.model = model

    def for_model(self, model: str | None) -> QuotaGuard:
        """The same guard (same slots, same budget), with ``model``'s price used for estimates."""
        if model == self.model:
            return self
        view = object.__new__(QuotaGuard)
        view._ledger, view.model = self._ledger, model
        return view

    # --- limits and usage -------------------------------------------------------------------------------

    @property
    def max_in_flight(self) -> int:
        return self._ledger.max_in_flight

    @property
    def max_calls(self) -> int:
        return self._ledger.max_calls

    @property
    def max_tokens(self) -> int:
        return self._ledger.max_tokens

    @property
    def calls(self) -> int:
        """Requests sent so far this session (each retry is a request)."""
        return self._ledger.calls

    @property
    def tokens(self) -> int:
        """Tokens used so far, from the ``usage`` of the answers."""
        with self._ledger.cond:
            return self._ledger.used_tokens()

    @property
    def in_flight(self) -> int:
        return self._ledger.in_flight

    @property
    def peak_in_flight(self) -> int:
        return self._ledger.peak_in_flight

    @property
    def refused(self) -> int:
        """Requests refused because the budget was spent."""
        return self._ledger.refused

    @property
    def cost(self) -> float | None:
        """Dollars spent so far at list prices, or None if some tokens were used by a model of unknown price."""
        total = 0.0
        with self._ledger.cond:
            for model, (inp, out) in self._ledger.tokens.items():
                cost = estimate_cost(model, inp, out)
                if cost is None:
                    return None
                total += cost
        return total

    def usage(self) -> dict[str, Any]:
        """Usage and limits so far, as a dict (for a table)."""
        ledger = self._ledger
        with ledger.cond:
            return {
                "calls": ledger.calls,
                "max_calls": ledger.max_calls,
                "tokens": ledger.used_tokens(),
                "max_tokens": ledger.max_tokens,
                "tokens_by_model": {m: {"input": i, "output": o} for m, (i, o) in ledger.tokens.items()},
                "cost_usd": self.cost,
                "in_flight": ledger.in_flight,
                "peak_in_flight": ledger.peak_in_flight,
                "max_in_flight": ledger.max_in_flight,
                "refused": ledger.refused,
            }

    def set_limits(
        self, *, max_calls: int | None = None, max_tokens: int | None = None, max_in_flight: int | None = None
    ) -> None:
        """Raise (or lower) the limits on purpose; what was used so far still counts."""
        new = {
            name: _whole(name, value)
            for name, value in (("max_calls", max_calls), ("max_tokens", max_tokens), ("max_in_flight", max_in_flight))
            if value is not None
        }
        with self._ledger.cond:
            for name, value in new.items():
                setattr(self._ledger, name, value)
            self._ledger.cond.notify_all()

    # --- before a run -----------------------------------------------------------------------------------

    def check_run(self, n_calls: int, est_tokens_per_call: int = 500, workers: int = 1) -> Estimate:
        """Refuse a run that would not fit, before any call: more ``workers`` than calls allowed in flight, or
        more calls or tokens than the session has left. Returns the estimate when it fits."""
        n_calls = _whole("n_calls", n_calls, minimum=0)
        est_tokens_per_call = _whole("est_tokens_per_call", est_tokens_per_call, minimum=0)
        workers = _whole("workers", workers)
        estimate = Estimate(n_calls, est_tokens_per_call, self.model)
        ledger = self._ledger
        with ledger.cond:
            calls, tokens = ledger.calls, ledger.used_tokens()
            max_calls, max_tokens, max_in_flight = ledger.max_calls, ledger.max_tokens, ledger.max_in_flight
        if workers > max_in_flight:
            raise QuotaExceeded(
                f"The quota guard refused this run before any call: {workers} workers would put {workers} calls "
                f"in flight, and against a real provider it allows at most {max_in_flight}. Use workers="
                f"{max_in_flight} or fewer, or raise the cap on purpose: target.quota.set_limits(max_in_flight="
                f"{workers})."
            )
        if calls + estimate.calls > max_calls or tokens + estimate.tokens > max_tokens:
            need_calls, need_tokens = calls + estimate.calls, tokens + estimate.tokens
            raise QuotaExceeded(
                f"The quota guard refused this run before any call: it would need {estimate}, but this session "
                f"has {max(0, max_calls - calls):,} of its {max_calls:,} calls and {max(0, max_tokens - tokens):,} "
                f"of its {max_tokens:,} tokens left. "
                "Run fewer prompts, or raise the budget on purpose: set "
                f"LLM_MAX_CALLS={max(need_calls, max_calls)} and LLM_MAX_TOKENS={max(need_tokens, max_tokens)} "
                f"before connect(), or call target.quota.set_limits(max_calls={max(need_calls, max_calls)}, "
                f"max_tokens={max(need_tokens, max_tokens)})."
            )
        return estimate

    # --- the transports -----------------------------------------------------------------------------------

    def wrap_transport(self, inner: Any) -> Any:
        """``inner`` (an httpx or httpx2 transport, sync or async) with every request going through this guard."""
        for base, guarded in _TRANSPORTS:
            if isinstance(inner, base):
                return guarded(inner, self._ledger, self.model)
        raise TypeError(f"not an httpx or httpx2 transport: {type(inner).__name__}")

    def __repr__(self) -> str:
        ledger = self._ledger
        with ledger.cond:
            calls, tokens = ledger.calls, ledger.used_tokens()
        cost = self.cost
        spent = "" if not tokens else (", cost unknown" if cost is None else f", about ${cost:.4f}")
        model = f"model={self.model!r}, " if self.model else ""
        return (
            f"QuotaGuard({model}at most {ledger.max_in_flight} in flight; used {calls:,}/{ledger.max_calls:,} calls, "
            f"{tokens:,}/{ledger.max_tokens:,} tokens{spent})"
        )


# --- the session's guard --------------------------------------------------------------------------------------

_session: QuotaGuard | None = None
_session_lock = threading.Lock()


def session_guard(env: Mapping[str, str] | None = None) -> QuotaGuard:
    """The guard every real-provider Target of this Python process (kernel session) shares.

    Made on first use with limits from the environment. Given ``env`` (as ``connect`` does), its
    ``LLM_MAX_CALLS`` / ``LLM_MAX_TOKENS``, when set, become the limits; usage so far is kept.
    """
    global _session
    with _session_lock:
        if _session is None:
            _session = QuotaGuard(env=env)
            return _session
        guard = _session
    if env is not None:
        calls, tokens = env.get("LLM_MAX_CALLS", "").strip(), env.get("LLM_MAX_TOKENS", "").strip()
        guard.set_limits(
            max_calls=_from_env(env, "LLM_MAX_CALLS", DEFAULT_MAX_CALLS) if calls else None,
            max_tokens=_from_env(env, "LLM_MAX_TOKENS", DEFAULT_MAX_TOKENS) if tokens else None,
        )
    return guard


def _from_env(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip().replace("_", "")
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        what = "calls this session may make" if name == "LLM_MAX_CALLS" else "tokens this session may use"
        raise ValueError(
            f"{name} must be a whole number of at least 1 (got {env.get(name)!r}): the most {what} at a real "
            f"provider, e.g. {name}={default} (0 would allow none, and there is no setting for no limit); unset it "
            f"for the default, {default:,}"
        )
    return value


def _whole(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number of at least {minimum} (got {value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum} (got {value})")
    return value


# --- the transports that put every request through the guard ------------------------------------------------


class _Meter:
    """Watches one answer go by, to count its tokens, and gives its slot back once, when the answer ends."""

    def __init__(self, ledger: _Ledger, model: str | None, headers: Any) -> None:
        self._ledger, self._model = ledger, model
        kind = headers.get("content-type", "")
        self._stream = "event-stream" in kind
        self._keep = "json" in kind or self._stream
        encoding = headers.get("content-encoding", "identity").lower().strip()
        self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding in ("gzip", "deflate") else None
        if encoding not in ("", "identity", "gzip", "deflate"):
            self._keep = False  # cannot read it: the call counts, its tokens do not
        self._parts: list[bytes] = []
        self._size = 0
        self._done = False

    def feed(self, chunk: bytes, *, decoded: bool = False) -> None:
        if not self._keep:
            return
        try:
            data = self._decoder.decompress(chunk) if self._decoder and not decoded else chunk
        except zlib.error:
            self._keep = False
            return
        self._parts.append(data)
        self._size += len(data)
        if self._size > _MAX_BODY:
            self._keep, self._parts = False, []

    def finish(self) -> None:
        if self._done:
            return
        self._done = True
        found = _usage(b"".join(self._parts), self._stream) if self._keep else None
        model, inp, out = found if found else (None, 0, 0)
        self._ledger.leave(model or self._model, inp, out)

    def __del__(self) -> None:  # an answer nobody closed (a stream left half-read) still frees its slot
        if not getattr(self, "_done", True):
            self.finish()


def _usage(body: bytes, stream: bool) -> tuple[str | None, int, int] | None:
    """(model, input tokens, output tokens) from a chat completion or Responses answer, or its last stream event."""
    if stream:
        candidates = [line[5:].strip() for line in body.splitlines() if line.startswith(b"data:")]
        candidates.reverse()
    else:
        candidates = [body]
    for text in candidates:
        try:
            data = json.loads(text)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("response"), dict):  # a Responses API stream event
            data = data["response"]
        usage = data.get("usage")
        if isinstance(usage, dict):
            inp = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
            out = _int(usage.get("completion_tokens", usage.get("output_tokens")))
            if not inp and not out:
                inp = _int(usage.get("total_tokens"))
            model = data.get("model")
            return (model if isinstance(model, str) else None), inp, out
    return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _prefer_readable(request: Any) -> None:
    """Ask for answers the meter can read (gzip or deflate, not br or zstd)."""
    if any(e in request.headers.get("accept-encoding", "") for e in ("br", "zstd")):
        request.headers["accept-encoding"] = "gzip, deflate"


class _SyncBody:
    def __init__(self, inner: Any, meter: _Meter) -> None:
        self._inner, self._meter = inner, meter

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._meter.feed(chunk)
            yield chunk

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._meter.finish()


class _AsyncBody:
    def __init__(self, inner: Any, meter: _Meter) -> None:
        self._inner, self._meter = inner, meter

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._meter.feed(chunk)
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._meter.finish()


def _metered(response: Any, body: type[Any], ledger: _Ledger, model: str | None) -> Any:
    """The response, with its body watched by a meter that frees the slot when the body is closed."""
    meter = _Meter(ledger, model, response.headers)
    if response.is_closed:  # read already (an in-process transport such as httpx.MockTransport): count it now
        meter.feed(response.content, decoded=True)
        meter.finish()
        return response
    response.stream = body(response.stream, meter)
    return response


class _SyncGuarded:
    _body: type[Any]

    def __init__(self, inner: Any, ledger: _Ledger, model: str | None) -> None:
        self._inner, self._ledger, self._model = inner, ledger, model

    def handle_request(self, request: Any) -> Any:
        _prefer_readable(request)
        self._ledger.enter()  # waits for a slot; QuotaExceeded when the budget is spent
        try:
            response = self._inner.handle_request(request)
        except BaseException:
            self._ledger.leave(None, 0, 0)
            raise
        return _metered(response, self._body, self._ledger, self._model)

    def close(self) -> None:
        self._inner.close()


class _AsyncGuarded:
    _body: type[Any]

    def __init__(self, inner: Any, ledger: _Ledger, model: str | None) -> None:
        self._inner, self._ledger, self._model = inner, ledger, model

    async def handle_async_request(self, request: Any) -> Any:
        _prefer_readable(request)
        await self._ledger.enter_async()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._ledger.leave(None, 0, 0)
            raise
        return _metered(response, self._body, self._ledger, self._model)

    async def aclose(self) -> None:
        await self._inner.aclose()


# httpx (the lessons' raw calls) and httpx2 (under the openai SDK and pydantic-ai) each check that a response
# body is one of their own stream types, so each gets its own small classes.
class _HttpxSyncBody(_SyncBody, httpx.SyncByteStream):
    pass


class _HttpxAsyncBody(_AsyncBody, httpx.AsyncByteStream):
    pass


class _Httpx2SyncBody(_SyncBody, httpx2.SyncByteStream):
    pass


class _Httpx2AsyncBody(_AsyncBody, httpx2.AsyncByteStream):
    pass


class _HttpxGuarded(_SyncGuarded, httpx.BaseTransport):
    _body = _HttpxSyncBody


class _HttpxAsyncGuarded(_AsyncGuarded, httpx.AsyncBaseTransport):
    _body = _HttpxAsyncBody


class _Httpx2Guarded(_SyncGuarded, httpx2.BaseTransport):
    _body = _Httpx2SyncBody


class _Httpx2AsyncGuarded(_AsyncGuarded, httpx2.AsyncBaseTransport):
    _body = _Httpx2AsyncBody


_TRANSPORTS: list[tuple[type[Any], type[Any]]] = [
    (httpx.BaseTransport, _HttpxGuarded),
    (httpx.AsyncBaseTransport, _HttpxAsyncGuarded),
    (httpx2.BaseTransport, _Httpx2Guarded),
    (httpx2.AsyncBaseTransport, _Httpx2AsyncGuarded),
]
