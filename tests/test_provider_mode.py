"""Every notebook runs unchanged against a real provider.

Offline, a simulator started with ``pose_as_provider=True`` plays the provider: it leaves out the header by which
``helpers.connect()`` recognises the simulator, so the lessons take the real-provider path (``LLM_BASE_URL``,
``LLM_MODEL``, ``LLM_API_KEY`` set; ``target.simulator`` is None; the quota guard on). Each notebook must run
top to bottom without an error, and the provider must never see more than the guard's 3 calls at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from helpers import simulator

ROOT = Path(__file__).resolve().parent.parent
# The lessons and the lab; a solutions notebook repeats its lesson's setup and the exercises' code, which the
# lesson's own exercise cells already run (unsolved) on the same path.
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if not p.stem.endswith("_solutions"))


@pytest.fixture(scope="module")
def provider() -> Iterator[simulator.Simulator]:
    sim = simulator.start(pose_as_provider=True)
    yield sim
    sim.stop()


def test_posing_simulator_is_taken_for_a_provider(
    provider: simulator.Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import connect

    monkeypatch.setenv("LLM_BASE_URL", provider.api_url)
    monkeypatch.setenv("LLM_MODEL", "sim-1")
    monkeypatch.setenv("LLM_API_KEY", "sk-test-provider-mode")
    target = connect()
    assert not target.is_simulator and target.max_in_flight == 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_against_a_provider(
    path: Path, provider: simulator.Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_BASE_URL", provider.api_url)  # the kernel inherits this process's environment
    monkeypatch.setenv("LLM_MODEL", "sim-1")
    monkeypatch.setenv("LLM_API_KEY", "sk-test-provider-mode")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    provider.reset()
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{path.name} fails against a real provider:\n{str(error)[-1500:]}")
    stats = provider.stats(records=False)
    assert stats["requests"] > 0, "the notebook made no calls"  # so it really took the provider path
    assert stats["peak_in_flight"] <= 3, f"{path.name} put {stats['peak_in_flight']} calls in flight at once"
