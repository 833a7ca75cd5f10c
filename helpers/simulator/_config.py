"""Configuration of the local LLM simulator, with validation that names what to change."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

PROFILES = ("fixed", "uniform", "longtail")
FAULT_KINDS = ("429", "quota", "500", "503", "hang", "drop", "malformed")
FAULT_HELP = {
    "429": "rate-limit error (HTTP 429, code rate_limit_exceeded), retryable",
    "quota": "quota exhausted (HTTP 429, code insufficient_quota), not retryable",
    "500": "server error (HTTP 500)",
    "503": "server overloaded (HTTP 503)",
    "hang": "no answer until the client gives up (or hang_seconds pass)",
    "drop": "the connection closes half-way through the answer",
    "malformed": "HTTP 200 whose body is not valid JSON",
}


class ConfigError(ValueError):
    """A simulator setting is out of range; the message says which and what is allowed."""


def _number(name: str, value: Any, *, minimum: float, maximum: float = math.inf, integer: bool = False) -> Any:
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be {kind} (got {_shown(value)})")
    if isinstance(value, int) and abs(value) > 2**63:  # also what float() could not take
        raise ConfigError(f"{name} must be {kind} of at most 19 digits (got one of {len(str(abs(value)))} digits)")
    if integer and (isinstance(value, float) and (not value.is_integer() or abs(value) > 2**53)):
        raise ConfigError(f"{name} must be {kind} (got {value!r})")
    if math.isnan(value) or value < minimum or value > maximum:
        upper = "" if maximum == math.inf else f" and at most {maximum:g}"
        raise ConfigError(f"{name} must be at least {minimum:g}{upper} (got {value!r})")
    return int(value) if integer else float(value)


@dataclass
class SimulatorConfig:
    """Everything the simulator can be told; all of it can also be changed while it runs (admin endpoint).

    Latency of one call = (``ttft`` + output tokens / ``tokens_per_second``), or ``latency`` when set,
    multiplied by a factor from ``profile``: ``fixed`` (1), ``uniform`` (1 ± ``spread``) or ``longtail``
    (most calls near 1, about one in seven 2-5 times slower). The factor is drawn from the seed and the
    request body, so the same seed and prompt give the same latency whatever else is running.

    Faults: ``script`` fails given request numbers (counted from start or the last reset); ``fault_on`` fails
    every request whose prompt contains a given text (``{"beta": "500"}``), which stays deterministic however
    the calls interleave; ``fail_rate`` fails a seeded share of requests with one of ``fail_kinds``.
    """

    seed: int = 0
    profile: str = "uniform"
    latency: float | None = None
    ttft: float = 0.25
    tokens_per_second: float = 50.0
    spread: float = 0.5
    capacity: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    burst: float = 60.0  # seconds' worth of rpm/tpm a full bucket holds; OpenAI's buckets hold a minute
    fail_rate: float = 0.0
    fail_kinds: tuple[str, ...] = ("500",)
    script: dict[int, str] = field(default_factory=dict)
    fault_on: dict[str, str] = field(default_factory=dict)
    hang_seconds: float = 600.0
    quota_requests: int | None = None
    models: tuple[str, ...] = ("sim-1",)
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        self.seed = _number("seed", self.seed, minimum=-(2**63), maximum=2**63 - 1, integer=True)
        if self.profile not in PROFILES:
            raise ConfigError(f"profile must be one of {', '.join(PROFILES)} (got {self.profile!r})")
        if self.latency is not None:
            self.latency = _number("latency", self.latency, minimum=0, maximum=3600)
        self.ttft = _number("ttft", self.ttft, minimum=0, maximum=3600)
        self.tokens_per_second = _number("tokens_per_second", self.tokens_per_second, minimum=1e-3)
        self.spread = _number("spread", self.spread, minimum=0, maximum=0.95)
        if self.capacity is not None:
            self.capacity = _number("capacity", self.capacity, minimum=1, maximum=10**9, integer=True)
        if self.rpm is not None:
            self.rpm = _number("rpm (requests per minute)", self.rpm, minimum=1, maximum=10**9, integer=True)
        if self.tpm is not None:
            self.tpm = _number("tpm (tokens per minute)", self.tpm, minimum=1, maximum=10**9, integer=True)
        self.burst = _number(
            "burst (seconds' worth of rpm/tpm a full bucket holds)", self.burst, minimum=0.01, maximum=60
        )
        self.fail_rate = _number("fail_rate", self.fail_rate, minimum=0, maximum=1)
        self.fail_kinds = _names("fail_kinds", self.fail_kinds, '["500", "429"]') if self.fail_kinds else ()
        if not self.fail_kinds:
            raise ConfigError(f"fail_kinds needs at least one of {', '.join(FAULT_KINDS)}")
        for kind in self.fail_kinds:
            _check_kind("fail_kinds", kind)
        if not isinstance(self.script, dict):
            raise ConfigError(
                f'script must map request numbers to faults, e.g. {{"3": "429"}} (got {_shown(self.script)})'
            )
        script: dict[int, str] = {}
        for key, kind in self.script.items():
            if isinstance(key, bool) or not (isinstance(key, int) or (isinstance(key, str) and key.isdigit())):
                raise ConfigError(f"script keys are request numbers 1, 2, 3, ... (got {_shown(key)})")
            number = int(key)
            if not isinstance(kind, str):
                raise ConfigError(f"script[{number}] must be a fault name such as '500' (got {_shown(kind)})")
            if number < 1:
                raise ConfigError(f"script keys are request numbers starting at 1 (got {key!r})")
            script[number] = _check_kind(f"script[{number}]", str(kind))
        self.script = script
        if not isinstance(self.fault_on, dict):
            raise ConfigError(
                f'fault_on must map prompt text to faults, e.g. {{"beta": "500"}} (got {_shown(self.fault_on)})'
            )
        fault_on: dict[str, str] = {}
        for text, kind in self.fault_on.items():
            if not isinstance(text, str) or not text:
                raise ConfigError(f"fault_on keys are pieces of prompt text, e.g. {{'beta': '500'}} (got {text!r})")
            fault_on[text] = _check_kind(f"fault_on[{text!r}]", str(kind))
        self.fault_on = fault_on
        self.hang_seconds = _number("hang_seconds", self.hang_seconds, minimum=0, maximum=86400)
        if self.quota_requests is not None:
            self.quota_requests = _number("quota_requests", self.quota_requests, minimum=0, maximum=10**9, integer=True)
        self.models = (self.models,) if isinstance(self.models, str) and self.models else self.models
        self.models = _names("models", self.models, '["sim-1"]') if self.models else ()
        if not self.models:
            raise ConfigError("models needs at least one non-empty model name")
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise ConfigError("api_key must be a string")

    def updated(self, changes: dict[str, Any]) -> SimulatorConfig:
        """A copy with ``changes`` applied and checked; unknown names are an error."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"unknown simulator setting(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.update(changes)
        return SimulatorConfig(**values)

    def public(self) -> dict[str, Any]:
        """The settings as JSON-ready data, with the API key reduced to whether one is required."""
        data = dataclasses.asdict(self)
        data["api_key"] = "required" if self.api_key else None
        data["fail_kinds"] = list(self.fail_kinds)
        data["models"] = list(self.models)
        data["script"] = {str(k): v for k, v in sorted(self.script.items())}
        data["fault_on"] = dict(self.fault_on)
        return data

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.public().items() if k != "api_key"}
        key = ", api_key=<set>" if self.api_key else ""
        return "SimulatorConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + key + ")"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _names(name: str, value: Any, example: str) -> tuple[str, ...]:
    """A list of non-empty strings (or one string, split at commas), else a ConfigError naming the setting."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{name} must be a list of names, e.g. {example} (got {_shown(value)})")
    return tuple(value)


def _check_kind(where: str, kind: str) -> str:
    if kind not in FAULT_KINDS:
        raise ConfigError(f"{where}: unknown fault {kind!r}; choose from {', '.join(FAULT_KINDS)}")
    return kind
