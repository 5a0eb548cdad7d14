"""AttributionExplorer: why teacher and student decide as they do, token by token, side by side."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import traitlets as T

from ._util import Panel, esc, guarded, note_html, table_html

TEACHER_PREDICTION = -1  # target dropdown value: explain the class the teacher predicts

METRIC_NAMES = {"spearman": "rank correlation (Spearman)", "kendall": "Kendall tau",
                "topk_jaccard": "top-k token overlap (Jaccard)", "sign_agreement": "sign agreement",
                "l1_distance": "L1 distance", "prediction_agree": "same prediction", "prob_diff":
                "|p teacher - p student|"}


def _run_path(run: Any) -> Path:
    """A Run, a run id or a folder -> the run folder."""
    from ..runs import run_dir

    if hasattr(run, "path"):
        return Path(run.path)
    if isinstance(run, (str, os.PathLike)) and Path(run).is_dir():
        return Path(run)
    return run_dir(str(run))


def load_run_models(run: Any) -> tuple[Any, Any, Any, Any]:
    """(teacher, teacher_tokenizer, student, student_tokenizer) of a Run, run id or folder, in eval mode.

    The student is the final one (``student/``) or, for an unfinished run, its latest checkpoint.
    """
    from ..report import load_run_models as load

    return load(_run_path(run), final_only=False)


def run_examples(run: Any, n: int = 50) -> tuple[list[str], list[int], list[str]]:
    """First ``n`` texts, labels and the label names of a run's eval split."""
    from ..rundata import run_task

    task = run_task(_run_path(run), max_eval=n)  # ids and class names as the run's training used them
    return list(task.eval.texts[:n]), list(task.eval.labels[:n]), list(task.label_names)


