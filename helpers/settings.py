"""Where the lessons' calls go: the built-in simulator, or a real provider named by the environment (lesson 00).

With no ``LLM_BASE_URL`` set, :func:`connect` starts the local simulator (once per Python process) and points
everything at it. With ``LLM_BASE_URL`` (and ``LLM_MODEL``, ``LLM_API_KEY``) set, the same lesson code talks to
OpenAI, Ollama or any OpenAI-compatible endpoint, and the quota guard (:attr:`Target.quota`, see
``helpers.quota``) keeps experiments at three calls in flight and within a budget of calls and tokens: every
client a real-provider Target builds sends its requests through it. The key is a :class:`Secret`: it is never
printed and never part of a repr.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from . import quota as _quota
from . import simulator as _simulator

if TYPE_CHECKING:
    import openai
    from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel

__all__ = ["REAL_PROVIDER_MAX_IN_FLIGHT", "Secret", "SetupError", "Target", "connect"]

REAL_PROVIDER_MAX_IN_FLIGHT = _quota.DEFAULT_MAX_IN_FLIGHT
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


class SetupError(RuntimeError):
    """Calls cannot go anywhere yet; the message says what to set or start."""


class Secret:
    """A value that must not leak: its repr and str are masked; ``reveal()`` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled or copied out of the process")


