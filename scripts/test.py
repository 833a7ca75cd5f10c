"""The README's second command: set up once, then run every check and test (what CI runs).

    python3 scripts/test.py              # lint, types, the tests, then the notebooks with two CPU hogs beside them
    python3 scripts/test.py -k lab       # extra arguments go to both pytest runs
    python3 scripts/test.py --idle       # the notebooks without the CPU hogs (quicker to read a failure)

The notebooks run with two other processes keeping two cores busy (``scripts/cpu_hog.py``): every claim a lesson
asserts must hold on a machine with no idle core, as a learner's laptop often is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from _setup import ROOT, ensure_venv

HOGS = 2  # CPU-burning processes beside the notebook run
NO_TESTS_COLLECTED = 5  # pytest's exit code when a -k or a path selects nothing in one of the two runs


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


@contextlib.contextmanager
def _cpu_hogs(count: int) -> Iterator[None]:
    """``count`` processes that each keep a core busy while the block runs; always stopped at the end."""
    hogs = [subprocess.Popen([sys.executable, str(ROOT / "scripts" / "cpu_hog.py")]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()


def main(argv: list[str]) -> int:
    idle = "--idle" in argv
    extra = [arg for arg in argv if arg != "--idle"]
    python = str(ensure_venv())
    _browser_for_ci()
    env = dict(os.environ)
    # Tests must not reach a real provider, whatever the learner's shell has set.
    for name in ("LLM_BASE_URL", "LLM_API_KEY", "LLM_MODEL"):
        env.pop(name, None)
    env.pop("MPLBACKEND", None)
    nbval = ["--nbval", "--nbval-sanitize-with", "tests/nbval_sanitize.cfg", "--nbval-current-env"]
    loaded = "idle machine" if idle else f"{HOGS} CPU hogs running beside them"
    steps = [
        ("lint", [python, "-m", "ruff", "check", *_existing("helpers", "tests", "notebooks", "benchmarks", "scripts")]),
        ("types", [python, "-m", "mypy", "helpers"]),
        ("tests", [python, "-m", "pytest", "tests", *extra]),
        (f"notebooks ({loaded})", [python, "-m", "pytest", "notebooks", *nbval, *extra]),
    ]
    collected_none = []
    for name, cmd in steps:
        print(f"== {name}: {' '.join(cmd[2:])}", flush=True)
        hogs = HOGS if name.startswith("notebooks") and not idle else 0
        with _cpu_hogs(hogs):
            code = subprocess.call(cmd, cwd=ROOT, env=env)
        if code == NO_TESTS_COLLECTED and extra:
            collected_none.append(name)
            continue
        if code != 0:
            print(f"== {name} failed (exit {code})", flush=True)
            return code
    if len(collected_none) == 2:
        print(f"== no test matched {' '.join(extra)}", flush=True)
        return NO_TESTS_COLLECTED
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
