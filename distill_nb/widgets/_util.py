"""Shared pieces of the widgets: the error-catching base panel, small HTML helpers, an inline SVG chart.

Widgets here never write to an ``Output`` from a callback or a background task: ipykernel 7 routes such
output by the *current* parent message (ipywidgets #4001/#4020). Errors and charts are plain widget
values (``HTML.value``, ``Output.outputs``), which every kernel version syncs the same way.
"""

from __future__ import annotations

import functools
import html
import math
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as W
import traitlets as T


def esc(value: Any) -> str:
    return html.escape(str(value))


def fmt_params(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{int(n)}"


def fmt_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def table_html(rows: Sequence[tuple[str, Any]]) -> str:
    """A two-column key/value table with inline styles only."""
    cells = "".join(f"<tr><th style='text-align:left;padding:1px 10px 1px 0;font-weight:600'>{esc(k)}</th>"
                    f"<td style='padding:1px 0'>{v}</td></tr>" for k, v in rows)
    return f"<table style='border-collapse:collapse;font-size:0.95em'>{cells}</table>"


def error_html(message: str) -> str:
    if not message:
        return ""
    return ("<div style='color:#a00;background:#fff0f0;border:1px solid #e0a0a0;border-radius:4px;"
            f"padding:4px 8px;white-space:pre-wrap;font-family:monospace;font-size:0.9em'>{esc(message)}</div>")


def note_html(message: str, colour: str = "#555") -> str:
    return f"<div style='color:{colour};font-size:0.9em'>{message}</div>"


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


def svg_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float], str]], *, title: str = "",
              width: int = 420, height: int = 180, y_range: tuple[float, float] | None = None,
              hlines: Sequence[tuple[float, str, str]] = ()) -> str:
    """A line chart as inline SVG (no scripts, no matplotlib): cheap enough to redraw every poll.

    Args:
        series: (name, xs, ys, colour) per line.
        y_range: fixed (low, high); None fits the data.
        hlines: (y, label, colour) reference lines, e.g. the teacher's accuracy.
    """
    pad_l, pad_r, pad_t, pad_b = 44, 10, 20, 24
    xs_all = [x for _, xs, _, _ in series for x in xs]
    ys_all = [y for _, _, ys, _ in series for y in ys if math.isfinite(y)] + [y for y, _, _ in hlines]
    parts = [(f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"style='background:#fff;border:1px solid #ddd;font-family:sans-serif;font-size:10px'>"),
             f"<text x='{pad_l}' y='13' font-size='11' font-weight='600'>{esc(title)}</text>"]
    if not xs_all or not ys_all:
        parts.append(f"<text x='{width / 2}' y='{height / 2}' text-anchor='middle' fill='#888'>waiting for "
                     "data…</text></svg>")
        return "".join(parts)
    x0, x1 = min(xs_all), max(xs_all)
    y0, y1 = y_range if y_range else (min(ys_all), max(ys_all))
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    sx = lambda x: pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)
    sy = lambda y: height - pad_b - (y - y0) / (y1 - y0) * (height - pad_t - pad_b)
    parts.append(f"<line x1='{pad_l}' y1='{height - pad_b}' x2='{width - pad_r}' y2='{height - pad_b}' "
                 "stroke='#999'/>")
    for frac in (0.0, 0.5, 1.0):
        y = y0 + frac * (y1 - y0)
        parts.append(f"<text x='{pad_l - 4}' y='{sy(y) + 3:.1f}' text-anchor='end' fill='#555'>{y:.3g}</text>")
    parts.append(f"<text x='{pad_l}' y='{height - 8}' fill='#555'>{x0:g}</text>"
                 f"<text x='{width - pad_r}' y='{height - 8}' text-anchor='end' fill='#555'>step {x1:g}</text>")
    for y, label, colour in hlines:
        parts.append(f"<line x1='{pad_l}' x2='{width - pad_r}' y1='{sy(y):.1f}' y2='{sy(y):.1f}' stroke='{colour}' "
                     f"stroke-dasharray='4 3'/><text x='{width - pad_r - 2}' y='{sy(y) - 3:.1f}' "
                     f"text-anchor='end' fill='{colour}'>{esc(label)}</text>")
    legend_x = pad_l + 120
    for name, xs, ys, colour in series:
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys) if math.isfinite(y))
        if len(xs) == 1:
            parts.append(f"<circle cx='{sx(xs[0]):.1f}' cy='{sy(ys[0]):.1f}' r='3' fill='{colour}'/>")
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' points='{pts}'/>"
                     f"<text x='{legend_x}' y='13' fill='{colour}'>{esc(name)}</text>")
        legend_x += 8 * len(name) + 20
    parts.append("</svg>")
    return "".join(parts)
