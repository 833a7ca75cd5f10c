"""Where the lessons' calls go: the built-in simulator, or a real provider named by the environment (lesson 00).

With no ``LLM_BASE_URL`` set, :func:`connect` starts the local simulator (once per Python process) and points
everything at it. With ``LLM_BASE_URL`` (and ``LLM_MODEL``, ``LLM_API_KEY``) set, the same lesson code talks to
OpenAI, Ollama or any OpenAI-compatible endpoint, and :attr:`Target.max_in_flight` keeps experiments at
three calls in flight. The key is a :class:`Secret`: it is never printed and never part of a repr.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from . import simulator as _simulator

if TYPE_CHECKING:
    import openai
    from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel

__all__ = ["REAL_PROVIDER_MAX_IN_FLIGHT", "Secret", "SetupError", "Target", "connect"]

REAL_PROVIDER_MAX_IN_FLIGHT = 3
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
    """One place calls go: base URL (ending in ``/v1``), model name, key, and what kind of endpoint it is."""

    base_url: str
    model: str
    api_key: Secret | None = field(default=None, repr=False)
    simulator: _simulator.Simulator | None = field(default=None, repr=False, compare=False)

    @property
    def is_simulator(self) -> bool:
        return self.simulator is not None

    @property
    def max_in_flight(self) -> int | None:
        """The quota guard's cap on calls in flight: 3 for a real provider, none for the simulator."""
        return None if self.is_simulator else REAL_PROVIDER_MAX_IN_FLIGHT

    def describe(self) -> str:
        """One line for the top of a lesson: where calls go and with which model (never the key)."""
        if self.is_simulator:
            return f"calls go to the built-in LLM simulator at {self.base_url}, model {self.model} (no key needed)"
        key = "with the key from LLM_API_KEY" if self.api_key else "without a key"
        return (
            f"calls go to a real provider at {self.base_url}, model {self.model}, {key}; "
            f"at most {self.max_in_flight} calls in flight"
        )

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
        return httpx.Client(
            base_url=self.base_url, headers=self._headers(), timeout=timeout, limits=self._limits(connections)
        )

    def async_client(
        self, *, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT, connections: int = 100
    ) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` for this target: build it once per event loop and share it between tasks."""
        return httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers(), timeout=timeout, limits=self._limits(connections)
        )

    def _provider(self) -> Any:
        key = self.api_key.reveal() if self.api_key else "no-key-needed"
        host = urlsplit(self.base_url).hostname or ""
        if host == "api.openai.com":
            from pydantic_ai.providers.openai import OpenAIProvider

            return OpenAIProvider(base_url=self.base_url, api_key=key)
        from pydantic_ai.providers.openai_compatible import OpenAICompatibleProvider

        name = "llm-simulator" if self.is_simulator else "openai-compatible"
        return OpenAICompatibleProvider(name, base_url=self.base_url, api_key=key)

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
        return openai.OpenAI(base_url=self.base_url, api_key=key, **options)

    def async_openai_client(self, **options: Any) -> openai.AsyncOpenAI:
        """The official OpenAI SDK client (async) pointed at this target."""
        import openai

        key = self.api_key.reveal() if self.api_key else "no-key-needed"
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key, **options)


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
    target = Target(base_url=base_url.rstrip("/"), model=model, api_key=Secret(key_text) if key_text else None)
    if check:
        target = _check(target)
    return target


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
    if response.headers.get(_simulator.SIMULATOR_HEADER):
        sim = _simulator.Simulator.attach(target.base_url)
        return Target(base_url=target.base_url, model=target.model, api_key=target.api_key, simulator=sim)
    return target
