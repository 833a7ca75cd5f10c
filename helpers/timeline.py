"""Draw runs as Gantt charts on one time axis, compare them in a table, and show the server's view (lesson 01).

``draw(sequential, threaded, asynchronous)`` puts one panel per run on a shared time axis: one bar per call,
one lane per worker. A sequential run is a staircase as long as the sum of its latencies; a parallel run is a
few lanes side by side that end soon after its slowest call. The figures are plain ``matplotlib`` figures
(no pyplot state), and they show themselves as a PNG when they are the last expression of a notebook cell.
"""

from __future__ import annotations

import bisect
import html
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .runs import CallRecord, RunReport, plural

__all__ = ["COLOURS", "MAX_LANES", "Table", "TimelineFigure", "draw", "draw_server", "summary_table"]

# Okabe-Ito: told apart with every common kind of colour blindness.
COLOURS = {
    "ok": "#0072B2",  # blue: a call that returned an answer
    "failed": "#D55E00",  # vermillion: a call that ended in an error
    "cancelled": "#999999",  # grey: a call that never ran
    "waiting": "#E69F00",  # orange: time slept before a retry
    "turn": "#56B4E9",  # sky blue: time a call waited for its turn (a throttle) before its request left
    "delivered": "#000000",  # black: the moment the caller got the result
    "wall": "#555555",  # the end of the run
    "serving": "#009E73",  # green: requests the server is working on
    "queued": "#F0E442",  # yellow: requests waiting for a free slot on the server
}

MAX_LANES = 12
"""Up to this many workers get a lane each; with more (one task or thread per call) calls are packed."""

# Layout, in inches.
_LANE = 0.3
_MAX_PANEL = 4.0
_MIN_PANEL = 0.45
_PANEL_TITLE = 0.34
_GAP = 0.16
_LEFT, _RIGHT = 1.15, 0.25
_TOP_LEGEND, _TOP_TITLE, _BOTTOM = 0.42, 0.4, 0.55
_DPI = 100
_MAX_LABELS = 80  # with more calls than this, only failed and retried calls carry text
_SHORTEST_WAIT = 0.002  # seconds: a call that waited less than this before its first try did not wait for a turn


class TimelineFigure(Figure):
    """A matplotlib ``Figure`` that displays itself as a PNG when it ends a notebook cell (no pyplot needed)."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
        return buffer.getvalue()


# --- lanes ------------------------------------------------------------------------------------------------


def _natural(name: str) -> list[Any]:
    """Sort key that puts thread_2 before thread_10 and slot 2 before slot 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclass
class _Lanes:
    of: list[int]  # lane of each record, in record order
    names: list[str]
    packed: bool


def _display_names(workers: Sequence[str]) -> dict[str, str]:
    """Lane names a reader can follow: "thread 1", "task 1", ... instead of "thread_0" or "Task-43"."""
    if workers and all(re.fullmatch(r"thread_\d+", w) for w in workers):
        return {w: f"thread {int(w.split('_')[1]) + 1}" for w in workers}
    if workers and all(re.fullmatch(r"Task-\d+", w) for w in workers):
        return {w: f"task {k}" for k, w in enumerate(workers, 1)}
    return {w: w for w in workers}


def _lanes(records: Sequence[CallRecord]) -> _Lanes:
    workers = sorted({r.worker or "?" for r in records}, key=_natural)
    if len(workers) <= MAX_LANES:
        where = {w: i for i, w in enumerate(workers)}
        shown = _display_names(workers)
        return _Lanes([where[r.worker or "?"] for r in records], [shown[w] for w in workers], packed=False)
    # Greedy interval packing: each call goes into the first lane that is free when it starts. This needs
    # exactly as many lanes as calls were ever in flight at once.
    ends: list[float] = []
    of = [0] * len(records)
    for i in sorted(range(len(records)), key=lambda i: (records[i].start, records[i].index)):
        record = records[i]
        lane = next((k for k, end in enumerate(ends) if end <= record.start), len(ends))
        if lane == len(ends):
            ends.append(record.end)
        else:
            ends[lane] = record.end
        of[i] = lane
    return _Lanes(of, [f"lane {k + 1}" for k in range(len(ends))], packed=True)


