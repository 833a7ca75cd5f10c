"""A local, seeded, OpenAI-compatible LLM server for the lessons (lesson 00).

``start()`` runs it in its own process on a free port of 127.0.0.1, waits until it answers and stops it
when the Python process that started it exits. The returned :class:`Simulator` changes its behaviour while
it runs (latency, faults, rate limits) and reports what it saw, so lesson code can stay exactly what it
would be against a real provider.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from ._config import FAULT_KINDS, PROFILES, ConfigError, SimulatorConfig

SIMULATOR_HEADER = "x-llm-simulator"  # every answer carries it, so clients can tell the simulator apart

__all__ = [
    "FAULT_KINDS",
    "PROFILES",
    "SIMULATOR_HEADER",
    "ConfigError",
    "Simulator",
    "SimulatorConfig",
    "SimulatorError",
    "start",
    "start_class",
]


class SimulatorError(RuntimeError):
    """The simulator could not be started or did not answer."""


class Simulator:
    """A running simulator process: its address, and the admin calls that steer and observe it."""

    def __init__(
        self,
        process: subprocess.Popen[bytes] | None,
        base_url: str,
        config: SimulatorConfig,
        *,
        key: str | None = None,
    ) -> None:
        self.process = process
        self.base_url = base_url.rstrip("/")
        self.api_url = self.base_url + "/v1"
        self._config = config
        self.student: str | None = None  # on a class server: whose sandbox this handle reaches
        self.classroom = False  # a class server (this handle: a student's sandbox, or the instructor's class)
        key = key or config.api_key
        # The key goes in as httpx.Headers, which mask it in any repr; it is kept nowhere else.
        headers = httpx.Headers({"authorization": f"Bearer {key}"} if key else {})
        # No idle connections kept: nothing is left open when a Simulator is dropped without stop() (attach()).
        self._admin = httpx.Client(
            base_url=self.base_url, timeout=10.0, limits=httpx.Limits(max_keepalive_connections=0), headers=headers
        )
        del key

    @classmethod
    def attach(cls, base_url: str, key: str | None = None) -> Simulator:
        """Steer a simulator someone else started (``python -m helpers.simulator``). On a class server ``key`` is
        the student's own, and this handle reaches only their sandbox (the instructor's key: the whole class)."""
        url = base_url.rstrip("/").removesuffix("/v1")
        sim = cls(None, url, SimulatorConfig(), key=key)
        del key
        known = {f.name for f in dataclasses.fields(SimulatorConfig)} - {"api_key"}
        settings = sim.config()
        sim._config = SimulatorConfig(**{k: v for k, v in settings.items() if k in known})
        sim.student = settings.get("student")
        sim.classroom = "student" in settings or "students" in settings
        return sim

    @property
    def running(self) -> bool:
        return self.process is None or self.process.poll() is None

    def config(self) -> dict[str, Any]:
        """The settings in force now (the API key shows only as 'required')."""
        return self._call("GET", "/admin/config")

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change settings while it runs, e.g. ``sim.configure(fail_rate=0.2, rpm=60)``; returns all settings."""
        if "api_key" in changes:
            raise ConfigError("the API key is fixed when the simulator starts: start(api_key=...)")
        ours = {k: v for k, v in changes.items() if k not in ("class_rpm", "class_tpm")}  # the instructor's
        new = self._config.updated(ours)  # a clear error (also for unknown names) before anything is sent
        data = self._call("POST", "/admin/config", json=changes)
        self._config = new
        return data

    def stats(self, records: bool = True, *, student: str | None = None) -> dict[str, Any]:
        """What the server saw: in flight now and at peak, counts by status and fault, retries, per-request times.
        On a class server: the caller's own sandbox (the instructor: the class, or one ``student``)."""
        params = {"records": "1" if records else "0"} | ({"student": student} if student else {})
        return self._call("GET", "/admin/stats", params=params)

    def reset(self, *, student: str | None = None) -> None:
        """Forget the stats, the request numbering (for scripted faults) and the rate-limit state."""
        self._call("POST", "/admin/reset", params={"student": student} if student else None)

    def stop(self) -> None:
        """Stop the process (also done automatically when Python exits)."""
        self._admin.close()
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        if proc.stdin:
            proc.stdin.close()  # the child exits when its stdin closes
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        whose = f" sandbox of {self.student}" if self.student else (" whole class" if self.classroom else "")
        return f"<Simulator {self.base_url}{whose} {state} seed={self._config.seed} profile={self._config.profile}>"

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if not self.running:
            raise SimulatorError("the simulator has stopped; start a new one with helpers.simulator.start()")
        try:
            response = self._admin.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise SimulatorError(f"the simulator at {self.base_url} did not answer ({exc})") from None
        if response.status_code == 400:
            raise ConfigError(response.json()["error"]["message"])
        if response.status_code in (401, 403, 404):
            raise SimulatorError(f"the simulator at {self.base_url} refused: {_message(response)}")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def start(*, timeout: float = 15.0, pose_as_provider: bool = False, **settings: Any) -> Simulator:
    """Start a simulator on a free port of 127.0.0.1 and wait until it answers.

    ``settings`` are :class:`SimulatorConfig` fields, e.g. ``start(seed=1, latency=0.5, profile="fixed")``.
    Bad settings raise :class:`ConfigError` before anything starts. ``pose_as_provider=True`` leaves out the
    header by which ``helpers.connect()`` recognises the simulator, so code pointed at its ``api_url`` takes
    the real-provider path (quota guard on); ``stats()`` and ``configure()`` still work from this handle.
    """
    config = SimulatorConfig().updated(settings)  # unknown names are a ConfigError too
    env = {"SIM_API_KEY": config.api_key} if config.api_key else {}
    flags = ["--pose-as-provider"] if pose_as_provider else []
    return _spawn(config, flags, env, timeout)


