"""The README's second command: set up once, then run every check and test (what CI runs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from _setup import ROOT, ensure_venv


def _existing(*folders: str) -> list[str]:
    return [folder for folder in folders if (ROOT / folder).is_dir()]


def _browser_for_ci() -> None:
    """In CI the browser test must run: install Debian's Chromium when it is missing (needs root and apt-get)."""
    if not os.environ.get("CI") or Path("/usr/bin/chromium").exists() or not shutil.which("apt-get"):
        return
    print("== installing chromium for the browser test (CI only)", flush=True)
    quiet = {"stdout": subprocess.DEVNULL}
    subprocess.run(["apt-get", "update", "-qq"], check=False, **quiet)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, **quiet)


def main() -> int:
    python = str(ensure_venv())
    _browser_for_ci()
    env = dict(os.environ)
    # Tests must not reach a real provider, whatever the learner's shell has set.
    for name in ("LLM_BASE_URL", "LLM_API_KEY", "LLM_MODEL"):
        env.pop(name, None)
    env.pop("MPLBACKEND", None)
    steps = [
        ("lint", [python, "-m", "ruff", "check", *_existing("helpers", "tests", "notebooks", "benchmarks", "scripts")]),
        ("types", [python, "-m", "mypy", "helpers"]),
        (
            "tests and notebooks",
            [
                python,
                "-m",
                "pytest",
                "tests",
                "notebooks",
                "--nbval",
                "--nbval-sanitize-with",
                "tests/nbval_sanitize.cfg",
                "--nbval-current-env",
                *sys.argv[1:],
            ],
        ),
    ]
    for name, cmd in steps:
        print(f"== {name}: {' '.join(cmd[2:])}", flush=True)
        code = subprocess.call(cmd, cwd=ROOT, env=env)
        if code != 0:
            print(f"== {name} failed (exit {code})", flush=True)
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
