"""The README's first command: set up once, then open JupyterLab on notebooks/ (calls go to the simulator)."""

from __future__ import annotations

import os
import subprocess
import sys

from _setup import ROOT, ensure_venv


def main() -> int:
    python = ensure_venv()
    if os.environ.get("LLM_BASE_URL"):
        print(
            f"LLM_BASE_URL is set: lessons will call {os.environ['LLM_BASE_URL']} "
            "(at most 3 calls in flight). Unset it to use the built-in simulator."
        )
    else:
        print("No LLM_BASE_URL set: lessons use the built-in local simulator (no key, no internet needed).")
    print("Opening JupyterLab; start with 00_start_here.ipynb. Stop it with Ctrl+C.", flush=True)
    args = [
        str(python),
        "-m",
        "jupyter",
        "lab",
        f"--ServerApp.root_dir={ROOT / 'notebooks'}",
        "--ServerApp.ip=127.0.0.1",
        *sys.argv[1:],
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")  # JupyterLab refuses to start as root without it (containers, CI machines)
    try:
        return subprocess.call(args, cwd=ROOT)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