def _worker_kind(names: Sequence[str]) -> str:
    if names and all(n.startswith("slot") for n in names):
        return "slot"
    if names and all(n.startswith("Task") for n in names):
        return "task"
    if names and all(n.startswith("thread") for n in names):
        return "thread"
    return "worker"


# --- one panel --------------------------------------------------------------------------------------------


def _error_kind(error: str) -> str:
    """'500', '429', 'timeout', 'cancelled', 'malformed', 'dropped' or the exception's name: what fits on a bar."""
    lower = error.lower()
    if lower.startswith("malformedresponse"):  # HTTP 200 with a broken body: the status would mislead
        return "malformed"
    if lower.startswith(("remoteprotocolerror", "readerror")) or "disconnected" in lower:
        return "dropped"
    status = re.search(r"(?:HTTP|status_code:?|Error code:|status)\s*(\d{3})\b", error)
    if status:
        return status.group(1)
    if "cancel" in lower:
        return "cancelled"
    if "timeout" in lower or "timed out" in lower:
        return "timeout"
    return error.split(":", 1)[0].strip()[:14] or "error"


@dataclass
class _Piece:
    """A part of one bar: a try (``"failed"`` or ``"answered"``), or waiting (``"retry"`` between tries, ``"turn"``
    before the first)."""

    start: float
    width: float
    kind: str


def _pieces(record: CallRecord) -> list[_Piece]:
    """What happened inside one bar, from the record's tries when it has them.

    Without them a record holds only its number of ``attempts`` and total ``waited``: the drawing then spreads
    them evenly (try, wait, try, ...), every try but the last a failure; with one try, the waiting comes before
    it (a throttle's turn).
    """
    if record.tries:
        tries = sorted(record.tries, key=lambda t: t.start)
        pieces: list[_Piece] = []
        first = min(max(tries[0].start, record.start), record.end)
        if first - record.start > _SHORTEST_WAIT:  # not the microseconds between the runner and the first try
            pieces.append(_Piece(record.start, first - record.start, "turn"))
        for k, attempt in enumerate(tries):
            a, b = max(attempt.start, record.start), min(attempt.end, record.end)
            pieces.append(_Piece(a, max(0.0, b - a), "answered" if attempt.error is None else "failed"))
            if k + 1 < len(tries):
                following = min(tries[k + 1].start, record.end)
                if following > b:
                    pieces.append(_Piece(b, following - b, "retry"))
        return pieces
    width = record.latency
    attempts, waited = max(1, record.attempts), max(0.0, min(record.waited, width))
    if attempts == 1:
        if waited <= 0:
            return []
        return [_Piece(record.start, waited, "turn"), _Piece(record.start + waited, width - waited, _final(record))]
    busy = (width - waited) / attempts
    gap = waited / (attempts - 1)
    pieces, t = [], record.start
    for k in range(attempts):
        pieces.append(_Piece(t, busy, _final(record) if k == attempts - 1 else "failed"))
        t += busy
        if k < attempts - 1:
            if gap > 0:
                pieces.append(_Piece(t, gap, "retry"))
            t += gap
    return pieces


def _final(record: CallRecord) -> str:
    return "answered" if record.ok else "failed"


def _baseline(reports: Sequence[RunReport], chosen: RunReport | None) -> RunReport | None:
    """The run a speed-up is measured against: the one given, else the sequential run, else the first."""
    if chosen is not None:
        return chosen
    if len(reports) < 2:
        return None
    return next((r for r in reports if r.strategy == "sequential"), reports[0])


def _same_work(one: RunReport, other: RunReport) -> bool:
    return sorted(r.prompt for r in one.records) == sorted(r.prompt for r in other.records)


def speedup_against(report: RunReport, baseline: RunReport | None) -> float | None:
    """``baseline.wall / report.wall``: how many times faster this run was than the baseline. None without a
    baseline, or when the two runs did not make the same calls (a speed-up compares the same work)."""
    if baseline is None or report.wall <= 0 or baseline.wall <= 0 or not _same_work(report, baseline):
        return None
    return baseline.wall / report.wall


def _compared(report: RunReport, baseline: RunReport | None) -> str:
    ratio = speedup_against(report, baseline)
    if ratio is None or report is baseline or baseline is None:
        return ""
    if ratio >= 1.05:
        return f"{ratio:.1f}× faster than {baseline.label}"
    if ratio <= 1 / 1.05:
        return f"{1 / ratio:.1f}× slower than {baseline.label}"
    return f"about as fast as {baseline.label}"


