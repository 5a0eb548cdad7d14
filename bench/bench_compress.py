"""Compression sweep of the distilled student: int8, magnitude pruning and head pruning at several strengths.

The uncompressed student is the first row (retention is relative to it); agreement is the share of eval
examples on which the compressed model predicts what the uncompressed student predicts. Needs a trained
student: ``--student FOLDER``, or by default the distilled student that bench_report.py trained for the
same profile under ``--out-dir``.

    python bench/bench_compress.py --small [--student artifacts/runs/small-kd/student]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import _common


def predictions(model: Any, tok: Any, texts: list[str], max_length: int) -> list[int]:
    """Predicted class per text."""
    import torch

    out: list[int] = []
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            batch = tok(texts[start:start + 64], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
            out += model(**batch).logits.argmax(-1).tolist()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--student", help="folder of the student to compress (default: bench_report's run)")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir)
    prof = _common.resolve_inputs(_common.profile(args), out_dir)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill_nb import compress
    from distill_nb.models import count_params
    from distill_nb.report import Candidate, compare

    folder = Path(args.student or out_dir / "runs" / f"{prof.name}-kd" / "student")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no student in {folder}: run bench/bench_report.py with the same profile and "
                                "--out-dir first, or pass --student FOLDER.")
    t0 = time.perf_counter()
    task = _common.load(prof)
    student = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    imp_texts = task.train.texts[:prof.importance_examples]
    imp_labels = task.train.labels[:prof.importance_examples]
    results = [compress.quantize_int8(student)]
    results += [compress.magnitude_prune(student, a) for a in prof.sweep_magnitude]
    # the importance scores are the same for every fraction; computing them per call keeps prune_heads simple
    try:
        results += [compress.prune_heads(student, tok, imp_texts, imp_labels, fraction=f,
                                         max_length=prof.max_length) for f in prof.sweep_heads]
    except ValueError as e:  # another attention layout (e.g. MPNet): no head rows
        print(f"[compress] no head-pruning rows: {e}", flush=True)
    results.append(compress.trim_vocabulary(student, tok, task.train.texts, "task", eval_texts=task.eval.texts,
                                            max_length=prof.max_length))
    names = ["int8 dynamic"]
    names += [f"magnitude {int(100 * a)}%" for a in prof.sweep_magnitude]
    names += [f"heads -{r.details['removed']}/{r.details['total']}" for r in results[1 + len(prof.sweep_magnitude):-1]]
    names.append(f"vocab task ({results[-1].details['size']:,} tokens)")
    cands = [Candidate("student (fp32)", student, tok, folder, note=str(folder))]
    for name, r in zip(names, results):
        params = count_params(student) if r.method == "int8-dynamic" else None
        cands.append(Candidate(name, r.model, r.tokenizer or tok, params=params, note=r.summary))
    print(f"[compress] measuring {len(cands)} models (interleaved latencies)", flush=True)
    report = compare(cands, task.eval.texts, task.eval.labels, data=f"{task.source}: eval {len(task.eval)}",
                     repeats=prof.repeats, max_length=prof.max_length,
                     notes=["retention and speed-up are relative to the uncompressed student (first row)"])
    print(report, flush=True)
    ref = predictions(student, tok, task.eval.texts, prof.max_length)
    agreement = {}
    for c in cands[1:]:
        pred = predictions(c.model, c.tokenizer, task.eval.texts, prof.max_length)
        agreement[c.name] = sum(a == b for a, b in zip(pred, ref)) / len(ref)
    print("[compress] agreement with the fp32 student: "
          + ", ".join(f"{k} {100 * v:.1f}%" for k, v in agreement.items()), flush=True)
    details = {n: {k: v for k, v in r.details.items() if k != "scores"} for n, r in zip(names, results)}
    return _common.save_result(args, "compress", prof, student_folder=str(folder), report=report.to_dict(),
                               agreement=agreement, details=details, seconds=time.perf_counter() - t0)


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
