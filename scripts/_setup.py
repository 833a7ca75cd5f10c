"""Shared by scripts/lab.py and scripts/test.py: make .venv with the pinned packages, once."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".workbook-installed"


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("requirements.txt", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def ensure_venv() -> Path:
    """Create .venv and install requirements.txt plus the helpers package, unless that is already done."""
    if sys.version_info < (3, 11):
        sys.exit(
            f"The workbook needs Python 3.11 or newer; this is {sys.version.split()[0]}. "
            "Run the command with a newer python3."
        )
    python = venv_python()
    if STAMP.exists() and python.exists() and STAMP.read_text() == _fingerprint():
        return python
    if not python.exists():
        print(f"Creating the virtual environment {VENV.relative_to(ROOT)}/ ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("Installing the pinned packages (the first time takes a minute or two) ...", flush=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-r", str(ROOT / "requirements.txt"), "-e", str(ROOT)], check=True, cwd=ROOT)
    STAMP.write_text(_fingerprint())
    return python