class AttributionExplorer(Panel):
    """Type or pick a text; see teacher and student token attributions, their difference and agreement.

    Traits:
        text: the text to explain.
        method: an attribution method (``distill_nb.attribution.METHODS``).
        comparison: the last ``attribution.Comparison`` (None before the first).
        metrics: its agreement metrics.
    """

    text = T.Unicode("")
    method = T.Unicode("integrated_gradients")
    comparison = T.Any(None, allow_none=True)
    metrics = T.Dict()

    def __init__(self, teacher: Any = None, student: Any = None, *, teacher_tokenizer: Any = None,
                 student_tokenizer: Any = None, examples: Sequence[str] = (), label_names: Sequence[str] = (),
                 method: str = "integrated_gradients", n_steps: int = 16, **kwargs: Any):
        from ..attribution import METHODS

        super().__init__(**kwargs)
        self._models = (teacher, teacher_tokenizer, student, student_tokenizer or teacher_tokenizer)
        self._run: Any = None
        self.n_steps = n_steps
        self.label_names = list(label_names)
        self.examples = W.Dropdown(options=[], description="example", style={"description_width": "70px"},
                                   layout=W.Layout(width="620px"))
        self.text_box = W.Textarea(placeholder="type a sentence, or pick an example above",
                                   layout=W.Layout(width="620px", height="60px"))
        self.method_dropdown = W.Dropdown(options=list(METHODS), value=method, description="method",
                                          style={"description_width": "70px"})
        self.target_dropdown = W.Dropdown(options=[("the teacher's prediction", TEACHER_PREDICTION)],
                                          value=TEACHER_PREDICTION, description="explain class",
                                          style={"description_width": "90px"}, layout=W.Layout(width="330px"))
        self.explain_button = W.Button(description="Explain", icon="search", button_style="primary")
        self.status = W.HTML()
        # each strip gets its own width and wraps its tokens; the two never overlap
        self.teacher_view = W.HTML(layout=W.Layout(width="48%", min_width="280px", overflow="hidden"))
        self.student_view = W.HTML(layout=W.Layout(width="48%", min_width="280px", overflow="hidden"))
        self.legend = W.HTML()
        self.diff_view = W.HTML(layout=W.Layout(width="100%", overflow="hidden"))
        self.metrics_view = W.HTML()
        self.examples.observe(lambda c: setattr(self, "text", c["new"] or self.text), names=["value"])
        self.text_box.observe(lambda c: setattr(self, "text", c["new"]), names=["value"])
        self.method_dropdown.observe(lambda c: setattr(self, "method", c["new"]), names=["value"])
        self.observe(self._sync_text, names=["text"])
        self.observe(self._sync_method, names=["method"])  # set in code: the dropdown shows it too
        self.explain_button.on_click(lambda _: self.explain())
        self.children = [W.HTML("<b>5. Explain</b> — token attributions of teacher and student for the same class"
                                " (red: supports it, blue: against)"), self.examples, self.text_box,
                         W.HBox([self.method_dropdown, self.target_dropdown, self.explain_button]), self.status,
                         self.legend,
                         W.HBox([self.teacher_view, self.student_view], layout=W.Layout(width="100%",
                                                                                       gap="2%",
                                                                                       flex_flow="row wrap")),
                         self.diff_view, self.metrics_view, *self._footer()]
        self.method = method
        self._set_label_names(self.label_names)
        self.set_examples(examples)

    # --- inputs ----------------------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run: Any, n_examples: int = 50, **kwargs: Any) -> AttributionExplorer:
        """An explorer over a run's teacher and student (loaded on the first Explain)."""
        explorer = cls(**kwargs)
        explorer.set_run(run, n_examples)
        return explorer

    def clear(self) -> None:
        """Forget the previous run: its models, examples, text and every view drawn for it."""
        self._run = None
        self._models = (None, None, None, None)
        self.comparison, self.metrics = None, {}
        self.examples.options = []
        self.text = ""
        for view in (self.teacher_view, self.student_view, self.legend, self.diff_view, self.metrics_view):
            view.value = ""
        self.status.value = note_html("no run yet: the Explain tab fills in when a run completes")
        self.error = ""

    def _set_label_names(self, names: Sequence[str]) -> None:
        self.label_names = list(names)
        self.target_dropdown.options = [("the teacher's prediction", TEACHER_PREDICTION)] + [
            (f"{n}", i) for i, n in enumerate(self.label_names)]
        self.target_dropdown.value = TEACHER_PREDICTION

    @guarded
    def set_run(self, run: Any, n_examples: int = 50) -> None:
        self.clear()
        self._run = _run_path(run)
        texts, _, names = run_examples(self._run, n_examples)
        self._set_label_names(names)
        self.set_examples(texts)
        self.status.value = note_html(f"run <code>{esc(self._run.name)}</code>: models load on the first Explain")

    def set_examples(self, texts: Sequence[str]) -> None:
        self.examples.options = [(t if len(t) < 90 else t[:87] + "…", t) for t in texts]
        if texts and not self.text:
            self.text = texts[0]

    def _sync_text(self, change: dict[str, Any]) -> None:
        if self.text_box.value != change["new"]:
            self.text_box.value = change["new"]

    @T.validate("method")
    def _valid_method(self, proposal: dict[str, Any]) -> str:
        from ..attribution.methods import check_method

        return check_method(proposal["value"])  # a ValueError naming the methods, before anything runs

    def _sync_method(self, change: dict[str, Any]) -> None:
        if self.method_dropdown.value != change["new"]:
            self.method_dropdown.value = change["new"]

    def models(self) -> tuple[Any, Any, Any, Any]:
        """(teacher, teacher_tokenizer, student, student_tokenizer), loading them from the run if needed."""
        if self._models[0] is None:
            if self._run is None:
                raise ValueError("no models: pass teacher/student (and tokenizers), or use from_run(run) / "
                                 "set_run(run) once a run has a checkpoint.")
            self.status.value = note_html("loading teacher and student…")
            from ._util import quiet_loading

            with quiet_loading():
                self._models = load_run_models(self._run)
        missing = [name for name, value in zip(("teacher", "teacher_tokenizer", "student"), self._models[:3])
                   if value is None]
        if missing:
            raise ValueError(f"no {missing[0]}: AttributionExplorer compares two models; pass teacher=, student= "
                             "and teacher_tokenizer= (student_tokenizer= when its vocabulary differs), or use "
                             "from_run(run) / set_run(run).")
        return self._models

    # --- explaining --------------------------------------------------------------------------------------------
    @guarded
    def explain(self, text: str | None = None) -> Any:
        """Attribute ``text`` (default: the text box) with both models and show the comparison."""
        from ..attribution import compare

        if text is not None:
            self.text = text
        if not self.text.strip():
            raise ValueError("the text is empty: type a sentence or pick an example.")
        try:
            teacher, t_tok, student, s_tok = self.models()
            self.status.value = note_html(f"attributing with {esc(self.method)}…")
            target = None if self.target_dropdown.value == TEACHER_PREDICTION else int(self.target_dropdown.value)
            (comp,) = compare(teacher, student, [self.text], teacher_tokenizer=t_tok, student_tokenizer=s_tok,
                              method=self.method, target=target, n_steps=self.n_steps, faithfulness_steps=None)
        except Exception:
            self.status.value = note_html("Explain failed: see the error below")  # not a stale "attributing…"
            raise
        self.show(comp)
        return comp

    def show(self, comparison: Any) -> None:
        """Display an existing ``attribution.Comparison`` (e.g. a row picked in ErrorAnalysis)."""

        self.comparison = comparison
        self.metrics = dict(comparison.metrics)
        if self.text != comparison.text:
            self.text = comparison.text
        t, s = comparison.teacher, comparison.student
        self.teacher_view.value = (f"<div style='font-weight:600'>teacher → {esc(self._prediction(t))}</div>"
                                   f"{token_strip_html(t)}")
        self.student_view.value = (f"<div style='font-weight:600'>student → {esc(self._prediction(s))}</div>"
                                   f"{token_strip_html(s)}")
        self.legend.value = legend_html(self._label(t.target) if t.target >= 0 else "no class (NaN/inf outputs)")
        self.diff_view.value = ("<div style='font-weight:600;margin-top:6px'>aligned "
                                f"{esc(comparison.alignment)}s: teacher, student and teacher − student</div>"
                                + aligned_html(comparison))
        rows = [(METRIC_NAMES.get(k, k), f"{v:.3f}") for k, v in comparison.metrics.items() if k in METRIC_NAMES]
        self.metrics_view.value = table_html(rows)
        self.status.value = note_html(f"{esc(comparison.teacher.method)}, explaining class "
                                      f"<b>{esc(self._label(t.target))}</b> for both models")

    def _prediction(self, attr: Any) -> str:
        """"positive (p=0.93)", or that the model made no prediction (its logits held a NaN or inf)."""
        if getattr(attr, "nonfinite", False) or attr.label < 0:
            return "no prediction (NaN/inf outputs)"
        return f"{self._label(attr.label)} (p={float(attr.probs[attr.label]):.2f})"

    def _label(self, i: int) -> str:
        name = str(self.label_names[i]) if 0 <= i < len(self.label_names) else str(i)
        return f"class {name}" if name.isdigit() else name  # data without names: "class 0", not a bare "0"

    def snapshot_html(self) -> str:
        """The current view as static HTML for a saved notebook."""
        return (f"{self.legend.value}<div style='display:flex;flex-wrap:wrap;gap:2%'><div style='width:48%;"
                f"min-width:280px'>{self.teacher_view.value}</div><div style='width:48%;min-width:280px'>"
                f"{self.student_view.value}</div></div>{self.diff_view.value}{self.metrics_view.value}")

    def __repr__(self) -> str:
        if self.comparison is None:
            return f"AttributionExplorer(method={self.method!r}, nothing explained yet)"
        m = self.metrics
        return (f"AttributionExplorer({self.text[:40]!r}: teacher {self.comparison.teacher.label}, student "
                f"{self.comparison.student.label}, spearman {m.get('spearman', float('nan')):.2f}, top-k overlap "
                f"{m.get('topk_jaccard', float('nan')):.2f})")


