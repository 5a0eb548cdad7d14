"""Shared pieces of the widgets: the error-catching base panel, small HTML helpers, an inline SVG chart.

Widgets here never write to an ``Output`` from a callback or a background task: ipykernel 7 routes such
output by the *current* parent message (ipywidgets #4001/#4020). Errors and charts are plain widget
values (``HTML.value``, ``Output.outputs``), which every kernel version syncs the same way.
"""

from __future__ import annotations

import contextlib
import functools
import html
import math
import re
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as W
import traitlets as T

from ..safeio import number


def esc(value: Any) -> str:
    return html.escape(str(value))


def fmt_params(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{int(n)}"


def fmt_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def buttons_say(message: str) -> str:
    """A message written for code (``resume()``, ``stop()``) as the buttons the person sees say it."""
    # a method call in code the person may copy (Run.attach(run_id).resume()) stays code
    message = re.sub(r"(?<!\.)\bresume\(\) (continues|starts)", r"Resume \1", message)
    message = re.sub(r"(?<!\.)\bresume\(\)", "Resume", message)
    return re.sub(r"(?<!\.)\bstop\(\) it", "Stop it", message)


def table_html(rows: Sequence[tuple[str, Any]]) -> str:
    """A two-column key/value table with inline styles only.

    Keys are escaped here; values are inserted as HTML (they may hold ``<b>``/``<code>``), so a caller escapes
    every value that holds text it did not write itself (``esc``)."""
    cells = "".join(f"<tr><th style='text-align:left;padding:1px 10px 1px 0;font-weight:600'>{esc(k)}</th>"
                    f"<td style='padding:1px 0'>{v}</td></tr>" for k, v in rows)
    return f"<table style='border-collapse:collapse;font-size:0.95em'>{cells}</table>"


def error_html(message: str) -> str:
    if not message:
        return ""
    return ("<div style='color:#a00;background:#fff0f0;border:1px solid #e0a0a0;border-radius:4px;"
            f"padding:4px 8px;white-space:pre-wrap;font-family:monospace;font-size:0.9em'>{esc(message)}</div>")


def note_html(message: str, colour: str = "#555") -> str:
    """``message`` as a small note. It is inserted as HTML (it may hold ``<code>``/``<b>``): a caller escapes
    every piece of it that it did not write itself (``esc``)."""
    return f"<div style='color:{esc(colour)};font-size:0.9em'>{message}</div>"


@contextlib.contextmanager
def quiet_loading() -> Any:
    """No tqdm "Loading weights" / download bars in the notebook while models load (they clutter outputs)."""
    undo = []
    try:
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            undo.append(hf_logging.enable_progress_bar)
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )

        if not are_progress_bars_disabled():
            disable_progress_bars()
            undo.append(enable_progress_bars)
    except ImportError:
        pass
    try:
        yield
    finally:
        for fn in undo:
            fn()


class Panel(W.VBox):
    """A VBox whose guarded callbacks show their errors inside it instead of letting them vanish.

    ``error`` holds the last error as one line a notebook user can act on; the traceback is kept in a
    collapsed ``Output`` (set through ``outputs``, never by capturing prints, so it works on ipykernel 6 and 7).
    """

    error = T.Unicode("", help="the last error of a callback, '' when the last action succeeded")

    def __init__(self, **kwargs: Any):
        self._error_box = W.HTML()
        self._traceback = W.Output()
        self._details = W.Accordion(children=[self._traceback], titles=("traceback",),
                                    layout=W.Layout(display="none"))
        super().__init__(**kwargs)
        self.observe(self._show_error, names=["error"])

    def _show_error(self, change: dict[str, Any]) -> None:
        self._error_box.value = error_html(change["new"])
        self._details.layout.display = "" if change["new"] else "none"
        if not change["new"]:
            self._traceback.outputs = ()

    def show_error(self, exc: BaseException) -> None:
        """Show ``exc`` in the panel: message in red, traceback folded away."""
        self.error = f"{type(exc).__name__}: {exc}"
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self._traceback.outputs = ({"output_type": "stream", "name": "stderr", "text": tb},)

    def _footer(self) -> list[W.Widget]:
        return [self._error_box, self._details]


def guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a Panel method used as a callback: an exception becomes ``self.error``, success clears it."""

    @functools.wraps(method)
    def wrapper(self: Panel, *args: Any, **kwargs: Any) -> Any:
        try:
            result = method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - shown to the user, never swallowed silently
            self.show_error(exc)
            return None
        self.error = ""
        return result

    return wrapper


def nice_ticks(low: float, high: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [low, high], about ``n`` of them."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks, t = [], first
    while t <= high + 1e-9 * step:
        ticks.append(round(t, 12))
        t += step
    return ticks


def fmt_tick(value: float) -> str:
    """A tick label: 0.25, 1.5, 200, 1.2k, 3e-05 (no 0.30000000000000004)."""
    if value == 0:
        return "0"
    if abs(value) >= 10_000:
        return f"{value / 1000:g}k"
    if abs(value) < 1e-3:
        return f"{value:.0e}"
    return f"{value:.4g}"


def smooth(ys: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average (TensorBoard-style, bias-corrected); ``weight`` 0 returns ``ys`` unchanged."""
    if weight <= 0:
        return list(ys)
    out, last, norm = [], 0.0, 0.0
    for y in ys:
        if not math.isfinite(y):
            out.append(y)
            continue
        last = weight * last + (1 - weight) * y
        norm = weight * norm + (1 - weight)
        out.append(last / norm)
    return out


MAX_POINTS = 400  # points per SVG polyline; older points are thinned, never dropped from the record


def thin(xs: list[float], ys: list[float], n: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """At most about ``n`` points of a curve (every k-th, and the last): the record keeps them all."""
    if len(xs) <= n:
        return xs, ys
    stride = math.ceil(len(xs) / n)
    keep = list(range(0, len(xs), stride)) + [len(xs) - 1]
    return [xs[i] for i in keep], [ys[i] for i in keep]


def fmt_number(value: Any, pattern: str) -> str:
    """``value`` formatted with ``pattern``; "-" when it is missing, None, NaN/inf, a bool, a string or an int
    too large for a float (a record's "not measured")."""
    value = number(value)
    return "-" if value is None else pattern.format(value)


def elapsed_s(status: dict[str, Any]) -> float | None:
    """Seconds since the run was created, up to when it finished (None when the status has no times)."""
    start = number(status.get("created_at"))
    if start is None:
        return None
    done = status.get("state") not in ("queued", "running")
    end = (number(status.get("finished_at")) or number(status.get("updated_at"))) if done else None
    return max(0.0, (end or time.time()) - start)


Series = tuple  # (name, xs, ys, colour) or (name, xs, ys, colour, dashed)


def svg_chart(series: Sequence[Series], *, title: str = "", width: int = 420, height: int = 180,
              y_range: tuple[float, float] | None = None, hlines: Sequence[tuple[float, str, str]] = (),
              x_label: str = "step", y_format: Callable[[float], str] = fmt_tick) -> str:
    """A line chart as inline SVG (no scripts, no matplotlib): cheap enough to redraw every poll.

    Axis ticks are round numbers; every point carries an SVG ``<title>``, so hovering shows its value.

    Args:
        series: (name, xs, ys, colour[, dashed]) per line; dashed lines are overlays (e.g. earlier runs).
        y_range: fixed (low, high); None fits the data (widened to round ticks).
        hlines: (y, label, colour) reference lines, e.g. the teacher's accuracy.
        x_label: the x axis' name, shown after the last tick.
        y_format: how hover titles print y values.
    """
    pad_l, pad_r, pad_t, pad_b = 44, 12, 20, 26
    xs_all = [x for s in series for x in s[1]]
    ys_all = [y for s in series for y in s[2] if math.isfinite(y)] + [y for y, _, _ in hlines]
    parts = [(f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"style='background:#fff;border:1px solid #ddd;font-family:sans-serif;font-size:10px'>"),
             f"<text x='{pad_l}' y='13' font-size='11' font-weight='600'>{esc(title)}</text>"]
    if not xs_all or not ys_all:
        parts.append(f"<text x='{width / 2}' y='{height / 2}' text-anchor='middle' fill='#888'>waiting for "
                     "data…</text></svg>")
        return "".join(parts)
    x0, x1 = min(xs_all), max(xs_all)
    if x1 == x0:  # one point: centre it
        x0, x1 = x0 - 1, x1 + 1
    integer_x = all(float(x).is_integer() for x in xs_all)  # steps: no 40.25 ticks
    if y_range:
        y0, y1 = y_range
    else:
        y0, y1 = min(ys_all), max(ys_all)
        if y1 == y0:
            y0, y1 = y0 - 0.5, y1 + 0.5
        ticks = nice_ticks(y0, y1, 4)
        step = ticks[1] - ticks[0] if len(ticks) > 1 else (y1 - y0)
        y0, y1 = min(y0, ticks[0]), max(y1, ticks[-1])
        y0, y1 = (math.floor(y0 / step) * step, math.ceil(y1 / step) * step) if step else (y0, y1)
    sx = lambda x: pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)
    sy = lambda y: height - pad_b - (y - y0) / (y1 - y0) * (height - pad_t - pad_b)
    parts.append(f"<line x1='{pad_l}' y1='{height - pad_b}' x2='{width - pad_r}' y2='{height - pad_b}' "
                 "stroke='#999'/>")
    for y in nice_ticks(y0, y1, 5):
        parts.append(f"<line x1='{pad_l}' x2='{width - pad_r}' y1='{sy(y):.1f}' y2='{sy(y):.1f}' stroke='#eee'/>"
                     f"<text x='{pad_l - 4}' y='{sy(y) + 3:.1f}' text-anchor='end' fill='#555'>{fmt_tick(y)}</text>")
    x_ticks = [x for x in nice_ticks(x0, x1, 5) if x0 <= x <= x1 and (not integer_x or float(x).is_integer())]
    for i, x in enumerate(x_ticks):
        label = fmt_tick(x) + (f" {x_label}" if i == len(x_ticks) - 1 else "")
        anchor = "end" if i == len(x_ticks) - 1 and sx(x) > width - pad_r - 40 else "middle"
        parts.append(f"<line x1='{sx(x):.1f}' x2='{sx(x):.1f}' y1='{height - pad_b}' y2='{height - pad_b + 3}' "
                     f"stroke='#999'/><text x='{sx(x):.1f}' y='{height - 10}' text-anchor='{anchor}' "
                     f"fill='#555'>{esc(label)}</text>")
    for y, label, colour in hlines:
        parts.append(f"<line x1='{pad_l}' x2='{width - pad_r}' y1='{sy(y):.1f}' y2='{sy(y):.1f}' stroke='{esc(colour)}' "
                     f"stroke-dasharray='4 3'><title>{esc(label)}: {esc(y_format(y))}</title></line>"
                     f"<text x='{width - pad_r - 2}' y='{sy(y) - 3:.1f}' text-anchor='end' fill='{esc(colour)}'>"
                     f"{esc(label)}</text>")
    legend_x = pad_l + 6.5 * len(title) + 14  # after the title, never over it
    for s in series:
        name, xs, ys, colour = s[:4]
        dashed = len(s) > 4 and s[4]
        finite = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in finite)
        dash = " stroke-dasharray='5 3' opacity='0.7'" if dashed else ""
        parts.append(f"<polyline fill='none' stroke='{esc(colour)}' stroke-width='1.5'{dash} points='{pts}'/>")
        # hover targets: a native tooltip per point (thinned so the SVG stays small)
        stride = max(1, math.ceil(len(finite) / 120))
        for x, y in finite[::stride] if len(finite) > 1 else finite:
            r = 3 if len(finite) <= 40 else 2
            parts.append(f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='{r}' fill='{esc(colour)}' "
                         f"fill-opacity='{0.9 if len(finite) <= 40 else 0.0}'><title>{esc(name)} at {esc(x_label)} "
                         f"{x:g}: {esc(y_format(y))}</title></circle>")
        if legend_x < width - 20:
            parts.append(f"<text x='{legend_x}' y='13' fill='{esc(colour)}'>{esc(name)}</text>")
        legend_x += 6 * len(name) + 14
    parts.append("</svg>")
    return "".join(parts)


