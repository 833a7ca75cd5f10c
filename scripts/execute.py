"""For authors: rebuild notebooks from their lessons/ twins and run them clean, so outputs can be committed.

    .venv/bin/python scripts/execute.py                 # every lesson
    .venv/bin/python scripts/execute.py 00 01_solutions  # lessons whose names start with these

Each notebook is regenerated from lessons/NN_title.py (the reviewed source), executed top to bottom in a fresh
kernel (execution counts 1..N), and written to notebooks/NN_title.ipynb.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(prefixes: list[str]) -> int:
    lessons = sorted((ROOT / "lessons").glob("*.py"))
    chosen = [p for p in lessons if not prefixes or any(p.stem.startswith(x) for x in prefixes)]
    if not chosen:
        print(f"no lesson matches {prefixes}; lessons: {', '.join(p.stem for p in lessons)}")
        return 2
    env = {k: v for k, v in os.environ.items() if k not in ("LLM_BASE_URL", "LLM_API_KEY", "LLM_MODEL", "MPLBACKEND")}
    bin_dir = Path(sys.executable).parent
    for lesson in chosen:
        notebook = ROOT / "notebooks" / f"{lesson.stem}.ipynb"
        began = time.monotonic()
        subprocess.run([bin_dir / "jupytext", "--quiet", "--to", "ipynb", "-o", notebook, lesson], check=True)
        result = subprocess.run(
            [
                bin_dir / "jupyter",
                "nbconvert",
                "--to",
                "notebook",
                "--execute",
                "--inplace",
                "--ExecutePreprocessor.timeout=300",
                notebook,
            ],
            env=env,
            cwd=ROOT / "notebooks",
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            print(result.stderr[-3000:])
            print(f"FAILED {notebook.name}")
            return result.returncode
        print(f"ran {notebook.name} in {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