# --- rendering: inline styles only, tokens wrap, no scripts (survives in a saved notebook) ----------------------
def _colour(value: float) -> str:
    """Red for positive, blue for negative, opacity |value| (value in [-1, 1])."""
    alpha = min(abs(float(value)), 1.0) if math.isfinite(value) else 0.0
    return f"rgba({'220,40,40' if value > 0 else '40,90,220'},{alpha:.2f})"


def _scaled(values: Sequence[float]) -> list[float]:
    peak = max((abs(float(v)) for v in values), default=0.0)
    return [float(v) / peak if peak > 0 else 0.0 for v in values]


TOKEN_STYLE = ("display:inline-block;padding:1px 3px;margin:1px;border-radius:3px;font-family:monospace;"
               "white-space:pre;border:1px solid #eee")


def token_strip_html(attr: Any) -> str:
    """One model's tokens coloured by score (scaled to its largest |score|), wrapping inside its column."""
    keep = [i for i, special in enumerate(attr.special) if not special]
    scaled = _scaled([attr.scores[i] for i in keep])
    cells = " ".join(f"<span title='{float(attr.scores[i]):.4g}' style='{TOKEN_STYLE};background:{_colour(v)}'>"
                     f"{esc(attr.tokens[i])}</span>" for i, v in zip(keep, scaled))
    return f"<div style='line-height:1.9;overflow-wrap:anywhere'>{cells}</div>"


