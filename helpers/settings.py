"""Where the lessons' calls go: the built-in simulator, or a real provider named by the environment (lesson 00).

With no ``LLM_BASE_URL`` set, :func:`connect` starts the local simulator (once per Python process) and points
everything at it. With ``LLM_BASE_URL`` (and ``LLM_MODEL``, ``LLM_API_KEY``) set, the same lesson code talks to
OpenAI, Ollama or any OpenAI-compatible endpoint, and the quota guard (:attr:`Target.quota`, see
``helpers.quota``) keeps experiments at three calls in flight and within a budget of calls and tokens: every
client a real-provider Target builds sends its requests through it. The key is a :class:`Secret`: it is never
printed and never part of a repr, and a key that could not be sent in a header (a newline, a NUL, a non-ASCII
letter) is refused before any request by a message that says what is wrong and where, never what the key is.
No frame of a traceback from :func:`connect` holds the key in a plain local: a verbose traceback (IPython's, or
``capture_locals``) prints locals, and the only one that holds the key is a :class:`Secret`.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import threading
from collections.abc import Mapping
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
MAX_KEY_LENGTH = 1000  # a longer LLM_API_KEY is refused before any request (no provider's key is that long)


class SetupError(RuntimeError):
    """Calls cannot go anywhere yet; the message says what to set or start."""


_CONTROL_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\x00": "a NUL"}


def _character_kind(char: str) -> str:
    """What kind of character this is, in words that do not give the character away (unless it is a control)."""
    if char == " ":
        return "a space"
    if not char.isascii():
        return "a non-ASCII character"
    return f"a control character ({_CONTROL_NAMES[char]})" if char in _CONTROL_NAMES else "a control character"


def _key_problem(value: str, what: str) -> str | None:
    """Why ``value`` cannot be sent as a key (in an ``Authorization`` header), or None if it can.

    The answer names the kind of the first wrong character and its position (counted from 1), never a character
    of the key: a key is letters, digits and ASCII punctuation, nothing else.
    """
    if not value:
        return f"{what} is empty: set it to your API key, or leave it out for an endpoint that needs none."
    if len(value) > MAX_KEY_LENGTH:
        return (
            f"{what} is {len(value):,} characters long, longer than any API key (at most {MAX_KEY_LENGTH:,}): "
            "copy the key again, and only the key."
        )
    if "://" in value:
        return f"{what} looks like a URL (it contains ://): LLM_BASE_URL and LLM_API_KEY may be swapped."
    wrong = [i for i, char in enumerate(value) if not "!" <= char <= "~"]
    if not wrong:
        return None
    first = wrong[0]
    more = f" (and {len(wrong) - 1} more character{'s' if len(wrong) > 2 else ''} that cannot be in a key)"
    return (
        f"{what} contains {_character_kind(value[first])} at position {first + 1}{more if len(wrong) > 1 else ''}: "
        "copy the key again without it (a key is letters, digits and ASCII punctuation only)."
    )


class Secret:
    """A value that must not leak: its repr and str are masked; ``reveal()`` returns it.

    It holds a key as it is sent in a header, so a key with a control character, a space or a non-ASCII
    character in it is refused (:class:`SetupError`) with a message that says which kind and where, never what.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str, *, what: str = "The key") -> None:
        if not isinstance(value, str):
            kind = type(value).__name__
            del value  # a traceback prints the locals of this frame
            raise TypeError(f"a Secret holds a key as a string (got {kind})")
        problem = _key_problem(value, what)
        if problem is not None:
            del value  # a traceback prints the locals of this frame
            raise SetupError(problem)
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled or copied out of the process")


