"""The timeline pictures: real runs against the simulator, drawn, and checked through the figure's artists.

Nothing here times anything: the checks are about what is drawn (how many bars, which lanes, which colour).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import matplotlib

matplotlib.use("Agg")

import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

import helpers
from helpers.runs import CallRecord, RunReport, run, run_async, run_in_new_loop
from helpers.timeline import COLOURS, MAX_LANES, Table, TimelineFigure, draw, draw_server, summary_table

PROMPTS = [f"Reply: word{i}" for i in range(6)]


@pytest.fixture(scope="module")
def target() -> Any:
    return helpers.connect(seed=3, latency=0.15, profile="uniform")


@pytest.fixture
def sim(target: Any) -> Iterator[Any]:
    target.simulator.reset()
    yield target.simulator
    target.simulator.configure(script={}, capacity=None)
    target.simulator.reset()


def bars(ax: Axes) -> PolyCollection:
    (found,) = [c for c in ax.collections if c.get_gid() == "calls"]
    assert isinstance(found, PolyCollection)
    return found


def lane_count(ax: Axes) -> int:
    bottom, top = ax.get_ylim()
    return round(bottom - top)


def test_one_bar_per_call_and_one_lane_per_thread(target: Any, sim: Any) -> None:
    report = run("threads", PROMPTS, target=target, workers=3)
    fig = draw(report)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert len(bars(ax).get_paths()) == report.n == 6
    assert [t.get_text() for t in ax.get_yticklabels()] == ["thread_0", "thread_1", "thread_2"]
    assert lane_count(ax) == 3
    assert report.label in ax.get_title(loc="left")
    assert "wall" in ax.get_title(loc="left") and "sum of latencies" in ax.get_title(loc="left")
    # pool.map: every result is marked where the caller received it
    (dots,) = [c for c in ax.collections if c.get_gid() == "delivered"]
    assert len(dots.get_offsets()) == 6
    # a vertical line at the wall time
    assert any(list(line.get_xdata()) == [report.wall, report.wall] for line in ax.get_lines())


def test_three_strategies_share_one_time_axis(target: Any, sim: Any) -> None:
    reports = [run(s, PROMPTS, target=target, workers=3) for s in ("sequential", "threads", "asyncio")]
    fig = draw(*reports, title="six calls, three ways")
    assert len(fig.axes) == 3
    limits = {ax.get_xlim() for ax in fig.axes}
    assert len(limits) == 1
    (limit,) = limits
    assert limit[1] >= max(r.wall for r in reports)
    assert [len(bars(ax).get_paths()) for ax in fig.axes] == [6, 6, 6]
    assert [lane_count(ax) for ax in fig.axes] == [1, 3, 3]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["main"]
    assert [t.get_text() for t in fig.axes[2].get_yticklabels()] == ["slot 1", "slot 2", "slot 3"]
    # taller panels for more lanes
    heights = [ax.get_position().height for ax in fig.axes]
    assert heights[0] < heights[1] == pytest.approx(heights[2])


def test_unbounded_asyncio_is_packed_into_lanes(target: Any, sim: Any) -> None:
    prompts = [f"Reply: task{i}" for i in range(40)]

    async def go() -> RunReport:
        async with target.async_client(connections=40) as client:

            async def acall(prompt: str) -> str:
                return await helpers.ask_async(client, target.model, prompt)

            return await run_async(acall, prompts, limit=None)

    report = run_in_new_loop(go())
    assert len({r.worker for r in report.records}) == 40 > MAX_LANES
    (ax,) = draw(report).axes
    assert len(bars(ax).get_paths()) == 40
    assert lane_count(ax) == report.peak_in_flight
    assert "packed" in ax.get_ylabel()
    assert ax.get_yticklabels() == []


def test_packing_reuses_a_lane_once_it_is_free() -> None:
    # 20 one-off workers, at most two calls at a time: two lanes
    records = [CallRecord(i, f"p{i}", start=i * 0.1, end=i * 0.1 + 0.15, worker=f"Task-{i}") for i in range(20)]
    (ax,) = draw(RunReport("naive-asyncio", records, 2.1)).axes
    assert lane_count(ax) == 2
    assert "20 tasks" in ax.get_ylabel()


def test_a_failed_call_is_drawn_in_the_failure_colour(target: Any, sim: Any) -> None:
    sim.configure(script={2: "500"})
    report = run("sequential", PROMPTS[:4], target=target)
    assert [r.ok for r in report.records] == [True, False, True, True]
    (ax,) = draw(report).axes
    colours = bars(ax).get_facecolors()
    assert tuple(colours[1]) == to_rgba(COLOURS["failed"])
    assert all(tuple(colours[i]) == to_rgba(COLOURS["ok"]) for i in (0, 2, 3))
    assert "1 failed" in ax.get_title(loc="left")
    assert any("500" in t.get_text() for t in ax.texts)


def test_retries_show_their_waiting() -> None:
    records = [
        CallRecord(0, "a", 0.0, 0.3, "thread_0", delivered=0.3),
        CallRecord(1, "b", 0.0, 1.2, "thread_1", attempts=3, waited=0.6, delivered=1.2),
    ]
    (ax,) = draw(RunReport("threads", records, 1.25, workers=2)).axes
    (waits,) = [c for c in ax.collections if c.get_gid() == "waits"]
    assert len(waits.get_paths()) == 2  # the waiting between three attempts
    (ticks,) = [c for c in ax.collections if c.get_gid() == "attempts"]
    assert len(ticks.get_segments()) == 2
    assert any("3 tries" in t.get_text() for t in ax.texts)


def test_one_call_and_no_delivery_markers() -> None:
    report = RunReport("sequential", [CallRecord(0, "only", 0.0, 0.2, "main", delivered=0.2)], 0.21, workers=1)
    (ax,) = draw(report, show_delivery=False).axes
    assert len(bars(ax).get_paths()) == 1
    assert not [c for c in ax.collections if c.get_gid() in ("delivered", "held")]


def test_an_empty_report_draws_an_empty_panel() -> None:
    empty = RunReport("threads", [], 0.0, workers=3)
    fig = draw(empty)
    (ax,) = fig.axes
    assert any("no calls" in t.get_text() for t in ax.texts)
    assert isinstance(fig, TimelineFigure)
    assert fig._repr_png_().startswith(b"\x89PNG")


def test_a_thousand_calls_draw() -> None:
    rng = random.Random(1)
    records = []
    for i in range(1000):
        start = rng.random() * 5
        error = "APIError: HTTP 500: boom" if rng.random() < 0.05 else None
        records.append(CallRecord(i, "p", start, start + 0.1 + rng.random(), f"Task-{i}", error=error, delivered=6.2))
    report = RunReport("asyncio", records, 6.2, label="a thousand calls")
    fig = draw(report)
    (ax,) = fig.axes
    assert len(bars(ax).get_paths()) == 1000
    assert not [t for t in ax.texts if t.get_text().startswith("#")]  # no labels on hundreds of bars
    fig.canvas.draw()  # renders without error


def test_draw_needs_reports() -> None:
    with pytest.raises(ValueError, match="at least one"):
        draw()
    with pytest.raises(TypeError, match="RunReport"):
        draw("sequential")  # type: ignore[arg-type]


def test_summary_table_has_a_row_per_report() -> None:
    one = RunReport("sequential", [CallRecord(0, "a", 0.0, 0.5, "main")], 0.5, workers=1)
    two = RunReport("threads", [CallRecord(0, "a", 0.0, 0.5, "thread_0")], 0.5, workers=3, label="threads <3>")
    table = summary_table(one, two)
    assert isinstance(table, Table)
    assert len(table.rows) == 2
    assert table.rows[0]["run"] == one.label
    assert set(table.rows[0]) >= {"run", "calls", "failed", "wall s", "sum of latencies s", "speed-up"}
    html, text = table._repr_html_(), str(table)
    assert html.startswith("<table") and "threads &lt;3&gt;" in html and one.label in html
    assert one.label in text and "threads <3>" in text
    lines = text.splitlines()
    assert len(lines) == 3 and len({len(line) for line in lines}) == 1  # aligned columns


def test_draw_server_peaks_match_the_stats(target: Any, sim: Any) -> None:
    sim.configure(capacity=2)
    sim.reset()
    run("asyncio", PROMPTS, target=target, workers=4)
    stats = sim.stats()
    assert stats["peak_in_flight"] == 4 and stats["peak_serving"] == 2
    fig = draw_server(stats, title="capacity 2")
    (ax,) = fig.axes
    lines = {line.get_gid(): line for line in ax.get_lines()}
    assert max(lines["in flight"].get_ydata()) == stats["peak_in_flight"]
    assert max(lines["serving"].get_ydata()) == stats["peak_serving"]


def test_draw_server_without_requests() -> None:
    (ax,) = draw_server({"records": []}).axes
    assert any("no requests" in t.get_text() for t in ax.texts)


@pytest.mark.parametrize(
    ("error", "label"),
    [
        ("MalformedResponse: HTTP 200 but the body is not JSON", "malformed"),
        ("RemoteProtocolError: Server disconnected without sending a response.", "dropped"),
        ("APIError: HTTP 503 The server is overloaded", "503"),
        ("ReadTimeout: timed out", "timeout"),
    ],
)
def test_failed_bars_say_what_failed(error: str, label: str) -> None:
    from helpers.timeline import _error_kind

    assert _error_kind(error) == label