def _title(report: RunReport, baseline: RunReport | None = None) -> str:
    parts = [report.label or report.strategy, f"wall {report.wall:.2f} s"]
    compared = _compared(report, baseline)
    if compared:
        parts.append(compared)
    failed = len(report.failures)
    if failed:
        parts.append(f"{failed} failed")
    if report.cancelled:
        parts.append("cancelled")
    return " · ".join(parts)


def _gaps(a: float, b: float, spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The parts of [a, b] that no span covers."""
    pieces, start = [], a
    for x0, x1 in sorted(spans):
        if x1 <= start or x0 >= b:
            continue
        if x0 > start:
            pieces.append((start, x0))
        start = max(start, x1)
    if start < b:
        pieces.append((start, b))
    return pieces


def _panel(
    ax: Axes,
    report: RunReport,
    inches: tuple[float, float],
    show_delivery: bool,
    used: set[str],
    baseline: RunReport | None,
) -> None:
    """Draw one run into ``ax`` (``inches``: the panel's width and height); add what it shows to ``used``."""
    records = report.records
    lanes = _lanes(records)
    n_lanes = max(1, len(lanes.names))
    ax.set_ylim(n_lanes - 0.5, -0.5)  # lane 0 at the top
    ax.set_title(_title(report, baseline), loc="left", fontsize=10, pad=4)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.axvline(report.wall, color=COLOURS["wall"], linestyle="--", linewidth=1.2, zorder=4)
    ax.annotate(
        f" wall {report.wall:.2f} s",
        (report.wall, 1.0),
        xycoords=("data", "axes fraction"),
        va="top",
        ha="left",
        fontsize=8,
        color=COLOURS["wall"],
    )
    if not records:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no calls in this run", transform=ax.transAxes, ha="center", va="center", color="#777777")
        return

    # Pixels per lane and per second decide what fits.
    lane_px = inches[1] * _DPI / n_lanes
    px_per_s = inches[0] * _DPI / ax.get_xlim()[1]
    height = 0.72 if lane_px >= 8 else 0.9
    min_width = 5 / px_per_s  # a call that took (almost) no time is still a visible sliver

    def box(x0: float, x1: float, lane: int) -> list[tuple[float, float]]:
        y0, y1 = lane - height / 2, lane + height / 2
        return [(x0, y0), (x0, y1), (x1, y1), (x1, y0)]

    verts, colours, edges = [], [], []
    spans: dict[int, list[tuple[float, float]]] = {}  # what each lane shows, for the dotted lines to avoid
    for record, lane in zip(records, lanes.of, strict=True):
        x0, x1 = record.start, record.end
        if x1 - x0 < min_width:  # widen to the left: the next call in the lane starts after this one ended
            x0 = x1 - min_width
        spans.setdefault(lane, []).append((x0, x1))
        verts.append(box(x0, x1, lane))
        edges.append((1.0 if (x1 - x0) * px_per_s >= 8 else 0.6) if lane_px >= 8 else 0.0)
        if record.ok:
            colours.append(COLOURS["ok"])
        else:
            kind = "cancelled" if _error_kind(record.error or "") == "cancelled" else "failed"
            colours.append(COLOURS[kind])
            used.add(kind)
    bars = PolyCollection(verts, facecolors=colours, edgecolors="white", linewidths=edges)
    bars.set_gid("calls")
    bars.set_zorder(2)
    ax.add_collection(bars)

    # Inside a bar: failed tries, the waits between tries (retries) and before the first (a throttle's turn).
    failed_tries, retry_waits, turn_waits, ticks = [], [], [], []
    for record, lane in zip(records, lanes.of, strict=True):
        pieces = _pieces(record)
        tries = [p for p in pieces if p.kind in ("failed", "answered")]
        for piece in pieces:
            if piece.width <= 0:
                continue
            shape = box(piece.start, piece.start + piece.width, lane)
            if piece.kind == "failed" and record.ok:  # a failed try of a call that answered in the end
                failed_tries.append(shape)
            elif piece.kind == "retry":
                retry_waits.append(shape)
            elif piece.kind == "turn":
                turn_waits.append(shape)
        ticks += [[(p.start, lane - height / 2), (p.start, lane + height / 2)] for p in tries[1:]]
    for shapes, gid, face, edge, name in (
        (failed_tries, "failed tries", COLOURS["failed"], "white", "failed try"),
        (retry_waits, "waits", "#FFF1CC", COLOURS["waiting"], "waiting"),
        (turn_waits, "turns", "#E3F2FB", COLOURS["turn"], "turn"),
    ):
        if not shapes:
            continue
        used.add(name)
        hatch = None if gid == "failed tries" else ("////" if gid == "waits" else "\\\\")
        patches = PolyCollection(shapes, facecolors=face, edgecolors=edge, hatch=hatch, linewidths=0.6)
        patches.set_gid(gid)
        patches.set_zorder(3)
        ax.add_collection(patches)
    if ticks:
        used.add("attempts")
        lines = LineCollection(ticks, colors=COLOURS["waiting"], linewidths=2.5, zorder=3)
        lines.set_gid("attempts")
        ax.add_collection(lines)

    # The moment each result reached the caller; a dotted line where it was ready but held back.
    if show_delivery:
        got = [(r.delivered, lane) for r, lane in zip(records, lanes.of, strict=True) if r.delivered is not None]
        if got:
            used.add("delivered")
            xs, ys = zip(*got, strict=True)
            dots = ax.scatter(
                xs,
                ys,
                s=14 if lane_px >= 8 else 5,
                color=COLOURS["delivered"],
                edgecolors="white",
                linewidths=0.5,
                zorder=5,
                marker="o",
            )
            dots.set_gid("delivered")
            # Few calls: a dotted line from each answer to its delivery, to follow them one by one.
            # Many: only from the last call of each lane, which shows the wait for the end without the noise.
            # A line never crosses another bar of its lane: it shows only in the gaps between them.
            few = len(records) <= 100
            last: dict[int, float] = {}
            for r, lane in zip(records, lanes.of, strict=True):
                last[lane] = max(last.get(lane, r.end), r.end)
            held = []
            for r, lane in zip(records, lanes.of, strict=True):
                if r.delivered is None or (r.delivered - r.end) * px_per_s <= 6 or not (few or r.end >= last[lane]):
                    continue
                others = [span for span in spans[lane] if span[1] > r.end]
                for a, b in _gaps(r.end, r.delivered, others):
                    if (b - a) * px_per_s > 3:
                        held.append([(a, lane), (b, lane)])
            if held:
                used.add("held")
                wires = LineCollection(
                    held, colors=COLOURS["delivered"], linestyles=":", linewidths=1.1, alpha=0.7, zorder=4
                )
                wires.set_gid("held")
                ax.add_collection(wires)

    # Labels: the prompt's index, and what went wrong, where there is room. With many calls, only the ones
    # worth a look (a failure, a retry) get one. White on a dark outline: readable on a bar and on hatching.
    if lane_px >= 11:
        outline: list[patheffects.AbstractPathEffect] = [patheffects.withStroke(linewidth=2.0, foreground="#1F2A33")]
        for record, lane in zip(records, lanes.of, strict=True):
            if len(records) > _MAX_LABELS and record.ok and record.attempts <= 1:
                continue
            room = max(record.latency, min_width) * px_per_s - 6
            number = f"#{record.index}"
            if not record.ok:
                choices = [f"{number} · {_error_kind(record.error or '')}", number]
            elif record.attempts > 1:
                choices = [f"{number} · {record.attempts} tries", number]
            else:
                choices = [number]
            text = next((c for c in choices if len(c) * 6.2 <= room), "")
            if text:
                label = ax.text(
                    record.end - max(record.latency, min_width) + 4 / px_per_s,
                    lane,
                    text,
                    va="center",
                    ha="left",
                    fontsize=8,
                    color="white",
                    zorder=6,
                    clip_on=True,
                )
                label.set_path_effects(outline)

    # Lanes: worker names, or what the lanes are when calls were packed.
    kind = _worker_kind(sorted({r.worker for r in records}))
    if lanes.packed:
        ax.set_yticks([])
        workers = len({r.worker for r in records})
        ax.set_ylabel(
            f"{plural(workers, kind)};\n{n_lanes} lanes, one\nper call in flight",
            fontsize=8,
            rotation=0,
            ha="right",
            va="center",
            labelpad=6,
        )
    else:
        ax.set_yticks(range(n_lanes), lanes.names, fontsize=8)
        ax.tick_params(axis="y", length=0)


# --- the figure -------------------------------------------------------------------------------------------


def _legend_handles(used: set[str]) -> list[Any]:
    handles: list[Any] = [Patch(color=COLOURS["ok"], label="one call (#prompt)")]
    if "failed" in used or "failed try" in used:
        handles.append(Patch(color=COLOURS["failed"], label="failed call (or try)"))
    if "cancelled" in used:
        handles.append(Patch(color=COLOURS["cancelled"], label="never ran"))
    if "turn" in used:
        handles.append(
            Patch(facecolor="#E3F2FB", edgecolor=COLOURS["turn"], hatch="\\\\", label="waiting for its turn")
        )
    if "waiting" in used:
        handles.append(Patch(facecolor="#FFF1CC", edgecolor=COLOURS["waiting"], hatch="////", label="waiting to retry"))
    if "attempts" in used:
        handles.append(
            Line2D(
                [],
                [],
                color=COLOURS["waiting"],
                marker="|",
                linestyle="",
                markersize=9,
                markeredgewidth=2.5,
                label="next attempt",
            )
        )
    if "delivered" in used:
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                color=COLOURS["delivered"],
                linestyle="",
                markersize=5,
                label="result reaches the caller",
            )
        )
    if "held" in used:
        handles.append(Line2D([], [], color=COLOURS["delivered"], linestyle=":", label="ready, but held back"))
    handles.append(Line2D([], [], color=COLOURS["wall"], linestyle="--", label="end of the run (wall time)"))
    return handles


