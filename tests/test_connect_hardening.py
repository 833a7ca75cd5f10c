"""connect() and run() given bad input: a clear error at once, and a key that shows nowhere.

A key comes from the environment and is sent in a header, so a key with a newline, a NUL or a non-ASCII letter
in it is refused before any request, by a message that says what is wrong and where without quoting the key;
and when connect() fails for any reason, no frame of the traceback holds the key in a local a verbose traceback
prints (only a Secret, whose repr is masked). LLM_BASE_URL that is not a URL, a web page that answers where the
model list should be, a budget below 1, and prompts that are a dict or one string each get a sentence saying
what to set. The endpoints are real: simulator processes, and a small HTTP server in a thread.
"""

from __future__ import annotations

import http.server
import io
import json
import logging
import socket
import threading
import traceback
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pytest

from helpers import quota, simulator
from helpers.runs import (
    STRATEGIES,
    run,
    run_async,
    run_in_new_loop,
    run_naive_threads,
    run_sequential,
    run_threads,
)
from helpers.settings import Secret, SetupError, Target, connect

GOOD = "sk-qvgood-zx81kk-7f3a9c4e"
# Keys with a character that cannot be in an HTTP header (or in any API key), and the pieces of each that must
# never show, in any spelling (as text, escaped as Python writes it, as UTF-8 bytes).
BAD_KEYS = {
    "newline": ("sk-qz7wv\nInjected: 1", "a control character (a newline) at position 9"),
    "NUL": ("sk-qz7wv\x00jx4tail9", "a control character (a NUL) at position 9"),
    "carriage return": ("sk-qz7wv\rjx4tail9", "a control character (a carriage return) at position 9"),
    "non-ASCII": ("ключ-qz7wv", "a non-ASCII character at position 1"),
    "space inside": ("sk-qz7wv jx4tail9", "a space at position 9"),
}


@pytest.fixture(scope="module")
def keyed() -> Iterator[simulator.Simulator]:
    sim = simulator.start(api_key=GOOD, latency=0.01)
    yield sim
    sim.stop()


@pytest.fixture(autouse=True)
def fresh_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session guard of this test's own (the process's real one is left as it was)."""
    monkeypatch.setattr(quota, "_session", None)
    monkeypatch.delenv("LLM_MAX_CALLS", raising=False)
    monkeypatch.delenv("LLM_MAX_TOKENS", raising=False)


def env_for(url: str, key: str | None = GOOD, model: str = "sim-1", **more: str) -> dict[str, str]:
    env = {"LLM_BASE_URL": url, "LLM_MODEL": model, **more}
    if key is not None:
        env["LLM_API_KEY"] = key
    return env


def requests_seen(sim: simulator.Simulator) -> int:
    return int(sim.stats(records=False)["requests"])


def spellings(key: str) -> list[str]:
    """The ways a key (or a telling piece of it) can show in text: as it is, escaped, as bytes, and its words."""
    forms = {key, repr(key)[1:-1], repr(key.encode())[2:-1], key.encode("unicode_escape").decode()}
    words = "".join(c if c.isalnum() else " " for c in key).split()
    forms.update(word for word in words if len(word) >= 5 or not word.isascii())
    return sorted(forms, key=len)


def assert_absent(key: str, *texts: str) -> None:
    for text in texts:
        for form in spellings(key):
            assert form not in text, f"{form!r} shows in: {text[:2000]}"


def chain(exc: BaseException) -> list[BaseException]:
    """The exception and every one it carries (cause and context, shown or suppressed)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        one = todo.pop()
        if one is None or any(one is s for s in seen):
            continue
        seen.append(one)
        todo += [one.__cause__, one.__context__]
    return seen


