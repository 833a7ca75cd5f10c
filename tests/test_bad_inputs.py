"""Bad input gets a clear error, fast: the right exception, a message that names what to change, a short
traceback, and never a hang.

Each case is one mistake a learner (or a lesson author) can make: a worker count that is not a whole number,
a strategy or order that does not exist, a limit or timeout below zero, a budget too small, an endpoint that
is closed, silent, misspelt or wants another key, a model it does not serve, a server answer that is not JSON,
prompts given as one string or with a None among them, an async function given to the thread runners...
Endpoints are real: the shared simulator, one that requires a key, a closed port and a socket that never answers.
"""

from __future__ import annotations

import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from helpers import simulator
from helpers.calls import APIError, MalformedResponse, ask
from helpers.lab import Lab
from helpers.quota import QuotaExceeded, QuotaGuard
from helpers.retry import with_retries
from helpers.runs import CallRecord, RunReport, run, run_async, run_in_new_loop, run_sequential, run_threads
from helpers.settings import SetupError, Target, connect
from helpers.simulator import ConfigError
from helpers.throttle import Throttle
from helpers.timeline import draw, draw_server, summary_table

KEY = "classroom-key-5f2a"
FAST = 2.0  # seconds: every error here comes at once, except the silent endpoint (5 s connect check)


@dataclass
class Ends:
    """The endpoints the cases point at."""

    sim: simulator.Simulator
    keyed: simulator.Simulator
    closed_port: int
    silent_port: int

    @property
    def target(self) -> Target:
        return Target(base_url=self.sim.api_url, model="sim-1", simulator=self.sim)


@pytest.fixture(scope="module")
def keyed() -> Iterator[simulator.Simulator]:
    sim = simulator.start(seed=1, latency=0.01, profile="fixed", api_key=KEY)
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def silent() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog does) and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def ends(sim: simulator.Simulator, keyed: simulator.Simulator, silent: int) -> Ends:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    return Ends(sim, keyed, closed, silent)


def echo(prompt: str) -> str:
    return prompt


async def aecho(prompt: str) -> str:
    return prompt


def env(url: str, model: str = "sim-1", **more: str) -> dict[str, str]:
    return {"LLM_BASE_URL": url, "LLM_MODEL": model, **more}


def threads(workers: Any) -> Callable[[Ends], Any]:
    return lambda e: run("threads", ["Reply: a"], target=e.target, workers=workers)


def malformed(e: Ends) -> Any:
    e.sim.configure(fault_on={"broken": "malformed"})
    with e.target.client() as client:
        return ask(client, "sim-1", "Reply: broken")


def refused_run(e: Ends) -> Any:
    guarded = Target(base_url=e.sim.api_url, model="sim-1", simulator=e.sim, quota=QuotaGuard(max_calls=3))
    return run("threads", [f"Reply: {i}" for i in range(5)], target=guarded, workers=2)


def unknown_model(e: Ends) -> Any:
    with e.target.client() as client:
        return ask(client, "gpt-9", "Reply: a")


def timeout_below_zero(e: Ends) -> Any:
    with e.target.client(timeout=-1) as client:
        return ask(client, "sim-1", "Reply: a")


REPORT = RunReport("threads", [CallRecord(0, "Reply: a", 0.0, 0.1, answer="a")], 0.1, workers=1)