def aligned_html(comp: Any) -> str:
    """The aligned units as wrapping columns: unit, teacher cell, student cell, difference cell.

    Each row is L1-normalised (share of |attribution|); one scale for all three, so colours compare."""
    t = [float(v) for v in comp.teacher_scores]
    s = [float(v) for v in comp.student_scores]
    t = [v / (sum(map(abs, t)) or 1.0) for v in t]
    s = [v / (sum(map(abs, s)) or 1.0) for v in s]
    d = [a - b for a, b in zip(t, s)]
    peak = max([abs(v) for v in t + s] or [1.0]) or 1.0
    cell = "display:block;height:12px;margin:1px 0;border-radius:2px;border:1px solid #eee"
    columns = []
    for unit, a, b, c in zip(comp.units, t, s, d):
        columns.append(
            f"<div style='display:inline-flex;flex-direction:column;margin:1px;min-width:24px;text-align:center'>"
            f"<span style='font-family:monospace;font-size:0.9em;white-space:pre;padding:0 2px'>{esc(unit)}</span>"
            f"<span title='teacher {a:.3f}' style='{cell};background:{_colour(a / peak)}'></span>"
            f"<span title='student {b:.3f}' style='{cell};background:{_colour(b / peak)}'></span>"
            f"<span title='teacher − student {c:+.3f}' style='{cell};background:{_colour(c / peak)}'></span></div>")
    rows = ("<div style='display:inline-flex;flex-direction:column;margin:1px 6px 1px 0;font-size:0.8em;"
            "color:#555;text-align:right'><span>&nbsp;</span><span style='height:14px'>teacher</span>"
            "<span style='height:14px'>student</span><span style='height:14px'>T − S</span></div>")
    return f"<div style='display:flex;flex-wrap:wrap;align-items:flex-end'>{rows}{''.join(columns)}</div>"


def legend_html(target: str) -> str:
    """The colour scale: what red, white and blue mean for the class being explained and for T − S."""
    stops = "rgba(40,90,220,1), rgba(40,90,220,0) 50%, rgba(220,40,40,0) 50%, rgba(220,40,40,1)"
    bar = (f"<span style='display:inline-block;width:160px;height:10px;vertical-align:middle;border:1px solid #ccc;"
           f"background:linear-gradient(to right, {stops})'></span>")
    return (f"<div style='font-size:0.85em;color:#444;margin:4px 0'>{bar} &nbsp;"
            f"<span style='color:rgb(40,90,220)'>■ against</span> {esc(target)} · 0 · "
            f"<span style='color:rgb(220,40,40)'>■ for</span> {esc(target)} (opacity: share of the largest "
            "score). In <b>T − S</b>: red = the teacher leans on the word more, blue = the student does.</div>")


__all__ = ["AttributionExplorer", "aligned_html", "legend_html", "load_run_models", "run_examples",
           "token_strip_html"]