def _panel_height(report: RunReport) -> float:
    lanes = max(1, len(_lanes(report.records).names)) if report.records else 1
    return max(_MIN_PANEL, min(_MAX_PANEL, lanes * _LANE))


def draw(
    *reports: RunReport,
    title: str | None = None,
    show_delivery: bool = True,
    width: float = 10,
    baseline: RunReport | None = None,
) -> Figure:
    """Draw runs as Gantt charts, one panel each, on one shared time axis (lesson 01).

    One bar per call, one lane per worker (calls are packed into lanes when there are more than
    ``MAX_LANES`` workers). Failed calls (and failed tries of a call retried) are vermillion; orange hatching
    marks waiting to retry, blue hatching waiting for a turn (a throttle); a black dot marks when the caller
    received each result, with a dotted line when it was ready earlier but held back (``pool.map`` keeps
    answers in input order; ``gather`` hands everything over at the end). Each panel's title says how many
    times faster (or slower) its run was than ``baseline``, when the two made the same calls: by default the
    sequential run among ``reports``, else the first. In a panel, the bars are one ``PolyCollection`` (gid
    ``"calls"``) with one path per record, in index order.
    """
    if not reports:
        raise ValueError("draw() needs at least one RunReport, e.g. draw(sequential, threaded)")
    _check_reports("draw", reports)
    if baseline is not None:
        _check_reports("draw", [baseline])
    _check_width(width)
    against = _baseline(reports, baseline)
    heights = [_panel_height(r) for r in reports]
    span = max([r.wall for r in reports] + [max((c.end for c in r.records), default=0) for r in reports])
    span = max(span, 1e-3) * 1.12  # room for the last "wall" note
    plot_width = width - _LEFT - _RIGHT
    fig = TimelineFigure(figsize=(width, 1), dpi=_DPI)

    # Draw first, then place: the legend's rows (what the panels show) decide the space on top.
    used: set[str] = set()
    axes: list[Axes] = []
    for report, h in zip(reports, heights, strict=True):
        ax = fig.add_axes((0, 0, 1, 1), sharex=axes[0] if axes else None)
        if not axes:
            ax.set_xlim(0, span)
        _panel(ax, report, (plot_width, h), show_delivery, used, against)
        ax.tick_params(axis="x", labelbottom=False, labelsize=8)
        axes.append(ax)
    axes[-1].tick_params(axis="x", labelbottom=True)
    axes[-1].set_xlabel("seconds since the run started", fontsize=9)

    handles = _legend_handles(used)
    columns = len(handles) if len(handles) <= 5 else (len(handles) + 1) // 2
    legend_rows = -(-len(handles) // columns)
    top = (_TOP_TITLE if title else 0) + _TOP_LEGEND + 0.2 * (legend_rows - 1)
    total = top + sum(h + _PANEL_TITLE for h in heights) + _GAP * (len(reports) - 1) + _BOTTOM
    fig.set_size_inches(width, total)
    y = total - top
    for ax, h in zip(axes, heights, strict=True):
        y -= _PANEL_TITLE + h
        ax.set_position((_LEFT / width, y / total, plot_width / width, h / total))
        y -= _GAP
    if title:
        fig.suptitle(title, x=_LEFT / width, y=1 - 0.08 / total, ha="left", va="top", fontsize=12, fontweight="bold")
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 1 - ((_TOP_TITLE if title else 0) + 0.04) / total),
        ncols=columns,
        fontsize=8,
        frameon=False,
        handlelength=1.6,
        columnspacing=1.2,
    )
    return fig


