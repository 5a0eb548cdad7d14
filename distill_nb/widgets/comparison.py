"""Comparison: the DistilBERT-style teacher-vs-student table (params, MB, latency, accuracy, retention) + bars."""

from __future__ import annotations

import math
from typing import Any

import ipywidgets as W
import traitlets as T

from ._util import Panel, esc, guarded, note_html


class Comparison(Panel):
    """Measure a finished run's teacher and student side by side (``report.compare_run``).

    Traits:
        report: the ``report.Report`` (None before Measure).
    """

    report = T.Any(None, allow_none=True)

    def __init__(self, run: Any = None, *, max_eval: int | None = 200, repeats: int = 3, **kwargs: Any):
        super().__init__(**kwargs)
        self.run_path: Any = None
        self.repeats = repeats
        self.max_eval = W.BoundedIntText(max_eval or 0, min=0, max=10**7, description="eval cap (0: all)",
                                         style={"description_width": "110px"}, layout=W.Layout(width="230px"))
        self.measure_button = W.Button(description="Measure", icon="tachometer", button_style="primary")
        self.status = W.HTML(note_html("finish a run first, then press Measure"))
        self.table = W.HTML()
        # hidden until there is a chart: an empty Image shows as a broken image
        self.chart = W.Image(format="png", layout=W.Layout(max_width="900px", display="none"))
        self.measure_button.on_click(lambda _: self.measure())
        # two students side by side (e.g. with and without alpha_attr): accuracy, reasons, faithfulness
        box = {"style": {"description_width": "70px"}, "layout": W.Layout(width="300px")}
        self.run_a = W.Text("", description="student A", placeholder="run id or folder", **box)
        self.run_b = W.Text("", description="student B", placeholder="run id or folder", **box)
        self.students_button = W.Button(description="Compare students", icon="balance-scale")
        self.students_status = W.HTML()
        self.students_table = W.HTML()
        self.students = None  # the last compare_students() DataFrame
        self.students_button.on_click(lambda _: self.compare_students())
        self.children = [W.HTML("<b>7. Compare</b> — size, latency, accuracy and retention, as DistilBERT reports "
                                "them"), W.HBox([self.max_eval, self.measure_button]), self.status, self.table,
                         self.chart,
                         W.HTML("<b>Two students</b> — accuracy, reason agreement with the teacher (Spearman of "
                                "token attributions) and faithfulness of their own attributions, on the same "
                                "eval texts"),
                         W.HBox([self.run_a, self.run_b, self.students_button]), self.students_status,
                         self.students_table, *self._footer()]
        if run is not None:
            self.set_run(run)

    def clear(self) -> None:
        """Forget the previous run's report (a new run starts without one)."""
        self.run_path, self.report = None, None
        self.table.value = ""
        self.chart.layout.display = "none"
        self.chart.value = b""
        self.status.value = note_html("finish a run first, then press Measure")
        self.error = ""

    def set_run(self, run: Any) -> None:
        from ..config import DistillConfig
        from .attribution import _run_path

        self.clear()
        self.run_path = _run_path(run)
        try:  # the same eval subset as the run's own evaluations, so accuracies agree between tabs
            self.max_eval.value = DistillConfig.from_json(self.run_path / "config.json").max_eval_examples or 0
        except Exception:  # noqa: BLE001 - Measure reports an unreadable config
            pass
        self.status.value = note_html(f"run <code>{esc(self.run_path.name)}</code>: press Measure (loads both "
                                      "models and times them on this machine)")
        if not self.run_a.value:
            self.run_a.value = str(self.run_path)

    @guarded
    def measure(self) -> Any:
        from ..report import compare_run

        if self.run_path is None:
            raise ValueError("no run: finish a run (or set_run(run_id)) before measuring.")
        from ._util import quiet_loading

        self.status.value = note_html("measuring…")
        with quiet_loading():
            report = compare_run(self.run_path, max_eval=self.max_eval.value or None, repeats=self.repeats)
        self.show(report)
        subset = f"the first {self.max_eval.value} eval examples" if self.max_eval.value else "the whole eval split"
        self.status.value = note_html(f"device {esc(report.device)}; accuracy on {subset} of {esc(report.data)}")
        return report

    @guarded
    def compare_students(self, a: Any = None, b: Any = None, *, method: str = "input_x_gradient") -> Any:
        """``fidelity.compare_students`` on the two runs (the boxes' values when not given); shows the table."""
        from ..fidelity import compare_students

        a, b = a or self.run_a.value.strip(), b or self.run_b.value.strip()
        if not a or not b:
            raise ValueError("give two finished runs (run ids or folders), e.g. one with alpha_attr=0 and one "
                             "with alpha_attr>0.")
        self.students_status.value = note_html("attributing both students and their teachers…")
        frame = compare_students([a, b], max_eval=self.max_eval.value or None, method=method)
        self.students = frame
        self.students_table.value = students_html(frame)
        self.students_status.value = note_html(f"{int(frame['examples'].iloc[0])} eval texts, {esc(method)}")
        return frame

    def show(self, report: Any) -> None:
        from .. import plots

        self.report = report
        self.table.value = report_html(report)
        self.chart.value = plots.to_png(plots.report_figure(report.to_frame()), dpi=80)
        self.chart.layout.display = ""

    def __repr__(self) -> str:
        return str(self.report) if self.report is not None else "Comparison(not measured yet)"


