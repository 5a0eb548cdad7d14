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
train() runs once per ``--precisions`` entry each round (default: ``auto``, which is bf16 on a CPU where the
measured check picks it, and ``fp32``).

Roofline: the loop's achieved GFLOP/s (the student's forward+backward FLOPs on train()'s own length-bucketed
batches, counted by torch's FlopCounterMode on a sample of them, times its measured steps/s; the naive loop's
count adds the teacher's forward at max_length padding) against this device's measured fp32 and bf16 matmul
rates (the practical peak: a 1024x1024 matmul, best of 8, measured between the rounds). ``--breakdown`` also
times a step on one example of each batch (the per-step work that does not grow with the batch: weight casts,
dispatch, clipping, AdamW over every parameter) and prints the ceiling it sets: the fraction of the peak a step
would reach if its matmuls ran at the peak and only that fixed part remained.

    python bench/bench_train_throughput.py --small [--precisions auto fp32] [--out artifacts/train_throughput.json]
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


def flops_per_step(teacher_folder: str, texts: list[str], *, steps: int, batch_size: int, max_length: int,
                   student_layers: int, sample: int = 3) -> dict[str, float]:
    """FLOPs of one optimiser step, averaged: train()'s (student fwd+bwd on its length-bucketed batches) and the
    naive loop's (teacher fwd + student fwd+bwd at max_length padding). Counted on ``sample`` batches."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from distill_nb.data import collate, encode, length_batches
    from distill_nb.models import load_teacher, make_student

    teacher, tok = load_teacher(teacher_folder)
    student = make_student(teacher, n_layers=student_layers).train()
    enc = encode(tok, texts, max_length)
    batches = length_batches([len(e) for e in enc], batch_size, seed=0)[:steps]  # train()'s first epoch order

    def count(model: torch.nn.Module, batch: dict[str, torch.Tensor], backward: bool) -> int:
        with FlopCounterMode(display=False) as counter:
            logits = model(**batch).logits
            if backward:
                logits.float().sum().backward()
        model.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    picked = batches[:: max(1, len(batches) // sample)][:sample]
    tokens = [len(b) * max(len(enc[i]) for i in b) for b in picked]  # padded tokens per sampled batch
    per_token = sum(count(student, collate(enc, b, tok.pad_token_id), True) for b in picked) / sum(tokens)
    all_tokens = sum(len(b) * max(len(enc[i]) for i in b) for b in batches)
    full = {"input_ids": torch.full((batch_size, max_length), tok.pad_token_id + 1),
            "attention_mask": torch.ones(batch_size, max_length, dtype=torch.long)}
    naive = count(student, full, True)
    with torch.no_grad():
        naive += count(teacher, full, False)
    return {"train_flops_per_step": per_token * all_tokens / len(batches), "naive_flops_per_step": naive,
            "train_mean_padded_length": all_tokens / sum(len(b) for b in batches)}


OP_KINDS = {  # torch.profiler op name -> what it is, for the breakdown of a step
    "aten::mm": "matmul", "aten::addmm": "matmul", "aten::bmm": "matmul", "aten::baddbmm": "matmul",
    "aten::_fused_adamw_": "AdamW update", "aten::bernoulli_": "dropout masks",
    "aten::random_": "dropout masks", "aten::bitwise_and": "dropout masks", "aten::ge": "dropout masks",  # fastdrop
    "aten::copy_": "casts and copies", "aten::_to_copy": "casts and copies",
    "aten::fill_": "zero-fills", "aten::zero_": "zero-fills", "aten::linalg_vector_norm": "gradient clipping",
    "aten::gelu": "GELU/softmax/LayerNorm", "aten::gelu_backward": "GELU/softmax/LayerNorm",
    "aten::_softmax": "GELU/softmax/LayerNorm", "aten::_softmax_backward_data": "GELU/softmax/LayerNorm",
    "aten::native_layer_norm": "GELU/softmax/LayerNorm", "aten::native_layer_norm_backward": "GELU/softmax/LayerNorm",
    "aten::embedding_dense_backward": "embedding backward", "aten::index_add_": "embedding backward",
}


def loop_breakdown(teacher_folder: str, texts: list[str], labels: list[int], *, steps: int, batch_size: int,
                   max_length: int, student_layers: int, precision: str, profiled: int = 10) -> dict[str, Any]:
    """Where a step's time goes: train()'s step (KD T=2 + 0.5 CE on cached teacher logits, autocast, clipping,
    fused AdamW) replayed on train()'s own length-bucketed batches under torch.profiler. Returns each kind of
    op's share of the step's self CPU time and the matmuls' own GFLOP/s while they run (FlopCounterMode FLOPs of
    the same batches / the matmul ops' time): the loop's distance to the peak, split into "matmuls below peak"
    and "time outside matmuls"."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from distill_nb import losses
    from distill_nb.data import collate, encode, length_batches
    from distill_nb.fastdrop import use_fast_dropout
    from distill_nb.models import load_teacher, make_student
    from distill_nb.precision import adamw, amp_dtype, autocast_for, keep_freed_memory

    keep_freed_memory()
    device = torch.device("cpu")
    autocast = autocast_for(amp_dtype(precision, device), device)
    teacher, tok = load_teacher(teacher_folder)
    student = use_fast_dropout(make_student(teacher, n_layers=student_layers), device).train()  # as train() does
    enc = encode(tok, texts, max_length)
    batches = length_batches([len(e) for e in enc], batch_size, seed=0)[:steps]
    y = torch.tensor(labels)
    with torch.no_grad():  # the teacher's logits, cached as train() caches them
        t_logits = {i: teacher(**collate(enc, b, tok.pad_token_id)).logits for i, b in enumerate(batches)}
    opt = adamw(student.parameters(), device, lr=1e-4, weight_decay=0.01)

    def step(i: int, rows: slice = slice(None)) -> None:
        with autocast():
            out = student(**collate(enc, batches[i][rows], tok.pad_token_id)).logits
            loss = (losses.kd_loss(out, t_logits[i][rows], 2.0)
                    + 0.5 * losses.ce_loss(out, y[batches[i][rows]]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    order = [i % len(batches) for i in range(3 + profiled)]
    for i in order[:3]:  # warm-up
        step(i)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in order[3:]:
            step(i)
    wall = time.perf_counter() - start
    kinds: dict[str, float] = {}
    total = 0.0
    for ev in prof.key_averages():
        total += ev.self_cpu_time_total
        kind = OP_KINDS.get(ev.key, "other")
        kinds[kind] = kinds.get(kind, 0.0) + ev.self_cpu_time_total
    # the step's fixed part: a step on one example of each batch still casts every weight, runs every op once,
    # clips and updates all parameters. Unprofiled, alternated with whole steps on the same batches (medians).
    whole, fixed = [], []
    for _ in range(5):
        for timed, rows in ((whole, slice(None)), (fixed, slice(0, 1))):
            start = time.perf_counter()
            for i in order[3:]:
                step(i, rows)
            timed.append((time.perf_counter() - start) / profiled)
    flops = 0
    with FlopCounterMode(display=False) as counter:  # the matmul FLOPs of the same profiled steps
        for i in order[3:]:
            with autocast():
                out = student(**collate(enc, batches[i], tok.pad_token_id)).logits
            out.float().sum().backward()
            student.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    matmul_s = kinds.get("matmul", 0.0) / 1e6
    return {"shares": {k: v / total for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "matmul_gflop_per_s": flops / matmul_s / 1e9 if matmul_s else float("nan"),
            "step_s": statistics.median(whole), "one_example_step_s": statistics.median(fixed),
            "flops_per_step": flops / profiled,
            "profiled_steps_per_s": profiled / wall, "profiled_steps": profiled}


def ours(prof: _common.Profile, teacher_folder: str, task: Any, run_dir: Path,
         precision: str = "auto") -> dict[str, float]:
    """train() on the same examples; loop speed from its own metrics (examples_per_s at the last step)."""
    import shutil

    from distill_nb.runs import read_metrics
    from distill_nb.train import train

    shutil.rmtree(run_dir, ignore_errors=True)
    from distill_nb.runs import read_status

    config = _common.distill_config(prof, teacher=teacher_folder, max_steps=prof.tp_steps,
                                    max_train_examples=None, max_eval_examples=None, precision=precision)
    start = time.perf_counter()
    final = train(config, run_dir, data=task, log=lambda m: None)
    seconds = time.perf_counter() - start
    steps = [r for r in read_metrics(run_dir) if r.get("split") == "train"]
    return {"seconds": seconds, "loop_examples_per_s": steps[-1]["examples_per_s"],
            "loop_seconds": steps[-1]["step"] * prof.batch_size / steps[-1]["examples_per_s"],
            "precision": read_status(run_dir).get("precision"), "accuracy": final.get("accuracy")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _common.parser(__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="+", default=["auto", "fp32"], choices=["auto", "fp32", "bf16"],
                        help="train() precisions to time, each every round (default: auto fp32)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also profile the fastest train() step and print where its time goes")
    parser.add_argument("--max-length", type=int, help="override the profile's max_length (tokens per text)")
    parser.add_argument("--batch-size", type=int, help="override the profile's batch size")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    prof = _common.resolve_inputs(_common.profile(args), out_dir)
    prof = _replace(prof, **{k: v for k, v in (("max_length", args.max_length), ("batch_size", args.batch_size))
                             if v})
    from distill_nb.data import TaskData
    from distill_nb.precision import cpu_bf16_check, cpu_bf16_supported, matmul_rate

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
    precisions = list(dict.fromkeys(args.precisions))
    check = cpu_bf16_check() if cpu_bf16_supported() else {"use_bf16": False, "reason": "no native bf16"}
    print(f"[train-throughput] {prof.tp_rounds} rounds x {prof.tp_steps} steps x batch {prof.batch_size}, "
          f"max_length {prof.max_length}, teacher {t_folder}, {prof.student_layers}-layer student; train() in "
          f"{precisions}; CPU bf16 check: {check.get('reason')}", flush=True)
    # untimed warm-up of both (first-call costs: lazy imports, allocator and thread-pool start-up)
    if prof.tp_warmup:
        naive_kd(t_folder, task.train.texts, task.train.labels, steps=2, batch_size=prof.batch_size,
                 max_length=prof.max_length, student_layers=prof.student_layers)
        for p in precisions:
            ours(_replace(prof, tp_steps=2), t_folder, task, out_dir / "runs" / f"{prof.name}-throughput", p)
    naive_runs, our_runs = [], {p: [] for p in precisions}
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
    import torch

    for r in range(prof.tp_rounds):
        naive_runs.append(naive_kd(t_folder, task.train.texts, task.train.labels, steps=prof.tp_steps,
                                   batch_size=prof.batch_size, max_length=prof.max_length,
                                   student_layers=prof.student_layers, learning_rate=prof.learning_rate))
        line = (f"  round {r + 1}: naive {naive_runs[-1]['loop_examples_per_s']:.1f} ex/s loop, "
                f"{naive_runs[-1]['seconds']:.1f} s total")
        for p in precisions:
            our_runs[p].append(ours(prof, t_folder, task, out_dir / "runs" / f"{prof.name}-throughput", p))
            line += (f" | train() {p}->{our_runs[p][-1]['precision']} {our_runs[p][-1]['loop_examples_per_s']:.1f}"
                     f" ex/s loop, {our_runs[p][-1]['seconds']:.1f} s total")
        peaks["fp32"].append(matmul_rate("cpu", torch.float32))
        peaks["bf16"].append(matmul_rate("cpu", torch.bfloat16))
        print(line, flush=True)

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    flops = flops_per_step(t_folder, task.train.texts, steps=prof.tp_steps, batch_size=prof.batch_size,
                           max_length=prof.max_length, student_layers=prof.student_layers)
    peak = {k: max(v) for k, v in peaks.items()}  # the best of the rounds: the least disturbed measurement
    naive_sps = med(naive_runs, "loop_examples_per_s") / prof.batch_size
    summary: dict[str, Any] = {
        "naive_loop_examples_per_s": med(naive_runs, "loop_examples_per_s"), "naive_seconds": med(naive_runs, "seconds"),
        "naive_loop_steps_per_s": naive_sps, "matmul_gflop_per_s": peak, **flops,
        "naive_gflop_per_s": flops["naive_flops_per_step"] * naive_sps / 1e9, "train": {}}
    head = (f"{'method':<38}{'steps/s':>9}{'examples/s':>12}{'end-to-end s':>14}{'vs naive':>10}{'GFLOP/s':>9}"
            f"{'% fp32 pk':>10}{'% bf16 pk':>10}")
    print(head + "\n" + "-" * len(head))
    print(f"{'naive (teacher/step, pad, fp32)':<38}{naive_sps:>9.2f}{summary['naive_loop_examples_per_s']:>12.1f}"
          f"{summary['naive_seconds']:>14.1f}{'1.00x':>10}{summary['naive_gflop_per_s']:>9.1f}"
          f"{100 * summary['naive_gflop_per_s'] / peak['fp32']:>9.0f}%{100 * summary['naive_gflop_per_s'] / peak['bf16']:>9.0f}%")
    for p, runs in our_runs.items():
        sps = med(runs, "loop_examples_per_s") / prof.batch_size
        gflops = flops["train_flops_per_step"] * sps / 1e9
        row = {"precision_ran": runs[-1]["precision"], "loop_examples_per_s": med(runs, "loop_examples_per_s"),
               "seconds": med(runs, "seconds"), "loop_steps_per_s": sps, "gflop_per_s": gflops,
               "fraction_fp32_peak": gflops / peak["fp32"], "fraction_bf16_peak": gflops / peak["bf16"],
               "end_to_end_ratio": summary["naive_seconds"] / med(runs, "seconds"),
               "loop_ratio": med(runs, "loop_examples_per_s") / summary["naive_loop_examples_per_s"]}
        summary["train"][p] = row
        label = f"train() {p} (ran {row['precision_ran']})"
        print(f"{label:<38}", end="")
        print(f"{sps:>9.2f}{row['loop_examples_per_s']:>12.1f}{row['seconds']:>14.1f}{row['end_to_end_ratio']:>9.2f}x"
              f"{gflops:>9.1f}{100 * row['fraction_fp32_peak']:>9.0f}%{100 * row['fraction_bf16_peak']:>9.0f}%")
    print(f"[train-throughput] device matmul peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s "
          f"(best of {prof.tp_rounds}); train() batches average {flops['train_mean_padded_length']:.1f} tokens "
          f"(naive pads to {prof.max_length})", flush=True)
    if args.breakdown:
        fastest = max(summary["train"], key=lambda p: summary["train"][p]["loop_steps_per_s"])
        b = loop_breakdown(t_folder, task.train.texts, task.train.labels, steps=prof.tp_steps,
                           batch_size=prof.batch_size, max_length=prof.max_length,
                           student_layers=prof.student_layers, precision=fastest)
        summary["breakdown"] = {"precision": fastest, **b}
        print(f"[train-throughput] where a train() {fastest} step goes (torch.profiler, {b['profiled_steps']} steps "
              f"replayed on its batches, {b['profiled_steps_per_s']:.2f} steps/s under the profiler):")
        for kind, share in b["shares"].items():
            print(f"  {kind:<26}{100 * share:>5.1f}%")
        print(f"  the matmuls run at {b['matmul_gflop_per_s']:.0f} GFLOP/s while they run = "
              f"{100 * b['matmul_gflop_per_s'] / peak['bf16' if fastest != 'fp32' else 'fp32']:.0f}% of the "
              f"{'bf16' if fastest != 'fp32' else 'fp32'} peak", flush=True)
        # the ceiling: matmuls at the peak and nothing else growing with the batch, the fixed part unchanged
        at_peak = b["flops_per_step"] / (peak["bf16" if fastest != "fp32" else "fp32"] * 1e9)
        b["ceiling_fraction"] = at_peak / (at_peak + b["one_example_step_s"])
        print(f"  fixed part of a step: {1e3 * b['one_example_step_s']:.1f} ms on one example vs "
              f"{1e3 * b['step_s']:.1f} ms on the whole batch (unprofiled); its matmuls at the peak would take "
              f"{1e3 * at_peak:.1f} ms, so even then this step reaches at most {100 * b['ceiling_fraction']:.0f}% "
              f"of the peak at batch {prof.batch_size}", flush=True)
    best = max(summary["train"].values(), key=lambda r: r["end_to_end_ratio"])
    summary["goal_4x"] = bool(best["end_to_end_ratio"] >= 4)
    summary["goal_60pct_bf16_peak"] = bool(best["fraction_bf16_peak"] >= 0.6)
    print(f"[train-throughput] best end-to-end ratio {best['end_to_end_ratio']:.2f}x (goal >= 4x: "
          f"{'met' if summary['goal_4x'] else 'NOT met'}); its loop reaches {100 * best['fraction_bf16_peak']:.0f}% "
          f"of the bf16 matmul peak (goal >= 60%: {'met' if summary['goal_60pct_bf16_peak'] else 'NOT met'})",
          flush=True)
    return _common.save_result(args, "train_throughput", prof, teacher_folder=t_folder, examples=n,
                               naive_runs=naive_runs, train_runs=our_runs, bf16_check=check, summary=summary)


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