@dataclass(frozen=True, init=False)
class Target:
    """One place calls go: base URL (ending in ``/v1``), model name, key, and what kind of endpoint it is.

    ``quota`` is the quota guard every client of this target goes through. A real provider (no ``simulator``)
    always has one: the session's shared guard unless another is given. The simulator has none, unless one is
    given on purpose (to show the guard at work without a real provider). ``api_key`` is a :class:`Secret`; given
    as a string it is checked as :func:`connect` checks ``LLM_API_KEY`` (surrounding whitespace is dropped) and
    kept as a Secret.
    """

    base_url: str
    model: str
    api_key: Secret | None = field(default=None, repr=False)
    simulator: _simulator.Simulator | None = field(default=None, repr=False, compare=False)
    quota: _quota.QuotaGuard | None = field(default=None, repr=False, compare=False)

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: Secret | str | None = None,
        simulator: _simulator.Simulator | None = None,
        quota: _quota.QuotaGuard | None = None,
    ) -> None:
        # Every field is set before the key is checked, so that the repr works in a traceback from here.
        object.__setattr__(self, "base_url", base_url)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "api_key", None)
        object.__setattr__(self, "simulator", simulator)
        object.__setattr__(self, "quota", quota)
        if isinstance(api_key, str):
            problem = _key_problem(api_key.strip(), "api_key") if api_key.strip() else None
            if problem is not None:
                del api_key  # a traceback prints the locals of this frame
                raise SetupError(problem)
            api_key = Secret(api_key.strip()) if api_key.strip() else None
        elif api_key is not None and not isinstance(api_key, Secret):
            kind = type(api_key).__name__
            del api_key
            raise TypeError(f"api_key must be a Secret or a string (got {kind})")
        object.__setattr__(self, "api_key", api_key)
        guard = quota
        if guard is None and simulator is None:
            guard = _quota.session_guard()
        if guard is not None:  # the same budget, priced for this target's model
            object.__setattr__(self, "quota", guard.for_model(model))

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
        return f"Target({kind} {_shown_url(self.base_url)}, model={self.model!r}{key})"

    # --- clients --------------------------------------------------------------------------------------

    def _headers(self) -> httpx.Headers:
        # httpx.Headers, whose repr masks the key: a frame that holds these headers prints "[secure]".
        return httpx.Headers({"Authorization": f"Bearer {self.api_key.reveal()}"} if self.api_key else {})

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
        # The key goes straight into the library call, never into a local of this frame (a traceback prints those).
        host = urlsplit(self.base_url).hostname or ""
        http_client = self._guarded_httpx2(sync=False) if self.quota is not None else None
        provider: Any
        if host == "api.openai.com":
            from pydantic_ai.providers.openai import OpenAIProvider

            provider = OpenAIProvider(base_url=self.base_url, api_key=self._key_text(), http_client=http_client)
        else:
            from pydantic_ai.providers.openai_compatible import OpenAICompatibleProvider

            name = "llm-simulator" if self.is_simulator else "openai-compatible"
            provider = OpenAICompatibleProvider(
                name, base_url=self.base_url, api_key=self._key_text(), http_client=http_client
            )
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

        if self.quota is not None:
            options["http_client"] = self._sdk_http_client(options, sync=True)
        return openai.OpenAI(base_url=self.base_url, api_key=self._key_text(), **options)

    def async_openai_client(self, **options: Any) -> openai.AsyncOpenAI:
        """The official OpenAI SDK client (async) pointed at this target."""
        import openai

        if self.quota is not None:
            options["http_client"] = self._sdk_http_client(options, sync=False)
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self._key_text(), **options)

    def _key_text(self) -> str:
        """The key for an SDK's ``api_key=``: pass it inline, never bind it to a local (a traceback prints those)."""
        return self.api_key.reveal() if self.api_key else "no-key-needed"

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


@dataclass(frozen=True)
class _Environment:
    """What :func:`connect` reads from the environment: the key only as a Secret (this repr is safe to print)."""

    base_url: str = ""
    model: str = ""
    api_key: Secret | None = None
    key_problem: str | None = None  # why LLM_API_KEY cannot be sent, never quoting it
    limits: dict[str, str] = field(default_factory=dict)  # LLM_MAX_CALLS / LLM_MAX_TOKENS, those that are set
    not_text: str | None = None  # a setting that is not a string (an ``env`` given by hand)
    swapped: str | None = None  # LLM_BASE_URL or LLM_MODEL, if it contains the value of LLM_API_KEY

    def __repr__(self) -> str:  # connect() holds one in a local: show the URL only as a message would
        url, model = (_shown_url(self.base_url), _shown(self.model)) if self.swapped is None else ("(not shown)",) * 2
        return f"_Environment(base_url={url!r}, model={model!r}, key_problem={self.key_problem!r}, ...)"