@dataclass(frozen=True)
class Target:
    """One place calls go: base URL (ending in ``/v1``), model name, key, and what kind of endpoint it is.

    ``quota`` is the quota guard every client of this target goes through. A real provider (no ``simulator``)
    always has one: the session's shared guard unless another is given. The simulator has none, unless one is
    given on purpose (to show the guard at work without a real provider).
    """

    base_url: str
    model: str
    api_key: Secret | None = field(default=None, repr=False)
    simulator: _simulator.Simulator | None = field(default=None, repr=False, compare=False)
    quota: _quota.QuotaGuard | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        guard = self.quota
        if guard is None and self.simulator is None:
            guard = _quota.session_guard()
        if guard is not None:  # the same budget, priced for this target's model
            object.__setattr__(self, "quota", guard.for_model(self.model))

    @property
    def is_simulator(self) -> bool:
        return self.simulator is not None

    @property
    def max_in_flight(self) -> int | None:
        """The quota guard's cap on calls in flight: 3 for a real provider, none for the simulator."""
        return None if self.quota is None else self.quota.max_in_flight

    def describe(self) -> str:
        """One line for the top of a lesson: where calls go and with which model (never the key)."""
        if self.simulator is not None:
            started = (
                "the built-in LLM simulator"
                if self.simulator.process is not None
                else "an LLM simulator started by hand"
            )
            return f"calls go to {started} at {self.base_url}, model {self.model} (no key needed)"
        key = "with the key from LLM_API_KEY" if self.api_key else "without a key"
        guard = ""
        if self.quota is not None:
            q = self.quota
            guard = (
                f"; at most {q.max_in_flight} calls in flight, budget {q.max_calls:,} calls / {q.max_tokens:,} tokens "
                f"this session ({q.calls:,} calls, {q.tokens:,} tokens used)"
            )
        return f"calls go to a real provider at {self.base_url}, model {self.model}, {key}{guard}"

    def __repr__(self) -> str:
        kind = "simulator" if self.is_simulator else "provider"
        key = ", key=<set>" if self.api_key else ""
        return f"Target({kind} {self.base_url}, model={self.model!r}{key})"

    # --- clients --------------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key.reveal()}"} if self.api_key else {}

    def _limits(self, connections: int) -> httpx.Limits:
        # Keep-alive slots at least as many as the callers sharing the client (see DESIGN pitfalls).
        return httpx.Limits(max_connections=connections, max_keepalive_connections=connections)

    def client(self, *, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT, connections: int = 100) -> httpx.Client:
        """A synchronous ``httpx.Client`` for this target: build it once, share it between threads."""
        _check_timeout(timeout)
        limits = self._limits(connections)
        if self.quota is None:
            return httpx.Client(base_url=self.base_url, headers=self._headers(), timeout=timeout, limits=limits)
        # With a transport of its own, a client takes its pool limits (and proxy) from that transport.
        transport = self.quota.wrap_transport(httpx.HTTPTransport(limits=limits, proxy=_env_proxy(self.base_url)))
        return httpx.Client(base_url=self.base_url, headers=self._headers(), timeout=timeout, transport=transport)

    def async_client(
        self, *, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT, connections: int = 100
    ) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` for this target: build it once per event loop and share it between tasks."""
        _check_timeout(timeout)
        limits = self._limits(connections)
        if self.quota is None:
            return httpx.AsyncClient(base_url=self.base_url, headers=self._headers(), timeout=timeout, limits=limits)
        inner = httpx.AsyncHTTPTransport(limits=limits, proxy=_env_proxy(self.base_url))
        transport = self.quota.wrap_transport(inner)
        return httpx.AsyncClient(base_url=self.base_url, headers=self._headers(), timeout=timeout, transport=transport)

    def _guarded_httpx2(self, *, sync: bool) -> Any:
        """An httpx2 client (what the openai SDK and pydantic-ai use) whose requests go through the quota guard,
        with the SDKs' own defaults: 600 s timeout (5 s to connect), a pool of 1000 connections."""
        import httpx2

        assert self.quota is not None
        limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)
        timeout = httpx2.Timeout(600.0, connect=5.0)
        proxy = _env_proxy(self.base_url)
        if sync:
            transport = self.quota.wrap_transport(httpx2.HTTPTransport(limits=limits, proxy=proxy))
            return httpx2.Client(timeout=timeout, transport=transport, follow_redirects=True)
        transport = self.quota.wrap_transport(httpx2.AsyncHTTPTransport(limits=limits, proxy=proxy))
        return httpx2.AsyncClient(timeout=timeout, transport=transport, follow_redirects=True)

    def _provider(self) -> Any:
        key = self.api_key.reveal() if self.api_key else "no-key-needed"
        host = urlsplit(self.base_url).hostname or ""
        http_client = self._guarded_httpx2(sync=False) if self.quota is not None else None
        provider: Any
        if host == "api.openai.com":
            from pydantic_ai.providers.openai import OpenAIProvider

            provider = OpenAIProvider(base_url=self.base_url, api_key=key, http_client=http_client)
        else:
            from pydantic_ai.providers.openai_compatible import OpenAICompatibleProvider

            name = "llm-simulator" if self.is_simulator else "openai-compatible"
            provider = OpenAICompatibleProvider(name, base_url=self.base_url, api_key=key, http_client=http_client)
        if http_client is not None:
            # The provider owns the guarded client as it owns the one it makes by default: leaving the agent
            # (``async with``) closes it, and a run on another event loop gets a fresh one, through the guard too.
            provider._own_http_client = http_client
            provider._http_client_factory = lambda: self._guarded_httpx2(sync=False)
        return provider

    def chat_model(self) -> OpenAIChatModel:
        """A pydantic-ai model on Chat Completions at this target (building one costs ~50 ms: reuse it)."""
        from pydantic_ai.models.openai import OpenAIChatModel

        return OpenAIChatModel(self.model, provider=self._provider())

    def responses_model(self) -> OpenAIResponsesModel:
        """A pydantic-ai model on the Responses API at this target."""
        from pydantic_ai.models.openai import OpenAIResponsesModel

        return OpenAIResponsesModel(self.model, provider=self._provider())

    def openai_client(self, **options: Any) -> openai.OpenAI:
        """The official OpenAI SDK client (sync) pointed at this target; ``options`` go to ``openai.OpenAI``."""
        import openai

        key = self.api_key.reveal() if self.api_key else "no-key-needed"
        if self.quota is not None:
            options["http_client"] = self._sdk_http_client(options, sync=True)
        return openai.OpenAI(base_url=self.base_url, api_key=key, **options)

    def async_openai_client(self, **options: Any) -> openai.AsyncOpenAI:
        """The official OpenAI SDK client (async) pointed at this target."""
        import openai

        key = self.api_key.reveal() if self.api_key else "no-key-needed"
        if self.quota is not None:
            options["http_client"] = self._sdk_http_client(options, sync=False)
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key, **options)

    def _sdk_http_client(self, options: dict[str, Any], *, sync: bool) -> Any:
        if options.get("http_client") is not None:
            raise ValueError(
                "http_client cannot be given for a real provider: the quota guard supplies the HTTP client, so that "
                "every request goes through it. Pass timeout=... or max_retries=... instead."
            )
        return self._guarded_httpx2(sync=sync)


def _check_timeout(timeout: Any) -> None:
    """Seconds a call may take (a number > 0, or None for no limit), or an ``httpx.Timeout``."""
    if timeout is None or isinstance(timeout, httpx.Timeout):
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0 or timeout == math.inf:
        raise ValueError(
            f"timeout must be a number of seconds greater than 0, e.g. timeout=30.0, or None for no limit "
            f"(got {timeout!r})"
        )


_lock = threading.Lock()
_default_simulator: _simulator.Simulator | None = None


def _shared_simulator(settings: dict[str, Any]) -> _simulator.Simulator:
    global _default_simulator
    with _lock:
        sim = _default_simulator
        if sim is None or not sim.running:
            sim = _default_simulator = _simulator.start(**settings)
            return sim
    sim.reset()
    defaults = _simulator.SimulatorConfig().updated(settings).public()
    defaults.pop("api_key")
    sim.configure(**defaults)
    return sim


def connect(*, check: bool = True, env: dict[str, str] | None = None, **simulator_settings: Any) -> Target:
    """Where calls go: the built-in simulator, unless ``LLM_BASE_URL`` names another endpoint.

    ``simulator_settings`` (``seed=1, latency=0.5, ...``) configure the simulator; calling ``connect`` again
    resets it to these settings. Against a real provider they are ignored. ``check`` makes one small request
    (``GET /models``) so that a wrong URL or key fails here with a sentence saying what to fix.
    """
    env = dict(os.environ if env is None else env)
    base_url = env.get("LLM_BASE_URL", "").strip()
    if not base_url:
        sim = _shared_simulator(simulator_settings)
        model = env.get("LLM_MODEL", "").strip() or sim._config.models[0]
        if model not in sim._config.models:
            model = sim._config.models[0]
        return Target(base_url=sim.api_url, model=model, simulator=sim)

    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SetupError(
            f"LLM_BASE_URL must be a URL such as https://api.openai.com/v1 or "
            f"http://localhost:11434/v1 (got {base_url!r}); unset it to use the built-in simulator."
        )
    model = env.get("LLM_MODEL", "").strip()
    if not model:
        raise SetupError(
            "Set LLM_MODEL to a model your endpoint serves, e.g. gpt-4o-mini (OpenAI) or llama3.2 (Ollama)."
        )
    key_text = env.get("LLM_API_KEY", "").strip()
    local = parts.hostname in _LOCAL_HOSTS
    if not key_text and not local:
        raise SetupError(
            f"Set LLM_API_KEY to your API key for {parts.hostname} (it is read from the environment and never printed)."
        )
    try:
        guard = _quota.session_guard(env)  # LLM_MAX_CALLS / LLM_MAX_TOKENS, when set, become the budget
    except ValueError as exc:
        raise SetupError(str(exc)) from None
    target = Target(
        base_url=base_url.rstrip("/"), model=model, api_key=Secret(key_text) if key_text else None, quota=guard
    )
    if check:
        target = _check(target)
    return target


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``), if any: a
    client built on a transport of its own does not read these itself."""
    import urllib.request

    parts = urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


def _check(target: Target) -> Target:
    """One ``GET /models``: reachable? key accepted? a simulator started by hand?"""
    url = target.base_url + "/models"
    try:
        with httpx.Client(timeout=httpx.Timeout(5.0), headers=target._headers()) as client:
            response = client.get(url)
    except httpx.TimeoutException:
        raise SetupError(
            f"The LLM endpoint at {target.base_url} did not answer within 5 s; check LLM_BASE_URL "
            "and that the server is running, or unset LLM_BASE_URL to use the simulator."
        ) from None
    except httpx.HTTPError as exc:
        reason = type(exc).__name__ if not str(exc) else str(exc)
        raise SetupError(
            f"Cannot reach the LLM endpoint at {target.base_url} ({reason}); start it or fix "
            "LLM_BASE_URL, or unset LLM_BASE_URL to use the built-in simulator."
        ) from None
    if response.status_code in (401, 403):
        what = "rejected LLM_API_KEY" if target.api_key else "needs a key: set LLM_API_KEY"
        raise SetupError(f"The LLM endpoint at {target.base_url} {what} (HTTP {response.status_code}).")
    if response.status_code == 404 and not target.base_url.endswith("/v1"):
        raise SetupError(
            f"The server at {target.base_url} has no /models (HTTP 404): an OpenAI-compatible LLM_BASE_URL "
            f"usually ends in /v1; try LLM_BASE_URL={target.base_url}/v1"
        )
    if response.headers.get(_simulator.SIMULATOR_HEADER):
        sim = _simulator.Simulator.attach(target.base_url)
        served = sim._config.models
        if target.model not in served:
            raise SetupError(
                f"LLM_MODEL={target.model!r} is not served by the simulator at {target.base_url}; set LLM_MODEL "
                f"to one of: {', '.join(served)}"
            )
        return Target(base_url=target.base_url, model=target.model, api_key=target.api_key, simulator=sim)
    return target
