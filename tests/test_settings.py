"""helpers.settings: where calls go (the built-in simulator or an endpoint from the environment), and keys
that never show. Errors are checked for the sentence a learner needs."""

from __future__ import annotations

import pickle
import socket
import time
from collections.abc import Iterator

import pytest

from helpers import simulator
from helpers.settings import REAL_PROVIDER_MAX_IN_FLIGHT, Secret, SetupError, Target, connect

SECRET = "sk-test-secret-abcdef123456"


@pytest.fixture(scope="module")
def keyed() -> Iterator[simulator.Simulator]:
    sim = simulator.start(api_key=SECRET, latency=0.01)
    yield sim
    sim.stop()


def env_for(sim: simulator.Simulator, key: str | None = SECRET) -> dict[str, str]:
    env = {"LLM_BASE_URL": sim.api_url, "LLM_MODEL": "sim-1"}
    if key is not None:
        env["LLM_API_KEY"] = key
    return env


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def no_secret_in(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text
        assert "abcdef123456" not in text


# --- the built-in simulator ----------------------------------------------------------------------------------


def test_no_base_url_gives_the_shared_simulator() -> None:
    target = connect(env={}, seed=5, latency=0.02, profile="fixed")
    assert target.is_simulator
    assert target.simulator is not None and target.simulator.running
    assert target.base_url == target.simulator.api_url
    assert target.base_url.startswith("http://127.0.0.1:") and target.base_url.endswith("/v1")
    assert target.model == "sim-1"
    assert target.api_key is None
    assert target.max_in_flight is None
    assert "the built-in LLM simulator" in target.describe() and "simulator" in repr(target)
    config = target.simulator.config()
    assert (config["seed"], config["latency"], config["profile"]) == (5, 0.02, "fixed")

    with target.client() as client:
        answer = client.post(
            "/chat/completions", json={"model": target.model, "messages": [{"role": "user", "content": "Reply: here"}]}
        )
    assert answer.json()["choices"][0]["message"]["content"] == "here"

    # Connecting again: the same process, reset to the new settings (earlier ones do not linger).
    again = connect(env={}, seed=6)
    assert again.simulator is target.simulator
    config = again.simulator.config()
    assert (config["seed"], config["latency"], config["profile"]) == (6, None, "uniform")
    assert again.simulator.stats(records=False)["requests"] == 0


def test_simulator_settings_are_checked() -> None:
    with pytest.raises(simulator.ConfigError, match="profile"):
        connect(env={}, profile="nope")
    with pytest.raises(simulator.ConfigError, match="no_such_setting"):
        connect(env={}, no_such_setting=1)


def test_openai_clients_from_a_target() -> None:
    target = connect(env={}, latency=0.01)
    with target.openai_client(max_retries=0) as client:
        assert (
            client.chat.completions.create(model=target.model, messages=[{"role": "user", "content": "Reply: sdk"}])
            .choices[0]
            .message.content
            == "sdk"
        )


# --- an endpoint from the environment -------------------------------------------------------------------------


def test_base_url_of_a_keyed_simulator_is_detected_and_key_never_shown(keyed: simulator.Simulator) -> None:
    target = connect(env=env_for(keyed))
    assert target.is_simulator  # told apart by the x-llm-simulator header
    assert target.base_url == keyed.api_url
    assert isinstance(target.api_key, Secret)
    assert target.api_key.reveal() == SECRET
    no_secret_in(
        repr(target),
        str(target),
        target.describe(),
        repr(target.api_key),
        str(target.api_key),
        f"{target.api_key}",
        f"{target!r}",
        repr(target.simulator),
        str(target.simulator.config()),
    )
    assert "key=<set>" in repr(target)
    assert "started by hand" in target.describe() and "built-in" not in target.describe()

    with target.client() as client:
        answer = client.post(
            "/chat/completions", json={"model": "sim-1", "messages": [{"role": "user", "content": "Reply: keyed"}]}
        )
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "keyed"


def test_secret_is_masked_and_not_picklable() -> None:
    secret = Secret(SECRET)
    no_secret_in(repr(secret), str(secret), f"{secret}", repr([secret]), repr({"k": secret}))
    assert secret.reveal() == SECRET
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_target_for_a_real_provider_caps_in_flight() -> None:
    target = connect(
        env={"LLM_BASE_URL": "https://api.example.com/v1/", "LLM_MODEL": "m", "LLM_API_KEY": SECRET}, check=False
    )
    assert not target.is_simulator
    assert target.base_url == "https://api.example.com/v1"
    assert target.max_in_flight == REAL_PROVIDER_MAX_IN_FLIGHT == 3
    no_secret_in(repr(target), target.describe())
    with target.client() as client:
        assert client.headers["authorization"] == f"Bearer {SECRET}"  # sent, never shown


def test_missing_model_names_llm_model() -> None:
    with pytest.raises(SetupError, match="LLM_MODEL"):
        connect(env={"LLM_BASE_URL": "https://api.example.com/v1", "LLM_API_KEY": SECRET})


def test_missing_key_for_remote_host_names_llm_api_key() -> None:
    with pytest.raises(SetupError, match="LLM_API_KEY") as caught:
        connect(env={"LLM_BASE_URL": "https://api.example.com/v1", "LLM_MODEL": "gpt-4o-mini"})
    assert "api.example.com" in str(caught.value)


def test_local_endpoint_without_key_is_fine(sim: simulator.Simulator) -> None:
    target = connect(env=env_for(sim, key=None))
    assert target.is_simulator and target.api_key is None
    assert "key" not in repr(target)


def test_unreachable_endpoint_fails_quickly() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    began = time.monotonic()
    with pytest.raises(SetupError, match="Cannot reach") as caught:
        connect(env={"LLM_BASE_URL": url, "LLM_MODEL": "sim-1"})
    assert time.monotonic() - began < 5
    assert url in str(caught.value)


def test_wrong_key_is_a_setup_error(keyed: simulator.Simulator) -> None:
    wrong = "sk-wrong-0000-zzzz"
    with pytest.raises(SetupError) as caught:
        connect(env=env_for(keyed, key=wrong))
    message = str(caught.value)
    assert "LLM_API_KEY" in message and "401" in message
    assert wrong not in message
    no_secret_in(message)


def test_keyed_endpoint_without_key_says_to_set_it(keyed: simulator.Simulator) -> None:
    with pytest.raises(SetupError, match="set LLM_API_KEY"):
        connect(env=env_for(keyed, key=None))


@pytest.mark.parametrize("url", ["not a url", "localhost:8000/v1", "ftp://example.com/v1", "http://", "https:///v1"])
def test_malformed_base_url(url: str) -> None:
    with pytest.raises(SetupError, match="LLM_BASE_URL"):
        connect(env={"LLM_BASE_URL": url, "LLM_MODEL": "m", "LLM_API_KEY": SECRET})


def test_target_repr_without_simulator_handle() -> None:
    target = Target(base_url="http://127.0.0.1:1/v1", model="m", api_key=Secret(SECRET))
    no_secret_in(repr(target), str(target), target.describe())