_NAMES = ("LLM_BASE_URL", "LLM_MODEL", "LLM_API_KEY", "LLM_MAX_CALLS", "LLM_MAX_TOKENS")


def _read_environment(env: Mapping[str, str] | None) -> _Environment:
    """The few settings connect() uses, surrounding whitespace dropped.

    It returns and never raises, so that this frame, which holds the environment (and so the key), is in no
    traceback: the key leaves it only inside a Secret, or as a sentence saying what is wrong with it.
    """
    source = os.environ if env is None else env
    odd = [name for name in _NAMES if not isinstance(source.get(name, ""), str)]
    if odd:
        return _Environment(not_text=f"{odd[0]} must be a string (got {type(source[odd[0]]).__name__})")
    text = source.get("LLM_API_KEY", "").strip()
    problem = _key_problem(text, "LLM_API_KEY") if text else None
    # A key pasted into the wrong setting would be echoed by the message about that setting: refuse it first.
    swapped = [name for name in _NAMES[:2] if len(text) >= 8 and text in source.get(name, "")]
    return _Environment(
        base_url=source.get("LLM_BASE_URL", "").strip(),
        model=source.get("LLM_MODEL", "").strip(),
        api_key=Secret(text) if text and problem is None else None,
        key_problem=problem,
        limits={name: source[name] for name in _NAMES[3:] if name in source},
        swapped=swapped[0] if swapped else None,
    )


