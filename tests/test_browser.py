"""The lab in a real JupyterLab, driven by Playwright in Debian's Chromium.

Opens a copy of notebooks/lab.ipynb, runs every cell, moves the workers slider with the keyboard, presses Run and
waits for the new timeline image. In CI (CI=true) this test must run; on a laptop without /usr/bin/chromium or
the playwright package it is skipped with a message. Set LAB_SCREENSHOT_DIR to keep the screenshots.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "workbook-test"

pytestmark = pytest.mark.browser


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (Debian/Ubuntu: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    return None


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    why = _missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI, but {why}")
        pytest.skip(f"browser test skipped: {why}")
    tmp = tmp_path_factory.mktemp("lab")
    notebooks = tmp / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebooks)  # autosave would otherwise write into the real ones
    config = tmp / "config"
    settings = config / "lab" / "user-settings" / "@jupyterlab"
    (settings / "apputils-extension").mkdir(parents=True)
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}'
    )
    (settings / "notebook-extension").mkdir(parents=True)
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text('{"autoStartDefaultKernel": true}')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "LLM_BASE_URL", "LLM_API_KEY", "LLM_MODEL")}
    env.update(JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), IPYTHONDIR=str(tmp / "ipy"))
    log = (tmp / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={notebooks}",
            f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
            "--LabApp.expose_app_in_browser=True",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"JupyterLab did not start; see {tmp / 'jupyterlab.log'}")
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


KERNEL_IDLE = """name => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  return !!(w && w.context && w.context.path.endsWith(name) && w.sessionContext.session
    && w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle'); }"""
CELL_STATE = """() => window.jupyterapp.shell.currentWidget.content.widgets
  .filter(c => c.model.type === 'code')
  .map(c => [c.model.executionCount, c.model.outputs.toJSON().filter(o => o.output_type === 'error')
    .map(o => o.ename + ': ' + o.evalue)])"""


def test_lab_panel_in_a_real_browser(jupyterlab: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("LAB_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(f"{jupyterlab}/lab/tree/lab.ipynb?token={TOKEN}")
            page.wait_for_function(KERNEL_IDLE, arg="lab.ipynb", timeout=90_000)

            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function(
                f"() => ({CELL_STATE})().every(c => c[0] !== null) && ({KERNEL_IDLE})('lab.ipynb')", timeout=120_000
            )
            errors = [e for _, errs in page.evaluate(CELL_STATE) for e in errs]
            assert not errors, errors

            # The panel rendered as widgets: find the workers slider by its label.
            workers = page.locator(".widget-slider", has=page.locator(".widget-label", has_text="workers"))
            workers.first.wait_for(timeout=30_000)
            readout = workers.first.locator(".widget-readout")
            before = int(readout.inner_text())
            handle = workers.first.locator(".noUi-handle")
            handle.focus()
            handle.press("ArrowLeft")
            handle.press("ArrowLeft")
            page.wait_for_function(
                "([el, v]) => el.innerText.trim() === String(v)", arg=[readout.element_handle(), before - 2]
            )

            status = page.locator(".widget-html", has_text="answers kept").first
            runs_before = int(status.inner_text().split("(run ")[1].split(")")[0])
            page.locator(".widget-button", has_text="Run").first.click()
            page.locator(".widget-html", has_text=f"(run {runs_before + 1})").first.wait_for(timeout=60_000)
            image = page.locator(".widget-output img").first
            image.wait_for(timeout=30_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.widget-output img')]"
                ".some(i => i.complete && i.naturalWidth > 300)",
                timeout=30_000,
            )
            panel = page.locator(".widget-vbox", has=page.locator("h3", has_text="Parallel LLM calls lab")).first
            panel.scroll_into_view_if_needed()
            panel.screenshot(path=str(shots / "lab-panel.png"))
            page.screenshot(path=str(shots / "lab-page.png"), full_page=True)
        finally:
            browser.close()
