"""ErrorAnalysis: sweep a data set, rank where teacher and student diverge, filter, open a row in the explorer."""

from __future__ import annotations

import html
import math
import numbers
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import traitlets as T

from ._util import Panel, esc, guarded, note_html

ALL = -1  # label filter value meaning "all labels"
NO_PREDICTION = -1  # evaluation.NO_PREDICTION: a model whose logits held a NaN/inf predicted nothing
HEADERS = {"divergence_rank": "rank", "text": "text", "label": "gold label", "teacher_pred": "teacher says",
           "student_pred": "student says", "teacher_prob": "teacher p", "student_prob": "student p",
           "spearman": "rank correlation", "topk_jaccard": "top-k overlap"}


def _listed(values: Any) -> list | None:
    """``values`` (a list, numpy array, pandas Series, tensor, generator) as a list; None stays None."""
    if values is None:
        return None
    return list(values.tolist() if hasattr(values, "tolist") else values)


class ErrorAnalysis(Panel):
    """The sweep table sorted by divergence, with filters; selecting a row shows it in the explorer.

    Traits:
        result: the ``attribution.SweepResult`` (None before the sweep).
        selected: input index of the selected example (-1: none).
        visible: input indices that pass the filters, most divergent first.
    """

    result = T.Any(None, allow_none=True)
    selected = T.Int(-1)
    visible = T.List(T.Int())

    def __init__(self, explorer: Any, *, texts: Sequence[str] = (), labels: Sequence[int] | None = None,
                 label_names: Sequence[str] = (), n_examples: int = 40, n_steps: int = 8, **kwargs: Any):
        super().__init__(**kwargs)
        self.explorer = explorer
        # lists, whatever came in (a numpy array or Series has no truth value: `if labels` would raise)
        self.texts, self.labels, self.label_names = list(texts), _listed(labels), list(label_names)
        self.n_steps = n_steps
        self.n_box = W.BoundedIntText(n_examples, min=1, max=100000, description="examples",
                                      style={"description_width": "70px"}, layout=W.Layout(width="180px"))
        self.sweep_button = W.Button(description="Run sweep", icon="play", button_style="primary")
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="240px"))
        self.disagree_only = W.Checkbox(False, description="disagreements only", indent=False)
        self.label_filter = W.Dropdown(options=[("all labels", ALL)], value=ALL, description="gold label",
                                       style={"description_width": "70px"}, layout=W.Layout(width="220px"))
        self.confidence = W.FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.05,
                                             description="teacher p", style={"description_width": "70px"},
                                             layout=W.Layout(width="360px"))
        self.rows = W.Select(options=[], rows=10, layout=W.Layout(width="100%"))
        self.table = W.HTML()
        self.summary = W.HTML()
        self.sweep_button.on_click(lambda _: self.run_sweep())
        for w in (self.disagree_only, self.label_filter, self.confidence):
            w.observe(self._filter, names=["value"])
        self.rows.observe(self._pick, names=["value"])
        self.observe(self._open, names=["selected"])
        self.children = [W.HTML("<b>6. Errors</b> — where do teacher and student diverge? (click a row to open it "
                                "in the Explain tab)"), W.HBox([self.n_box, self.sweep_button, self.progress]),
                         self.summary, W.HBox([self.disagree_only, self.label_filter, self.confidence]),
                         self.rows, self.table, *self._footer()]
        self._update_label_options()

    def clear(self) -> None:
        """Forget the previous run's examples and sweep."""
        self.texts, self.labels, self.label_names = [], None, []
        self.result = None
        self.visible = []
        self.rows.options = []
        self.table.value = self.summary.value = ""
        self.progress.value = 0
        self._update_label_options()
        self.error = ""

    @guarded
    def set_run(self, run: Any) -> None:
        """Use a run's eval split (its models come from the explorer)."""
        from .attribution import run_examples

        self.clear()
        texts, labels, names = run_examples(run, self.n_box.value)
        self.texts, self.labels, self.label_names = list(texts), _listed(labels), list(names)
        self._update_label_options()

    def _update_label_options(self) -> None:
        ids = [int(v) for v in self.labels or [] if isinstance(v, numbers.Integral) and not isinstance(v, bool)]
        n = len(self.label_names) or (max(ids) + 1 if ids else 0)
        self.label_filter.options = [("all labels", ALL)] + [(self._name(i), i) for i in range(n)]
        self.label_filter.value = ALL

    def _name(self, i: Any) -> str:
        if i is None:
            return "-"
        i = int(i)
        if i == NO_PREDICTION:  # not label_names[-1]: the model gave NaN/inf, no class at all
            return "none (NaN/inf)"
        return f"{self.label_names[i]}" if i < len(self.label_names) else str(i)

    @guarded
    def run_sweep(self) -> Any:
        """``attribution.sweep`` over the first N examples with the explorer's models and method."""
        from ..attribution import sweep

        if not self.texts:
            raise ValueError("no examples: pass texts=... or set_run(run) first.")
        n = min(self.n_box.value, len(self.texts))
        teacher, t_tok, student, s_tok = self.explorer.models()
        self.progress.max, self.progress.value = n, 0
        self.summary.value = note_html(f"sweeping {n} examples with {esc(self.explorer.method)}…")

        def progress(done: int, total: int) -> None:
            self.progress.value = done

        labels = list(self.labels[:n]) if self.labels is not None else None
        try:
            result = sweep(teacher, student, self.texts[:n], labels, teacher_tokenizer=t_tok,
                           student_tokenizer=s_tok, method=self.explorer.method, n_steps=self.n_steps,
                           faithfulness_steps=None, progress=progress)
        except Exception:
            self.summary.value = note_html("the sweep failed: see the error below")  # not a stale "sweeping…"
            raise
        self.result = result
        self.progress.value = n
        self.summary.value = summary_html(result.summary(), len(result))
        self._filter(None)
        return result

    def frame(self) -> Any:
        """The sweep table (pandas), most divergent first, after the filters."""
        frame = self.result.to_frame().sort_values("divergence_rank")
        if self.disagree_only.value:
            frame = frame[frame["prediction_agree"] < 1]
        if self.label_filter.value != ALL:
            frame = frame[frame["label"] == self.label_filter.value]
        low, high = self.confidence.value
        inside = (frame["teacher_prob"] >= low - 1e-9) & (frame["teacher_prob"] <= high + 1e-9)
        # a teacher without a prediction (NaN/inf) has no confidence: shown unless the range was narrowed
        return frame[inside | (frame["teacher_prob"].isna() & (low <= 0.0) & (high >= 1.0))]

    @guarded
    def _filter(self, change: Any) -> None:
        if self.result is None:
            return
        frame = self.frame()
        self.visible = [int(i) for i in frame.index]
        options = []
        for i, r in frame.iterrows():
            mark = "⚠" if r["teacher_nonfinite"] or r["student_nonfinite"] else "✓" if r["prediction_agree"] else "✗"
            text = r["text"] if len(r["text"]) < 70 else r["text"][:67] + "…"
            options.append(((f"#{r['divergence_rank']:<3} {mark} T:{self._name(r['teacher_pred'])} "
                            f"S:{self._name(r['student_pred'])} gold:{self._name(r['label'])} "
                            f"ρ={r['spearman']:.2f}  {text}"), int(i)))
        self.rows.options = options
        self.table.value = self.table_html(frame)

    def table_html(self, frame: Any, limit: int = 25) -> str:
        cols = ["divergence_rank", "text", "label", "teacher_pred", "student_pred", "teacher_prob", "student_prob",
                "spearman", "topk_jaccard"]
        head = "".join(f"<th style='padding:2px 6px;border-bottom:1px solid #999'>{esc(HEADERS.get(c, c))}</th>"
                       for c in cols)
        body = []
        for _, r in frame.head(limit).iterrows():
            bg = "#fff0f0" if not r["prediction_agree"] else "#fff"
            cells = []
            for c in cols:
                v = r[c]
                if c in ("label", "teacher_pred", "student_pred"):
                    v = self._name(v)
                elif isinstance(v, float):
                    v = f"{v:.2f}"
                cells.append(f"<td style='padding:2px 6px'>{html.escape(str(v))}</td>")
            body.append(f"<tr style='background:{bg}'>{''.join(cells)}</tr>")
        more = f"<div style='color:#777'>… {len(frame) - limit} more</div>" if len(frame) > limit else ""
        return (f"<table style='border-collapse:collapse;font-size:0.85em'><tr>{head}</tr>{''.join(body)}</table>"
                + more)

    def _pick(self, change: dict[str, Any]) -> None:
        if change["new"] is not None:
            self.selected = int(change["new"])

    @guarded
    def _open(self, change: dict[str, Any]) -> None:
        if self.result is not None and change["new"] >= 0:
            self.explorer.show(self.result[change["new"]])
            if self.on_open is not None:
                self.on_open(change["new"])

    on_open: Any = None  # set by DistillApp to switch to the Explain tab

    def __repr__(self) -> str:
        if self.result is None:
            return f"ErrorAnalysis({len(self.texts)} examples, no sweep yet)"
        s = self.result.summary()
        broken = "".join(f", {s[f'{who}_nonfinite']} with {who} NaN/inf" for who in ("teacher", "student")
                         if s[f"{who}_nonfinite"])
        return (f"ErrorAnalysis({len(self.result)} examples swept, predictions agree on "
                f"{100 * s['prediction_agree']:.0f}%{broken}, {len(self.visible)} shown after filters)")


