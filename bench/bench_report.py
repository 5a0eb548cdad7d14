"""The DistilBERT table: teacher vs distilled student vs hard-label student vs compressed students.

Trains two students with ``train()`` (same shape, init and steps): one distilled (KD + 0.5 CE), one on hard
labels only (alpha_kd=0, alpha_ce=1), then compresses the distilled one (int8, magnitude, heads) and measures
everything side by side on the evaluation split (SST-2 dev, all 872 sentences, unless the profile says).

    python bench/bench_report.py --small [--out artifacts/report.json]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import _common


def train_students(prof: _common.Profile, out_dir: Path, log: Any = print) -> dict[str, Any]:
    """Train the distilled and the hard-label student (reusing finished runs); returns their run dirs."""
    from distill_nb.runs import read_status
    from distill_nb.train import train

    runs = {"kd": _common.distill_config(prof),
            "hard": _common.distill_config(prof, alpha_kd=0.0, alpha_ce=1.0)}
    out: dict[str, Any] = {}
    for name, config in runs.items():
        run_dir = out_dir / "runs" / f"{prof.name}-{name}"
        same = (run_dir / "config.json").is_file() and \
            (run_dir / "config.json").read_text().strip() == config.to_json().strip()
        if same and read_status(run_dir).get("state") == "completed":
            log(f"[report] reusing finished run {run_dir}")
            seconds = read_status(run_dir).get("train_seconds")
        else:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
            log(f"[report] training the {name} student: {run_dir}")
            start = time.perf_counter()
            train(config, run_dir, log=lambda m: log(f"  {m}"))
            seconds = time.perf_counter() - start
            from distill_nb.runs import write_status

            write_status(run_dir, train_seconds=seconds)
        out[name] = {"run_dir": str(run_dir), "seconds": seconds, "status": read_status(run_dir)}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _common.parser(__doc__.splitlines()[0]).parse_args(argv)
    out_dir = Path(args.out_dir)
    prof = _common.resolve_inputs(_common.profile(args), out_dir)
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill_nb import compress
    from distill_nb.models import count_params, load_teacher
    from distill_nb.report import Candidate, compare

    t0 = time.perf_counter()
    task = _common.load(prof)
    runs = train_students(prof, out_dir)
    t_folder = runs["kd"]["status"].get("teacher_path") or prof.teacher
    teacher, t_tok = load_teacher(t_folder)
    kd_dir, hard_dir = Path(runs["kd"]["run_dir"]) / "student", Path(runs["hard"]["run_dir"]) / "student"
    kd = AutoModelForSequenceClassification.from_pretrained(kd_dir).eval()
    hard = AutoModelForSequenceClassification.from_pretrained(hard_dir).eval()
    s_tok = AutoTokenizer.from_pretrained(kd_dir)
    print("[report] compressing the distilled student", flush=True)
    imp_texts = task.train.texts[:prof.importance_examples]  # heads are scored on training data, never on dev
    imp_labels = task.train.labels[:prof.importance_examples]
    q = compress.quantize_int8(kd)
    mag = compress.magnitude_prune(kd, prof.magnitude_amount)
    try:
        heads = compress.prune_heads(kd, s_tok, imp_texts, imp_labels, fraction=prof.head_fraction,
                                     max_length=prof.max_length)
    except ValueError as e:  # another attention layout (e.g. MPNet): the table goes on without that row
        print(f"[report] no head-pruned row: {e}", flush=True)
        heads = None
    steps = prof.student_steps
    from distill_nb.teacher_cache import teacher_meta

    prep = teacher_meta(t_folder) if str(t_folder) != prof.teacher else None
    t_desc = (f"{prof.teacher} + head fine-tuned on {len(task.train)} train examples to "
              f"{'its plateau' if prep.get('stopped_by') == 'plateau' else 'its cap'} ({prep.get('steps')} steps, "
              f"stopped by {prep.get('stopped_by')}, dev accuracy {prep.get('dev_accuracy'):.4f}, "
              f"{prep.get('precision')})" if prep else prof.teacher)
    cands = [
        Candidate("teacher", teacher, t_tok, t_folder if Path(t_folder).is_dir() else None, note=t_desc),
        Candidate("student distilled", kd, s_tok, kd_dir,
                  note=f"{prof.student_layers} layers copied every-k from the teacher, train() {steps} steps "
                       "KD(T=2)+0.5 CE"),
        Candidate("student hard-label", hard, s_tok, hard_dir,
                  note="same shape/init/steps, alpha_kd=0 alpha_ce=1 (no teacher signal)"),
        # a quantized model's Linear weights are packed buffers, not nn.Parameters: count the fp32 source's
        Candidate("distilled int8", q.model, s_tok, params=count_params(kd), note=q.summary),
        Candidate(f"distilled mag-{int(100 * prof.magnitude_amount)}%", mag.model, s_tok, note=mag.summary),
    ]
    if heads is not None:
        cands.append(Candidate(f"distilled heads-{heads.details['removed']}/{heads.details['total']}", heads.model,
                               s_tok, note=heads.summary))
    try:  # the training texts' vocabulary; the note says how many dev tokens fall outside it
        vocab = compress.trim_vocabulary(kd, s_tok, task.train.texts, "task", eval_texts=task.eval.texts,
                                         max_length=prof.max_length)
        cands.append(Candidate("distilled vocab-task", vocab.model, vocab.tokenizer, note=vocab.summary))
    except ValueError as e:  # a tokenizer other than WordPiece/WordLevel: no vocabulary row
        print(f"[report] no vocabulary-trimmed row: {e}", flush=True)
    data_desc = (f"{task.source}: eval {len(task.eval)} examples"
                 f"{' (all of SST-2 dev)' if prof.dataset == 'sst2' and prof.max_eval is None else ''}; "
                 f"train subset {len(task.train)}")
    notes = [(f"every row is evaluated on the same eval texts with max_length {prof.max_length}; int8 runs "
              "on CPU kernels only"),
             "magnitude pruning keeps dense tensors: same MB and (dense kernels) ~same latency as its source"]
    print("[report] measuring (interleaved latencies)", flush=True)
    report = compare(cands, task.eval.texts, task.eval.labels, data=data_desc, repeats=prof.repeats,
                     max_length=prof.max_length, notes=notes)
    print(report, flush=True)
    reports = {"cpu": report.to_dict()}
    if torch.cuda.is_available():  # the fp32 models again on the GPU (int8 dynamic kernels are CPU-only)
        gpu = [Candidate(c.name, c.model.to("cuda"), c.tokenizer, c.folder, c.params, c.note)
               for c in cands if "int8" not in c.name]
        cuda_report = compare(gpu, task.eval.texts, task.eval.labels, data=data_desc, repeats=prof.repeats,
                              max_length=prof.max_length, notes=notes)
        print(cuda_report, flush=True)
        reports["cuda"] = cuda_report.to_dict()
    rows = {r["name"]: r for r in report.to_dict()["rows"]}
    student = rows["student distilled"]
    goals = {
        "retention_%": student["retention_%"], "params_%": student["params_%"],
        "speedup_b1": student["speedup_b1"], "speedup_b32": student["speedup_b32"],
        "goal_retention_97_at_params_60": bool(student["retention_%"] >= 97 and student["params_%"] <= 60),
        "goal_speedup_1.6": bool(student["speedup_b32"] >= 1.6),
        "kd_minus_hard_accuracy": student["accuracy"] - rows["student hard-label"]["accuracy"],
    }
    print(f"[report] distilled student: retention {goals['retention_%']:.1f}% at {goals['params_%']:.1f}% params "
          f"(goal >= 97% at <= 60%: {'met' if goals['goal_retention_97_at_params_60'] else 'NOT met'}); "
          f"speed-up b32 {goals['speedup_b32']:.2f}x, b1 {goals['speedup_b1']:.2f}x (goal >= 1.6x: "
          f"{'met' if goals['goal_speedup_1.6'] else 'NOT met'}); KD - hard-label accuracy "
          f"{100 * goals['kd_minus_hard_accuracy']:+.1f} points", flush=True)
    runs_out = {k: {"run_dir": v["run_dir"], "train_seconds": v["seconds"], "final": v["status"].get("final")}
                for k, v in runs.items()}
    compression = {"int8": q.details, "magnitude": mag.details,
                   "heads": {k: v for k, v in heads.details.items() if k != "scores"} if heads else None}
    return _common.save_result(args, "report", prof, teacher_folder=str(t_folder), student_folder=str(kd_dir),
                               runs=runs_out, compression=compression, reports=reports, goals=goals,
                               seconds=time.perf_counter() - t0)


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
