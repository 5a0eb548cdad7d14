"""Accuracy vs latency vs size, from the JSON that bench_report.py and bench_compress.py wrote.

    python bench/plot_tradeoff.py [--out-dir artifacts]   ->  artifacts/tradeoff.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _rows(data: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    if not data:
        return []
    report = data["reports"]["cpu"] if key == "report" else data["report"]
    return [r for r in report["rows"] if r.get("accuracy") is not None]


def plot(report: dict[str, Any], compress: dict[str, Any] | None, out: str | Path) -> Path:
    """Two panels: accuracy vs batch-32 latency, accuracy vs MB on disk; marker area ~ parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main_rows = _rows(report, "report")
    sweep_rows = _rows(compress, "compress")[1:]  # the sweep's first row is the student, already plotted
    biggest = max(r["params"] for r in main_rows)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    panels = [("latency_b32_ms", "latency, batch 32 (ms, CPU, median)"), ("mb", "size on disk (MB)")]
    for ax, (key, label) in zip(axes, panels):
        for r in main_rows:
            color = "tab:red" if r["name"] == "teacher" else "tab:blue" if "int8" not in r["name"] and \
                "mag" not in r["name"] and "heads" not in r["name"] else "tab:green"
            ax.scatter(r[key], 100 * r["accuracy"], s=40 + 400 * r["params"] / biggest, color=color, alpha=0.7,
                       edgecolor="black")
            ax.annotate(r["name"], (r[key], 100 * r["accuracy"]), textcoords="offset points", xytext=(6, 6),
                        fontsize=8)
        if sweep_rows:
            ax.scatter([r[key] for r in sweep_rows], [100 * r["accuracy"] for r in sweep_rows], marker="x",
                       color="tab:gray", label="compression sweep (its own timing run)")
            for r in sweep_rows:
                ax.annotate(r["name"], (r[key], 100 * r["accuracy"]), textcoords="offset points",
                            xytext=(4, -10), fontsize=7, color="tab:gray")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    rep = report["reports"]["cpu"]
    fig.suptitle(f"{rep['data']}\nred: teacher, blue: students, green: compressed distilled student; "
                 "marker area ~ parameters", fontsize=9)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default="artifacts")
    p.add_argument("--report", help="bench_report JSON (default: <out-dir>/report.json)")
    p.add_argument("--compress", help="bench_compress JSON (default: <out-dir>/compress.json, if present)")
    p.add_argument("--out", help="PNG path (default: <out-dir>/tradeoff.png)")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir)
    report_path = Path(args.report or out_dir / "report.json")
    if not report_path.is_file():
        print(f"[plot] no {report_path}: run bench/bench_report.py first")
        return None
    compress_path = Path(args.compress or out_dir / "compress.json")
    compress = json.loads(compress_path.read_text()) if compress_path.is_file() else None
    path = plot(json.loads(report_path.read_text()), compress, args.out or out_dir / "tradeoff.png")
    print(f"[plot] wrote {path}")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
