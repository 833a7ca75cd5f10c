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
    assert [t.get_text() for t in ax.get_yticklabels()] == ["thread 1", "thread 2", "thread 3"]
    assert lane_count(ax) == 3
    assert report.label in ax.get_title(loc="left")
    assert "wall" in ax.get_title(loc="left") and "faster" not in ax.get_title(loc="left")  # nothing to compare
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
    # the speed-up is against the sequential run, named, from the wall times
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert "faster than" not in titles[0]
    for report, text in zip(reports[1:], titles[1:], strict=True):
        assert f"{reports[0].wall / report.wall:.1f}× faster than sequential" in text
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
    assert ax.get_ylabel().startswith("40 tasks;") and "one\nper call in flight" in ax.get_ylabel()
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
    assert any(t.get_text() == "#1 · 500" for t in ax.texts)  # not "#1 × 500", which reads as a product


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
    # the two tries before the answer failed (that is why there was a third), even though the call answered
    (failed,) = [c for c in ax.collections if c.get_gid() == "failed tries"]
    assert len(failed.get_paths()) == 2 and tuple(failed.get_facecolors()[0]) == to_rgba(COLOURS["failed"])


def test_failed_tries_are_drawn_where_they_happened(sim: Any, target: Any) -> None:
    from helpers.retry import with_retries

    sim.configure(script={1: "503", 2: "429"})
    with target.client() as client:
        call = with_retries(lambda p: helpers.ask(client, target.model, p), attempts=3, base=0.05, rng=1)
        report = helpers.run_sequential(call, ["Reply: one"])
    (record,) = report.records
    assert record.ok and [t.error is None for t in record.tries] == [False, False, True]
    assert "503" in (record.tries[0].error or "") and "429" in (record.tries[1].error or "")
    assert record.start <= record.tries[0].start < record.tries[0].end <= record.tries[1].start <= record.end
    (ax,) = draw(report).axes
    (failed,) = [c for c in ax.collections if c.get_gid() == "failed tries"]
    spans = sorted((min(x for x, _ in p.vertices), max(x for x, _ in p.vertices)) for p in failed.get_paths())
    assert spans == [pytest.approx((t.start, t.end)) for t in record.tries[:2]]
    (waits,) = [c for c in ax.collections if c.get_gid() == "waits"]
    assert len(waits.get_paths()) == 2  # the two waits between the three tries


def test_a_throttle_wait_is_waiting_for_a_turn_not_a_retry() -> None:
    records = [CallRecord(i, f"p{i}", 0.0, 0.1 + 0.1 * i, "thread_0", waited=0.1 * i) for i in range(3)]
    fig = draw(RunReport("threads", records, 0.35, workers=1))
    (ax,) = fig.axes
    (turns,) = [c for c in ax.collections if c.get_gid() == "turns"]
    assert len(turns.get_paths()) == 2  # the first call did not wait
    assert not [c for c in ax.collections if c.get_gid() in ("waits", "failed tries", "attempts")]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "waiting for its turn" in legend and "waiting to retry" not in legend


def test_labels_are_outlined_so_they_read_on_hatching() -> None:
    records = [CallRecord(0, "a", 0.0, 1.0, "thread_0", waited=0.8)]
    (ax,) = draw(RunReport("threads", records, 1.0, workers=1)).axes
    (label,) = [t for t in ax.texts if t.get_text().startswith("#")]
    assert label.get_color() == "white" and label.get_path_effects()


def test_a_held_back_line_never_crosses_another_bar_of_its_lane() -> None:
    # pool.map on one worker: call 0 is slow, call 1 is quick; 2 runs on the same thread while 1 waits
    records = [
        CallRecord(0, "a", 0.0, 1.0, "thread_0", delivered=1.0),
        CallRecord(1, "b", 0.0, 0.2, "thread_1", delivered=1.0),
        CallRecord(2, "c", 0.3, 0.6, "thread_1", delivered=1.0),
    ]
    (ax,) = draw(RunReport("threads", records, 1.0, workers=2)).axes
    (held,) = [c for c in ax.collections if c.get_gid() == "held"]
    for (x0, _), (x1, _) in held.get_segments():
        assert x1 <= 0.3 + 1e-9 or x0 >= 0.6 - 1e-9  # around call 2's bar, not across it
    assert len(held.get_segments()) == 3  # 0.2-0.3 and 0.6-1.0 for call 1, 0.6-1.0 for call 2


