"""The lab panel, driven headless through its widgets against the real simulator."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator

import pytest
import traitlets

from helpers.lab import Lab
from helpers.settings import Target, connect


@pytest.fixture()
def lab() -> Iterator[Lab]:
    panel = Lab(connect(env={}, seed=0))
    panel.latency.value = 0.2
    panel.profile.value = "fixed"
    yield panel
    if panel.running:
        panel.cancel()
        panel.wait(30)


def shown_indices(panel: Lab) -> list[int]:
    return [int(i) for i in re.findall(r"#(\d+) →", panel.answers.value)]


def test_defaults_are_small_and_sensible(lab: Lab) -> None:
    assert lab.workers.value == 3 and lab.prompts.value == 6 and lab.strategy.value == "threads"
    assert not lab.run_button.disabled and lab.cancel_button.disabled


@pytest.mark.parametrize("order", ["input", "completion"])
def test_answers_are_shown_in_the_order_the_code_receives_them(lab: Lab, order: str) -> None:
    lab.profile.value, lab.latency.value, lab.order.value, lab.prompts.value = "uniform", 0.3, order, 8
    assert lab.start()
    report = lab.wait(30)
    assert report is not None and report.n == 8 and not report.failures
    assert shown_indices(lab) == report.delivery_order
    if order == "input":
        assert report.delivery_order == list(range(8))
    else:
        ends = [report.records[i].end for i in report.delivery_order]
        assert ends == sorted(ends)
    assert lab.progress.value == 8
    kinds = [set(o["data"]) for o in lab.picture.outputs]
    assert any("image/png" in k for k in kinds) and any("text/html" in k for k in kinds)
    png = next(o["data"]["image/png"] for o in lab.picture.outputs if "image/png" in o["data"])
    assert isinstance(png, str) and base64.b64decode(png).startswith(b"\x89PNG")  # text, as a browser needs it


def test_buttons_while_running_and_a_second_run_is_refused(lab: Lab) -> None:
    lab.prompts.value, lab.workers.value, lab.latency.value = 6, 1, 0.3
    lab.run_button.click()
    assert lab.running and lab.run_button.disabled and not lab.cancel_button.disabled
    assert lab.start() is False
    assert "already going" in lab.status.value
    lab.wait(30)
    assert not lab.running and not lab.run_button.disabled and lab.cancel_button.disabled


@pytest.mark.parametrize("strategy", ["threads", "asyncio"])
def test_cancel_stops_soon_and_keeps_what_finished(lab: Lab, strategy: str) -> None:
    lab.strategy.value, lab.prompts.value, lab.workers.value, lab.latency.value = strategy, 30, 1, 0.3
    lab.run_button.click()
    deadline = time.monotonic() + 20
    while lab.progress.value < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    lab.cancel_button.click()
    pressed = time.monotonic()
    assert "Cancelling" in lab.status.value
    report = lab.wait(30)
    assert time.monotonic() - pressed < 5  # generous: the call in flight finishes, nothing new starts
    assert report is not None and report.cancelled
    answered = [r for r in report.records if r.ok]
    assert 2 <= len(answered) < 30
    assert all("cancelled" in (r.error or "") for r in report.records if not r.ok)
    assert "Cancelled" in lab.status.value


def test_runs_are_kept_and_compared(lab: Lab) -> None:
    for workers in (1, 3):
        lab.workers.value = workers
        lab.start()
        lab.wait(30)
    assert [r.workers for r in lab.reports] == [1, 3]
    assert lab.reports[1].wall < lab.reports[0].wall


def test_all_four_side_by_side(lab: Lab) -> None:
    lab.strategy.value, lab.prompts.value = "all", 4
    lab.start()
    lab.wait(60)
    assert [r.strategy for r in lab.reports] == ["sequential", "threads", "asyncio", "agent-asyncio"]
    assert all(r.answers == [f"answer {i}" for i in range(4)] for r in lab.reports)


def test_failures_are_records_and_the_rest_is_answered(lab: Lab) -> None:
    lab.fail_rate.value, lab.prompts.value, lab.workers.value, lab.seed.value = 0.5, 12, 4, 3
    lab.start()
    report = lab.wait(30)
    assert report is not None and report.n == 12
    assert report.failures and len(report.failures) < 12
    assert all("500" in (r.error or "") for r in report.failures)
    assert "HTTP 500" in lab.answers.value


def test_bad_values_are_clamped_or_refused(lab: Lab) -> None:
    lab.workers.value = 0
    assert lab.workers.value == 1
    lab.workers.value = 99
    assert lab.workers.value == 10
    with pytest.raises(traitlets.TraitError):
        lab.strategy.value = "telepathy"


def test_real_provider_caps_workers_and_switches_off_faults() -> None:
    panel = Lab(Target(base_url="http://127.0.0.1:9/v1", model="m"))  # nothing is contacted
    assert panel.workers.max == 3
    assert panel.fail_rate.disabled and panel.rate_limit.disabled and panel.hangs.disabled
    assert "quota" in panel.note.value


def test_unreachable_endpoint_is_reported_in_the_panel() -> None:
    panel = Lab(Target(base_url="http://127.0.0.1:9/v1", model="m"))
    panel.prompts.value = 2
    panel.start()
    report = panel.wait(30)
    assert report is not None and len(report.failures) == 2
    assert "ConnectError" in panel.answers.value


def test_a_small_panel_shows_only_what_it_names_and_leaves_the_simulator_as_it_was() -> None:
    target = connect(env={}, seed=5, latency=0.05, profile="fixed", fault_on={"beta": "500"})
    before = target.simulator.config()
    panel = Lab(target, show=("workers",), prompts=4, latency=0.2)
    shown = [w for box in panel.panel.children if hasattr(box, "children") for w in box.children]
    flat = [w for b in shown for w in getattr(b, "children", [b])]
    assert panel.workers in flat and panel.prompts not in flat and panel.fail_rate not in flat
    panel.start()
    report = panel.wait(30)
    assert report is not None and report.n == 4 and panel.error is None
    assert target.simulator.config() == before  # the lesson's settings are back


def test_unknown_control_names_are_refused() -> None:
    target = Target(base_url="http://127.0.0.1:9/v1", model="m")
    with pytest.raises(ValueError, match="unknown lab control"):
        Lab(target, show=("wokers",))
    with pytest.raises(ValueError, match="unknown lab control"):
        Lab(target, speed=3)


@pytest.mark.parametrize("strategy", ["sequential", "threads"])
def test_cancel_returns_within_a_second_even_while_long_calls_are_in_flight(lab: Lab, strategy: str) -> None:
    lab.strategy.value, lab.prompts.value, lab.workers.value, lab.latency.value = strategy, 6, 2, 2.0
    lab.run_button.click()
    time.sleep(0.5)  # two-second calls are in flight now
    pressed = time.monotonic()
    lab.cancel_button.click()
    while lab.running and time.monotonic() - pressed < 10:
        time.sleep(0.01)
    assert time.monotonic() - pressed < 1.0 + 1.5  # 0.5 s grace for calls in flight, plus drawing, on a busy machine
    report = lab.report
    assert report is not None and report.cancelled and report.n == 6
    assert all(not r.ok for r in report.records)  # nothing had finished yet ...
    assert any("in flight" in (r.error or "") for r in report.records)  # ... and the in-flight calls say so
