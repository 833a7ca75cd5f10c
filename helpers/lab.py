"""The interactive lab: choose workers, order, latency and faults, press Run, watch the calls land (lab notebook).

``Lab(target)`` builds the panel; display it as the last line of a cell. A run happens on a background thread, so
the notebook stays responsive: answers appear as they arrive, a progress bar and the number of calls in flight
update live, and the timeline and summary table are drawn at the end. Everything the panel shows goes to its own
output areas, never to whichever cell happens to be running.
"""

from __future__ import annotations

import base64
import html
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from . import runs
from .calls import ask, ask_async
from .timeline import draw, summary_table

__all__ = ["STRATEGY_CHOICES", "Lab"]

STRATEGY_CHOICES = {
    "sequential": "sequential",
    "threads": "threads (ThreadPoolExecutor)",
    "asyncio": "asyncio (gather / as_completed)",
    "pydantic-ai": "pydantic-ai agents (asyncio)",
    "all": "all four, side by side",
}
RATE_LIMIT_RPM = 20  # small enough that a few runs in a row meet it
HANG_TIMEOUT = 3.0  # client timeout while hangs are switched on: a hung call fails after this long
CANCEL_WAIT = 0.5  # after Cancel, wait this long for calls in flight, then stop without them


def _set(control: Any, name: str, value: Any, provider_cap: int | None) -> None:
    """Give a control its starting value, or say what it accepts (a widget would clamp it or fail deep down)."""
    if isinstance(control, widgets.Checkbox):
        if not isinstance(value, bool):
            raise ValueError(f"{name} is switched on or off: True or False (got {value!r})")
    elif hasattr(control, "options"):  # a choice: (label, value) pairs
        allowed = [choice for _, choice in control.options]
        if value not in allowed:
            raise ValueError(f"{name} must be one of: {', '.join(map(repr, allowed))} (got {value!r})")
    else:
        whole = isinstance(control, widgets.IntSlider | widgets.BoundedIntText)
        number = int if whole else int | float
        if isinstance(value, bool) or not isinstance(value, number) or not control.min <= value <= control.max:
            kind = "a whole number" if whole else "a number"
            why = ""
            if name == "workers" and provider_cap is not None:
                why = f": against a real provider the quota guard allows at most {provider_cap} calls in flight"
            elif name == "prompts" and isinstance(value, int) and value > control.max:
                why = f"; Lab(target, max_prompts={value}) allows more"
            low, high = (control.min, control.max) if whole else (f"{control.min:g}", f"{control.max:g}")
            raise ValueError(f"{name} must be {kind} from {low} to {high} (got {value!r}){why}")
    control.value = value


