"""Figures (matplotlib, imported inside each function) and HTML snippets for attributions.

The HTML uses inline styles only (no scripts, no external assets), so it survives in saved notebooks,
VS Code and offline JupyterLab.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .comparison import Comparison, SweepResult
    from .methods import Attribution


def _unit_scale(x: np.ndarray) -> np.ndarray:
    """Scale to [-1, 1] by the largest magnitude (zeros stay zeros)."""
    peak = np.abs(x).max() if len(x) else 0.0
    return x / peak if peak > 0 else np.zeros_like(x, dtype=float)


def _l1(x: np.ndarray) -> np.ndarray:
    norm = np.abs(x).sum()
    return x / norm if norm > 0 else np.zeros_like(x, dtype=float)


def _heat_row(ax: Any, values: np.ndarray, labels: Sequence[str], name: str, vmax: float, show_x: bool) -> Any:
    image = ax.imshow(values[None, :], cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_yticks([0], [name])
    ax.set_xticks(range(len(labels)), labels if show_x else [""] * len(labels), rotation=60, ha="right")
    return image


def prediction_text(attr: Attribution) -> str:
    """"pred 1 (p=0.83)", or for a model whose logits held a NaN/inf "no prediction (NaN/inf outputs)"."""
    if getattr(attr, "nonfinite", False) or attr.label < 0:  # duck-typed results have no flag
        return "no prediction (NaN/inf outputs)"
    return f"pred {attr.label} (p={float(attr.probs[attr.label]):.2f})"


def _label(attr: Attribution) -> str:
    return "no prediction: NaN/inf" if getattr(attr, "nonfinite", False) or attr.label < 0 else str(attr.label)


def plot_attribution(attr: Attribution, ax: Any = None) -> Figure:
    """One-row token heatmap of ``attr`` (scaled to its largest |score|)."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(attr.tokens)), 1.6), layout="constrained")
    else:
        fig = ax.figure
    _heat_row(ax, _unit_scale(attr.scores), attr.tokens, f"{attr.method}\ntarget {attr.target}", 1.0, True)
    ax.set_title(prediction_text(attr), fontsize=9)
    return fig


def plot_comparison(comp: Comparison) -> Figure:
    """Teacher, student and teacher - student rows over the aligned units (each row L1-normalised)."""
    import matplotlib.pyplot as plt

    t, s = _l1(comp.teacher_scores), _l1(comp.student_scores)
    peak = max(float(np.abs(np.concatenate([t, s])).max(initial=0.0)), 1e-12)
    fig, axes = plt.subplots(3, 1, figsize=(max(5.0, 0.5 * len(comp.units)), 3.2), sharex=True,
                             layout="constrained")
    m = comp.metrics
    rows = [(t, f"teacher ({_label(comp.teacher)})"), (s, f"student ({_label(comp.student)})"), (t - s, "diff")]
    for i, (ax, (values, name)) in enumerate(zip(axes, rows)):
        image = _heat_row(ax, values, comp.units, name, peak, show_x=i == 2)
    fig.colorbar(image, ax=axes, shrink=0.8, label="share of |attribution|")
    fig.suptitle(f"{comp.alignment}-level, target {comp.teacher.target}: spearman {m['spearman']:.2f}, "
                 f"top-{comp.top_k} overlap {m['topk_jaccard']:.2f}", fontsize=9)
    return fig


