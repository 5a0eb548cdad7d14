"""Run every benchmark, then print the goals they were measured against.

    python bench/run_all.py --small            # ~15 min on 2 CPU cores (SST-2, MiniLM-L6 teacher)
    python bench/run_all.py                    # the full profile (longer training, more repeats)
    python bench/run_all.py --tiny             # seconds: random tiny models and toy data (smoke test)

Order: report (trains the students) -> compression sweep -> training throughput -> attribution throughput
(bench_attribution.py, another module's bench, called through its own main) -> plots. Everything lands in
``--out-dir`` (default ``artifacts/``): one JSON per bench, ``summary.json`` and ``tradeoff.png``.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import _common


def attribution(args: Any, out_dir: Path) -> dict[str, Any] | None:
    """bench_attribution.py's main with a size for the profile; None (with a message) when unavailable."""
    here = Path(__file__).resolve().parent
    if not (here / "bench_attribution.py").is_file():
        print("[attribution] SKIP: bench/bench_attribution.py is not there yet")
        return None
    mod = importlib.import_module("bench_attribution")
    out = out_dir / "attribution.json"
    out.unlink(missing_ok=True)
    size = ["--n", "4", "--n-steps", "4"] if args.tiny else ["--n", "32"] if args.small else []
    mod.main([*size, "--skip-faithfulness", "--out", str(out)])
    if not out.is_file():  # it prints SKIP and writes nothing when its model or data is missing
        print("[attribution] SKIP: bench_attribution.py wrote no result (see its message above)")
        return None
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--skip", nargs="*", default=[], choices=["report", "compress", "train_throughput",
                                                              "attribution", "plot"], help="benches to leave out")
    args = p.parse_args(argv)
    if args.out:
        raise SystemExit("run_all.py writes one JSON per bench into --out-dir; --out is for single benches.")
    out_dir = Path(args.out_dir)
    passthrough = [f"--{k}" for k in ("small", "tiny") if getattr(args, k)] + ["--out-dir", str(out_dir)]
    passthrough += [x for k in ("teacher", "dataset") if getattr(args, k) for x in (f"--{k}", getattr(args, k))]
    start = time.perf_counter()
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}
    steps = [("report", lambda: importlib.import_module("bench_report").main(passthrough)),
             ("compress", lambda: importlib.import_module("bench_compress").main(passthrough)),
             ("train_throughput", lambda: importlib.import_module("bench_train_throughput").main(passthrough)),
             ("attribution", lambda: attribution(args, out_dir)),
             ("plot", lambda: importlib.import_module("plot_tradeoff").main(["--out-dir", str(out_dir)]))]
    for name, fn in steps:
        if name in args.skip:
            print(f"\n===== {name}: skipped (--skip) =====")
            continue
        print(f"\n===== {name} =====", flush=True)
        t = time.perf_counter()
        try:
            results[name] = fn()
        except Exception as e:  # noqa: BLE001 -- one failing bench must not hide the others' numbers
            traceback.print_exc()
            errors[name] = f"{type(e).__name__}: {e}"
        timings[name] = time.perf_counter() - t
    summary = summarise(results, errors, timings, time.perf_counter() - start)
    _common.write_json(out_dir / "summary.json", summary)
    print(f"\nwrote {out_dir / 'summary.json'}")
    if errors:
        raise SystemExit(f"{len(errors)} bench(es) failed: {', '.join(errors)}")
    return summary


def summarise(results: dict[str, Any], errors: dict[str, str], timings: dict[str, float],
              total: float) -> dict[str, Any]:
    """Goals, measured values, met or not; printed and returned."""
    goals: list[tuple[str, str, bool | None]] = []
    rep = results.get("report")
    if rep:
        g = rep["goals"]
        goals.append(("retention >= 97% at <= 60% params",
                      f"{g['retention_%']:.1f}% retention at {g['params_%']:.1f}% params",
                      g["goal_retention_97_at_params_60"]))
        goals.append(("student >= 1.6x faster (batch 32, CPU)",
                      f"{g['speedup_b32']:.2f}x at batch 32, {g['speedup_b1']:.2f}x at batch 1", g["goal_speedup_1.6"]))
        goals.append(("distillation beats hard labels", f"{100 * g['kd_minus_hard_accuracy']:+.1f} accuracy points",
                      g["kd_minus_hard_accuracy"] > 0))
    tp = results.get("train_throughput")
    if tp:
        s = tp["summary"]
        best = max(s["train"].values(), key=lambda r: r["end_to_end_ratio"])
        ratio = (f"{best['end_to_end_ratio']:.2f}x end to end ({best['precision_ran']}), "
                 f"{best['loop_ratio']:.2f}x loop only")
        roof = (f"{best['gflop_per_s']:.0f} GFLOP/s = {100 * best['fraction_bf16_peak']:.0f}% of "
                f"{s['matmul_gflop_per_s']['bf16']:.0f}")
        goals.append(("training throughput >= 4x naive KD loop", ratio, s["goal_4x"]))
        goals.append((">= 60% of the bf16 matmul peak in the loop", roof, s["goal_60pct_bf16_peak"]))
    at = results.get("attribution")
    goals.append(("attribution throughput >= 5x naive captum loop",
                  f"{at['speedup']:.2f}x (ceiling {at['speedup_ceiling_same_arithmetic']:.1f}x on {at['device']}, "
                  f"{at['n_sentences']} sentences, n_steps={at['n_steps']})" if at else
                  "skipped", bool(at["speedup"] >= 5) if at else None))
    print("\n===== goals =====")
    for goal, value, met in goals:
        verdict = "met" if met else "NOT met" if met is not None else "-"
        print(f"{goal:<48}{value:<54}{verdict}")
    print("bench times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + f"; total {total:.0f}")
    for name, err in errors.items():
        print(f"FAILED {name}: {err}")
    return {"goals": [{"goal": g, "value": v, "met": m} for g, v, m in goals], "timings_s": timings,
            "total_s": total, "errors": errors, "environment": _common.environment()}


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