# --- one progress model across phases (the sidebar's progress.ts says the same) ---------------------------
PHASES = [("loading", "loading data and models"), ("preparing_teacher", "preparing the teacher"),
          ("caching_logits", "caching teacher logits"),
          ("caching_attributions", "computing teacher attributions"), ("training", "training"),
          ("evaluating", "final evaluation"), ("saving", "saving")]


def run_progress(status: dict[str, Any]) -> tuple[str, float, float]:
    """(text, value, max) of a run's progress in one model across phases, from its status.json.

    loading → preparing the teacher k/N → caching teacher logits k/N → training k/N → final evaluation →
    saving; a status without ``phase`` (older runs) reads as training (``step``/``total_steps``).
    """
    state = str(status.get("state") or "")
    step = int(number(status.get("step")) or 0)
    total = number(status.get("total_steps"))
    total = int(total) if total else None
    phase = status.get("phase")
    names = [p for p, _ in PHASES]
    if phase not in names:
        phase = "done" if state == "completed" else "queued" if state == "queued" else None
    if phase == "done" or (state == "completed" and total):
        return f"done · step {step}/{total or step}", 1.0, 1.0
    if phase == "queued":
        return str(status.get("message") or "queued"), 0.0, 1.0
    eta = number(status.get("eta_s"))
    eta_text = f" · ETA {fmt_eta(eta)}" if eta is not None and state in ("running", "queued") else ""
    if phase is None or phase == "training":
        prefix, index = ("", "") if phase is None else ("training ", f" · phase {names.index(phase) + 1}/{len(PHASES)}")
        return (f"{prefix}step {step}/{total or '?'}{index}{eta_text}", float(min(step, total) if total else 0),
                float(total or 1))
    k, n = number(status.get("phase_step")), number(status.get("phase_total"))
    count = f" {int(k)}/{int(n)}" if k is not None and n else ""
    return (f"{dict(PHASES)[phase]}{count} · phase {names.index(phase) + 1}/{len(PHASES)}{eta_text}",
            float(min(k, n)) if k is not None and n else 0.0, float(n or 1))