def plot_scatter(comparisons: Sequence[Comparison], ax: Any = None) -> Figure:
    """Teacher vs student L1-normalised attribution of every aligned unit, pooled."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 4.0), layout="constrained")
    else:
        fig = ax.figure
    t = np.concatenate([_l1(c.teacher_scores) for c in comparisons] or [np.zeros(0)])
    s = np.concatenate([_l1(c.student_scores) for c in comparisons] or [np.zeros(0)])
    ax.scatter(t, s, s=12, alpha=0.6)
    lim = max(float(np.abs(np.concatenate([t, s])).max(initial=0.0)), 1e-6) * 1.05
    ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8, ls="--")
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="teacher attribution (L1-normalised)",
           ylabel="student attribution (L1-normalised)", title=f"{len(comparisons)} example(s), {len(t)} units")
    return fig


_RANGES = {"spearman": (-1.0, 1.0), "kendall": (-1.0, 1.0), "topk_jaccard": (0.0, 1.0),
           "sign_agreement": (0.0, 1.0), "l1_distance": (0.0, 2.0), "prediction_agree": (0.0, 1.0),
           "prob_diff": (0.0, 1.0)}


def plot_agreement_hist(result: SweepResult, metrics: Sequence[str]) -> Figure:
    """One histogram per metric over the sweep's examples, prediction agreement in the title."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.0), squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes[0], metrics):
        values = np.array([c.metrics[name] for c in result.comparisons], dtype=float)
        values = values[~np.isnan(values)]
        low, high = _RANGES.get(name, (values.min(initial=0.0), values.max(initial=1.0)))
        ax.hist(values, bins=20, range=(low, high) if high > low else (low - 0.5, low + 0.5),
                color="tab:blue", alpha=0.8)
        ax.set(xlabel=name, ylabel="examples", title=f"mean {values.mean():.2f}" if len(values) else "no data")
    agree = np.mean([c.metrics["prediction_agree"] for c in result.comparisons])
    fig.suptitle(f"{result.method}: {len(result)} examples, predictions agree on {agree:.0%}", fontsize=10)
    return fig


# --------------------------------------------------------------------------- HTML


def _colour(value: float) -> str:
    """Red for positive, blue for negative, alpha = |value| in [0, 1]."""
    alpha = min(abs(float(value)), 1.0) if np.isfinite(value) else 0.0
    rgb = "220,40,40" if value > 0 else "40,90,220"
    return f"rgba({rgb},{alpha:.2f})"


def _cells(units: Sequence[str], values: np.ndarray, raw: np.ndarray, tag: str = "span") -> str:
    style = "padding:1px 3px;margin:1px;border-radius:3px;font-family:monospace;white-space:pre"
    return "".join(f'<{tag} title="{float(r):.4g}" style="{style};background:{_colour(v)}">{_esc(u)}</{tag}>'
                   for u, v, r in zip(units, values, raw))


def _esc(value: Any) -> str:
    """``value`` as text in HTML (tokens come from tokenizer vocabularies, names from data files: a vocab entry
    can be ``<script>``), quotes escaped too, so it is safe in an attribute as well."""
    return html.escape(str(value), quote=True)


def attribution_html(attr: Attribution) -> str:
    """Tokens of one attribution coloured by score (scaled to the largest |score|)."""
    keep = ~attr.special
    tokens = [t for t, k in zip(attr.tokens, keep) if k]
    target = "none" if attr.target < 0 else attr.target
    head = (f"<div style='font-size:0.85em;color:#555'>{_esc(attr.method)}: {_esc(prediction_text(attr))}, "
            f"target {_esc(target)}</div>")
    return f"<div class='distill-nb-attribution'>{head}<div>{_cells(tokens, _unit_scale(attr.scores[keep]), attr.scores[keep])}</div></div>"


def comparison_html(comp: Comparison) -> str:
    """Table with teacher, student and diff rows over the aligned units, metrics underneath."""
    t, s = _l1(comp.teacher_scores), _l1(comp.student_scores)
    peak = max(float(np.abs(np.concatenate([t, s])).max(initial=0.0)), 1e-12)
    td = "td"
    rows = []
    for name, values, raw in ((f"teacher ({_label(comp.teacher)})", t, comp.teacher_scores),
                              (f"student ({_label(comp.student)})", s, comp.student_scores),
                              ("diff", t - s, t - s)):
        label = f"<th style='text-align:right;padding-right:6px;font-weight:normal'>{_esc(name)}</th>"
        rows.append(f"<tr>{label}{_cells(comp.units, values / peak, raw, tag=td)}</tr>")
    m = comp.metrics
    shown = ", ".join(f"{k} {m[k]:.2f}" for k in ("spearman", "kendall", "topk_jaccard", "sign_agreement",
                                                     "l1_distance", "prob_diff") if k in m)
    foot = (f"<div style='font-size:0.85em;color:#555'>{_esc(comp.alignment)}-level, target "
            f"{_esc(comp.teacher.target)}; {_esc(shown)}</div>")
    return (f"<div class='distill-nb-comparison'><table style='border-collapse:separate'>{''.join(rows)}"
            f"</table>{foot}</div>")