def _png_output(figure: Any) -> dict[str, Any]:
    """A display_data output for an Output widget: PNG as base64 text, as a browser expects it.

    (``Output.append_display_data`` would store the raw bytes, which the browser shows as a broken image.)
    """
    png = figure._repr_png_()
    return {
        "output_type": "display_data",
        "data": {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": repr(figure)},
        "metadata": {},
    }


class Lab:
    """The lab panel. Its widgets are attributes, so a test (or a curious learner) can set and press them."""

    def __init__(
        self, target: Any, *, max_prompts: int = 30, show: tuple[str, ...] | None = None, **values: Any
    ) -> None:
        """``show`` names the controls to display (all by default), e.g. ``show=("workers",)`` for a small panel
        inside a lesson; ``values`` set starting values, e.g. ``prompts=9, latency=0.4, profile="fixed"``."""
        if not isinstance(getattr(target, "model", None), str) or not callable(getattr(target, "client", None)):
            raise ValueError(f"Lab needs where calls go, as helpers.connect() returns it (got {target!r:.60})")
        if isinstance(max_prompts, bool) or not isinstance(max_prompts, int) or not 1 <= max_prompts <= 1000:
            raise ValueError(f"max_prompts must be a whole number from 1 to 1000 (got {max_prompts!r})")
        self.target = target
        self.real_provider = not getattr(target, "is_simulator", False)
        cap = target.max_in_flight or 10
        style = {"description_width": "110px"}
        layout = widgets.Layout(width="340px")

        self.prompts = widgets.IntSlider(6, min=1, max=max_prompts, description="prompts", style=style, layout=layout)
        self.strategy = widgets.Dropdown(
            options=[(label, key) for key, label in STRATEGY_CHOICES.items()],
            value="threads",
            description="strategy",
            style=style,
            layout=layout,
        )
        self.workers = widgets.IntSlider(3, min=1, max=min(10, cap), description="workers", style=style, layout=layout)
        self.order = widgets.ToggleButtons(
            options=[("input order", "input"), ("completion order", "completion")],
            value="input",
            description="answers in",
            style={"description_width": "110px", "button_width": "140px"},
        )
        self.profile = widgets.Dropdown(
            options=[("fixed", "fixed"), ("uniform (±50%)", "uniform"), ("long tail", "longtail")],
            value="uniform",
            description="latency profile",
            style=style,
            layout=layout,
        )
        self.latency = widgets.FloatSlider(
            0.5, min=0.1, max=2.0, step=0.1, description="latency (s)", style=style, layout=layout
        )
        self.fail_rate = widgets.FloatSlider(
            0.0, min=0.0, max=0.5, step=0.05, description="failure rate", style=style, layout=layout
        )
        wide = widgets.Layout(width="auto")
        self.rate_limit = widgets.Checkbox(
            False, description=f"rate limit ({RATE_LIMIT_RPM} requests/min)", indent=False, layout=wide
        )
        self.hangs = widgets.Checkbox(
            False, description=f"hangs (the client gives up after {HANG_TIMEOUT:g} s)", indent=False, layout=wide
        )
        self.seed = widgets.BoundedIntText(0, min=0, max=10**6, description="seed", style=style, layout=layout)
        self.compare = widgets.Checkbox(True, description="compare with the previous runs", indent=False, layout=wide)
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.cancel_button = widgets.Button(description="Cancel", button_style="warning", icon="stop", disabled=True)
        self.progress = widgets.IntProgress(0, min=0, max=1, description="calls finished", style=style, layout=layout)
        self.status = widgets.HTML("Ready. Choose the settings and press <b>Run</b>.")
        self.answers = widgets.HTML("")
        self.picture = widgets.Output()
        self.note = widgets.HTML("")

        if self.real_provider:
            self.note.value = (
                f"<i>Real provider: at most {cap} workers (each call in flight is a slot of your quota), and "
                "latency and faults are the provider's own, so those controls are off.</i>"
            )
            for control in (self.profile, self.latency, self.fail_rate, self.rate_limit, self.hangs, self.seed):
                control.disabled = True

        self.reports: list[runs.RunReport] = []
        self.report: runs.RunReport | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._finished = 0
        self._lines: list[str] = []
        self.run_button.on_click(lambda _: self.start())
        self.cancel_button.on_click(lambda _: self.cancel())

        named = {
            "prompts": self.prompts, "strategy": self.strategy, "workers": self.workers, "order": self.order,
            "profile": self.profile, "latency": self.latency, "seed": self.seed, "fail_rate": self.fail_rate,
            "rate_limit": self.rate_limit, "hangs": self.hangs,
        }  # fmt: skip
        if isinstance(show, str):  # show="workers": one name, meant as show=("workers",)
            show = (show,)
        unknown = sorted(set(show or ()) - set(named)) + sorted(set(values) - set(named))
        if unknown:
            raise ValueError(f"unknown lab control(s): {', '.join(unknown)}; known: {', '.join(named)}")
        for name, value in values.items():
            _set(named[name], name, value, cap if self.real_provider else None)
        shown = set(show) if show is not None else set(named)
        main = [w for key, w in named.items() if key in shown and key not in ("fail_rate", "rate_limit", "hangs")]
        fault_controls = [w for key, w in named.items() if key in shown and key in ("fail_rate", "rate_limit", "hangs")]
        columns = [widgets.VBox(main)]
        if fault_controls:
            columns.append(widgets.VBox([widgets.HTML("<b>Faults</b> (injected by the simulator)"), *fault_controls]))
        buttons = widgets.HBox([self.run_button, self.cancel_button, self.compare])
        self.panel = widgets.VBox(
            [
                widgets.HTML("<h3 style='margin:0'>Parallel LLM calls lab</h3>"),
                self.note,
                widgets.HBox(columns),
                buttons,
                widgets.HBox([self.progress, self.status]),
                widgets.HTML("<b>Answers, in the order your code receives them</b>"),
                self.answers,
                self.picture,
            ]
        )

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.panel)

    # --- running ------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        """Start a run with the current settings (what the Run button does); False if one is already going."""
        if self.running:
            self.status.value = "A run is already going: wait for it to finish, or press <b>Cancel</b>."
            return False
        self._cancel.clear()
        self.error = None
        self.run_button.disabled = True
        self.cancel_button.disabled = False
        self._lines = []
        self.answers.value = ""
        self.progress.value = 0
        self._thread = threading.Thread(target=self._run, name="lab-run", daemon=True)
        self._thread.start()
        return True

    def cancel(self) -> None:
        """Stop starting new calls; calls already sent finish, and every answer that arrived is kept."""
        if self.running:
            self._cancel.set()
            self.cancel_button.disabled = True
            self.status.value = "Cancelling: no new calls start; calls already sent are finishing…"

    def wait(self, timeout: float = 60.0) -> runs.RunReport | None:
        """Wait for the current run to finish (for tests and scripts); returns its report."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the lab run did not finish within {timeout:g} s")
        return self.report

    def _prepare_simulator(self) -> float:
        """Apply the panel's latency and fault settings to the simulator; returns the client timeout."""
        if self.real_provider:
            return 60.0
        kinds = ["500"] + (["hang"] if self.hangs.value else [])
        fail_rate = self.fail_rate.value if self.fail_rate.value > 0 else (0.1 if self.hangs.value else 0.0)
        self.target.simulator.configure(
            seed=int(self.seed.value),
            profile=self.profile.value,
            latency=float(self.latency.value),
            fail_rate=float(fail_rate),
            fail_kinds=kinds,
            rpm=RATE_LIMIT_RPM if self.rate_limit.value else None,
            hang_seconds=HANG_TIMEOUT + 2,
        )
        return HANG_TIMEOUT if self.hangs.value else 30.0

    def _run(self) -> None:
        saved = None if self.real_provider else self.target.simulator.config()
        try:
            timeout = self._prepare_simulator()
            prompts = [f"Reply: answer {i}" for i in range(self.prompts.value)]
            chosen = self.strategy.value
            plan = ["sequential", "threads", "asyncio", "pydantic-ai"] if chosen == "all" else [chosen]
            new_reports = []
            for number, strategy in enumerate(plan, start=1):
                if self._cancel.is_set():
                    break
                label = f" ({number}/{len(plan)}: {strategy})" if len(plan) > 1 else ""
                self._lines = []
                self._finished = 0
                self.progress.max = max(1, len(prompts))
                self.progress.value = 0
                report = self._one_run(strategy, prompts, timeout, label)
                new_reports.append(report)
            self.reports.extend(new_reports)
            self.report = new_reports[-1] if new_reports else None
            shown = new_reports if len(new_reports) > 1 or not self.compare.value else self.reports[-3:]
            if shown:
                self.picture.outputs = (_png_output(draw(*shown, title="Your runs on one time axis")),)
                self.picture.append_display_data(summary_table(*shown))
            done = "Cancelled" if self._cancel.is_set() else "Done"
            kept = sum(r.ok for r in self.report.records) if self.report else 0
            self.status.value = (
                f"{done} (run {len(self.reports)}): {kept} answers kept. Change a setting and run again to compare."
            )
        except Exception as exc:  # shown in the panel, never lost in another cell
            self.error = exc
            self.status.value = f"<span style='color:#b00'>The run failed: {html.escape(str(exc))}</span>"
        finally:
            if saved is not None:  # leave the simulator as the lesson had it
                saved.pop("api_key", None)
                try:
                    self.target.simulator.configure(**saved)
                except Exception as exc:
                    self.error = self.error or exc
            self.run_button.disabled = False
            self.cancel_button.disabled = True

    def _one_run(self, strategy: str, prompts: list[str], timeout: float, label: str) -> runs.RunReport:
        order = self.order.value
        workers = int(self.workers.value)
        on_result = self._receiver(label)
        if strategy in ("sequential", "threads"):
            with self.target.client(timeout=timeout, connections=max(1, workers)) as client:
                call = self._counted(lambda prompt: ask(client, self.target.model, prompt))
                if strategy == "sequential":  # one worker thread, so that Cancel need not wait for a call
                    report = runs.run_threads(
                        call, prompts, workers=1, on_result=on_result, cancel=self._cancel, abandon_after=CANCEL_WAIT
                    )
                    report.strategy, report.workers, report.label = "sequential", 1, "sequential"
                    return report
                return runs.run_threads(
                    call,
                    prompts,
                    workers=workers,
                    order=order,
                    on_result=on_result,
                    cancel=self._cancel,
                    abandon_after=CANCEL_WAIT,
                )
        if strategy == "asyncio":

            async def go() -> runs.RunReport:
                async with self.target.async_client(timeout=timeout, connections=workers) as client:
                    acall = self._counted_async(lambda prompt: ask_async(client, self.target.model, prompt))
                    return await runs.run_async(
                        acall, prompts, limit=workers, order=order, on_result=on_result, cancel=self._cancel
                    )

            return runs.run_in_new_loop(go())

        from pydantic_ai import Agent

        async def go_agent() -> runs.RunReport:
            async with Agent(self.target.chat_model()) as agent:

                async def run_agent(prompt: str) -> Any:
                    return (await agent.run(prompt)).output

                report = await runs.run_async(
                    self._counted_async(run_agent),
                    prompts,
                    limit=workers,
                    order=order,
                    on_result=on_result,
                    cancel=self._cancel,
                )
                report.strategy, report.label = "agent-asyncio", f"pydantic-ai ({workers} in flight)"
                return report

        return runs.run_in_new_loop(go_agent())

    # --- live display ---------------------------------------------------------------------------------------

    def _counted(self, call: Callable[[str], Any]) -> Callable[[str], Any]:
        def counted(prompt: str) -> Any:
            self._step(+1)
            try:
                return call(prompt)
            finally:
                self._step(-1)

        return counted

    def _counted_async(self, acall: Callable[[str], Any]) -> Callable[[str], Any]:
        async def counted(prompt: str) -> Any:
            self._step(+1)
            try:
                return await acall(prompt)
            finally:
                self._step(-1)

        return counted

    def _step(self, change: int) -> None:
        with self._lock:
            self._in_flight += change
            in_flight = self._in_flight
            if change < 0:
                self._finished += 1
            finished = self._finished
        self.progress.value = finished
        self.status.value = f"Running: <b>{in_flight}</b> call(s) in flight now, {finished} finished"

    def _receiver(self, label: str) -> Callable[[runs.CallRecord], None]:
        def received(record: runs.CallRecord) -> None:
            if record.ok:
                text = html.escape(str(record.answer))
                line = f"#{record.index} → {text} <span style='color:#777'>({record.latency:.2f} s)</span>"
            else:
                line = f"#{record.index} → <span style='color:#c0392b'>{html.escape(str(record.error))[:90]}</span>"
            with self._lock:
                self._lines.append(line)
                lines = list(self._lines)
            self.answers.value = (
                "<div style='font-family:monospace;font-size:90%;max-height:14em;overflow:auto;line-height:1.4'>"
                + label
                + "<br>".join(lines)
                + "</div>"
            )

        return received