def start_class(
    roster: str | Path,
    students: int | str | Path,
    *,
    instructor_key: str,
    class_rpm: int | None = None,
    class_tpm: int | None = None,
    timeout: float = 15.0,
    **settings: Any,
) -> Simulator:
    """Start a class server on a free port of 127.0.0.1 (as ``python -m helpers.simulator --students ...`` does)
    and return the instructor's handle: ``stats()``, ``configure()`` and ``reset()`` act on the whole class.

    ``students`` is a number or a file of names; the keys are in ``roster`` (kept if it exists). The tests and
    ``benchmarks/classroom.py`` use it; an instructor runs the command (``docs/teaching.md``).
    """
    config = SimulatorConfig().updated(settings)
    flags = ["--students", str(students), "--roster", str(roster)]
    for flag, value in (("--class-rpm", class_rpm), ("--class-tpm", class_tpm)):
        if value is not None:
            flags += [flag, str(value)]
    sim = _spawn(config, flags, {"SIM_INSTRUCTOR_KEY": instructor_key}, timeout, key=instructor_key)
    del instructor_key
    sim.classroom = True
    return sim


def _spawn(
    config: SimulatorConfig, flags: list[str], secrets: dict[str, str], timeout: float, *, key: str | None = None
) -> Simulator:
    """Run ``python -m helpers.simulator`` with ``flags`` (keys only in the environment) and wait until it answers."""
    payload = config.public()
    del payload["api_key"]
    env = dict(os.environ)
    env.pop("SIM_API_KEY", None)
    env.pop("SIM_INSTRUCTOR_KEY", None)
    env.update(secrets)
    cmd = [
        sys.executable,
        "-m",
        "helpers.simulator",
        "--port",
        "0",
        "--exit-with-parent",
        "--config-json",
        json.dumps(payload),
        *flags,
    ]
    began = time.monotonic()
    # The child's stderr goes to a temporary file, read only to explain a failed start.
    with tempfile.TemporaryFile() as log:
        # Its own session (process group): Jupyter's stop button sends SIGINT to the kernel's whole group, and the
        # simulator must outlive an interrupted cell. It still exits with its parent (its stdin closes).
        group: dict[str, Any] = {"start_new_session": True}
        if sys.platform == "win32":
            group = {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
        process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, **group)
        line: list[bytes] = []
        reader = threading.Thread(
            target=lambda: line.append(process.stdout.readline() if process.stdout else b""), daemon=True
        )
        reader.start()
        reader.join(timeout)

        def fail(why: str) -> SimulatorError:
            process.kill()
            process.wait()
            reader.join(1.0)  # the pipe is at its end now
            for pipe in (process.stdin, process.stdout):
                if pipe:
                    pipe.close()
            log.seek(0)
            detail = log.read().decode(errors="replace").strip()[-2000:]
            return SimulatorError(f"the simulator {why}" + (f":\n{detail}" if detail else ""))

        if not line or not line[0].startswith(b"READY "):
            raise fail(f"did not start within {timeout:.0f} s" if not line else "exited while starting")
        base_url = line[0].decode().split()[1]
        if process.stdout:
            process.stdout.close()
        sim = Simulator(process, base_url, config, key=key)
        while True:
            try:
                if sim._admin.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - began > timeout:
                sim._admin.close()
                raise fail(f"did not answer within {timeout:.0f} s")
            time.sleep(0.02)
    atexit.register(sim.stop)
    return sim