# --- the summary table ------------------------------------------------------------------------------------

COLUMNS = (
    "run",
    "calls",
    "failed",
    "wall s",
    "speed-up",
    "sum of latencies s",
    "slowest s",
    "overlap",
    "peak in flight",
)


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if column in ("speed-up", "overlap"):
            return f"{value:.1f}×" if column == "speed-up" else f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


@dataclass(repr=False)
class Table:
    """Rows of ``RunReport.summary()``: shows as an HTML table in a notebook and as aligned text elsewhere."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: tuple[str, ...] = COLUMNS
    note: str = ""

    def _cells(self) -> list[list[str]]:
        return [[_cell(c, row.get(c, "")) for c in self.columns] for row in self.rows]

    def __str__(self) -> str:
        cells = self._cells()
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(self.columns)]

        def line(values: Sequence[str]) -> str:
            return "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
            )

        text = "\n".join([line(self.columns)] + [line(r) for r in cells]).rstrip()
        return text + (f"\n{self.note}" if self.note else "")

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>"
            + "".join(
                f'<td style="text-align:{"left" if i == 0 else "right"}">{html.escape(v)}</td>' for i, v in enumerate(r)
            )
            + "</tr>"
            for r in self._cells()
        )
        caption = f'<caption style="caption-side:bottom">{html.escape(self.note)}</caption>' if self.note else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _check_reports(name: str, reports: Sequence[Any]) -> None:
    for report in reports:
        if not isinstance(report, RunReport):
            hint = f"; for a list of reports use {name}(*reports)" if isinstance(report, list | tuple) else ""
            raise TypeError(f"{name}() takes RunReport objects (got {type(report).__name__}){hint}")


def _check_width(width: Any) -> None:
    least = _LEFT + _RIGHT + 1
    if isinstance(width, bool) or not isinstance(width, int | float) or not least <= width <= 100:
        raise ValueError(f"width is the picture's width in inches, from {least:g} to 100 (got {width!r}); 10 is usual")


def summary_table(*reports: RunReport, baseline: RunReport | None = None) -> Table:
    """One row per run: wall time, speed-up against a baseline run, failures, overlap (lesson 01).

    The speed-up is the baseline's wall time divided by this run's (by default the sequential run among
    ``reports``, else the first). The overlap is the sum of latencies divided by the wall time: how many calls
    were in flight on average.
    """
    _check_reports("summary_table", reports)
    if baseline is not None:
        _check_reports("summary_table", [baseline])
    against = _baseline(reports, baseline)
    rows = []
    for report in reports:
        row = {c: report.summary().get(c) for c in COLUMNS}
        row["speed-up"] = speedup_against(report, against)
        rows.append(row)
    note = ""
    if against is not None:
        note = (
            f"speed-up: the wall time of {against.label} divided by each run's; overlap: sum of latencies ÷ wall "
            "time, the calls in flight on average"
        )
    return Table(rows, note=note)


# --- the server's view ------------------------------------------------------------------------------------


def _steps(spans: Sequence[tuple[float, float]]) -> tuple[list[float], list[int]]:
    """Times and counts of a step function: how many spans are open from each time on (ends before starts)."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    xs, ys, now = [0.0], [0], 0
    for t, step in events:
        now += step
        if xs[-1] == t:
            ys[-1] = now
        else:
            xs.append(t)
            ys.append(now)
    return xs, ys


