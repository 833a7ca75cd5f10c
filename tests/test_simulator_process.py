"""The simulator as a process: start-up, stop, no orphans, loopback only, API key, bad settings, and the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import httpx
import openai
import psutil
import pytest

from helpers import simulator
from helpers.simulator import ConfigError, SimulatorError

KEY = "test-key-123"
CLI = [sys.executable, "-m", "helpers.simulator"]
FLAGS = [
    "--port",
    "--seed",
    "--latency",
    "--profile",
    "--spread",
    "--ttft",
    "--tokens-per-second",
    "--capacity",
    "--rpm",
    "--tpm",
    "--fail-rate",
    "--fail-kinds",
    "--fault-on",
    "--script",
    "--hang-seconds",
    "--quota-requests",
    "--request-timeout",
    "--max-connections",
    "--models",
    "--api-key",
    "--access-log",
    "--pose-as-provider",
    "--burst",
    "--host",
    "--students",
    "--roster",
    "--class-rpm",
    "--class-tpm",
]


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a parent to reap it counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- start, stop, orphans ----------------------------------------------------------------------------------


def test_start_time_and_stop_leaves_no_process(capsys: pytest.CaptureFixture[str]) -> None:
    began = time.perf_counter()
    sim = simulator.start(latency=0.01)
    took = time.perf_counter() - began
    with capsys.disabled():
        print(f"\nsimulator start-up: {took:.2f} s")
    assert took < 10

    assert sim.process is not None
    pid = sim.process.pid
    assert sim.running and psutil.pid_exists(pid)
    assert "running" in repr(sim)
    assert httpx.get(sim.base_url + "/health", timeout=10).json()["status"] == "ok"

    sim.stop()
    assert sim.process.poll() is not None
    assert not sim.running
    assert wait_gone(pid, 5)
    assert "stopped" in repr(sim)
    with pytest.raises(SimulatorError, match="stopped"):
        sim.stats()
    sim.stop()  # twice is fine


def test_context_manager_stops_it() -> None:
    with simulator.start(latency=0.01) as sim:
        assert sim.process is not None
        pid = sim.process.pid
        assert sim.stats(records=False)["requests"] == 0
    assert sim.process.poll() is not None
    assert wait_gone(pid, 5)


def test_killed_parent_leaves_no_orphan() -> None:
    child_code = textwrap.dedent("""
        import sys, time
        from helpers import simulator
        sim = simulator.start(latency=0.01)
        print(sim.process.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", child_code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        sim_pid = int(parent.stdout.readline())
        assert not gone(sim_pid)
        parent.send_signal(signal.SIGKILL)  # no atexit, no cleanup: only the closed stdin pipe tells it
        parent.wait(timeout=10)
        assert wait_gone(sim_pid, 10), "the simulator outlived the process that started it"
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout:
            parent.stdout.close()


# --- where it listens ----------------------------------------------------------------------------------------


def test_listens_on_loopback_only(shared_sim: simulator.Simulator) -> None:
    assert shared_sim.process is not None
    listening = [
        c for c in psutil.Process(shared_sim.process.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
    ]
    assert listening, "no listening socket found"
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}
    assert {c.laddr.port for c in listening} == {int(shared_sim.base_url.rsplit(":", 1)[1])}
    assert shared_sim.base_url.startswith("http://127.0.0.1:")


# --- the API key ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed() -> Iterator[simulator.Simulator]:
    sim = simulator.start(api_key=KEY, latency=0.01)
    yield sim
    sim.stop()


def test_missing_key_is_401_with_openai_error_shape(keyed: simulator.Simulator) -> None:
    body = {"model": "sim-1", "messages": [{"role": "user", "content": "Reply: hi"}]}
    response = httpx.post(keyed.api_url + "/chat/completions", json=body, timeout=10)
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert "API key" in error["message"]
    assert httpx.get(keyed.api_url + "/models", timeout=10).status_code == 401


def test_wrong_key_is_401_and_never_echoed(keyed: simulator.Simulator) -> None:
    wrong = "sk-wrong-key-987654"
    with (
        openai.OpenAI(base_url=keyed.api_url, api_key=wrong, max_retries=0) as client,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        client.chat.completions.create(model="sim-1", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    text = caught.value.response.text
    assert KEY not in text and wrong not in text and "987654" not in text


def test_right_key_is_200(keyed: simulator.Simulator) -> None:
    with openai.OpenAI(base_url=keyed.api_url, api_key=KEY, max_retries=0) as client:
        answer = client.chat.completions.create(model="sim-1", messages=[{"role": "user", "content": "Reply: in"}])
        assert answer.choices[0].message.content == "in"
        assert [m.id for m in client.models.list().data] == ["sim-1"]


def test_key_never_shown(keyed: simulator.Simulator) -> None:
    assert KEY not in repr(keyed)
    assert KEY not in str(keyed.config())
    assert keyed.config()["api_key"] == "required"
    assert KEY not in repr(keyed._config)
    assert KEY not in str(keyed.stats())
    assert keyed.process is not None
    assert KEY not in " ".join(psutil.Process(keyed.process.pid).cmdline())  # passed in the environment


def test_key_cannot_be_changed_while_running(keyed: simulator.Simulator) -> None:
    with pytest.raises(ConfigError, match="API key"):
        keyed.configure(api_key="other")
    headers = {"authorization": f"Bearer {KEY}"}
    response = httpx.post(keyed.base_url + "/admin/config", json={"api_key": None}, headers=headers, timeout=10)
    assert response.status_code == 400
    assert keyed.config()["api_key"] == "required"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/admin/stats"), ("POST", "/admin/reset"), ("GET", "/admin/config"), ("POST", "/admin/config")],
)
def test_admin_needs_the_key_too(keyed: simulator.Simulator, method: str, path: str) -> None:
    """With SIM_API_KEY set, no one without it can read the prompts, wipe the stats or make the calls fail."""
    for headers in ({}, {"authorization": "Bearer sk-wrong-key-987654"}):
        response = httpx.request(method, keyed.base_url + path, json={"fail_rate": 1}, headers=headers, timeout=10)
        assert response.status_code == 401, (path, headers)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert keyed.config()["fail_rate"] == 0


# --- bad settings -------------------------------------------------------------------------------------------


def test_bad_profile_at_start_names_the_choices() -> None:
    with pytest.raises(ConfigError) as caught:
        simulator.start(profile="nope")
    message = str(caught.value)
    assert "profile" in message and "'nope'" in message
    for choice in simulator.PROFILES:
        assert choice in message


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"rpm": -1}, ["rpm", "at least 1", "-1"]),
        ({"fail_rate": 2}, ["fail_rate", "at most 1", "2"]),
        ({"capacity": 0}, ["capacity", "at least 1"]),
        ({"latency": "fast"}, ["latency", "number", "'fast'"]),
        ({"script": {3: "boom"}}, ["script[3]", "'boom'", "hang"]),
        ({"fail_kinds": "500,teapot"}, ["fail_kinds", "'teapot'"]),
        ({"unknown_thing": 1}, ["unknown_thing"]),
    ],
)
def test_bad_setting_at_start(settings: dict[str, object], words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        simulator.start(**settings)
    for word in words:
        assert word in str(caught.value)


def test_bad_settings_through_configure(sim: simulator.Simulator) -> None:
    with pytest.raises(ConfigError, match=r"rpm .* at least 1"):
        sim.configure(rpm=-5)
    with pytest.raises(ConfigError, match="fail_rate"):
        sim.configure(fail_rate=2)
    with pytest.raises(ConfigError, match="unknown simulator setting.*no_such_setting"):
        sim.configure(no_such_setting=1)
    with pytest.raises(ConfigError, match="fail_rate"):
        sim.configure(rpm=5, fail_rate=2)  # all or nothing
    assert sim.config()["rpm"] is None


def test_bad_settings_through_admin_endpoint(sim: simulator.Simulator) -> None:
    with httpx.Client(base_url=sim.base_url, timeout=10) as admin:
        negative = admin.post("/admin/config", json={"rpm": -1})
        unknown = admin.post("/admin/config", json={"no_such_setting": 1})
        not_json = admin.post("/admin/config", content=b"rpm=3")
        good = admin.post("/admin/config", json={"rpm": 30})
    assert negative.status_code == 400
    assert "rpm (requests per minute) must be at least 1" in negative.json()["error"]["message"]
    assert unknown.status_code == 400
    assert "no_such_setting" in unknown.json()["error"]["message"]
    assert not_json.status_code == 400
    assert good.status_code == 200 and good.json()["rpm"] == 30
    assert sim.config()["rpm"] == 30


# --- the command line ---------------------------------------------------------------------------------------


def test_cli_help_mentions_every_flag() -> None:
    done = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    for flag in FLAGS:
        assert flag in done.stdout, flag
    for kind in simulator.FAULT_KINDS:
        assert kind in done.stdout
    from helpers.simulator.__main__ import parser

    shown = {s for a in parser()._actions if a.help != "==SUPPRESS==" for s in a.option_strings}
    assert shown - {"-h", "--help"} == set(FLAGS)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--rpm", "-3"], "rpm"),
        (["--fail-rate", "2"], "fail_rate"),
        (["--script", "3=boom"], "boom"),
        (["--fault-on", "beta=boom"], "boom"),
        (["--fault-on", "=500"], "--fault-on"),
        (["--profile", "nope"], "invalid choice"),
        (["--capacity", "many"], "invalid int value"),
        (["--port", "70000"], "--port"),
    ],
)
def test_cli_bad_value_exits_2_with_one_line(args: list[str], words: str) -> None:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    message = [line for line in done.stderr.splitlines() if not line.startswith(("usage:", " "))]
    assert len(message) == 1, done.stderr
    assert words in message[0]
    assert done.stdout == ""


def test_cli_busy_port_exits_2(shared_sim: simulator.Simulator) -> None:
    port = shared_sim.base_url.rsplit(":", 1)[1]
    done = subprocess.run([*CLI, "--port", port], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "cannot listen" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_serves_and_stops_on_ctrl_c() -> None:
    env = {**os.environ, "SIM_API_KEY": KEY}
    process = subprocess.Popen(
        [*CLI, "--port", "0", "--latency", "0.01", "--rpm", "100"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("LLM simulator listening on http://127.0.0.1:")
        url = first.split()[4]
        assert KEY not in first
        headers = {"Authorization": f"Bearer {KEY}"}
        body = {"model": "sim-1", "messages": [{"role": "user", "content": "Reply: by hand"}]}
        deadline = time.monotonic() + 10
        while True:
            try:
                response = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert response.json()["choices"][0]["message"]["content"] == "by hand"
        assert response.headers["x-ratelimit-limit-requests"] == "100"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
        assert process.returncode == 0
        assert "simulator stopped" in out
        assert "Traceback" not in err
    finally:
        process.kill()
        process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe:
                pipe.close()
