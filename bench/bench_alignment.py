"""KD vs KD + attribution alignment (``alpha_attr``): accuracy, reason agreement, faithfulness, cost.

MiniLM-L6 teacher (a head fine-tuned on the task first, cached) -> 3-layer student (every other teacher layer),
same steps and data for both arms, several seeds. For each student, on the *whole* dev set: accuracy and
retention; its attributions' agreement with the teacher's (mean Spearman, top-k Jaccard, sign agreement; the
teacher's predicted class is explained for both); comprehensiveness / sufficiency of its own attributions; and
seconds per optimiser step. A second, independent method (integrated gradients) on a fixed dev subset checks
that an agreement gain is not an artefact of aligning and measuring the same gradient x input.
Also reports the live probe tracking's cost (``reason_s`` in the eval records) as a share of training time.

    python bench/bench_alignment.py --small                # the README numbers (CPU, see bench/README.md)
    python bench/bench_alignment.py --tiny                 # seconds: random tiny teacher, toy data
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import _common

TEACHER_PREP = 1500  # cap of the teacher's fine-tuning: it stops at its plateau first (SST-2 850, TREC-6 600, BBC 450)
TEACHER_TRAIN = 4000  # training examples the teacher is fine-tuned on (seeded subset)


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", default="sst2,trec6", help="comma-separated data sets (default: sst2,trec6)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3)")
    p.add_argument("--steps", type=int, help="optimiser steps per student (default: 100; tiny: 3)")
    p.add_argument("--max-train", type=int, default=2000, help="students' training examples (one fixed subset)")
    p.add_argument("--alpha-attr", type=float, default=0.6, help="weight of the alignment loss (default 0.6)")
    p.add_argument("--attr-top-k", type=int, help="align only the teacher's top-k tokens (default: all)")
    p.add_argument("--attr-examples", type=int, help="batch rows aligned per step (default: all)")
    p.add_argument("--attr-method", default="input_x_gradient", help="teacher attributions aligned to")
    p.add_argument("--dev-method", default="input_x_gradient", help="method of the whole-dev agreement")
    p.add_argument("--ig-check", type=int, default=64, help="dev examples of the IG (n_steps=16) check; 0: off")
    p.add_argument("--eval-every", type=int, help="evaluation (and probe) interval (default: steps // 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--reuse", action="store_true", help="reuse finished runs with the same config (no retraining)")
    p.add_argument("--table", action="store_true", help="only print the table of the runs finished so far "
                   "(<out-dir>/bench_alignment-<task>-partial.json)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir)
    if args.table:
        tables = {}
        for path in sorted(out_dir.glob("bench_alignment-*-partial.json")):
            rows = json.loads(path.read_text())["rows"]
            n = min(len(r) for r in rows.values())  # seeds finished in both arms only: a paired comparison
            if n:
                tables[path.name.split("-")[1]] = {"arms": {a: {"runs": r[:n], "summary": summarise(r[:n])}
                                                            for a, r in rows.items()}}
        print_table(tables)
        return
    base = _common.profile(args)
    steps = args.steps or (3 if args.tiny else 100)
    tasks = ["tiny"] if args.tiny else args.tasks.split(",")
    results: dict[str, Any] = {}
    for name in tasks:
        results[name] = run_task(args, base, name, steps, out_dir)
        _common.save_result(args, "bench_alignment", base, settings=settings(args, steps), results=results)
    print_table(results)


def settings(args: Any, steps: int) -> dict[str, Any]:
    return {"steps": steps, "seeds": args.seeds, "max_train": args.max_train, "alpha_attr": args.alpha_attr,
            "attr_top_k": args.attr_top_k, "attr_examples": args.attr_examples, "attr_method": args.attr_method,
            "dev_method": args.dev_method, "ig_check": args.ig_check, "threads": args.threads}


def run_task(args: Any, base: Any, name: str, steps: int, out_dir: Path) -> dict[str, Any]:
    from distill_nb.data import load_task
    from distill_nb.train import train

    if name == "tiny":
        prof = _common.resolve_inputs(base, out_dir)
        folder, text_column = prof.teacher, "text"
    else:
        source, text_column = _common.dataset(name)
        prof = replace(base, dataset=source, max_train=TEACHER_TRAIN, teacher_prep_steps=TEACHER_PREP,
                       max_length=64)
        folder = _common.teacher_folder(prof, _common.load(prof))
    # one fixed training subset for every seed and arm: same data, and the teacher-attribution cache is reused
    data = load_task(prof.dataset, text_column=text_column, max_train=args.max_train, max_eval=prof.max_eval, seed=0)
    eval_every = args.eval_every or max(1, steps // 2)
    arms = {"kd": {}, "kd+align": {"alpha_attr": args.alpha_attr, "attr_top_k": args.attr_top_k,
                                   "attr_examples": args.attr_examples, "attr_method": args.attr_method}}
    rows: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for seed in range(args.seeds):
        for arm, extra in arms.items():
            cfg = _common.distill_config(prof, teacher=str(folder), teacher_prep_steps=0, text_column=text_column,
                                         max_train_examples=args.max_train, max_steps=steps, seed=seed,
                                         eval_every=eval_every, reason_probe=64, **extra)
            run = out_dir / "runs" / "alignment" / name / f"{arm.replace('+', '_')}-seed{seed}"
            logs: list[str] = []
            final = _finished(run, cfg) if args.reuse else None
            if final is None:  # train it (again)
                shutil.rmtree(run, ignore_errors=True)
                t0 = time.time()
                final = train(cfg, run, data=data, log=_logger(logs, f"  [{name} {arm} {seed}]"))
                wall = time.time() - t0
            else:
                print(f"  [{name} {arm} {seed}] reusing the finished run in {run} (same config)", flush=True)
                t0, wall = float(json.loads((run / "status.json").read_text())["started_at"]), math.nan
            row = {"seed": seed, "accuracy": final["accuracy"], "teacher_accuracy": final["teacher_accuracy"],
                   "retention": final["retention"], "wall_s": wall, **run_costs(run, logs, t0),
                   "probe_spearman_final": final.get("reason_spearman"),
                   **dev_reasons(args, folder, run / "student", data.eval.texts)}
            rows[arm].append(row)
            _common.write_json(out_dir / f"bench_alignment-{name}-partial.json", {"task": name, "rows": rows})
            print(f"[{name}] {arm} seed {seed}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in row.items()), flush=True)
    return {"teacher": str(folder), "teacher_prep_steps": prof.teacher_prep_steps, "eval_examples": len(data.eval),
            "train_examples": len(data.train), "steps": steps, "arms": {a: {"runs": r, "summary": summarise(r)}
                                                                        for a, r in rows.items()}}


def _finished(run: Path, cfg: Any) -> dict[str, Any] | None:
    """The final eval record of a completed run with exactly this config (``--reuse``), else None."""
    from distill_nb.config import DistillConfig
    from distill_nb.runs import read_metrics

    try:
        same = DistillConfig.from_json(run / "config.json").to_dict() == cfg.to_dict()
        done = json.loads((run / "status.json").read_text()).get("state") == "completed"
    except (OSError, ValueError):
        return None
    evals = [m for m in read_metrics(run) if m["split"] == "eval"] if same and done else []
    return evals[-1] if evals and (run / "student" / "config.json").is_file() else None


def _logger(logs: list[str], prefix: str) -> Any:
    def log(message: str) -> None:
        logs.append(message)
        print(f"{prefix} {message}", flush=True)

    return log


def run_costs(run: Path, logs: list[str], t0: float) -> dict[str, Any]:
    """Seconds per step (median gap between train records) and the probe tracking's share of training time."""
    from distill_nb.runs import read_metrics

    records = read_metrics(run)
    times = [m["time"] for m in records if m["split"] == "train"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    per_step = statistics.median(gaps) if gaps else math.nan
    probe = [m["reason_s"] for m in records if m["split"] == "eval" and "reason_s" in m]
    # the teacher's probe attributions (first run of a task only; later runs read the cache)
    setup = sum(float(s) for n, s in re.findall(r"teacher attributions \(\w+\) of (\d+) texts: ([\d.]+) s",
                                                "\n".join(logs)) if int(n) <= 64)
    train_s = (times[-1] - t0) if times else math.nan
    return {"s_per_step": per_step, "probe_s_per_eval": statistics.mean(probe) if probe else math.nan,
            "probe_evals": len(probe), "probe_setup_s": setup, "train_s": train_s,
            "tracking_share": (sum(probe) + setup) / train_s if times else math.nan,
            # the demo evaluates every 100 steps: one probe per 100 steps of this run's speed
            "tracking_share_demo": (statistics.mean(probe) / (100 * per_step)) if probe else math.nan}


_TEACHERS: dict[str, Any] = {}


def dev_reasons(args: Any, teacher_folder: str, student_folder: Path, texts: list[str]) -> dict[str, Any]:
    """Agreement with the teacher on every dev text (``--dev-method``), faithfulness, and the IG check."""
    import random

    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill_nb.attribution import agreement, align, attribute, faithfulness
    from distill_nb.fidelity import _as_attributions, teacher_attributions

    if teacher_folder not in _TEACHERS:
        _TEACHERS[teacher_folder] = (AutoModelForSequenceClassification.from_pretrained(teacher_folder).eval(),
                                     AutoTokenizer.from_pretrained(teacher_folder))
    teacher, ttok = _TEACHERS[teacher_folder]
    student = AutoModelForSequenceClassification.from_pretrained(student_folder).eval()
    stok = AutoTokenizer.from_pretrained(student_folder)
    cpu = torch.device("cpu")

    def agree(method: str, n_steps: int, subset: list[str]) -> tuple[dict[str, float], list[Any]]:
        scores, lengths, targets, _ = teacher_attributions(teacher, ttok, subset, method=method, n_steps=n_steps,
                                                           max_length=64, device=cpu, log=lambda *_: None)
        t_attr = _as_attributions(ttok, subset, scores, lengths, targets, method, 64)
        gradient = method in ("input_x_gradient", "saliency")
        s_attr = attribute(student, stok, subset, method, [int(t) for t in targets], n_steps=n_steps, max_length=64,
                           batch_size=16 if gradient else None, device=cpu)
        rows = [agreement(*align(t, s)[2:], 5) for t, s in zip(t_attr, s_attr)]
        mean = {k: float(np.nanmean([r[k] for r in rows])) for k in ("spearman", "topk_jaccard", "sign_agreement")}
        return mean, s_attr

    t0 = time.time()
    dev, s_attr = agree(args.dev_method, 16, texts)
    faith = faithfulness(student, stok, s_attr, top_k=3, steps=2, batch_size=32)
    out = {"dev_spearman": dev["spearman"], "dev_topk": dev["topk_jaccard"], "dev_sign": dev["sign_agreement"],
           "comprehensiveness": float(np.mean([f.comprehensiveness for f in faith])),
           "sufficiency": float(np.mean([f.sufficiency for f in faith]))}
    if args.ig_check:
        subset = [texts[i] for i in sorted(random.Random(0).sample(range(len(texts)), min(args.ig_check,
                                                                                           len(texts))))]
        ig, _ = agree("integrated_gradients", 16, subset)
        out["ig_spearman"] = ig["spearman"]
    out["dev_attr_s"] = time.time() - t0
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key in rows[0]:
        if key == "seed":
            continue
        values = [r[key] for r in rows if isinstance(r[key], (int, float)) and not math.isnan(r[key])]
        if values:
            out[key] = dict(zip(("mean", "sd"), _common.mean_sd(values)))
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def print_table(results: dict[str, Any]) -> None:
    cols = [("accuracy", 4), ("retention", 3), ("dev_spearman", 3), ("ig_spearman", 3), ("dev_topk", 3),
            ("comprehensiveness", 3), ("sufficiency", 3), ("s_per_step", 2)]
    print("| task | arm | " + " | ".join(c for c, _ in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for name, res in results.items():
        for arm, data in res["arms"].items():
            s = data["summary"]
            cells = [f"{s[c]['mean']:.{d}f} ± {s[c]['sd']:.{d}f}" if c in s else "–" for c, d in cols]
            print(f"| {name} | {arm} | " + " | ".join(cells) + " |")
        if len(res["arms"]) < 2:
            continue
        kd, al = res["arms"]["kd"]["summary"], res["arms"]["kd+align"]["summary"]
        n = min(len(res["arms"]["kd"]["runs"]), len(res["arms"]["kd+align"]["runs"]))
        print(f"| {name} | seeds | {n} | | | | | | | |")
        if "dev_spearman" in kd and "dev_spearman" in al:
            print(f"| {name} | Δ (align − kd) | {100 * (al['accuracy']['mean'] - kd['accuracy']['mean']):+.2f} pts | | "
                  f"{al['dev_spearman']['mean'] - kd['dev_spearman']['mean']:+.3f} | "
                  + (f"{al['ig_spearman']['mean'] - kd['ig_spearman']['mean']:+.3f}" if "ig_spearman" in kd else "–")
                  + " | | | | |")
        if "tracking_share" in kd:
            print(f"probe tracking on {name}: {100 * kd['tracking_share']['mean']:.1f} % of training time in these "
                  f"runs; {100 * kd['tracking_share_demo']['mean']:.1f} % at the demo's one probe per 100 steps")


if __name__ == "__main__":
    main()
