"""Matplotlib figures for notebooks and static snapshots: run curves, KD temperature, size trade-off, reports.

matplotlib is imported inside each function (cheap ``import distill_nb``); figures are built with the
object-oriented ``Figure`` API, so nothing is shown twice and no pyplot state leaks between cells.
``to_png(fig)`` gives bytes for ``IPython.display.Image`` or an ``ipywidgets.Image``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_png(fig: Any, dpi: int = 100) -> bytes:
    """PNG bytes of ``fig``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def curve_value(record: Any, key: str) -> float:
    """``record[key]`` as a float for plotting; NaN (a gap in the line) when it is missing, None ("not
    measured"), not a finite number (a string, a bool, NaN/inf) or an int too large for a float."""
    from .safeio import number

    value = number(record.get(key)) if isinstance(record, dict) else None
    return float("nan") if value is None else value


REASON_CURVES = (("reason_spearman", "Spearman"), ("reason_topk", "top-k overlap"), ("reason_sign", "sign"))


def run_figure(records: Sequence[dict[str, Any]], title: str = "") -> Any:
    """Training loss (and each loss part the run used: KD, CE, hidden, attention, MLM, attribution), eval accuracy
    and, when the run tracked them, the reason-agreement curves vs step, from ``Run.metrics()`` records.

    Any number of a record may be missing, None (not measured) or not a number: it is drawn as a gap, never
    an error. Records without a numeric ``step`` cannot be placed and are left out; the teacher's line is the
    latest measured ``teacher_accuracy`` (none when no eval measured it).
    """
    import math

    placed = [r for r in records if isinstance(r, dict) and math.isfinite(curve_value(r, "step"))]
    train = [r for r in placed if r.get("split") == "train"]
    evals = [r for r in placed if r.get("split") == "eval"]
    reasons = [(key, label) for key, label in REASON_CURVES
               if any(math.isfinite(curve_value(r, key)) for r in evals)]
    fig = _figure(13.0 if reasons else 9.0, 3.2)
    axes = fig.subplots(1, 3 if reasons else 2)
    ax_loss, ax_acc = axes[0], axes[1]
    steps = [curve_value(r, "step") for r in train]
    drawn = False
    for key, style in (("loss", "-"), ("kd", "--"), ("ce", ":"), ("hidden", "-."), ("attn", "-."), ("mlm", "--"),
                       ("attr", (0, (1, 1)))):
        ys = [curve_value(r, key) for r in train]
        if any(math.isfinite(y) for y in ys):
            ax_loss.plot(steps, ys, linestyle=style, label=key)
            drawn = True
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    if drawn:
        ax_loss.legend()
    if evals:
        es = [curve_value(r, "step") for r in evals]
        for key, style, label in (("accuracy", "o-", "student accuracy"),
                                  ("agreement", "s--", "agreement with teacher")):
            ys = [curve_value(r, key) for r in evals]
            if any(math.isfinite(y) for y in ys):
                ax_acc.plot(es, ys, style, label=label)
        teacher = [y for y in (curve_value(r, "teacher_accuracy") for r in evals) if math.isfinite(y)]
        if teacher:
            ax_acc.axhline(teacher[-1], color="tab:red", ls=":", label="teacher accuracy")
        if ax_acc.get_legend_handles_labels()[0]:
            ax_acc.legend(loc="lower right")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="evaluation", ylim=(0, 1.02))
    if reasons:
        es = [curve_value(r, "step") for r in evals]
        for key, label in reasons:
            axes[2].plot(es, [curve_value(r, key) for r in evals], "o-", label=label)
        axes[2].set(xlabel="step", ylabel="agreement", title="reason agreement (probe)")
        axes[2].legend(loc="lower right")
    if title:
        fig.suptitle(title)
    return fig


def temperature_figure(logits: Sequence[float], temperatures: Sequence[float] = (1, 2, 4, 8),
                       labels: Sequence[str] | None = None) -> Any:
    """Softmax of one logit vector at several temperatures: higher T shows the teacher's 'dark knowledge'."""
    import numpy as np

    z = np.asarray(logits, dtype=float)
    names = list(labels) if labels is not None else [str(i) for i in range(len(z))]
    fig = _figure(max(5.0, 1.2 * len(z) + 2), 3.0)
    ax = fig.subplots()
    width = 0.8 / len(temperatures)
    for k, t in enumerate(temperatures):
        p = np.exp((z - z.max()) / t)
        p /= p.sum()
        ax.bar(np.arange(len(z)) + k * width, p, width, label=f"T={t:g}")
    ax.set_xticks(np.arange(len(z)) + width * (len(temperatures) - 1) / 2, names)
    ax.set(ylabel="probability", title="softmax(z / T): soft targets get softer as T grows")
    ax.legend()
    return fig


def loss_vs_temperature_figure(student_logits: Any, teacher_logits: Any,
                               temperatures: Sequence[float] = (0.5, 1, 2, 4, 8)) -> Any:
    """KD loss (KL * T^2) between fixed student and teacher logits as the temperature changes."""
    from . import losses

    values = [float(losses.kd_loss(student_logits, teacher_logits, t)) for t in temperatures]
    fig = _figure(4.5, 3.0)
    ax = fig.subplots()
    ax.plot(list(temperatures), values, "o-")
    ax.set(xscale="log", xlabel="temperature T", ylabel="KL x T²", title="KD loss vs temperature")
    return fig


def tradeoff_figure(rows: Sequence[dict[str, Any]], teacher: dict[str, Any] | None = None) -> Any:
    """Estimated speed-up vs size for candidate students (``models.describe`` dicts with a 'name')."""
    fig = _figure(5.5, 3.6)
    ax = fig.subplots()
    ax.scatter([r["mb"] for r in rows], [r["speedup"] for r in rows], c=[r["layers"] for r in rows], cmap="viridis")
    for r in rows:
        ax.annotate(r.get("name", ""), (r["mb"], r["speedup"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    if teacher:
        ax.scatter([teacher["mb"]], [1.0], marker="*", s=160, color="tab:red", label="teacher")
        ax.legend()
    ax.set(xlabel="size (MB, fp32)", ylabel="estimated speed-up (FLOPs)", title="students: size vs speed")
    return fig


def report_figure(frame: Any) -> Any:
    """Bar charts of a ``Report.to_frame()``: MB, batch-32 latency and accuracy per model."""
    fig = _figure(9.5, 3.0)
    axes = fig.subplots(1, 3)
    names = [str(n) for n in frame.index]
    colours = ["tab:red"] + ["tab:blue"] * (len(names) - 1)
    for ax, col, label in ((axes[0], "mb", "size (MB)"), (axes[1], "latency_b32_ms", "latency, batch 32 (ms)"),
                           (axes[2], "accuracy", "accuracy")):
        values = [float(v) if v is not None else float("nan") for v in frame[col]]
        ax.bar(names, values, color=colours)
        ax.set_title(label)
        ax.tick_params(axis="x", labelrotation=20)
        for i, v in enumerate(values):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    axes[2].set_ylim(0, 1.05)
    return fig


__all__ = ["loss_vs_temperature_figure", "report_figure", "run_figure", "temperature_figure",
           "to_png", "tradeoff_figure"]
