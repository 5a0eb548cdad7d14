"""Training throughput: ``train()`` versus a KD loop written the obvious way, same pair, data, batch and steps.

The naive loop runs the teacher on every step, pads every batch to ``max_length``, stays fp32 and shuffles
without length bucketing. ``train()`` caches the teacher's logits once, buckets by length and pads each batch
to its longest example (bf16 autocast on CUDA). Both start from the same every-k student of the same prepared
teacher and see the same ``steps * batch_size`` training examples (one epoch, so train()'s one teacher pass
over them is not amortised over several epochs: the least favourable case for caching). The two methods
alternate (naive, train, naive, train, ...) and each is summarised by its median over rounds.

Reported: loop-only examples/s (train(): its own per-step ``examples_per_s`` metric, timed from the first
step; naive: timed around the loop) and end-to-end seconds (train(): the whole call with loading, tokenising,
teacher-logit caching, teacher/student eval and saving; naive: model loading, tokenising and the loop).

    python bench/bench_train_throughput.py --small [--out artifacts/train_throughput.json]
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from dataclasses import replace as _replace
from pathlib import Path
from typing import Any

import _common


def naive_kd(teacher_folder: str, texts: list[str], labels: list[int], *, steps: int, batch_size: int,
             max_length: int, student_layers: int, temperature: float = 2.0, alpha_kd: float = 1.0,
             alpha_ce: float = 0.5, learning_rate: float = 1e-4, seed: int = 0) -> dict[str, float]:
    """The obvious KD loop. Returns end-to-end and loop-only seconds."""
    import torch
    import torch.nn.functional as F

    from distill_nb.models import load_teacher, make_student

    start = time.perf_counter()
    torch.manual_seed(seed)
    teacher, tok = load_teacher(teacher_folder)
    student = make_student(teacher, n_layers=student_layers)
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    y = torch.tensor(labels)
    opt = torch.optim.AdamW(student.parameters(), lr=learning_rate, weight_decay=0.01)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    student.train()
    loop_start = time.perf_counter()
    for step in range(steps):
        idx = order[(step * batch_size) % len(order):][:batch_size]
        ids, mask = enc["input_ids"][idx], enc["attention_mask"][idx]
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=mask).logits
        s_logits = student(input_ids=ids, attention_mask=mask).logits
        kd = F.kl_div(F.log_softmax(s_logits / temperature, -1), F.softmax(t_logits / temperature, -1),
                      reduction="batchmean") * temperature ** 2
        loss = alpha_kd * kd + alpha_ce * F.cross_entropy(s_logits, y[idx])
        loss.backward()
        opt.step()
        opt.zero_grad()
    end = time.perf_counter()
    return {"seconds": end - start, "loop_seconds": end - loop_start,
            "loop_examples_per_s": steps * batch_size / (end - loop_start)}


def ours(prof: _common.Profile, teacher_folder: str, task: Any, run_dir: Path) -> dict[str, float]:
    """train() on the same examples; loop speed from its own metrics (examples_per_s at the last step)."""
    import shutil

    from distill_nb.runs import read_metrics
    from distill_nb.train import train

    shutil.rmtree(run_dir, ignore_errors=True)
    config = _common.distill_config(prof, teacher=teacher_folder, max_steps=prof.tp_steps,
                                    max_train_examples=None, max_eval_examples=None)
    start = time.perf_counter()
    train(config, run_dir, data=task, log=lambda m: None)
    seconds = time.perf_counter() - start
    steps = [r for r in read_metrics(run_dir) if r.get("split") == "train"]
    return {"seconds": seconds, "loop_examples_per_s": steps[-1]["examples_per_s"],
            "loop_seconds": steps[-1]["step"] * prof.batch_size / steps[-1]["examples_per_s"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _common.parser(__doc__.splitlines()[0]).parse_args(argv)
    out_dir = Path(args.out_dir)
    prof = _common.resolve_inputs(_common.profile(args), out_dir)
    from distill_nb.data import TaskData

    full = _common.load(prof)
    t_folder = _common.teacher_folder(prof, full)
    n = prof.tp_steps * prof.batch_size
    if len(full.train) < n:
        raise ValueError(f"{n} training examples needed for {prof.tp_steps} steps of {prof.batch_size}; the "
                         f"data has {len(full.train)}.")
    # the same examples for both: the first n of the (seeded) training subset; a small eval split keeps
    # train()'s teacher/student evaluation cost (which the naive loop does not do) small
    task = TaskData.from_lists(full.train.texts[:n], full.train.labels[:n], full.eval.texts[:64],
                               full.eval.labels[:64], full.label_names)
    print(f"[train-throughput] {prof.tp_rounds} rounds x {prof.tp_steps} steps x batch {prof.batch_size}, "
          f"max_length {prof.max_length}, teacher {t_folder}, {prof.student_layers}-layer student", flush=True)
    # untimed warm-up of both (first-call costs: lazy imports, allocator and thread-pool start-up)
    if prof.tp_warmup:
        naive_kd(t_folder, task.train.texts, task.train.labels, steps=2, batch_size=prof.batch_size,
                 max_length=prof.max_length, student_layers=prof.student_layers)
        ours(_replace(prof, tp_steps=2), t_folder, task, out_dir / "runs" / f"{prof.name}-throughput")
    naive_runs, our_runs = [], []
    for r in range(prof.tp_rounds):
        naive_runs.append(naive_kd(t_folder, task.train.texts, task.train.labels, steps=prof.tp_steps,
                                   batch_size=prof.batch_size, max_length=prof.max_length,
                                   student_layers=prof.student_layers, learning_rate=prof.learning_rate))
        our_runs.append(ours(prof, t_folder, task, out_dir / "runs" / f"{prof.name}-throughput"))
        print(f"  round {r + 1}: naive {naive_runs[-1]['loop_examples_per_s']:.1f} ex/s loop, "
              f"{naive_runs[-1]['seconds']:.1f} s total | train() {our_runs[-1]['loop_examples_per_s']:.1f} ex/s "
              f"loop, {our_runs[-1]['seconds']:.1f} s total", flush=True)

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    summary = {
        "naive_loop_examples_per_s": med(naive_runs, "loop_examples_per_s"),
        "train_loop_examples_per_s": med(our_runs, "loop_examples_per_s"),
        "naive_seconds": med(naive_runs, "seconds"), "train_seconds": med(our_runs, "seconds"),
    }
    summary["naive_loop_steps_per_s"] = summary["naive_loop_examples_per_s"] / prof.batch_size
    summary["train_loop_steps_per_s"] = summary["train_loop_examples_per_s"] / prof.batch_size
    summary["loop_ratio"] = summary["train_loop_examples_per_s"] / summary["naive_loop_examples_per_s"]
    summary["end_to_end_ratio"] = summary["naive_seconds"] / summary["train_seconds"]
    summary["goal_2x"] = bool(summary["end_to_end_ratio"] >= 2)
    head = f"{'method':<34}{'steps/s':>9}{'examples/s':>12}{'end-to-end s':>14}"
    print(head + "\n" + "-" * len(head))
    print(f"{'naive (teacher/step, pad, fp32)':<34}{summary['naive_loop_steps_per_s']:>9.2f}"
          f"{summary['naive_loop_examples_per_s']:>12.1f}{summary['naive_seconds']:>14.1f}")
    print(f"{'train() (cached logits, buckets)':<34}{summary['train_loop_steps_per_s']:>9.2f}"
          f"{summary['train_loop_examples_per_s']:>12.1f}{summary['train_seconds']:>14.1f}")
    print(f"[train-throughput] loop ratio {summary['loop_ratio']:.2f}x, end-to-end ratio "
          f"{summary['end_to_end_ratio']:.2f}x (goal >= 2x end to end: "
          f"{'met' if summary['goal_2x'] else 'NOT met'})", flush=True)
    return _common.save_result(args, "train_throughput", prof, teacher_folder=t_folder, examples=n,
                               naive_runs=naive_runs, train_runs=our_runs, summary=summary)


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