def report_html(report: Any) -> str:
    """The DistilBERT-style table with params %, speed-up and retention %."""
    frame = report.to_frame()
    cols = [("params", "params", lambda v: f"{v / 1e6:.2f}M"), ("params_%", "params %", lambda v: f"{v:.0f}%"),
            ("mb", "MB", lambda v: f"{v:.1f}"), ("latency_b1_ms", "latency b1 (ms)", lambda v: f"{v:.1f}"),
            ("latency_b32_ms", "latency b32 (ms)", lambda v: f"{v:.1f}"),
            ("speedup_b32", "speed-up", lambda v: f"{v:.2f}x"), ("accuracy", "accuracy", lambda v: f"{v:.4f}"),
            ("retention_%", "retention", lambda v: f"{v:.1f}%")]
    cols = [c for c in cols if c[0] in frame.columns]
    head = "<th></th>" + "".join(f"<th style='padding:3px 8px;border-bottom:1px solid #999'>{esc(n)}</th>"
                                 for _, n, _ in cols)
    rows = []
    for name, r in frame.iterrows():
        cells = "".join(f"<td style='padding:3px 8px;text-align:right'>{_cell(r[k], f)}</td>" for k, _, f in cols)
        rows.append(f"<tr><th style='text-align:left;padding:3px 8px'>{esc(name)}</th>{cells}</tr>")
    return f"<table style='border-collapse:collapse'><tr>{head}</tr>{''.join(rows)}</table>"


def _cell(value: Any, fmt: Any) -> str:
    """A table cell's text, escaped: ``fmt(value)`` for a number, "-" for a missing one (None, NaN), the value
    itself (escaped) for anything else."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    try:
        return esc(fmt(value))
    except (TypeError, ValueError):  # not a number: shown as text, never as markup
        return esc(value)


def students_html(frame: Any) -> str:
    """``compare_students``' table: one column per student, the better value of each row in bold."""
    rows = [("accuracy", "accuracy", "{:.4f}", max), ("teacher_accuracy", "teacher accuracy", "{:.4f}", None),
            ("alpha_attr", "α attribution", "{:g}", None),
            ("reason_spearman", "reason agreement (Spearman)", "{:.3f}", max),
            ("reason_topk", "top-k overlap", "{:.3f}", max), ("reason_sign", "sign agreement", "{:.3f}", max),
            ("comprehensiveness", "comprehensiveness ↑", "{:.3f}", max),
            ("sufficiency", "sufficiency ↓", "{:.3f}", min)]
    head = "<th></th>" + "".join(f"<th style='padding:3px 8px;border-bottom:1px solid #999'>{esc(n)}</th>"
                                 for n in frame.index)
    body = []
    for key, label, fmt, best in rows:
        values = [float(v) for v in frame[key]]
        finite = [v for v in values if math.isfinite(v)]
        top = best(finite) if best and len(finite) > 1 else None
        cells = "".join(f"<td style='padding:3px 8px;text-align:right'>"
                        f"{'<b>' if v == top else ''}{fmt.format(v) if math.isfinite(v) else '-'}"
                        f"{'</b>' if v == top else ''}</td>"
                        for v in values)
        body.append(f"<tr><th style='text-align:left;padding:3px 8px'>{esc(label)}</th>{cells}</tr>")
    return f"<table style='border-collapse:collapse'><tr>{head}</tr>{''.join(body)}</table>"


__all__ = ["Comparison", "report_html", "students_html"]