def test_many_calls_label_only_the_failures_and_retries() -> None:
    records = [CallRecord(i, "p", i * 0.1, i * 0.1 + 0.5, f"thread_{i % 4}") for i in range(120)]
    records[7].error = "APIError: HTTP 500: boom"
    records[9].attempts = 3
    (ax,) = draw(RunReport("threads", records, 12.5, workers=4), width=40).axes
    assert sorted(t.get_text() for t in ax.texts if t.get_text().startswith("#")) == ["#7 · 500", "#9 · 3 tries"]


def test_task_and_thread_lanes_get_readable_names() -> None:
    records = [CallRecord(i, "p", 0.0, 0.5, f"Task-{43 + i}") for i in range(3)]
    (ax,) = draw(RunReport("asyncio", records, 0.5)).axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["task 1", "task 2", "task 3"]


def test_plural_labels() -> None:
    assert RunReport("threads", [], 1.0, workers=1).label == "threads (1 worker)"
    assert RunReport("threads", [], 1.0, workers=2).label == "threads (2 workers)"
    assert RunReport("asyncio", [], 1.0, workers=1).label == "asyncio (1 in flight)"
    assert "1 call," in repr(RunReport("threads", [CallRecord(0, "a", 0.0, 0.1)], 0.1))


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
    assert set(table.rows[0]) >= {"run", "calls", "failed", "wall s", "sum of latencies s", "speed-up", "overlap"}
    html, text = table._repr_html_(), str(table)
    assert html.startswith("<table") and "threads &lt;3&gt;" in html and one.label in html
    assert one.label in text and "threads <3>" in text
    lines = text.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines[:3]}) == 1  # aligned columns, then the note
    assert lines[3].startswith("speed-up: the wall time of sequential divided by each run's")


def test_the_speed_up_is_against_a_run_not_the_sum_of_stretched_bars() -> None:
    # a client per call: ten calls stretched to 1 s each by a busy client, all at once, in 1.2 s; the shared
    # client did the same ten calls in 0.3 s. Its overlap is high (8.3), but it is four times slower.
    shared = RunReport("asyncio", [CallRecord(i, "p", 0.0, 0.3, "slot 1") for i in range(10)], 0.3, label="shared")
    per_call = RunReport("naive-asyncio", [CallRecord(i, "p", 0.1, 1.1, f"Task-{i}") for i in range(10)], 1.2)
    table = summary_table(shared, per_call)
    assert table.rows[1]["speed-up"] == pytest.approx(0.25) and table.rows[1]["overlap"] == pytest.approx(8.33, 0.01)
    assert "4.0× slower than shared" in draw(shared, per_call).axes[1].get_title(loc="left")
    assert summary_table(per_call, baseline=shared).rows[0]["speed-up"] == pytest.approx(0.25)


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


def test_no_speed_up_between_runs_of_different_calls() -> None:
    big = RunReport("threads", [CallRecord(i, f"p{i}", 0.0, 0.5, "thread_0") for i in range(8)], 4.0, workers=1)
    small = RunReport("threads", [CallRecord(0, "p0", 0.0, 0.5, "thread_0")], 0.5, workers=1, label="small")
    assert "faster" not in draw(big, small).axes[1].get_title(loc="left")
    assert summary_table(big, small).rows[1]["speed-up"] is None


def test_the_moment_before_a_first_try_is_not_a_wait_for_a_turn() -> None:
    from helpers.runs import Attempt

    record = CallRecord(0, "a", 0.0, 0.5, "thread_0", attempts=2, waited=0.1)
    record.tries = [Attempt(0.0001, 0.1, "APIError: HTTP 500"), Attempt(0.2, 0.5)]
    fig = draw(RunReport("threads", [record], 0.5, workers=1))
    assert not [c for c in fig.axes[0].collections if c.get_gid() == "turns"]
    assert "waiting for its turn" not in [t.get_text() for t in fig.legends[0].get_texts()]
