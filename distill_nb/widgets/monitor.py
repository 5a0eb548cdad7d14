"""RunMonitor: live loss/accuracy curves, progress with ETA, state and errors of a run, read from its directory.

Updates come from a poll of the run directory (``Run.status()`` and ``Run.metrics(since=...)``), scheduled as
an asyncio task on the kernel's own event loop: the poll runs on the kernel thread between cells and sets
widget values, which works the same on ipykernel 6 and 7 (a thread writing into an ``Output`` does not on 7,
ipywidgets #4001/#4020). Outside a running loop (plain Python) a daemon thread polls instead; it only reads
files and sets widget values. Training never waits for the monitor: it only appends lines to files.

A run that stops or fails can be resumed elsewhere (the JupyterLab sidebar, the CLI, another notebook): while
the watched run is stopped, failed or unreadable the background poll goes on slowly (every ``idle_interval``
seconds, status.json only) and follows the run again from its first record once it is queued or running.
It ends when the run completes, when its folder is deleted, on ``stop_polling()`` / ``watch()`` of another run,
and on ``close()``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import ipywidgets as W
import traitlets as T

from ..plots import curve_value
from ..safeio import number
from ._util import (
    Panel,
    buttons_say,
    elapsed_s,
    error_html,
    esc,
    fmt_eta,
    fmt_number,
    run_progress,
    smooth,
    svg_chart,
    table_html,
    thin,
)


class RunMonitor(Panel):
    """Watch a run: curves, progress, ETA, state, and the error text if it fails.

    ``RunMonitor.attach("<run id>")`` re-attaches to an existing run (e.g. after a kernel restart); the
    JupyterLab sidebar inserts exactly that line.

    Traits:
        run_id, state, step, total_steps, eta_s, examples_per_s: mirrored from status.json / metrics.jsonl.
        accuracy, teacher_accuracy, retention, agreement: the last eval record (nan before one).
        reason_spearman: the last eval's reason agreement (mean Spearman of teacher/student attributions on the
            run's probe set; nan before one, or when the run tracks no reasons).
        run_error: the run's error message when it failed.
        polls: how many polls ran (tests and latency checks read it).
    """

    run_id = T.Unicode("")
    state = T.Unicode("")
    step = T.Int(0)
    total_steps = T.Int(0)
    eta_s = T.Float(float("nan"))
    examples_per_s = T.Float(float("nan"))
    accuracy = T.Float(float("nan"))
    teacher_accuracy = T.Float(float("nan"))
    retention = T.Float(float("nan"))
    agreement = T.Float(float("nan"))
    reason_spearman = T.Float(float("nan"))
    run_error = T.Unicode("")
    polls = T.Int(0)
    interval = T.Float(0.5, help="seconds between polls (2 Hz by default)")
    idle_interval = T.Float(3.0, help="seconds between status checks of a stopped/failed/unreadable run (it may "
                            "be resumed elsewhere)")
    phase = T.Unicode("", help="status.json's phase (loading, preparing_teacher, ..., done); '' on older runs")
    progress_line = T.Unicode("", help="the progress across phases as one line (the sidebar shows the same)")
    eval_examples = T.Int(0, help="examples in the eval subset the accuracies are measured on (0: unknown)")
    smoothing = T.Float(0.0, help="EMA weight for the loss curve (0: raw)")
    overlay = T.Unicode("", help="id of an earlier run whose eval curve is drawn dashed ('' for none)")

    def __init__(self, run: Any = None, *, interval: float = 0.5, idle_interval: float = 3.0,
                 autostart: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.interval = interval
        self.idle_interval = idle_interval
        self.autostart = autostart
        self.header = W.HTML()
        self.progress = W.FloatProgress(value=0, min=0, max=1, layout=W.Layout(width="420px"))
        self.progress_text = W.HTML()
        self.smoothing_slider = W.FloatSlider(0.0, min=0.0, max=0.99, step=0.01, description="smoothing",
                                              style={"description_width": "70px"}, layout=W.Layout(width="260px"),
                                              continuous_update=False)
        self.overlay_dropdown = W.Dropdown(options=[("no earlier run", "")], value="", description="overlay",
                                           style={"description_width": "55px"}, layout=W.Layout(width="330px"))
        self.smoothing_slider.observe(lambda c: setattr(self, "smoothing", c["new"]), names=["value"])
        self.overlay_dropdown.observe(lambda c: setattr(self, "overlay", c["new"] or ""), names=["value"])
        self.observe(self._redraw, names=["smoothing", "overlay"])
        self.loss_chart = W.HTML()
        self.acc_chart = W.HTML()
        self.reason_chart = W.HTML()
        self.last_eval = W.HTML()
        self.run_error_box = W.HTML()
        self.run_traceback = W.Output()
        self.run_traceback_box = W.Accordion(children=[self.run_traceback], titles=("worker traceback",),
                                             layout=W.Layout(display="none"))
        self.children = [self.header, W.HBox([self.progress, self.progress_text]),
                         W.HBox([self.smoothing_slider, self.overlay_dropdown]),
                         W.HBox([self.loss_chart, self.acc_chart, self.reason_chart], layout=W.Layout(flex_flow="row wrap")),
                         self.last_eval, self.run_error_box, self.run_traceback_box, *self._footer()]
        self.run: Any = None
        self._overlay_evals: list[dict[str, Any]] = []
        self._task: asyncio.Task | None = None
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._listeners: list[Any] = []
        self._reset()
        if run is not None:
            self.watch(run)
        else:
            self.header.value = "<b>4. Monitor</b> — no run yet: press Start in the Train tab"

    # --- attaching -------------------------------------------------------------------------------------------
    @classmethod
    def attach(cls, run_id: str, root: str | None = None, **kwargs: Any) -> RunMonitor:
        """A monitor on the existing run ``run_id`` (under ``root`` or ``$DISTILL_NB_RUNS``)."""
        from ..runs import Run

        return cls(Run.attach(run_id, root), **kwargs)

    def _reset(self) -> None:
        self._train: dict[str, list[float]] = {"step": [], "loss": [], "kd": [], "ce": [], "attr": []}
        self._eval: list[dict[str, Any]] = []
        self._seen: set[tuple[int, str]] = set()
        self._since: int | None = None
        self._finished_reported = False
        self._redraw_all = False  # the next poll draws every chart (the records were read again)

    def watch(self, run: Any) -> None:
        """Follow ``run`` (a ``Run``) from its first record; starts polling in the background.

        Everything drawn for the previous run (charts, last eval, error, traceback) is cleared first.
        """
        self.stop_polling()
        self.run = run
        self._reset()
        self.clear()
        self.run_id = run.id
        self.eval_examples = self._eval_size(run)
        self._offer_overlays()
        self.poll()
        if self.autostart:
            self.start_polling()

    def clear(self) -> None:
        """Forget every value and view of the previous run (a new run starts from a clean monitor)."""
        nan = float("nan")
        with self.hold_trait_notifications():
            self.state, self.step, self.total_steps, self.phase, self.progress_line = "", 0, 0, "", ""
            self.eta_s = self.examples_per_s = self.accuracy = self.teacher_accuracy = nan
            self.retention = self.agreement = self.reason_spearman = nan
            self.run_error, self.eval_examples, self.polls = "", 0, 0
        self.progress.value, self.progress.max = 0, 1
        self.progress.bar_style = "info"
        self.progress_text.value = ""
        self.loss_chart.value = self.acc_chart.value = self.last_eval.value = self.run_error_box.value = ""
        self.run_traceback.outputs = ()
        self.run_traceback_box.layout.display = "none"
        self._overlay_evals = []
        self._bar = (0.0, 1.0)
        self.error = ""

    @staticmethod
    def _eval_size(run: Any) -> int:
        """The eval subset's size: the data's eval rows (counted once, no torch) capped by the config; eval
        records that carry ``eval_examples`` override it. 0 when it cannot be counted."""
        try:
            config = run.config
        except Exception:  # noqa: BLE001 - an unreadable config is reported by the poll, not here
            return 0
        try:
            from .estimate import rows as count_rows

            rows = count_rows(config)[1]
        except Exception:  # noqa: BLE001 - a missing data file: fall back to the cap
            rows = None
        cap = config.max_eval_examples
        return int(min(rows, cap) if rows and cap else rows or cap or 0)

    def _offer_overlays(self) -> None:
        """Earlier runs with evaluations, for the dashed overlay on the accuracy chart."""
        from ..runs import list_runs

        try:
            others = [r for r in list_runs(self.run.path.parent) if r.get("run_id") != self.run_id
                      and r.get("last_eval")]
        except Exception:  # noqa: BLE001 - the overlay is optional; a bad runs folder never breaks watching
            others = []
        options = [("no earlier run", "")] + [(f"{r['run_id']} (acc {fmt_number(_num(r['last_eval'], 'accuracy'), '{:.3f}')})", r["run_id"])
                                              for r in others[:30] if isinstance(r.get("run_id"), str)]
        self.overlay_dropdown.options = options
        self.overlay_dropdown.value = ""
        self.overlay = ""

    def _redraw(self, change: dict[str, Any]) -> None:
        if change["name"] == "overlay":
            self._overlay_evals = []
            if change["new"] and self.run is not None:
                from ..runs import read_metrics

                try:
                    self._overlay_evals = [m for m in read_metrics(self.run.path.parent / change["new"])
                                           if isinstance(m, dict) and m.get("split") == "eval"
                                           and _num(m, "step") is not None and _num(m, "accuracy") is not None]
                except Exception as exc:  # noqa: BLE001
                    self.show_error(exc)
        if self.run is not None:
            self.loss_chart.value = self.loss_svg()
            self.acc_chart.value = self.accuracy_svg()

    def on_finish(self, callback: Any) -> None:
        """Call ``callback(monitor)`` once when the run leaves queued/running."""
        self._listeners.append(callback)

    # --- the poll: read the run dir, set widget values ------------------------------------------------------
    def poll(self) -> bool:
        """Read new status/metrics and update the widgets. Returns True while the run is queued/running."""
        if self.run is None:
            return False
        try:
            return self._poll()
        except Exception as exc:  # noqa: BLE001 - shown in the widget, the poll keeps going
            self.show_error(exc)
            return True

    def _poll(self) -> bool:
        status = self.run.status()
        new = self.run.metrics(since=self._since)
        fresh = 0
        for rec in new:
            rec_step = _num(rec, "step")
            if rec_step is None:  # no step: the record cannot be placed on a curve (nor told apart from others)
                continue
            key = (int(rec_step), str(rec.get("split")))
            if key in self._seen:
                continue
            self._seen.add(key)
            fresh += 1
            if rec.get("split") == "train":
                for k in self._train:
                    self._train[k].append(curve_value(rec, k))
                if _num(rec, "examples_per_s") is not None:
                    self.examples_per_s = _num(rec, "examples_per_s")
            elif rec.get("split") == "eval":
                self._eval.append(rec)
        if self._seen:
            # records of the newest step may still be coming (train first, then eval): re-read that step
            self._since = max(s for s, _ in self._seen) - 1
        state = str(status.get("state", ""))
        total = max(0, int(_num(status, "total_steps") or 0))
        step = max(0, int(_num(status, "step") or 0))
        if self._train["step"]:
            step = max(step, int(self._train["step"][-1]))
        text, value, top = run_progress({**status, "step": step})
        with self.hold_trait_notifications():
            self.state, self.total_steps, self.step = state, total, step
            self.phase = str(status.get("phase") or "")
            self.progress_line = text
            self._bar = (value, top)
            eta = _num(status, "eta_s")
            self.eta_s = eta if eta is not None and state == "running" else float("nan")
            if self._eval:
                last = self._eval[-1]
                for k in ("accuracy", "teacher_accuracy", "retention", "agreement", "reason_spearman"):
                    if _num(last, k) is not None:  # None / not a number: not measured, the last value stays
                        setattr(self, k, _num(last, k))
                size = _num(last, "eval_examples")
                if size is not None and size >= 1 and size.is_integer():
                    self.eval_examples = int(size)
            elif _num(status, "teacher_accuracy") is not None:
                self.teacher_accuracy = _num(status, "teacher_accuracy")
            self.run_error = str(status.get("error") or "") if state in ("failed", "unreadable") else ""
            self.polls += 1
        self._render(status, charts=bool(fresh) or self.polls == 1 or self._redraw_all)
        self._redraw_all = False
        active = state in ("queued", "running")
        if not active and not self._finished_reported:
            self._finished_reported = True
            for callback in list(self._listeners):
                try:
                    callback(self)
                except Exception as exc:  # noqa: BLE001
                    self.show_error(exc)
        return active

    def _render(self, status: dict[str, Any], charts: bool) -> None:
        colour = {"running": "#2a7ae2", "completed": "#2e8b57", "failed": "#c0392b", "stopped": "#b8860b",
                  "queued": "#777", "unreadable": "#c0392b"}.get(self.state, "#333")
        self.header.value = (f"<b>Run <code>{esc(self.run_id)}</code></b> &nbsp; <span style='color:{colour};"
                             f"font-weight:600'>{esc(self.state)}</span> &nbsp; "
                             f"<span style='color:#555'>{esc(buttons_say(str(status.get('message') or '')))}</span>"
                             + (f"<br><span style='color:#777;font-size:0.9em'>{esc(status['data_note'])}</span>"
                                if status.get("data_note") else ""))  # e.g. the hold-out of a single file
        value, top = getattr(self, "_bar", (0.0, 1.0))
        self.progress.max = max(top, 1)
        self.progress.value = min(value, self.progress.max)
        self.progress.bar_style = {"completed": "success", "failed": "danger", "stopped": "warning",
                                   "unreadable": "danger"}.get(self.state, "info")
        speed = f" · {self.examples_per_s:.0f} ex/s" if math.isfinite(self.examples_per_s) else ""
        elapsed = elapsed_s(status)
        self.progress_text.value = (f"&nbsp;{esc(self.progress_line)}{speed}"
                                    + (f" · elapsed {fmt_eta(elapsed)}" if elapsed is not None else ""))
        if charts:
            self.loss_chart.value = self.loss_svg()
            self.acc_chart.value = self.accuracy_svg()
            self.reason_chart.value = self.reason_svg()
            if self._eval:
                e = self._eval[-1]
                n = f" on {self.eval_examples} eval examples" if self.eval_examples else ""
                self.last_eval.value = table_html([
                    ("last eval (step)", fmt_number(e.get("step"), "{:.0f}")),
                    (f"student accuracy{n}", fmt_number(e.get("accuracy"), "{:.4f}")),
                    (f"teacher accuracy{n}", fmt_number(e.get("teacher_accuracy"), "{:.4f}")),
                    ("retention (student / teacher)", fmt_number(e.get("retention"), "{:.1%}")),
                    ("agreement with teacher", fmt_number(e.get("agreement"), "{:.1%}"))]
                    + ([("reason agreement (Spearman, probe)", fmt_number(e.get("reason_spearman"), "{:.3f}"))]
                       if _num(e, "reason_spearman") is not None else []))
        self.run_error_box.value = error_html(("the run's files cannot be read: " if self.state == "unreadable" else "the run failed: ")
                                    + buttons_say(self.run_error)) if self.run_error else ""
        tb = status.get("traceback") if self.state == "failed" else None
        self.run_traceback_box.layout.display = "" if tb else "none"
        if tb and not self.run_traceback.outputs:
            self.run_traceback.outputs = ({"output_type": "stream", "name": "stderr", "text": str(tb)},)

    def loss_svg(self) -> str:
        xs = self._train["step"]
        series = []
        for name, colour in (("loss", "#2a7ae2"), ("kd", "#e67e22"), ("ce", "#27ae60"), ("attr", "#16a085")):
            ys = self._train[name]
            if any(math.isfinite(y) for y in ys):  # ce/attr are absent (nan) when their weight is 0
                series.append((name, *thin(xs, smooth(ys, self.smoothing)), colour))
        title = "training loss" + (f" (smoothed {self.smoothing:.2f})" if self.smoothing else "")
        return svg_chart(series, title=title)

    def accuracy_svg(self) -> str:
        xs = [curve_value(e, "step") for e in self._eval]
        series = [("student acc", xs, [curve_value(e, "accuracy") for e in self._eval], "#2a7ae2"),
                  ("agreement", xs, [curve_value(e, "agreement") for e in self._eval], "#8e44ad")]
        hl = [(self.teacher_accuracy, "teacher", "#c0392b")] if math.isfinite(self.teacher_accuracy) else []
        if not xs:
            series = []
        if self._overlay_evals:
            series.append((f"{self.overlay} acc", [curve_value(e, "step") for e in self._overlay_evals],
                           [curve_value(e, "accuracy") for e in self._overlay_evals], "#7f8c8d", True))
        n = f" ({self.eval_examples} examples)" if self.eval_examples else ""
        return svg_chart(series, title=f"eval accuracy{n}", y_range=(0.0, 1.0), hlines=hl)

    def reason_svg(self) -> str:
        """Reason agreement per eval: mean Spearman, top-k overlap and sign agreement of the student's token
        attributions with the teacher's on the probe set (``reason_*`` keys; absent when tracking is off)."""
        keys = ("reason_spearman", "reason_topk", "reason_sign")
        probed = [e for e in self._eval if any(k in e for k in (*keys, "reason_s"))]  # the probe ran at this eval
        tracked = [e for e in probed if any(_num(e, k) is not None for k in keys)]
        xs = [curve_value(e, "step") for e in tracked]
        series = [(label, xs, [curve_value(e, key) for e in tracked], colour) for label, key, colour in
                  (("Spearman", "reason_spearman", "#16a085"), ("top-k overlap", "reason_topk", "#d35400"),
                   ("sign", "reason_sign", "#7f8c8d"))] if xs else []
        low = min([0.0] + [y for _, _, ys, _ in series for y in ys if math.isfinite(y)])
        title = ("reason agreement (probe)" if xs or not self._eval else
                 "reason agreement (probe): nothing comparable yet" if probed else
                 "reason agreement: off (reason_probe=0)")
        return svg_chart(series, title=title, y_range=(low, 1.0))

    # --- scheduling -------------------------------------------------------------------------------------------
    def start_polling(self) -> None:
        """Poll every ``interval`` s while the run is queued/running (then every ``idle_interval`` s, status.json
        only, while it is stopped/failed/unreadable and may be resumed elsewhere): an asyncio task on the
        kernel's loop if one is running on this thread, else a daemon thread."""
        self.stop_polling()
        halt = self._halt = threading.Event()  # one per loop: a restart never revives an old loop
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            try:
                candidate = asyncio.get_event_loop()
                loop = candidate if candidate.is_running() else None
            except RuntimeError:
                loop = None
        if loop is not None:
            self._task = loop.create_task(self._poll_forever(halt))
        else:
            self._thread = threading.Thread(target=self._thread_loop, args=(halt,),
                                            name=f"RunMonitor-{self.run_id}", daemon=True)
            self._thread.start()

    def stop_polling(self, timeout: float | None = 5.0) -> None:
        """End the background poll (the thread is joined, up to ``timeout`` s, unless this is that thread)."""
        self._halt.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(timeout)

    def close(self) -> None:
        """Stop polling and close the widget."""
        if hasattr(self, "_halt"):  # also from __del__ of a monitor whose __init__ failed
            self.stop_polling()
        super().close()

    def _tick(self, idle: bool) -> tuple[float | None, bool]:
        """One step of the background poll: (seconds to the next step or None to end, idle).

        ``idle``: the run was found stopped/failed/unreadable; only its status is read (cheap) until it is queued
        or running again (resumed elsewhere), then it is followed again from its first record.
        """
        if idle:
            if not self._reactivated():
                if self._resumable():
                    return self.idle_interval, True
                self.poll()  # the last look before the poll ends (e.g. the run was deleted): shown, not left stale
                return None, True
            self._rewatch()
        if self.poll():
            return self.interval, False
        return (self.idle_interval if self._resumable() else None), True

    def _resumable(self) -> bool:
        """Whether the watched run may still become active (resumed elsewhere): stopped, failed or unreadable, and
        its folder still there."""
        if self.run is None or self.state not in ("stopped", "failed", "unreadable"):
            return False
        try:
            return self.run.path.is_dir()
        except Exception:  # noqa: BLE001 - a run handle without a folder: nothing to wait for
            return False

    def _reactivated(self) -> bool:
        """Whether the run is queued/running again (reads status.json only)."""
        try:
            return str(self.run.status().get("state", "")) in ("queued", "running")
        except Exception:  # noqa: BLE001 - unreadable now: keep waiting
            return False

    def _rewatch(self) -> None:
        """The run was resumed elsewhere: forget what was read (a resume rewrites the metrics from its checkpoint)
        and follow it again; the overlay choice stays."""
        self._reset()
        self._redraw_all = True
        self.last_eval.value = ""
        self.run_traceback.outputs = ()
        self.error = ""

    async def _poll_forever(self, halt: threading.Event | None = None) -> None:
        halt = halt or self._halt
        idle = False
        while not halt.is_set():
            delay, idle = self._tick(idle)
            if delay is None or halt.is_set():
                return
            await asyncio.sleep(delay)

    def _thread_loop(self, halt: threading.Event | None = None) -> None:
        halt = halt or self._halt
        idle = False
        while not halt.is_set():
            delay, idle = self._tick(idle)
            if delay is None:
                return
            halt.wait(delay)

    @property
    def polling(self) -> bool:
        """Whether the background poll is on (also while it only checks a stopped run's status)."""
        return (self._task is not None and not self._task.done()) or (
            self._thread is not None and self._thread.is_alive())

    @property
    def watching(self) -> bool:
        """Whether the background poll follows an active (queued/running) run at full rate."""
        return self.polling and self.state in ("queued", "running")

    async def wait_async(self, timeout: float | None = None) -> str:
        """``await monitor.wait_async()`` in a cell: wait for the run while the widgets keep updating."""
        self._need_run("wait_async")
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() and (deadline is None or time.time() < deadline):
            await asyncio.sleep(self.interval)
        return self.state

    def wait(self, timeout: float | None = None) -> str:
        """Block until the run finishes (widgets update when it returns); prefer ``await wait_async()``."""
        self._need_run("wait")
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() and (deadline is None or time.time() < deadline):
            time.sleep(self.interval)
        return self.state

    def _need_run(self, verb: str) -> None:
        if self.run is None:
            raise RuntimeError(f"this monitor shows no run, so there is nothing to {verb.split('_')[0]} for: run the "
                               "launch cell first (or, after a kernel restart, RunMonitor.attach(run_id); "
                               "distill_nb.list_runs() shows the ids).")

    # --- static snapshots -------------------------------------------------------------------------------------
    def snapshot_html(self) -> str:
        """Curves and numbers as self-contained HTML, to keep in a saved notebook."""
        self.poll()
        return (f"<div>{self.header.value}<div>{self.progress_text.value}</div>"
                f"<div style='display:flex;flex-wrap:wrap;gap:8px'>{self.loss_svg()}{self.accuracy_svg()}"
                f"{self.reason_svg()}</div>"
                f"{self.last_eval.value}{self.run_error_box.value}</div>")

    def figure(self) -> Any:
        """The curves as a matplotlib Figure (``distill_nb.plots.run_figure``)."""
        from .. import plots

        return plots.run_figure(self.run.metrics())

    def __repr__(self) -> str:
        if self.run is None:
            return "RunMonitor(no run)"
        acc = f", accuracy {self.accuracy:.4f} (retention {100 * self.retention:.1f}%)" if math.isfinite(
            self.accuracy) else ""
        err = f", error: {self.run_error}" if self.run_error else ""
        return (f"RunMonitor({self.run_id!r}: {self.state}, step {self.step}/{self.total_steps}, "
                f"ETA {fmt_eta(self.eta_s)}{acc}{err})")


def _num(record: Any, key: str) -> float | None:
    """``record[key]`` as a finite float; None when it is missing, None ("not measured", how NaN is stored), a
    string, a bool, NaN/inf or an int too large for a float."""
    return number(record.get(key)) if isinstance(record, dict) else None


__all__ = ["RunMonitor"]
