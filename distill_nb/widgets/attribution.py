"""AttributionExplorer: why teacher and student decide as they do, token by token, side by side."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import traitlets as T

from ._util import Panel, esc, guarded, note_html, table_html

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
        self.explain_button = W.Button(description="Explain", icon="search", button_style="primary")
        self.status = W.HTML()
        self.teacher_view = W.HTML(layout=W.Layout(width="48%"))
        self.student_view = W.HTML(layout=W.Layout(width="48%"))
        self.diff_view = W.HTML()
        self.metrics_view = W.HTML()
        self.examples.observe(lambda c: setattr(self, "text", c["new"] or self.text), names=["value"])
        self.text_box.observe(lambda c: setattr(self, "text", c["new"]), names=["value"])
        self.method_dropdown.observe(lambda c: setattr(self, "method", c["new"]), names=["value"])
        self.observe(self._sync_text, names=["text"])
        self.explain_button.on_click(lambda _: self.explain())
        self.children = [W.HTML("<b>5. Explain</b> — token attributions of teacher and student for the same class"
                                " (red: supports it, blue: against)"), self.examples, self.text_box,
                         W.HBox([self.method_dropdown, self.explain_button]), self.status,
                         W.HBox([self.teacher_view, self.student_view], layout=W.Layout(width="100%",
                                                                                       gap="2%")),
                         self.diff_view, self.metrics_view, *self._footer()]
        self.method = method
        self.set_examples(examples)

    # --- inputs ----------------------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run: Any, n_examples: int = 50, **kwargs: Any) -> AttributionExplorer:
        """An explorer over a run's teacher and student (loaded on the first Explain)."""
        explorer = cls(**kwargs)
        explorer.set_run(run, n_examples)
        return explorer

    @guarded
    def set_run(self, run: Any, n_examples: int = 50) -> None:
        self._run = _run_path(run)
        self._models = (None, None, None, None)
        texts, _, names = run_examples(self._run, n_examples)
        self.label_names = names
        self.set_examples(texts)
        self.status.value = note_html(f"run <code>{esc(self._run.name)}</code>: models load on the first Explain")

    def set_examples(self, texts: Sequence[str]) -> None:
        self.examples.options = [(t if len(t) < 90 else t[:87] + "…", t) for t in texts]
        if texts and not self.text:
            self.text = texts[0]

    def _sync_text(self, change: dict[str, Any]) -> None:
        if self.text_box.value != change["new"]:
            self.text_box.value = change["new"]

    def models(self) -> tuple[Any, Any, Any, Any]:
        """(teacher, teacher_tokenizer, student, student_tokenizer), loading them from the run if needed."""
        if self._models[0] is None:
            if self._run is None:
                raise ValueError("no models: pass teacher/student (and tokenizers), or use from_run(run) / "
                                 "set_run(run) once a run has a checkpoint.")
            self.status.value = note_html("loading teacher and student…")
            self._models = load_run_models(self._run)
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
        teacher, t_tok, student, s_tok = self.models()
        self.status.value = note_html(f"attributing with {esc(self.method)}…")
        (comp,) = compare(teacher, student, [self.text], teacher_tokenizer=t_tok, student_tokenizer=s_tok,
                          method=self.method, n_steps=self.n_steps, faithfulness_steps=None)
        self.show(comp)
        return comp

    def show(self, comparison: Any) -> None:
        """Display an existing ``attribution.Comparison`` (e.g. a row picked in ErrorAnalysis)."""
        from ..attribution.render import attribution_html

        self.comparison = comparison
        self.metrics = dict(comparison.metrics)
        if self.text != comparison.text:
            self.text = comparison.text
        t, s = comparison.teacher, comparison.student
        self.teacher_view.value = (f"<div style='font-weight:600'>teacher → {esc(self._label(t.label))} "
                                   f"(p={t.probs[t.label]:.2f})</div>{attribution_html(t)}")
        self.student_view.value = (f"<div style='font-weight:600'>student → {esc(self._label(s.label))} "
                                   f"(p={s.probs[s.label]:.2f})</div>{attribution_html(s)}")
        self.diff_view.value = ("<div style='font-weight:600;margin-top:6px'>aligned, with teacher - student</div>"
                                + comparison.to_html())
        rows = [(METRIC_NAMES.get(k, k), f"{v:.3f}") for k, v in comparison.metrics.items() if k in METRIC_NAMES]
        self.metrics_view.value = table_html(rows)
        self.status.value = note_html(f"{esc(comparison.teacher.method)}, explaining class "
                                      f"{esc(self._label(t.target))} for both models")

    def _label(self, i: int) -> str:
        return f"{self.label_names[i]} ({i})" if i < len(self.label_names) else str(i)

    def snapshot_html(self) -> str:
        """The current view as static HTML for a saved notebook."""
        return (f"<div style='display:flex;gap:2%'><div style='width:48%'>{self.teacher_view.value}</div>"
                f"<div style='width:48%'>{self.student_view.value}</div></div>{self.diff_view.value}"
                f"{self.metrics_view.value}")

    def __repr__(self) -> str:
        if self.comparison is None:
            return f"AttributionExplorer(method={self.method!r}, nothing explained yet)"
        m = self.metrics
        return (f"AttributionExplorer({self.text[:40]!r}: teacher {self.comparison.teacher.label}, student "
                f"{self.comparison.student.label}, spearman {m.get('spearman', float('nan')):.2f}, top-k overlap "
                f"{m.get('topk_jaccard', float('nan')):.2f})")


__all__ = ["AttributionExplorer", "load_run_models", "run_examples"]
