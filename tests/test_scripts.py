"""The README's first command, `python3 scripts/lab.py`, opens JupyterLab on notebooks/ (here without a browser)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_lab_command_serves_the_notebooks(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("LLM_BASE_URL", "LLM_API_KEY", "LLM_MODEL")}
    env.update(JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"))
    command = [sys.executable, "scripts/lab.py", "--no-browser", f"--port={port}", "--IdentityProvider.token=t"]
    log = (tmp_path / "lab.log").open("w")
    lab = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        names: list[str] = []
        while time.monotonic() < deadline and lab.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token=t", timeout=2) as answer:
                    names = [item["name"] for item in json.load(answer)["content"]]
                    break
            except OSError:
                time.sleep(0.3)
        assert "00_start_here.ipynb" in names, (tmp_path / "lab.log").read_text()[-2000:]
        assert "simulator" in (tmp_path / "lab.log").read_text()  # it says where calls go
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        try:
            lab.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait(5)
        log.close()