def below_tests(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from the first frame outside this file (a test's own locals hold the key it passes)."""
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb


def frame_locals(exc: BaseException) -> list[tuple[str, str, str]]:
    """(function, name, repr) of every local of every frame of every traceback in the chain: what a debugger,
    IPython's verbose mode or rich's show_locals can print."""
    found = []
    for one in chain(exc):
        tb = below_tests(one.__traceback__)
        while tb is not None:
            frame = tb.tb_frame
            for name, value in frame.f_locals.items():
                try:
                    shown = repr(value)
                except Exception as failed:  # a half-built object deep in a library
                    shown = f"<repr failed: {type(failed).__name__}>"
                found.append((frame.f_code.co_name, name, shown))
            tb = tb.tb_next
    return found


def rendered(exc: BaseException) -> list[str]:
    """The traceback as the standard library prints it with locals, and as IPython's verbose mode does."""
    from IPython.core.ultratb import VerboseTB

    tb = below_tests(exc.__traceback__)
    texts = ["".join(traceback.TracebackException(type(exc), exc, tb, capture_locals=True).format())]
    texts.append(VerboseTB(theme_name="nocolor").text(type(exc), exc, tb))
    return texts


def assert_key_nowhere(key: str, exc: BaseException) -> None:
    """Not in the message, the repr, any rendered traceback, or any local of any frame (a Secret's repr is masked,
    so a Secret passes)."""
    leaks = [(where, name) for where, name, shown in frame_locals(exc) if any(form in shown for form in spellings(key))]
    assert not leaks, f"the key is held by these locals: {leaks}"
    assert_absent(key, str(exc), repr(exc), *rendered(exc))


def outside_tests(exc: BaseException) -> int:
    """Frames of the traceback below the test function (how deep into helpers or a library it was raised)."""
    return len(traceback.extract_tb(exc.__traceback__)) - 1


# --- 12. a key with a character that cannot be sent -------------------------------------------------------------


@pytest.mark.parametrize("check", [True, False], ids=["check", "no-check"])
@pytest.mark.parametrize("case", list(BAD_KEYS))
def test_a_key_that_cannot_be_sent_is_refused_before_any_request(
    case: str, check: bool, keyed: simulator.Simulator
) -> None:
    key, where = BAD_KEYS[case]
    before = requests_seen(keyed)
    with pytest.raises(SetupError) as caught:
        connect(env=env_for(keyed.api_url, key), check=check)
    message = str(caught.value)
    assert f"LLM_API_KEY contains {where}" in message, message
    assert "copy the key again" in message
    assert requests_seen(keyed) == before, "a request was sent with a key that cannot be in a header"
    assert_key_nowhere(key, caught.value)
    assert outside_tests(caught.value) <= 2
    assert caught.value.__context__ is None and caught.value.__cause__ is None


def test_more_than_one_bad_character_is_counted_not_quoted(keyed: simulator.Simulator) -> None:
    key = "sk-a\tb\nc\x7fdef"
    with pytest.raises(SetupError) as caught:
        connect(env=env_for(keyed.api_url, key))
    message = str(caught.value)
    assert "a control character (a tab) at position 5" in message and "2 more" in message, message
    assert_key_nowhere(key, caught.value)


def test_surrounding_whitespace_is_still_stripped(keyed: simulator.Simulator) -> None:
    target = connect(env=env_for(keyed.api_url, f"  {GOOD}\n"))
    assert target.api_key is not None and target.api_key.reveal() == GOOD
    with target.client() as client:
        assert client.get("/models").status_code == 200


@pytest.mark.parametrize("case", list(BAD_KEYS))
def test_secret_and_target_refuse_such_a_key_too(case: str) -> None:
    key, where = BAD_KEYS[case]
    for build in (
        lambda: Secret(key),
        lambda: Target(base_url="https://api.example.com/v1", model="m", api_key=key),  # type: ignore[arg-type]
    ):
        with pytest.raises(SetupError) as caught:
            build()
        assert where in str(caught.value), str(caught.value)
        assert_key_nowhere(key, caught.value)


def test_target_takes_a_good_key_as_text_and_keeps_it_secret() -> None:
    target = Target(base_url="https://api.example.com/v1", model="m", api_key=f" {GOOD} ")  # type: ignore[arg-type]
    assert isinstance(target.api_key, Secret) and target.api_key.reveal() == GOOD
    assert_absent(GOOD, repr(target), target.describe())


def test_secret_refuses_what_is_not_a_key() -> None:
    with pytest.raises(SetupError, match="empty"):
        Secret("")
    with pytest.raises(TypeError, match="int"):
        Secret(12345)  # type: ignore[arg-type]


def failing_connects(keyed: simulator.Simulator, closed: int) -> dict[str, dict[str, Any]]:
    """connect() calls that fail with a good key in the environment, at each step where connect() can fail."""
    return {
        "wrong model (simulator check)": {"env": env_for(keyed.api_url, model="gpt-9")},
        "closed port (request fails)": {"env": env_for(f"http://127.0.0.1:{closed}/v1")},
        "key of another server (401)": {"env": env_for(keyed.api_url, GOOD + "x")},
        "bad budget": {"env": env_for(keyed.api_url, LLM_MAX_CALLS="-1"), "check": False},
        "bad URL": {"env": env_for("http://[::1/v1")},
        "no model": {"env": {"LLM_BASE_URL": keyed.api_url, "LLM_API_KEY": GOOD}},
    }


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_no_frame_of_a_failed_connect_holds_the_key(keyed: simulator.Simulator) -> None:
    """A verbose traceback prints every frame's locals: connect() holds the key only in a Secret."""
    for case, options in failing_connects(keyed, closed_port()).items():
        key = options["env"]["LLM_API_KEY"]
        with pytest.raises(SetupError) as caught:
            connect(**options)
        try:
            assert_key_nowhere(key, caught.value)
        except AssertionError as failed:
            raise AssertionError(f"{case}: {failed}") from None


def test_no_frame_holds_the_key_when_os_environ_is_read(
    keyed: simulator.Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env_for(keyed.api_url, model="gpt-9").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SetupError, match="not served") as caught:
        connect()
    assert_key_nowhere(GOOD, caught.value)


@pytest.fixture
def debug_logs() -> Iterator[io.StringIO]:
    """Every log record of every library at DEBUG, as ``logging.basicConfig(level=DEBUG)`` would show them."""
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield text
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_debug_logs_of_connect_and_calls_carry_no_key(keyed: simulator.Simulator, debug_logs: io.StringIO) -> None:
    target = connect(env=env_for(keyed.api_url))
    with target.client() as client:
        asked = {"model": "sim-1", "messages": [{"role": "user", "content": "Reply: logs"}]}
        assert client.post("/chat/completions", json=asked).status_code == 200
    with target.openai_client(max_retries=0) as sdk:
        sdk.chat.completions.create(model="sim-1", messages=[{"role": "user", "content": "Reply: sdk"}])
    for key in (BAD_KEYS["newline"][0], BAD_KEYS["NUL"][0]):
        for check in (True, False):
            with pytest.raises(SetupError):
                target = connect(env=env_for(keyed.api_url, key), check=check)
                with target.client() as client:
                    client.get("/models")
    logged = debug_logs.getvalue()
    assert "httpcore" in logged and "send_request_headers" in logged  # the libraries did log at DEBUG
    assert_absent(GOOD, logged)
    assert_absent(BAD_KEYS["newline"][0], logged)
    assert_absent(BAD_KEYS["NUL"][0], logged)


# --- 13. a sentence, not a raw error ------------------------------------------------------------------------------

# LLM_BASE_URL: what is wrong with it, in words the message must contain.
BAD_URLS = {
    "http://[::1/v1": "host",
    "http://[zz]/v1": "host",
    "http://127.0.0.1:abc/v1": "port must be a number from 1 to 65535",
    "http://example.com:99999/v1": "port must be a number from 1 to 65535",
    "http://example.com:0/v1": "port must be a number from 1 to 65535",
    "http://local host/v1": "a space",
    "http://example.com\n/v1": "a control character (a newline) at position 19",
    "http://example.com/v1\t/models": "a control character (a tab)",
    "ftp://example.com/v1": "http:// or https://",
    "example.com/v1": "http:// or https://",
    "http:///v1": "no host",
    "http://:8000/v1": "no host",
    "http://exa..mple.com/v1": "host",
    "http://exa$mple.com/v1": "host",
    "https://example.com/v1?key=1": "query",
    "https://example.com/v1#models": "fragment",
    "https://user:hunter2hunter@example.com/v1": "LLM_API_KEY",
}


@pytest.mark.parametrize("check", [True, False], ids=["check", "no-check"])
@pytest.mark.parametrize("url", list(BAD_URLS))
def test_a_malformed_base_url_says_what_is_wrong(url: str, check: bool) -> None:
    with pytest.raises(SetupError) as caught:
        connect(env=env_for(url), check=check)
    message = str(caught.value)
    assert "LLM_BASE_URL" in message and "https://api.openai.com/v1" in message, message
    assert BAD_URLS[url] in message, message
    assert outside_tests(caught.value) <= 2, traceback.format_tb(caught.tb)
    assert caught.value.__context__ is None and caught.value.__cause__ is None
    assert "hunter2hunter" not in message  # a password in the URL is not echoed either


def test_a_space_in_the_host_is_not_reported_as_a_missing_key() -> None:
    with pytest.raises(SetupError) as caught:
        connect(env=env_for("http://local host/v1", key=None))
    assert "LLM_API_KEY" not in str(caught.value) and "space" in str(caught.value)


def test_good_urls_still_pass() -> None:
    for url in (
        "https://api.openai.com/v1",
        "http://localhost:11434/v1",
        "http://[::1]:8000/v1",
        "HTTPS://Ex-1.org/v1/",
    ):
        target = connect(env=env_for(url), check=False)
        assert target.base_url == url.rstrip("/")


class _Page(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 200 and whatever the server was given (a web page, or some JSON)."""

    def do_GET(self) -> None:
        kind, body = self.server.answer  # type: ignore[attr-defined]
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def page() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def page_url(server: http.server.ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def test_a_web_page_at_models_is_not_a_provider(page: http.server.ThreadingHTTPServer) -> None:
    page.answer = ("text/html; charset=utf-8", "<!doctype html><html><body>Welcome to nginx!</body></html>")  # type: ignore[attr-defined]
    with pytest.raises(SetupError) as caught:
        connect(env=env_for(page_url(page), key=None, model="m"))
    message = str(caught.value)
    assert "web page" in message and "not an OpenAI-compatible API" in message and "LLM_BASE_URL" in message, message
    assert outside_tests(caught.value) <= 3


@pytest.mark.parametrize(
    "body", ['{"status": "ok"}', '{"data": "none"}', '{"object": "model", "data": []}', "[1, 2]", "not json"]
)
def test_json_that_is_not_a_model_list_is_not_a_provider(page: http.server.ThreadingHTTPServer, body: str) -> None:
    page.answer = ("application/json", body)  # type: ignore[attr-defined]
    with pytest.raises(SetupError, match="not an OpenAI-compatible API") as caught:
        connect(env=env_for(page_url(page), key=None, model="m"))
    assert "model list" in str(caught.value)


def test_a_model_list_is_a_provider(page: http.server.ThreadingHTTPServer) -> None:
    for body in ({"object": "list", "data": [{"id": "m", "object": "model"}]}, {"data": []}):
        page.answer = ("application/json", json.dumps(body))  # type: ignore[attr-defined]
        target = connect(env=env_for(page_url(page), key=None, model="m"))
        assert not target.is_simulator and target.base_url == page_url(page)


@pytest.mark.parametrize(
    ("name", "value", "default"),
    [
        ("LLM_MAX_CALLS", "-1", "100"),
        ("LLM_MAX_CALLS", "0", "100"),
        ("LLM_MAX_CALLS", "lots", "100"),
        ("LLM_MAX_TOKENS", "-1", "50,000"),
        ("LLM_MAX_TOKENS", "1.5", "50,000"),
    ],
)
@pytest.mark.parametrize("session", ["new session", "session in use"])
def test_a_bad_budget_names_the_real_default(name: str, value: str, default: str, session: str) -> None:
    if session == "session in use":
        quota.session_guard()  # an earlier connect() made the session's guard
    with pytest.raises(SetupError) as caught:
        connect(env=env_for("https://api.example.com/v1", **{name: value}), check=False)
    message = str(caught.value)
    assert f"{name} must be a whole number of at least 1" in message, message
    assert f"unset it for the default, {default}" in message, message
    assert "unset it for 0" not in message
    assert f"e.g. {name}=" in message  # how to set one


# --- 14. prompts that are not a list of strings ------------------------------------------------------------------


def _echo(prompt: str) -> str:
    return prompt


async def _aecho(prompt: str) -> str:
    return prompt


RUNNERS = {
    "run_sequential": lambda prompts: run_sequential(_echo, prompts),
    "run_threads": lambda prompts: run_threads(_echo, prompts),
    "run_naive_threads": lambda prompts: run_naive_threads(_echo, prompts),
    "run_async": lambda prompts: run_in_new_loop(run_async(_aecho, prompts)),
}

NOT_PROMPTS: dict[str, tuple[Any, list[str]]] = {
    "dict": ({"a": "Reply: a", "b": "Reply: b"}, ["not a dict", "list(d.values())"]),
    "one string": ("Reply: a", ["not one string"]),
    "bytes": (b"Reply: a", ["not bytes"]),
    "set": ({"Reply: a", "Reply: b"}, ["not a set", "sorted("]),
    "None": (None, ["got NoneType"]),
    "a number": (3, ["got int"]),
}


@pytest.mark.parametrize("runner", [*RUNNERS, *(f"run:{s}" for s in STRATEGIES)])
@pytest.mark.parametrize("case", list(NOT_PROMPTS))
def test_prompts_that_are_not_a_list_of_strings_are_a_type_error(
    case: str, runner: str, sim: simulator.Simulator
) -> None:
    prompts, words = NOT_PROMPTS[case]
    target = Target(base_url=sim.api_url, model="sim-1", simulator=sim)
    before = requests_seen(sim)
    with pytest.raises(TypeError) as caught:
        if runner.startswith("run:"):
            run(runner.removeprefix("run:"), prompts, target=target)
        else:
            RUNNERS[runner](prompts)
    message = str(caught.value)
    assert message.startswith("prompts must be a list of strings"), message
    for word in words:
        assert word in message, message
    assert isinstance(caught.value, ValueError)  # what these errors were before: code that catches it still does
    assert requests_seen(sim) == before
    assert outside_tests(caught.value) <= 4  # run_async: through run_in_new_loop


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_an_item_that_is_not_a_string_is_named_by_index(runner: str) -> None:
    for prompts in (["a", "b", 3], ("a", "b", None), (p for p in ["a", "b", b"c"])):
        with pytest.raises(TypeError, match=r"prompts\[2\] must be a string \(got (int|NoneType|bytes)\)"):
            RUNNERS[runner](prompts)


def test_pairs_from_a_dict_are_named_too() -> None:
    with pytest.raises(TypeError, match=r"prompts\[0\] must be a string \(got tuple\).*list\(d.values\(\)\)"):
        run_threads(_echo, {"a": "Reply: a"}.items())


def test_generators_tuples_and_dict_values_are_fine() -> None:
    assert run_threads(_echo, (f"Reply: {i}" for i in range(3))).answers == ["Reply: 0", "Reply: 1", "Reply: 2"]
    assert run_sequential(_echo, ("a", "b")).answers == ["a", "b"]
    assert run_threads(_echo, {"x": "a", "y": "b"}.values()).answers == ["a", "b"]
    assert run_threads(_echo, []).answers == []


# --- review: the key in no local, URLs masked and checked, a key in the wrong setting, a huge key ------------------


def provider_target(key: str = GOOD, url: str | None = None) -> Target:
    """A real-provider Target (with the session's quota guard) at the keyed simulator."""
    return Target(base_url=url or "http://127.0.0.1:9/v1", model="sim-1", api_key=key)


def test_sdk_clients_hold_no_key_in_a_failing_frame(
    keyed: simulator.Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = provider_target(url=keyed.api_url)
    for make in (
        lambda: target.openai_client(nonsense=1),  # a typo: TypeError
        lambda: target.async_openai_client(nonsense=1),
        lambda: target.openai_client(http_client=object()),  # the project's own ValueError
        lambda: target.async_openai_client(http_client=object()),
    ):
        with pytest.raises((TypeError, ValueError)) as caught:
            make()
        assert_key_nowhere(GOOD, caught.value)

    def broken(self: Target, *, sync: bool) -> Any:
        raise RuntimeError("no HTTP client today")

    monkeypatch.setattr(Target, "_guarded_httpx2", broken)
    with pytest.raises(RuntimeError) as caught:
        target.chat_model()
    assert_key_nowhere(GOOD, caught.value)


def test_naive_asyncio_failures_hold_no_key(keyed: simulator.Simulator) -> None:
    wrong = GOOD + "zz"  # 401 from the simulator: every call fails with the key in its client's headers
    report = run("naive-asyncio", ["Reply: a", "Reply: b"], target=provider_target(wrong, keyed.api_url), workers=1)
    failures = [record.exception for record in report.records if record.exception is not None]
    assert len(failures) == 2
    for exc in failures:
        assert_key_nowhere(wrong, exc)
    from helpers.runs import run_naive_async

    for url in (keyed.api_url, f"http://127.0.0.1:{closed_port()}/v1"):  # no make_client: headers as given
        headers = {"Authorization": f"Bearer {wrong}"}
        report = run_in_new_loop(run_naive_async(url, "sim-1", ["Reply: a"], headers=headers))
        del headers
        exc = report.records[0].exception
        assert exc is not None
        assert_key_nowhere(wrong, exc)


@pytest.mark.parametrize(
    "url",
    [f"http://{GOOD}@127.0.0.1:9/v1", f"http://user:{GOOD}x@127.0.0.1:9/v1", f"http://127.0.0.1:9/v1?key={GOOD}x"],
    ids=["key as user name", "password", "query"],
)
def test_connect_frames_do_not_show_a_secret_in_the_url(url: str) -> None:
    with pytest.raises(SetupError) as caught:
        connect(env=env_for(url))
    assert_key_nowhere(GOOD, caught.value)


LONG_HOSTS = {
    "http://" + "a" * 64 + ".com/v1": "too long",
    "http://" + "a." * 127 + "com/v1": "too long",
    "http://xn--zz/v1": "IDNA",
    "http://\ufb01.com/v1": "IDNA",
}


@pytest.mark.parametrize("url", list(LONG_HOSTS))
def test_a_host_that_cannot_be_looked_up_is_a_setup_error(url: str) -> None:
    with pytest.raises(SetupError) as caught:
        connect(env=env_for(url))
    assert LONG_HOSTS[url] in str(caught.value) and "LLM_BASE_URL" in str(caught.value), str(caught.value)
    assert outside_tests(caught.value) <= 2
    assert caught.value.__context__ is None and caught.value.__cause__ is None


def test_any_failure_of_the_probe_is_a_setup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def send(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise UnicodeError("encoding with 'idna' codec failed")

    monkeypatch.setattr("httpx.Client.send", send)
    with pytest.raises(SetupError, match="Cannot reach the LLM endpoint") as caught:
        connect(env=env_for("http://127.0.0.1:9/v1"))
    assert outside_tests(caught.value) <= 3
    assert caught.value.__context__ is None and caught.value.__cause__ is None


def test_a_huge_url_gives_a_short_message() -> None:
    url = f"http://127.0.0.1:{closed_port()}/" + "v" * 1_000_000
    with pytest.raises(SetupError, match="Cannot reach the LLM endpoint") as caught:
        connect(env=env_for(url))
    assert len(str(caught.value)) < 600


@pytest.mark.parametrize(
    ("url", "model", "setting"),
    [
        (GOOD, "sim-1", "LLM_BASE_URL"),
        (f"http://127.0.0.1:{GOOD}/v1", "sim-1", "LLM_BASE_URL"),
        (f"http://127.0.0.1:9/{GOOD}", "sim-1", "LLM_BASE_URL"),
        ("http://127.0.0.1:9/v1", GOOD, "LLM_MODEL"),
    ],
    ids=["URL is the key", "key as port", "key in path", "model is the key"],
)
@pytest.mark.parametrize("check", [True, False], ids=["check", "no-check"])
def test_the_key_in_another_setting_is_refused_unechoed(url: str, model: str, setting: str, check: bool) -> None:
    with pytest.raises(SetupError) as caught:
        connect(env=env_for(url, model=model), check=check)
    assert f"{setting} contains the value of LLM_API_KEY: the two may be swapped" in str(caught.value)
    assert_key_nowhere(GOOD, caught.value)


def test_swapped_url_and_key_show_neither() -> None:
    with pytest.raises(SetupError) as caught:
        connect(env={"LLM_BASE_URL": GOOD, "LLM_MODEL": "m", "LLM_API_KEY": "http://127.0.0.1:9/v1"})
    assert "(not shown: it looks like a key)" in str(caught.value)
    assert_key_nowhere(GOOD, caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:sk-otherkey-77aa/v1",  # port text
        "http://sk-otherkey-77aa/v1?x",  # host (and a query)
        "http://127.0.0.1:{port}/OtherKey0123456789abcdefXYZ",  # path, in the "Cannot reach" message
    ],
    ids=["port", "host", "path"],
)
def test_a_url_part_that_looks_like_a_key_is_not_echoed(url: str) -> None:
    with pytest.raises(SetupError) as caught:
        connect(env=env_for(url.format(port=closed_port())))
    message = str(caught.value)
    assert "(not shown: it looks like a key)" in message, message
    assert "otherkey" not in message.lower(), message


def test_ordinary_url_parts_are_still_shown() -> None:
    from helpers.settings import _shown_url

    for url in (
        "https://generativelanguage.googleapis.com/v1beta/openai",
        "https://my-resource.openai.azure.com/openai/deployments/gpt-4o-mini",
        "https://desk-top.example.org:8443/v1",
    ):
        assert _shown_url(url) == url


def test_a_huge_key_is_refused_by_its_length(keyed: simulator.Simulator) -> None:
    before = requests_seen(keyed)
    with pytest.raises(SetupError, match=r"LLM_API_KEY is 2,800,003 characters long") as caught:
        connect(env=env_for(keyed.api_url, "sk-" + "q" * 2_800_000))
    assert len(str(caught.value)) < 300 and "qqqq" not in str(caught.value)
    assert requests_seen(keyed) == before
    key = "sk-" + "qz7" * 400  # long enough to be refused, short enough to look for everywhere
    with pytest.raises(SetupError, match="1,203 characters long") as caught:
        connect(env=env_for(keyed.api_url, key))
    assert_key_nowhere(key, caught.value)