# name: (what to do, the exception, words its message must contain)
CASES: dict[str, tuple[Callable[[Ends], Any], type[BaseException], list[str]]] = {
    # --- how many at once ---
    "workers=0": (threads(0), ValueError, ["workers must be at least 1", "in flight"]),
    "workers=-1": (threads(-1), ValueError, ["workers must be at least 1"]),
    "workers=2.5": (threads(2.5), ValueError, ["workers must be a whole number", "2.5"]),
    "workers='3'": (threads("3"), ValueError, ["workers must be a whole number", "'3'"]),
    "workers=True": (threads(True), ValueError, ["workers must be a whole number", "True"]),
    "limit=0": (
        lambda e: run_in_new_loop(run_async(aecho, ["a"], limit=0)),
        ValueError,
        ["limit must be at least 1"],
    ),
    # --- names that do not exist ---
    "unknown strategy": (
        lambda e: run("thread", ["a"], target=e.target),
        ValueError,
        ["unknown strategy 'thread'", "threads", "asyncio"],
    ),
    "unknown order": (
        lambda e: run_threads(echo, ["a"], order="fastest"),
        ValueError,
        ["order must be 'input' or 'completion'", "'fastest'"],
    ),
    "unknown simulator setting": (lambda e: connect(latenci=0.5), ConfigError, ["latenci", "latency"]),
    "unknown retry option": (lambda e: with_retries(echo, tries=3), TypeError, ["tries", "attempts"]),
    # --- limits and timeouts ---
    "Throttle(rpm=0)": (lambda e: Throttle(rpm=0), ValueError, ["rpm", "greater than 0", "leave it out"]),
    "Throttle(rpm=-60)": (lambda e: Throttle(rpm=-60), ValueError, ["rpm", "greater than 0"]),
    "retry attempts=0": (
        lambda e: with_retries(echo, attempts=0),
        ValueError,
        ["attempts must be a whole number of at least 1", "1 means no retries"],
    ),
    "retry max_wait=-1": (lambda e: with_retries(echo, max_wait=-1), ValueError, ["max_wait", "0 or more"]),
    "client timeout=-1": (timeout_below_zero, ValueError, ["timeout must be a number of seconds greater than 0"]),
    "abandon_after=-1": (
        lambda e: run_threads(echo, ["a"], abandon_after=-1),
        ValueError,
        ["abandon_after must be a number of seconds, 0 or more"],
    ),
    "max_tokens=0": (
        lambda e: run("threads", ["a"], target=e.target, max_tokens=0),
        ValueError,
        ["max_tokens must be a whole number of at least 1"],
    ),
    # --- budgets ---
    "budget max_calls=-1": (lambda e: QuotaGuard(max_calls=-1), ValueError, ["max_calls must be at least 1"]),
    "LLM_MAX_CALLS=-3": (
        lambda e: connect(env=env("https://api.example.com/v1", "gpt-4o-mini", LLM_API_KEY="k", LLM_MAX_CALLS="-3")),
        SetupError,
        ["LLM_MAX_CALLS must be a whole number of at least 1", "unset it"],
    ),
    "run past the budget": (refused_run, QuotaExceeded, ["refused this run before any call", "Run fewer prompts"]),
    # --- where calls go ---
    "closed port": (
        lambda e: connect(env=env(f"http://127.0.0.1:{e.closed_port}/v1")),
        SetupError,
        ["Cannot reach", "start it or fix LLM_BASE_URL"],
    ),
    "silent endpoint": (
        lambda e: connect(env=env(f"http://127.0.0.1:{e.silent_port}/v1")),
        SetupError,
        ["did not answer within 5 s", "check LLM_BASE_URL"],
    ),
    "URL without a scheme": (
        lambda e: connect(env=env("localhost:11434/v1")),
        SetupError,
        ["LLM_BASE_URL must be a URL such as", "'localhost:11434/v1'"],
    ),
    "URL without /v1": (
        lambda e: connect(env=env(e.sim.base_url)),
        SetupError,
        ["usually ends in /v1", "try LLM_BASE_URL="],
    ),
    "no LLM_MODEL": (
        lambda e: connect(env={"LLM_BASE_URL": "https://api.openai.com/v1", "LLM_API_KEY": "k"}),
        SetupError,
        ["Set LLM_MODEL"],
    ),
    "a model the simulator does not serve": (
        lambda e: connect(env=env(e.sim.api_url, "gpt-4o-mini")),
        SetupError,
        ["LLM_MODEL='gpt-4o-mini' is not served", "one of: sim-1"],
    ),
    "a model unknown to the server": (unknown_model, APIError, ["HTTP 404", "`gpt-9` does not exist", "serves: sim-1"]),
    "no key for a remote URL": (
        lambda e: connect(env=env("https://api.openai.com/v1", "gpt-4o-mini")),
        SetupError,
        ["Set LLM_API_KEY", "api.openai.com"],
    ),
    "no key where one is required": (
        lambda e: connect(env=env(e.keyed.api_url)),
        SetupError,
        ["needs a key: set LLM_API_KEY", "HTTP 401"],
    ),
    "wrong key": (
        lambda e: connect(env=env(e.keyed.api_url, LLM_API_KEY="sk-wrong-key-123")),
        SetupError,
        ["rejected LLM_API_KEY", "HTTP 401"],
    ),
    "malformed answer": (malformed, MalformedResponse, ["not a chat completion", "LLM_BASE_URL", "/v1"]),
    # --- what is run ---
    "prompts as one string": (
        lambda e: run_threads(echo, "Reply: a"),
        ValueError,
        ["prompts must be a list of strings, not one string"],
    ),
    "prompts=None": (lambda e: run_threads(echo, None), ValueError, ["prompts must be a list of strings", "NoneType"]),
    "a None among the prompts": (
        lambda e: run_sequential(echo, ["Reply: a", None]),
        ValueError,
        ["prompts[1] must be a string", "NoneType"],
    ),
    "an async function for threads": (
        lambda e: run_threads(aecho, ["a"]),
        TypeError,
        ["aecho is an async function", "await run_async"],
    ),
    "a plain function for run_async": (
        lambda e: run_in_new_loop(run_async(echo, ["a", "b"])),
        TypeError,
        ["run_async needs an async function", "echo returned a str", "run_threads"],
    ),
    "a call that is not a function": (
        lambda e: run_threads("ask", ["a"]),
        TypeError,
        ["needs a function that takes a prompt", "'ask'"],
    ),
    "target=None": (
        lambda e: run("threads", ["a"], target=None),
        ValueError,
        ["target must be", "helpers.connect()"],
    ),
    # --- pictures and tables ---
    "draw() of a list": (lambda e: draw([REPORT, REPORT]), TypeError, ["got list", "draw(*reports)"]),
    "draw() width=0": (lambda e: draw(REPORT, width=0), ValueError, ["width is the picture's width in inches"]),
    "summary_table() of a list": (
        lambda e: summary_table([REPORT]),
        TypeError,
        ["got list", "summary_table(*reports)"],
    ),
    # --- the lab panel ---
    "Lab(target=None)": (lambda e: Lab(None), ValueError, ["Lab needs where calls go", "helpers.connect()"]),
    "Lab prompts past max_prompts": (
        lambda e: Lab(e.target, prompts=50),
        ValueError,
        ["prompts must be a whole number from 1 to 30", "max_prompts=50"],
    ),
    "Lab workers=0": (lambda e: Lab(e.target, workers=0), ValueError, ["workers must be a whole number from 1"]),
    "Lab workers past the provider's cap": (
        lambda e: Lab(Target(base_url="http://127.0.0.1:9/v1", model="m"), workers=5),  # nothing is contacted
        ValueError,
        ["from 1 to 3", "quota guard allows at most 3"],
    ),
    "Lab unknown strategy": (
        lambda e: Lab(e.target, strategy="thread"),
        ValueError,
        ["strategy must be one of", "'threads'"],
    ),
    "Lab latency=5": (lambda e: Lab(e.target, latency=5), ValueError, ["latency must be a number from 0.1 to 2"]),
    "draw_server() of a report": (
        lambda e: draw_server(REPORT),  # type: ignore[arg-type]
        TypeError,
        ["target.simulator.stats()", "draw(report)"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_a_clear_error_fast(case: str, ends: Ends) -> None:
    action, kind, words = CASES[case]
    requests_before = ends.sim.stats(records=False)["requests"]
    began = time.perf_counter()
    with pytest.raises(kind) as caught:
        action(ends)
    seconds = time.perf_counter() - began
    message = str(caught.value)
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"
    # Fast: no hang, no waiting for a timeout (the silent endpoint's connect check gives up after 5 s).
    assert seconds < (8.0 if case == "silent endpoint" else FAST), f"{case} took {seconds:.2f} s"
    # Short: raised near the call, not from deep inside a library, and not chained to another error.
    frames = traceback.extract_tb(caught.tb)
    assert len(frames) <= 6, f"{case}: {len(frames)} frames\n" + "".join(traceback.format_list(frames))
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__, repr(caught.value.__context__)
    # A key never shows, and nothing was sent for a mistake that can be seen before sending.
    assert KEY not in message and "sk-wrong-key-123" not in message
    if case not in ("malformed answer", "a model unknown to the server", "URL without /v1"):
        assert ends.sim.stats(records=False)["requests"] == requests_before, f"{case} sent a request"


def test_the_async_misuse_leaves_no_unawaited_coroutine(recwarn: pytest.WarningsRecorder) -> None:
    """Giving run_threads an async function fails before any coroutine is made (none is left unawaited)."""
    with pytest.raises(TypeError):
        run_threads(aecho, ["a", "b"])
    with pytest.raises(TypeError):
        run_sequential(aecho, ["a", "b"])
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_lab_takes_one_control_name_as_show(ends: Ends) -> None:
    """show="workers" (a string, not a tuple) means the one control, not the letters w, o, r, k, e, s."""
    lab = Lab(ends.target, show="workers", workers=2)
    assert lab.workers.value == 2


def test_timeouts_that_are_fine(ends: Ends) -> None:
    """The timeout check lets through what httpx accepts: seconds, None, and httpx.Timeout."""
    for timeout in (0.5, 30, None, httpx.Timeout(5.0, connect=1.0)):
        with ends.target.client(timeout=timeout) as client:
            assert ask(client, "sim-1", "Reply: ok") == "ok"