def _two(value: float) -> str:
    """0.83, or "n/a" for NaN (no example gave a value: e.g. every one had NaN/inf outputs)."""
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def summary_html(s: dict[str, Any], n: int) -> str:
    """The sweep's one-line summary; a model with NaN/inf outputs is named first, in red, with its count."""
    parts = [f"{n} examples", f"predictions agree on {100 * s['prediction_agree']:.0f}%",
             f"mean rank correlation {_two(s['spearman'])}", f"top-k overlap {_two(s['topk_jaccard'])}"]
    if "student_accuracy" in s:
        parts.append(f"accuracy on these {n} examples: teacher {s['teacher_accuracy']:.2f} / "
                     f"student {s['student_accuracy']:.2f}")
    broken = [f"the {who}'s outputs are NaN/inf on {s[f'{who}_nonfinite']} of {n} examples"
              for who in ("teacher", "student") if s.get(f"{who}_nonfinite")]
    if not broken:
        return note_html(" · ".join(parts), "#222")
    warning = ("⚠ " + "; ".join(broken) + ": no prediction there (counted as wrong and as a disagreement; "
               "left out of the attribution means). Check that model (its weights, or its precision).")
    return note_html(warning, "#b00") + note_html(" · ".join(parts), "#222")


__all__ = ["ErrorAnalysis"]
