"""Each notebook in notebooks/ has its py:percent twin in lessons/, with the same cells, and is fit to commit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LESSONS = sorted((ROOT / "lessons").glob("*.py"))
SECRET = re.compile(r"(sk-[A-Za-z0-9_-]{16,}|Bearer [A-Za-z0-9._-]{16,})")


def _cells(path: Path) -> list[tuple[str, str]]:
    notebook = jupytext.read(path)
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_every_notebook_has_a_twin_and_back() -> None:
    assert {p.stem for p in NOTEBOOKS} == {p.stem for p in LESSONS}, (
        "notebooks/ and lessons/ must hold the same names; run `jupytext --sync notebooks/*.ipynb`"
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_and_lesson_agree(notebook: Path) -> None:
    twin = ROOT / "lessons" / f"{notebook.stem}.py"
    assert twin.exists(), f"{twin.relative_to(ROOT)} is missing; run `jupytext --sync {notebook.relative_to(ROOT)}`"
    assert _cells(notebook) == _cells(twin), (
        f"{notebook.name} and lessons/{twin.name} disagree; edit one, then run `jupytext --sync` on it"
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_fit_to_commit(notebook: Path) -> None:
    data = json.loads(notebook.read_text())
    counts = [c.get("execution_count") for c in data["cells"] if c["cell_type"] == "code"]
    ran = [c for c in counts if c is not None]
    assert ran == list(range(1, len(counts) + 1)), (
        f"{notebook.name}: outputs must come from a clean Restart & Run All (execution counts 1..N)"
    )
    assert not SECRET.search(notebook.read_text()), f"{notebook.name} holds something that looks like an API key"
    assert data["metadata"].get("kernelspec", {}).get("name") == "python3", f"{notebook.name}: kernel must be python3"