def _url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as LLM_BASE_URL, or None: a sentence fragment for the message."""
    for i, char in enumerate(url):
        if char == " " or not char.isprintable():
            kind = _character_kind(char) if char.isascii() else "an invisible or space-like character"
            return f"it contains {kind} at position {i + 1}"
    if "://" not in url:
        return "it has no http:// or https:// in front"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed [ or an IPv6 address that is not one
        return f"its host is not a valid address ({exc}; an IPv6 address goes in [ ], e.g. http://[::1]:8000/v1)"
    if parts.scheme not in ("http", "https"):
        return f"it must start with http:// or https://, not {_shown(parts.scheme)}://"
    if "@" in parts.netloc:
        return "it has a user name or password in it (before @): give the key in LLM_API_KEY instead"
    host = parts.hostname
    if not host:
        return "it has no host name after the http:// or https://"
    _, colon, port_text = parts.netloc.rsplit("]", 1)[-1].rpartition(":")  # after an IPv6 address's ]
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and colon and port_text):
        return f"its port must be a number from 1 to 65535 (got {_shown(port_text)!r})"
    if parts.netloc.startswith("["):
        try:
            ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return f"its host [{_shown(host)}] is not an IPv6 address"
    else:
        labels = host.removesuffix(".").split(".")
        if not all(
            label and label.strip("-") == label and all(c.isalnum() or c in "-_" for c in label) for label in labels
        ):
            return (
                f"its host {_shown(host)!r} is not a host name (names of letters, digits and '-' joined by dots, "
                "e.g. api.openai.com) or an IP address"
            )
        if len(host) > 253 or any(len(label) > 63 for label in labels):
            return f"its host {_shown(host)!r} is too long (a host name is at most 253 characters, 63 between dots)"
        if not _encodes(host):
            return f"its host {_shown(host)!r} is not a host name that can be looked up (IDNA)"
    if parts.query or "?" in url:
        return "it has a query (?...) in it: the base URL ends at the path, e.g. .../v1"
    if parts.fragment or "#" in url:
        return "it has a fragment (#...) in it: the base URL ends at the path, e.g. .../v1"
    return None


def _encodes(host: str) -> bool:
    """Whether ``host`` can be encoded for a DNS lookup, as the socket library and httpx (``idna``) do it."""
    import idna

    try:
        host.encode("idna")
        if not host.isascii() or "xn--" in host.lower():
            idna.encode(host.lower())
    except (UnicodeError, ValueError):  # idna.IDNAError is a UnicodeError
        return False
    return True


_NOT_SHOWN = "(not shown: it looks like a key)"
# A part of a URL that looks like a key is never echoed. The rule, kept simple on purpose: it starts with "sk-",
# or it is 20 or more characters of letters, digits, "-" and "_" with at least one letter and one digit in it.
_KEY_LIKE = re.compile(r"(?<![\w-])(?:sk-[^/:@?#.]*|(?=[\w-]*[A-Za-z])(?=[\w-]*\d)[\w-]{20,})", re.ASCII)


def _shown(part: str) -> str:
    """A piece of a setting (a host, a port, a model name) as a message may show it: no key, not too long."""
    part = _KEY_LIKE.sub(_NOT_SHOWN, part)
    return part if len(part) <= 200 else part[:200] + "..."


def _shown_url(url: str) -> str:
    """``url`` as a message may show it: no user name or password, no query, no part that looks like a key (see
    ``_KEY_LIKE``), and not too long."""
    scheme, sep, rest = url.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            authority = "***@" + authority.rpartition("@")[2]
        url = scheme + sep + authority + slash + path
    url = url.split("?", 1)[0] + ("?..." if "?" in url else "")
    return _shown(url)


def connect(*, check: bool = True, env: dict[str, str] | None = None, **simulator_settings: Any) -> Target:
    """Where calls go: the built-in simulator, unless ``LLM_BASE_URL`` names another endpoint.

    ``simulator_settings`` (``seed=1, latency=0.5, ...``) configure the simulator; calling ``connect`` again
    resets it to these settings. Against a real provider they are ignored. ``check`` makes one small request
    (``GET /models``) so that a wrong URL or key fails here with a sentence saying what to fix; a key that could
    not be sent in a header is refused before any request, with or without ``check``.
    """
    found = _read_environment(env)
    del env  # it holds the key: keep it out of this frame, whose locals a verbose traceback prints
    if found.not_text is not None:
        raise SetupError(found.not_text)
    if found.swapped is not None:  # said without echoing either setting
        raise SetupError(f"{found.swapped} contains the value of LLM_API_KEY: the two may be swapped; set each alone.")
    if not found.base_url:  # the key, if any, is not used (nor sent) by the built-in simulator
        sim = _shared_simulator(simulator_settings)
        model = found.model or sim._config.models[0]
        if model not in sim._config.models:
            model = sim._config.models[0]
        return Target(base_url=sim.api_url, model=model, simulator=sim)

    problem = _url_problem(found.base_url)
    if problem is not None:
        shown = _shown_url(found.base_url)  # not on the raise line: IPython's verbose mode prints found.base_url
        raise SetupError(
            f"LLM_BASE_URL must be a URL such as https://api.openai.com/v1 or http://localhost:11434/v1 "
            f"(got {shown!r}): {problem}; unset it to use the built-in simulator."
        )
    if not found.model:
        raise SetupError(
            "Set LLM_MODEL to a model your endpoint serves, e.g. gpt-4o-mini (OpenAI) or llama3.2 (Ollama)."
        )
    if found.key_problem is not None:  # refused before any request: a header cannot carry it
        raise SetupError(found.key_problem)
    host = urlsplit(found.base_url).hostname or ""
    if found.api_key is None and host not in _LOCAL_HOSTS:
        raise SetupError(
            f"Set LLM_API_KEY to your API key for {_shown(host)} (it is read from the environment and never printed)."
        )
    try:
        guard = _quota.session_guard(found.limits)  # LLM_MAX_CALLS / LLM_MAX_TOKENS, when set, become the budget
        problem = None
    except ValueError as exc:
        problem = str(exc)
    if problem is not None:
        raise SetupError(problem)
    target = Target(base_url=found.base_url.rstrip("/"), model=found.model, api_key=found.api_key, quota=guard)
    if check:
        target = _check(target)
    if target.simulator is not None and target.simulator.student is not None:
        _lesson_settings(target.simulator, simulator_settings)
    return target


def _lesson_settings(sim: _simulator.Simulator, settings: dict[str, Any]) -> None:
    """A student's sandbox on a class server starts each lesson as the built-in simulator would: reset, with the
    settings the lesson asked for (the models stay the ones the class server serves)."""
    defaults = _simulator.SimulatorConfig().updated(settings).public()
    for name in ("api_key", "models"):
        defaults.pop(name)
    sim.reset()
    sim.configure(**defaults)


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
    """One ``GET /models``: reachable? key accepted? an OpenAI-compatible API? a simulator started by hand?

    Any exception from building or sending the request becomes a :class:`SetupError`, raised outside the
    ``except``: the library's error, whose frames hold the request, is not carried along as its ``__context__``.
    """
    url = target.base_url + "/models"
    shown = _shown_url(target.base_url)  # every message shows the URL only like this
    response: httpx.Response | None = None
    problem = ""
    try:
        with httpx.Client(timeout=httpx.Timeout(5.0), headers=target._headers()) as client:
            response = client.get(url)
    except httpx.TimeoutException:
        problem = (
            f"The LLM endpoint at {shown} did not answer within 5 s; check LLM_BASE_URL "
            "and that the server is running, or unset LLM_BASE_URL to use the simulator."
        )
    except Exception as exc:  # any failure to build or send the request (an HTTP status is not one of them)
        reason = str(exc) or type(exc).__name__
        if target.api_key is not None and target.api_key.reveal() in reason:
            reason = type(exc).__name__
        problem = (
            f"Cannot reach the LLM endpoint at {shown} ({_shown(reason)}); start it or fix "
            "LLM_BASE_URL, or unset LLM_BASE_URL to use the built-in simulator."
        )
    if response is None:
        raise SetupError(problem) from None
    if response.status_code in (401, 403):
        what = "rejected LLM_API_KEY" if target.api_key else "needs a key: set LLM_API_KEY"
        raise SetupError(f"The LLM endpoint at {shown} {what} (HTTP {response.status_code}).")
    if response.status_code == 404 and not target.base_url.endswith("/v1"):
        raise SetupError(
            f"The server at {shown} has no /models (HTTP 404): an OpenAI-compatible LLM_BASE_URL "
            f"usually ends in /v1; try LLM_BASE_URL={shown}/v1"
        )
    if response.headers.get(_simulator.SIMULATOR_HEADER):
        # On a class server the key is the student's: this handle reaches their own sandbox only.
        sim = _simulator.Simulator.attach(target.base_url, target.api_key.reveal() if target.api_key else None)
        served = sim._config.models
        if target.model not in served:
            raise SetupError(
                f"LLM_MODEL={target.model!r} is not served by the simulator at {shown}; set LLM_MODEL "
                f"to one of: {', '.join(served)}"
            )
        return Target(base_url=target.base_url, model=target.model, api_key=target.api_key, simulator=sim)
    if response.is_success:
        problem = _not_a_model_list(response)
        if problem:
            raise SetupError(
                f"The server at {shown} answered GET /models with {problem}, not an OpenAI-compatible "
                "API: check LLM_BASE_URL (it usually ends in /v1, e.g. https://api.openai.com/v1 or "
                "http://localhost:11434/v1), or unset it to use the built-in simulator."
            )
    return target


def _not_a_model_list(response: httpx.Response) -> str:
    """What a successful answer to ``GET /models`` is, if it is not a model list (``{"data": [...]}``), else ""."""
    kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind in ("text/html", "application/xhtml+xml") or response.text.lstrip().startswith("<"):
        return f"a web page ({kind or 'no content type'})"
    try:
        body = response.json()
    except ValueError:
        return f"something that is not JSON ({kind or 'no content type'}) where a model list belongs"
    if not isinstance(body, dict) or not isinstance(body.get("data"), list) or body.get("object", "list") != "list":
        return 'JSON that is not a model list (an OpenAI-compatible one is {"object": "list", "data": [...]})'
    return ""