def _without_blips(xs: list[float], ys: list[int], shortest: float) -> tuple[list[float], list[int]]:
    """Fill dips shorter than ``shortest``: one request ending a moment before the next is sent.

    Only dips go: every peak stays exactly as it was.
    """
    ys = list(ys)
    for i in range(1, len(ys) - 1):
        if ys[i] < ys[i - 1] and ys[i] < ys[i + 1] and xs[i + 1] - xs[i] < shortest:
            ys[i] = min(ys[i - 1], ys[i + 1])
    keep = [0] + [i for i in range(1, len(ys)) if ys[i] != ys[i - 1]]
    return [xs[i] for i in keep], [ys[i] for i in keep]


def draw_server(stats: Mapping[str, Any], title: str | None = None, width: float = 10) -> Figure:
    """What the simulator saw: requests in flight and being served over time (lessons 03-04).

    ``stats`` is ``target.simulator.stats()``. The gap between the two lines is requests waiting in the
    server's queue for a free slot (its ``capacity``); with pydantic-ai's ``max_concurrency`` the in-flight
    line itself stays at the limit. Dips shorter than 0.5% of the time axis (a request ending a moment before
    the next one is sent) are smoothed out; peaks are drawn exactly.
    """
    if not isinstance(stats, Mapping):
        hint = "; for a run's report use draw(report)" if isinstance(stats, RunReport) else ""
        raise TypeError(f"draw_server() takes what target.simulator.stats() returns (got {type(stats).__name__}){hint}")
    _check_width(width)
    records = [r for r in stats.get("records", []) if r.get("received") is not None]
    fig = TimelineFigure(figsize=(width, 3.2), dpi=_DPI)
    ax = fig.add_axes((_LEFT / width, 0.17, 1 - (_LEFT + _RIGHT) / width, 0.62))
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="both", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_xlabel("seconds since the first request", fontsize=9)
    ax.set_ylabel("requests", fontsize=9)
    ax.tick_params(labelsize=8)
    fig.suptitle(title or "What the server saw", x=_LEFT / width, y=0.97, ha="left", va="top", fontsize=11)
    if not records:
        ax.text(0.5, 0.5, "no requests recorded", transform=ax.transAxes, ha="center", va="center", color="#777777")
        return fig
    t0 = min(r["received"] for r in records)
    last = max(max(r.get(k) or 0 for k in ("received", "started", "ended")) for r in records)
    flight = [(r["received"] - t0, (r.get("ended") or last) - t0) for r in records]
    served = [(r["started"] - t0, (r.get("ended") or last) - t0) for r in records if r.get("started") is not None]
    span = max(end for _, end in flight) or 1e-3
    fx, fy = _without_blips(*_steps(flight), span / 200)
    sx, sy = _without_blips(*_steps(served), span / 200)
    # Both lines on one set of times, so the queue between them can be filled.
    times = sorted(set(fx) | set(sx))
    at_f = [_value_at(fx, fy, t) for t in times]
    at_s = [_value_at(sx, sy, t) for t in times]
    ax.fill_between(
        times,
        at_s,
        at_f,
        step="post",
        color=COLOURS["queued"],
        alpha=0.6,
        linewidth=0,
        label="waiting in the server's queue",
    )
    ax.step(
        fx, fy, where="post", color=COLOURS["ok"], linewidth=1.6, label=f"in flight (peak {max(fy)})", gid="in flight"
    )
    ax.step(
        sx or [0.0],
        sy or [0],
        where="post",
        color=COLOURS["serving"],
        linewidth=1.6,
        label=f"being served (peak {max(sy or [0])})",
        gid="serving",
    )
    ax.set_xlim(0, max(fx[-1], 1e-3) * 1.02)
    ax.set_ylim(0, max(fy) * 1.15 + 0.5)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 1.2), ncols=3, fontsize=8, frameon=False)
    return fig


def _value_at(xs: Sequence[float], ys: Sequence[int], t: float) -> int:
    i = bisect.bisect_right(xs, t) - 1
    return ys[i] if i >= 0 else 0
