"""Hostile and careless clients: no request can stall the simulator, crash it, or get an answer that is not OpenAI's.

Every test talks HTTP to a real simulator process. The figures in the bounds are far from what the server does
(milliseconds) and far from what it did before it was hardened (seconds to minutes), so load cannot flip them.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import simulator
from helpers.simulator._requests import CONTEXT_TOKENS, MAX_BODY_BYTES, MAX_OUTPUT_TOKENS

CHAT = "/chat/completions"


def chat(prompt: Any = "Reply: ok", **extra: Any) -> dict[str, Any]:
    return {"model": "sim-1", "messages": [{"role": "user", "content": prompt}], **extra}


def schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def post(sim: simulator.Simulator, body: Any, path: str = CHAT, **kwargs: Any) -> httpx.Response:
    data = body if isinstance(body, bytes | Iterator) else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    return httpx.post(sim.api_url + path, content=data, headers=headers, timeout=30, **kwargs)


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return dict(error)


def last_record(sim: simulator.Simulator) -> dict[str, Any]:
    records: list[dict[str, Any]] = sim.stats()["records"]
    return records[-1]


# --- 1. text rules in linear time -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    ["1" * 15_000, "\n" * 20_000, "What is " + "1" * 15_000 + " + 2?", "Reply:" + " " * 15_000, "reply\n" * 3_000],
    ids=["digits-15k", "newlines-20k", "arithmetic-15k", "reply-spaces-15k", "reply-lines"],
)
def test_a_long_prompt_costs_the_server_milliseconds(sim: simulator.Simulator, prompt: str) -> None:
    # Before: backtracking rules took 12.7 s of server CPU for "1" * 15,000 (2.4 s for 20,000 newlines).
    sim.configure(latency=0.0)
    response = post(sim, chat(prompt))
    assert response.status_code == 200
    assert last_record(sim)["cpu_ms"] < 50


@pytest.mark.parametrize(
    "prompt",
    [" " * 4_000_000, "\n" * 1_900_000, "Reply:" + " " * 4_000_000, "1" * 4_000_000, "a " * 1_900_000],
    ids=["spaces", "newlines", "reply-spaces", "digits", "letters"],
)
def test_a_prompt_as_long_as_the_body_limit_costs_tens_of_milliseconds(sim: simulator.Simulator, prompt: str) -> None:
    # A 4 MB body: each step (parse, check, plan) is a few milliseconds of C-speed passes; a quadratic rule would
    # take hours here. (Over the context length, the answer is OpenAI's 400.)
    sim.configure(latency=0.0)
    response = post(sim, chat(prompt))
    assert response.status_code in (200, 400), response.text[:200]
    if response.status_code == 400:
        assert assert_openai_error(response, 400, "messages")["code"] == "context_length_exceeded"
    assert last_record(sim)["cpu_ms"] < 250


def test_a_huge_prompt_does_not_hold_up_a_small_call(sim: simulator.Simulator) -> None:
    worst: list[float] = []
    done = threading.Event()

    def bystander() -> None:
        with httpx.Client(base_url=sim.api_url, timeout=30) as client:
            while not done.is_set():
                began = time.perf_counter()
                client.post(CHAT, json=chat(max_tokens=5)).raise_for_status()
                worst.append(time.perf_counter() - began - 0.05)

    thread = threading.Thread(target=bystander)
    thread.start()
    try:
        time.sleep(0.2)
        for prompt in ("1" * 15_000, "\n" * 1_900_000, "Reply:" + " " * 4_000_000):
            post(sim, chat(prompt))
    finally:
        done.set()
        thread.join()
    assert len(worst) > 3
    assert max(worst) < 1.0  # before: 12.5 s behind the 15 kB prompt alone


# --- 2. output bounded as a provider bounds it ----------------------------------------------------------


def test_a_schema_asking_for_a_million_items_gets_a_bounded_answer(sim: simulator.Simulator) -> None:
    sim.configure(latency=0.0)
    schema = {"type": "array", "items": {"type": "string"}, "minItems": 1_000_000}
    response = post(sim, chat("List them.", response_format=schema_format(schema)))
    assert response.status_code == 200
    assert len(response.content) < 200_000  # before: 31 MB
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "length"  # cut at the output limit, as a provider cuts it
    assert response.json()["usage"]["completion_tokens"] <= MAX_OUTPUT_TOKENS


@pytest.mark.parametrize(
    ("field", "path"),
    [("max_tokens", CHAT), ("max_completion_tokens", CHAT), ("max_output_tokens", "/responses")],
)
def test_max_tokens_over_the_output_limit_is_openais_400(sim: simulator.Simulator, field: str, path: str) -> None:
    body: dict[str, Any] = chat() if path == CHAT else {"model": "sim-1", "input": "hi"}
    for value in (10**30, MAX_OUTPUT_TOKENS + 1):
        error = assert_openai_error(post(sim, {**body, field: value}, path), 400, field)
        assert f"{field} is too large: {value}." in error["message"]
        assert f"at most {MAX_OUTPUT_TOKENS} completion tokens" in error["message"]
    assert post(sim, {**body, field: MAX_OUTPUT_TOKENS}, path).status_code == 200


def test_a_prompt_over_the_context_length_is_openais_400(sim: simulator.Simulator) -> None:
    prompt = "word " * (CONTEXT_TOKENS + 10)
    error = assert_openai_error(post(sim, chat(prompt)), 400, "messages")
    assert error["code"] == "context_length_exceeded"
    assert f"maximum context length is {CONTEXT_TOKENS} tokens" in error["message"]
    # the prompt and max_tokens together count
    half = "word " * (CONTEXT_TOKENS - 1000)
    assert post(sim, chat(half, max_tokens=10)).status_code == 200
    error = assert_openai_error(post(sim, chat(half, max_tokens=2000)), 400, "messages")
    assert "2000 in the completion" in error["message"]


# --- 3. a request-body limit ----------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_and_never_read(sim: simulator.Simulator) -> None:
    server = psutil.Process(sim.process.pid if sim.process else 0)
    before = server.memory_info().rss
    big = json.dumps(chat("x" * 50_000_000)).encode()
    error = assert_openai_error(post(sim, big), 413)
    assert error["code"] == "request_too_large" and "4 MB" in error["message"]

    def chunks() -> Iterator[bytes]:  # no content-length: the limit holds while reading
        for i in range(0, len(big), 65_536):
            yield big[i : i + 65_536]

    assert_openai_error(post(sim, chunks()), 413)
    assert server.memory_info().rss - before < 20_000_000  # before: +31 MB for a 50 MB body
    # just under the limit is still read
    fits = json.dumps(chat("x" * (MAX_BODY_BYTES - 1000))).encode()
    assert len(fits) <= MAX_BODY_BYTES
    assert post(sim, fits).status_code in (200, 400)


# --- 4. malformed requests: a 4xx in OpenAI's shape, naming the field -----------------------------------

MALFORMED: list[tuple[str, Any, str, str | None]] = [
    ("stream_options", chat(stream=True, stream_options="x"), CHAT, "stream_options"),
    ("stream", chat(stream="yes"), CHAT, "stream"),
    ("tools-string", chat(tools="x"), CHAT, "tools"),
    ("tools-item", chat(tools=[1]), CHAT, "tools[0]"),
    ("tools-function", chat(tools=[{"type": "function", "function": "x"}]), CHAT, "tools[0].function"),
    ("tools-name", chat(tools=[{"type": "function", "function": {"name": 3}}]), CHAT, "tools[0].function.name"),
    (
        "tools-parameters",
        chat(tools=[{"type": "function", "function": {"name": "f", "parameters": "x"}}]),
        CHAT,
        "tools[0].function.parameters",
    ),
    (
        "tool_calls",
        {"model": "sim-1", "messages": [{"role": "assistant", "tool_calls": "x"}, {"role": "user", "content": "hi"}]},
        CHAT,
        "messages[0].tool_calls",
    ),
    (
        "tool_calls-function",
        {"model": "sim-1", "messages": [{"role": "assistant", "tool_calls": [{"function": 5}]}]},
        CHAT,
        "messages[0].tool_calls[0].function",
    ),
    (
        "json_schema",
        chat(response_format={"type": "json_schema", "json_schema": "x"}),
        CHAT,
        "response_format.json_schema",
    ),
    ("response_format", chat(response_format="json"), CHAT, "response_format"),
    ("schema-type", chat(response_format=schema_format({"type": "thing"})), CHAT, "response_format.json_schema.schema"),
    (
        "allowed_tools",
        chat(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice={"type": "allowed_tools"}),
        CHAT,
        "tool_choice.allowed_tools",
    ),
    (
        "allowed_tools-tools",
        chat(tool_choice={"type": "allowed_tools", "allowed_tools": {"tools": "x"}}),
        CHAT,
        "tool_choice.allowed_tools.tools",
    ),
    ("tool_choice", chat(tool_choice="sometimes"), CHAT, "tool_choice"),
    (
        "ref-cycle",
        chat(
            response_format=schema_format(
                {
                    "$ref": "#/$defs/Node",
                    "$defs": {
                        "Node": {
                            "type": "object",
                            "properties": {"next": {"$ref": "#/$defs/Node"}},
                            "required": ["next"],
                        }
                    },
                }
            )
        ),
        CHAT,
        "response_format",
    ),
    ("ref-missing", chat(response_format=schema_format({"$ref": "#/$defs/Gone"})), CHAT, None),
    ("minimum", chat(response_format=schema_format({"type": "integer", "minimum": "abc"})), CHAT, None),
    ("enum-empty", chat(response_format=schema_format({"enum": []})), CHAT, None),
    ("min-over-max", chat(response_format=schema_format({"type": "integer", "minimum": 5, "maximum": 1})), CHAT, None),
    (
        "surrogate",
        b'{"model": "sim-1", "messages": [{"role": "user", "content": "\\ud800"}]}',
        CHAT,
        "messages[0].content",
    ),
    ("surrogate-key", b'{"model": "sim-1", "messages": [{"role": "user", "\\udfff": 1, "content": "hi"}]}', CHAT, None),
    ("nested-1500", b'{"model": "sim-1", "messages": [' + b"[" * 1500 + b"]" * 1500 + b"]}", CHAT, None),
    ("nested-100k", b'{"model": "sim-1", "messages": ' + b"[" * 100_000, CHAT, None),
    (
        "nested-messages-70",
        json.dumps(chat([{"type": "text", "x": json.loads("[" * 70 + "]" * 70)}])).encode(),
        CHAT,
        None,
    ),
    ("nan", b'{"model": "sim-1", "max_tokens": NaN, "messages": [{"role": "user", "content": "hi"}]}', CHAT, None),
    (
        "huge-float",
        b'{"model": "sim-1", "temperature": 1e400, "messages": [{"role": "user", "content": "hi"}]}',
        CHAT,
        None,
    ),
    ("huge-int", b'{"model": "sim-1", "n": ' + b"9" * 5000 + b', "messages": []}', CHAT, None),
    ("role", chat() | {"messages": [{"role": "wizard", "content": "hi"}]}, CHAT, "messages[0].role"),
    ("content", chat({"a": 1}), CHAT, "messages[0].content"),
    ("content-part", chat([{"type": "text", "text": 5}]), CHAT, "messages[0].content[0].text"),
    ("model", chat() | {"model": 5}, CHAT, "model"),
    ("not-utf8", b'{"model": "sim-1", "messages": [{"role": "user", "content": "\xff"}]}', CHAT, None),
    ("array-body", b"[1, 2]", CHAT, None),
    ("messages-too-many", chat() | {"messages": [{"role": "user", "content": "hi"}] * 3000}, CHAT, "messages"),
    ("responses-text", {"model": "sim-1", "input": "hi", "text": "x"}, "/responses", "text"),
    ("responses-format", {"model": "sim-1", "input": "hi", "text": {"format": 3}}, "/responses", "text.format"),
    ("responses-input", {"model": "sim-1", "input": [3]}, "/responses", "input[0]"),
    (
        "responses-tools",
        {"model": "sim-1", "input": "hi", "tools": [{"type": "function", "name": 1}]},
        "/responses",
        None,
    ),
    ("responses-instructions", {"model": "sim-1", "input": "hi", "instructions": ["x"]}, "/responses", "instructions"),
]


@pytest.mark.parametrize(("body", "path", "param"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_a_malformed_request_is_a_400_naming_the_field(
    sim: simulator.Simulator, body: Any, path: str, param: str | None
) -> None:
    # Before: many of these answered a plain-text "Internal Server Error".
    assert_openai_error(post(sim, body, path), 400, param)
    assert post(sim, chat()).status_code == 200  # and the server goes on answering


def test_a_recursive_schema_with_a_way_out_is_answered(sim: simulator.Simulator) -> None:
    tree = {
        "$ref": "#/$defs/Node",
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                },
                "required": ["name", "children"],
            }
        },
    }
    response = post(sim, chat("A tree.", response_format=schema_format(tree)))
    assert response.status_code == 200
    assert "name" in json.loads(response.json()["choices"][0]["message"]["content"])


def test_a_lone_surrogate_does_not_poison_the_stats(sim: simulator.Simulator) -> None:
    # Before: one such request made GET /admin/stats answer 500 until a reset.
    bad = b'{"model": "sim-1", "messages": [{"role": "user", "content": "abc\\ud800"}]}'
    assert_openai_error(post(sim, bad), 400)
    stats = httpx.get(sim.base_url + "/admin/stats", timeout=10)
    assert stats.status_code == 200
    assert sim.stats()["by_status"] == {"400": 1}


# A fuzzer over request bodies: valid shapes with wrong pieces in them, and junk.
_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=30)
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)
_schema = st.recursive(
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["object", "array", "string", "integer", "number", "boolean", "null", "x", 3]),
            "enum": st.one_of(st.lists(_json_leaf, max_size=3), _json_leaf),
            "minimum": st.one_of(st.integers(-5, 5), st.text(max_size=3)),
            "maximum": st.one_of(st.integers(-5, 5), st.none()),
            "minItems": st.one_of(st.integers(-2, 10**7), st.text(max_size=2)),
            "$ref": st.sampled_from(["#", "#/$defs/A", "#/$defs/B", "x", 1]),
            "required": st.one_of(st.lists(st.text(max_size=3), max_size=2), _json_leaf),
        },
    ),
    lambda inner: st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("object"), "properties": st.dictionaries(st.text(max_size=4), inner, max_size=3)}
        ),
        st.fixed_dictionaries({"type": st.just("array"), "items": inner}),
        st.fixed_dictionaries({"anyOf": st.lists(inner, max_size=3)}),
        st.fixed_dictionaries({"$defs": st.fixed_dictionaries({"A": inner}), "$ref": st.just("#/$defs/A")}),
    ),
    max_leaves=8,
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "x", None])},
    optional={
        "content": st.one_of(st.text(max_size=40), _json),
        "tool_calls": st.one_of(st.lists(st.fixed_dictionaries({"function": _json}), max_size=2), _json),
    },
)
_tool = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": st.text(max_size=5)}, optional={"parameters": _schema}),
        }
    ),
    _json,
)
_chat_body = st.fixed_dictionaries(
    {"model": st.one_of(st.just("sim-1"), _json_leaf), "messages": st.one_of(st.lists(_message, max_size=3), _json)},
    optional={
        "max_tokens": st.one_of(st.integers(-3, 10**31), _json_leaf),
        "stream": st.one_of(st.booleans(), _json_leaf),
        "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": _json_leaf}), _json_leaf),
        "tools": st.one_of(st.lists(_tool, max_size=2), _json_leaf),
        "tool_choice": _json,
        "response_format": st.one_of(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["json_schema", "json_object", "text", "x"])},
                optional={
                    "json_schema": st.one_of(st.fixed_dictionaries({"name": st.just("a"), "schema": _schema}), _json)
                },
            ),
            _json,
        ),
    },
)
_responses_body = st.fixed_dictionaries(
    {"model": st.one_of(st.just("sim-1"), _json_leaf), "input": st.one_of(st.text(max_size=30), _json)},
    optional={
        "text": st.one_of(
            st.fixed_dictionaries(
                {"format": st.one_of(_json, st.fixed_dictionaries({"type": st.just("json_schema"), "schema": _schema}))}
            ),
            _json,
        ),
        "tools": st.one_of(
            st.lists(
                st.fixed_dictionaries({"type": st.just("function"), "name": _json_leaf, "parameters": _schema}),
                max_size=2,
            ),
            _json,
        ),
        "max_output_tokens": st.one_of(st.integers(-3, 10**6), _json_leaf),
        "instructions": _json_leaf,
        "stream": st.booleans(),
    },
)
FUZZED: list[int] = []


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(body=st.one_of(_chat_body.map(lambda b: (CHAT, b)), _responses_body.map(lambda b: ("/responses", b))))
def test_fuzzed_requests_never_get_a_5xx(sim: simulator.Simulator, body: tuple[str, Any]) -> None:
    path, payload = body
    sim.configure(latency=0.0, ttft=0.0)
    response = post(sim, payload, path)
    FUZZED.append(1)
    assert response.status_code < 500, (payload, response.text[:300])
    if response.status_code >= 400:
        assert_openai_error(response, response.status_code)
    elif payload.get("stream") is True and path == CHAT:
        assert response.text.rstrip().endswith("data: [DONE]")
    else:
        assert response.json()["object"] in ("chat.completion", "response")


def test_the_fuzzer_ran_and_the_server_still_answers(sim: simulator.Simulator) -> None:
    assert len(FUZZED) >= 400 or not FUZZED  # run alone, it has nothing to count
    assert post(sim, chat()).status_code == 200
    assert httpx.get(sim.base_url + "/admin/stats", timeout=10).status_code == 200


# --- 6. slow and too many connections -------------------------------------------------------------------


class Process:
    """``python -m helpers.simulator`` with its own flags and file-descriptor limit; its log in a temporary file."""

    def __init__(self, *flags: str, fds: int | None = None) -> None:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())

        def limit() -> None:
            if fds is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (fds, fds))

        cmd = [sys.executable, "-m", "helpers.simulator", "--port", "0", "--latency", "0.05", "--profile", "fixed"]
        self.process = subprocess.Popen([*cmd, *flags], stdout=subprocess.PIPE, stderr=self.log, preexec_fn=limit)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        assert "listening on" in line, line
        self.url = line.split("listening on ")[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def output(self) -> str:
        self.stop()
        assert self.process.stdout is not None
        self.log.seek(0)
        return self.process.stdout.read().decode() + self.log.read().decode()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def cli_sim(request: pytest.FixtureRequest) -> Iterator[Process]:
    flags, fds = request.param
    process = Process(*flags, fds=fds)
    try:
        yield process
    finally:
        process.stop()
        process.log.close()
        if process.process.stdout:
            process.process.stdout.close()


def trickle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that have sent the first bytes of a request's headers, and no more."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        sockets.append(sock)
    return sockets


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(4096) is not None  # b"" (closed) or a 408 before the close
    except TimeoutError:
        return False
    except OSError:
        return True


@pytest.mark.parametrize("cli_sim", [(["--request-timeout", "1"], 256)], indirect=True)
def test_slow_connections_are_closed_and_others_are_served(cli_sim: Process) -> None:
    # Before: 1,100 such connections against a 1,024-descriptor limit delayed every new client by up to 19 s,
    # and wrote 120,831 EMFILE tracebacks in 20 s.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1024:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    slow = trickle(cli_sim.port, 300)  # more than the server's 256 descriptors
    try:
        limits = httpx.Limits(max_keepalive_connections=0)  # a new connection for every call, like a new user
        with httpx.Client(base_url=cli_sim.url + "/v1", timeout=10, limits=limits) as client:
            for _ in range(10):
                began = time.perf_counter()
                assert client.post(CHAT, json=chat()).status_code == 200
                assert time.perf_counter() - began < 2.0
        time.sleep(1.5)  # past the request timeout: every slow connection is gone
        assert all(closed_by_server(sock) for sock in slow)
    finally:
        for sock in slow:
            sock.close()
    log = cli_sim.output()
    assert "Traceback" not in log
    assert len(log.splitlines()) <= 6, log[-2000:]
    assert "did not send a whole request within 1 s" in log


@pytest.mark.parametrize("cli_sim", [(["--request-timeout", "1"], None)], indirect=True)
def test_a_request_that_stops_half_way_gets_408(cli_sim: Process) -> None:
    sock = socket.create_connection(("127.0.0.1", cli_sim.port), timeout=5)
    with contextlib.closing(sock):
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(5)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"]["message"].startswith("The request did not arrive whole within 1 s")


@pytest.mark.parametrize("cli_sim", [(["--max-connections", "3", "--latency", "2"], None)], indirect=True)
def test_over_the_connection_cap_with_everyone_busy_is_503(cli_sim: Process) -> None:
    with httpx.Client(base_url=cli_sim.url + "/v1", timeout=10) as client:
        busy = [threading.Thread(target=client.post, args=(CHAT,), kwargs={"json": chat()}) for _ in range(3)]
        for thread in busy:
            thread.start()
        time.sleep(0.5)  # three requests in progress: no connection is waiting or idle
        refused = httpx.post(cli_sim.url + "/v1" + CHAT, json=chat(), timeout=10)
        for thread in busy:
            thread.join()
    assert_openai_error(refused, 503)
    assert "too many connections" in refused.json()["error"]["message"]


# --- 7. the access log ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cli_sim", [(["--access-log"], None)], indirect=True)
def test_access_log_prints_one_line_per_request(cli_sim: Process) -> None:
    # Before: --access-log printed nothing (uvicorn's access lines are INFO, below the server's log level).
    for _ in range(3):
        httpx.post(cli_sim.url + "/v1" + CHAT, json=chat(), timeout=10).raise_for_status()
    httpx.get(cli_sim.url + "/health", timeout=10).raise_for_status()
    lines = cli_sim.output().splitlines()
    assert sum('"POST /v1/chat/completions HTTP/1.1" 200' in line for line in lines) == 3
    assert sum('"GET /health HTTP/1.1" 200' in line for line in lines) == 1


# --- the other endpoints ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"[" * 100_000, 400),
        (b"[1, 2]", 400),
        (b'{"latency": 1e400}', 400),
        (b'{"seed": ' + b"9" * 5000 + b"}", 400),
        (b'{"fault_on": {"\\ud800": "500"}}', 400),
        (b'{"script": {"1": ["x"]}}', 400),
        (b'{"models": "' + b"m" * 5_000_000 + b'"}', 413),
    ],
    ids=["nested", "array", "huge-float", "huge-int", "surrogate", "script-list", "too-large"],
)
def test_a_bad_admin_config_is_a_json_error(sim: simulator.Simulator, body: bytes, status: int) -> None:
    # Before: a deeply nested body answered a plain-text 500.
    response = httpx.post(sim.base_url + "/admin/config", content=body, timeout=30)
    assert_openai_error(response, status)
    assert sim.config()["latency"] == 0.05  # nothing changed


def test_unknown_paths_and_methods_are_openai_shaped(sim: simulator.Simulator) -> None:
    assert "Invalid URL (GET /v1/nothing)" in assert_openai_error(httpx.get(sim.api_url + "/nothing"), 404)["message"]
    assert_openai_error(httpx.get(sim.api_url + CHAT), 405)
    assert_openai_error(httpx.delete(sim.base_url + "/admin/stats"), 405)


def _fan_out(depth: int, width: int) -> dict[str, Any]:
    """A small schema whose value is width ** depth parts: each definition requires `width` of the next."""
    defs: dict[str, Any] = {}
    for i in range(depth):
        props = {f"p{j}": {"$ref": f"#/$defs/D{i + 1}"} for j in range(width)}
        defs[f"D{i}"] = {"type": "object", "properties": props, "required": list(props)}
    defs[f"D{depth}"] = {"type": "string"}
    return {"$ref": "#/$defs/D0", "$defs": defs}


@pytest.mark.parametrize(
    "schema",
    [
        _fan_out(6, 10),
        {"type": "object", "properties": {f"a{i}": {"$ref": "#"} for i in range(6)}},
        {
            "type": "object",
            "properties": {f"p{i}": {"$ref": "#/$defs/E"} for i in range(1000)},
            "$defs": {"E": {"enum": [f"w{i}" for i in range(1000)]}},
        },
    ],
    ids=["fan-out-10^6", "recursion-6-wide", "enum-1000-used-1000-times"],
)
def test_a_small_schema_cannot_make_a_huge_answer(sim: simulator.Simulator, schema: dict[str, Any]) -> None:
    # Before: the 10^6 fan-out took 13 s of the event loop (270 MB), the recursion 11.5 s, the enum 158 s.
    sim.configure(latency=0.0)
    prompt = "".join(f"w{i}" for i in range(1000))[:10_000]  # every option a substring, none a word
    response = post(sim, chat(prompt, response_format=schema_format(schema)))
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] <= MAX_OUTPUT_TOKENS
    assert last_record(sim)["cpu_ms"] < 500


def test_enums_are_limited_to_1000_values_in_all(sim: simulator.Simulator) -> None:
    schema = {"type": "object", "properties": {f"p{i}": {"enum": list(range(600))} for i in range(2)}}
    error = assert_openai_error(post(sim, chat(response_format=schema_format(schema))), 400)
    assert "more than 1000 values" in error["message"]


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 50,  # a TLS hello to an http:// port
    ],
    ids=["negative-length", "bad-chunk", "tls-hello"],
)
def test_a_request_that_is_not_http_gets_a_json_400(sim: simulator.Simulator, raw: bytes) -> None:
    # Before: uvicorn's plain-text "Invalid HTTP request received."
    port = int(sim.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"models": [[1]]}, "models must be a list of names"),
        ({"models": {"a": 1}}, "models must be a list of names"),
        ({"models": 5}, "models must be a list of names"),
        ({"fail_kinds": 5}, "fail_kinds must be a list of names"),
        ({"fault_on": [["a", "500"]]}, "fault_on must map prompt text"),
        ({"script": {" 1_0": "500"}}, "script keys are request numbers"),
        ({"script": ["x"]}, "script must map request numbers"),
        ({"seed": 10**300}, "seed must be a whole number of at most 19 digits"),
        ({"seed": 1e300}, "seed must be a whole number"),
        ({"rpm": 10**12}, "at most 1e+09"),
    ],
)
def test_admin_config_refuses_loose_values(sim: simulator.Simulator, changes: dict[str, Any], words: str) -> None:
    response = httpx.post(sim.base_url + "/admin/config", json=changes, timeout=10)
    assert words in assert_openai_error(response, 400)["message"]


def test_stats_read_by_clients_that_never_read_hold_up_no_one(sim: simulator.Simulator) -> None:
    # Before: 100 connections each pipelining 5 GET /admin/stats (20,000 records) and reading nothing stalled
    # others 33.7 s and took the server to 917 MB.
    sim.configure(latency=0.0)
    with httpx.Client(base_url=sim.api_url, timeout=30) as client:
        for i in range(3000):
            client.post(CHAT, json=chat(f"Reply: {i}"))
    server = psutil.Process(sim.process.pid if sim.process else 0)
    before = server.memory_info().rss
    port = int(sim.base_url.rsplit(":", 1)[1])
    readers = []
    try:
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /admin/stats HTTP/1.1\r\nHost: x\r\n\r\n" * 5)
            readers.append(sock)
        worst = 0.0
        for _ in range(10):
            began = time.perf_counter()
            assert post(sim, chat()).status_code == 200
            worst = max(worst, time.perf_counter() - began)
        assert worst < 2.0
        assert server.memory_info().rss - before < 150_000_000
    finally:
        for sock in readers:
            sock.close()
    assert len(sim.stats()["records"]) == 3010
