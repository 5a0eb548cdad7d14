"""Student shape by evidence: which teacher layers to copy (every-k, first-k, the advisor's), and vocabulary trimming.

MiniLM-L6 (a head fine-tuned by ``prepare_teacher``, or ``--teacher TASK=FOLDER``) -> 3-layer students trained with
``train()`` for the same steps, on the same seeded training subset, for each seed:

- ``every_k``: copy teacher layers 0, 2, 4 (DistilBERT's rule); ``first_k``: 0, 1, 2;
- ``advisor``: the layers ``suggest_layers`` picks on 256 training texts (its wall time is reported);
- ``advisor+vocab``: the advisor's layers with ``student_vocab`` (default "task": the training texts' tokens).

Accuracy is on the full eval split (SST-2 dev 872, TREC-6 test 500); mean and sample sd over seeds. The trimmed
and untrimmed students of the first seed are then measured side by side with the teacher (params, MB on disk,
interleaved CPU latency). The teacher's logits on the training subset are computed once per task and copied
into every run directory (train() reads them from there), so the runs differ only in the student.

    python bench/bench_student_shape.py --tasks trec6 --seeds 0 1 2 --steps 120 --batch-size 16 \\
        --teacher trec6=FOLDER --out artifacts/student_shape_trec6.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import _common  # offline env vars, repo on sys.path

# every_k+vocab: DistilBERT's every-k layers with the trimmed vocabulary (the size goal without the advisor)
VARIANTS = ["every_k", "first_k", "advisor", "advisor+vocab", "every_k+vocab"]


def markdown(results: list[dict[str, Any]]) -> str:
    """README tables from one or more result JSONs: accuracy per variant, then trimmed vs untrimmed."""
    present = [v for v in VARIANTS if any(r["variant"] == v for res in results for t in res["tasks"].values()
                                          for r in t["runs"])]
    lines = ["| task | steps x batch | " + " | ".join(f"{v} (layers, time)" if v == "advisor" else v
                                                        for v in present) + " |",
             "|---|---|" + "---|" * len(present)]
    sizes = ["| task | student | layers | vocab | params | % of teacher | MB | b1 ms | b32 ms | accuracy (seed 0) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    merged: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}  # task -> (args, task result), merged by task
    extra: list[str] = []
    for result in results:  # a --sizes file and a bench's own file may both hold a task: keep the most of each
        given = result["args"].get("advisor_layers")
        for name, t in result["tasks"].items():
            if given and any(r["variant"].startswith("advisor") for r in t["runs"]):  # a measured pick: own row
                a, cells = result["args"], []
                for variant in present:
                    accs = [r["accuracy"] for r in t["runs"] if r["variant"] == variant]
                    m, sd = _common.mean_sd(accs) if accs else (0.0, 0.0)
                    cells.append(f"layers [{given}] (given): {100 * m:.1f} ± {100 * sd:.1f} (n={len(accs)})"
                                 if accs and variant.startswith("advisor") else "")
                if any(cells):
                    extra.append(f"| {name} | {a['steps']} x {a['batch_size']} | " + " | ".join(cells) + " |")
                continue
            if name not in merged:
                merged[name] = (result["args"], dict(t))
                continue
            have = merged[name][1]
            if len(t["runs"]) > len(have["runs"]):
                have["runs"] = t["runs"]
            for key in ("size_latency", "params"):
                if key in t and key not in have:
                    have[key] = t[key]
    for name, (a, t) in merged.items():
        if True:
            runs = t["runs"]
            cell = {}
            adv = t["advisor"]
            for variant in present:
                accs = [r["accuracy"] for r in runs if r["variant"] == variant]
                if accs:
                    m, sd = _common.mean_sd(accs)
                    cell[variant] = f"{100 * m:.1f} ± {100 * sd:.1f} (n={len(accs)})"
                else:
                    cell[variant] = "-"
                if variant == "advisor":
                    cell[variant] += f" {adv['chosen']}, {adv['seconds']:.0f} s"
            teacher_acc = runs[0]["teacher_accuracy"] if runs else float("nan")
            lines.append(f"| {name} (teacher {100 * teacher_acc:.1f}) | {a['steps']} x {a['batch_size']} | "
                         + " | ".join(cell[v] for v in present) + " |")
            rows = (t.get("size_latency") or {}).get("rows", [])
            for r in rows:
                vocab = (f"{t['vocab']['kept']:,} ({t['vocab']['mode']})" if "vocab" in r["name"]
                         else f"{t['vocab']['source_size']:,}")
                layers = (str(adv.get("teacher_layers", "?")) if r["name"] == "teacher" else
                          str(next((x["layers"] for x in runs if f"student {x['variant']}" == r["name"]), "?")))
                sizes.append(f"| {name} | {r['name']} | {layers} | {vocab} | {r['params']:,} | "
                             f"{r['params_%']:.1f} % | {r['mb']:.1f} | {r['latency_b1_ms']:.1f} | "
                             f"{r['latency_b32_ms']:.1f} | {100 * r['accuracy']:.1f} |")
            out = t["vocab"]["eval_outside"]
            sizes.append(f"| {name} | eval tokens outside the kept vocabulary | | | | | | | | "
                         f"{out['outside']:,} / {out['tokens']:,} ({100 * out['outside_fraction']:.1f} %) |")
    return "\n".join(lines + extra) + "\n\n" + "\n".join(sizes)


def sizes(teacher_folder: str, task: Any, task_runs: Path, seed: int, *, repeats: int,
          max_length: int) -> dict[str, Any]:
    """Teacher vs the seed's students this bench trained (untrimmed and trimmed): params, MB on disk, latency."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill_nb.models import count_params, load_teacher
    from distill_nb.report import Candidate, compare

    teacher, tok = load_teacher(teacher_folder)
    cands = [Candidate("teacher", teacher, tok, teacher_folder, note=teacher_folder)]
    for variant in ["every_k", "every_k+vocab", "advisor", "advisor+vocab"]:  # those this bench trained
        folder = task_runs / f"{variant.replace('+', '_')}-s{seed}" / "student"
        if not (folder / "config.json").is_file():
            continue
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        cands.append(Candidate(f"student {variant}", model, AutoTokenizer.from_pretrained(folder), folder,
                               note=str(folder)))
    report = compare(cands, task.eval.texts, task.eval.labels, data=task.source, repeats=repeats,
                     max_length=max_length)
    print(report, flush=True)
    return {"size_latency": report.to_dict(), "params": {c.name: count_params(c.model) for c in cands}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if argv and argv[0] == "--markdown":  # python bench/bench_student_shape.py --markdown a.json b.json
        print(markdown([json.loads(Path(f).read_text()) for f in argv[1:]]))
        return {}
    if argv and argv[0] == "--sizes":  # --sizes RESULT.json OUT.json: the size/latency table of a (running) bench
        import torch

        from distill_nb.data import load_task

        torch.set_num_threads(1)
        result = json.loads(Path(argv[1]).read_text())
        a = result["args"]
        for name, t in result["tasks"].items():
            source, text_column = _common.dataset(name)
            task = load_task(source, text_column=text_column, max_train=a["max_train"], seed=0)
            t.update(sizes(t["teacher"], task, Path(a["runs"]) / name, a["seeds"][0], repeats=a["repeats"],
                           max_length=a["max_length"]))
        _common.write_json(argv[2], result)
        return result
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["sst2", "trec6"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--max-train", type=int, default=4000)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--student-layers", type=int, default=3)
    p.add_argument("--vocab", default="task", help="student_vocab of the trimmed student: 'task' or an integer")
    p.add_argument("--vocab-from", choices=["split", "subset"], default="split",
                   help="texts the trimmed vocabulary comes from: the whole training split (train()'s default) "
                        "or only the --max-train subset the students train on")
    p.add_argument("--advisor-examples", type=int, default=256)
    p.add_argument("--teacher-steps", type=int, default=1500, help="cap of the teacher's preparation (it stops at "
                   "its plateau on a held-out slice of the training subset)")
    p.add_argument("--advisor-layers", help="L1,L2,...: use these layers as the 'advisor' variant instead of running "
                   "suggest_layers (e.g. another pick from its candidate list)")
    p.add_argument("--variants", nargs="+", default=VARIANTS[:4], choices=VARIANTS)
    p.add_argument("--proxy", type=int, default=0, help="N > 0: the advisor's choice is the winner of short proxy "
                   "runs (layer_search.rank_by_proxy_runs, successive halving on held-out training texts) among "
                   "its N best candidates by KL plus every-k (default 0: the lowest KL)")
    p.add_argument("--proxy-steps", type=int, default=25, help="steps of the proxy runs' first round")
    p.add_argument("--proxy-holdout", type=int, default=400, help="training texts held out to score them")
    p.add_argument("--no-sizes", action="store_true", help="skip the size/latency table at the end")
    p.add_argument("--teacher", action="append", default=[], help="TASK=FOLDER: a prepared classifier teacher")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on a "
                   "shared machine)")
    p.add_argument("--repeats", type=int, default=10, help="timed forwards per model for latency")
    p.add_argument("--out", default="artifacts/student_shape.json")
    p.add_argument("--runs", default="artifacts/runs/student_shape")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from distill_nb.advisor import suggest_layers
    from distill_nb.checkpoint import cached_tensor
    from distill_nb.config import DistillConfig
    from distill_nb.data import encode, load_task
    from distill_nb.models import every_k_layers, load_teacher, predict_logits
    from distill_nb.teacher_cache import prepare_teacher
    from distill_nb.train import train
    from distill_nb.vocab import choose_vocab, outside_vocab

    vocab = int(args.vocab) if args.vocab.isdigit() else args.vocab
    teachers = dict(t.split("=", 1) for t in args.teacher)
    runs_root = Path(args.runs)
    result: dict[str, Any] = {"bench": "student_shape", "args": vars(args), "environment": _common.environment(),
                              "tasks": {}}

    def save() -> None:
        _common.write_json(args.out, result)

    setups: dict[str, dict[str, Any]] = {}
    for name in args.tasks:  # teacher, advisor, shared teacher logits, vocabulary coverage: once per task
        source, text_column = _common.dataset(name)
        task = load_task(source, text_column=text_column, max_train=args.max_train, seed=0)
        # the trimmed vocabulary: tokens of the whole training split, as train() chooses it without data=
        vocab_texts = (load_task(source, text_column=text_column, seed=0).train.texts if args.vocab_from == "split"
                       else task.train.texts)
        # without --teacher: MiniLM-L6 + a head fine-tuned on this training subset to its plateau (cached)
        folder = teachers.get(name) or str(prepare_teacher("minilm-l6", task, max_steps=args.teacher_steps,
                                                           log=lambda m: print(m, flush=True)))
        teacher, tok = load_teacher(folder)
        t0 = time.perf_counter()
        if args.advisor_layers:  # a given choice: the record below says so (seconds 0, search "given")
            from distill_nb.advisor import LayerAdvice
            from distill_nb.models import copied_layer_map, shape

            chosen = tuple(int(i) for i in args.advisor_layers.split(","))
            n_t = shape(teacher.config)["layers"]
            advice = LayerAdvice(n_t, len(chosen), chosen, tuple(copied_layer_map(chosen, n_t)), (), (), (), None,
                                 ((chosen, float("nan"), None),), {}, search="given")
        else:
            advice = suggest_layers(teacher, tok, task.train.texts, task.train.labels,
                                    n_layers=args.student_layers, max_examples=args.advisor_examples,
                                    max_length=args.max_length)
        print(advice if advice.search != "given" else f"given layers {advice.chosen}", flush=True)
        proxy = None
        if args.proxy and advice.search != "given":  # ask training: short runs among the best few by KL + every-k
            from dataclasses import replace as _replace

            from distill_nb.layer_search import rank_by_proxy_runs
            from distill_nb.models import copied_layer_map as _layer_map

            pool = advice.shortlist(args.proxy)
            base = DistillConfig(teacher=folder, dataset=source, text_column=text_column,
                                 max_train_examples=args.max_train,
                                 student_layers=args.student_layers, batch_size=args.batch_size,
                                 max_length=args.max_length, learning_rate=args.learning_rate, alpha_kd=1.0,
                                 alpha_ce=0.5, temperature=2.0, seed=0, device="cpu", num_threads=args.threads)
            proxy = rank_by_proxy_runs(base, pool, data=task, steps=args.proxy_steps, holdout=args.proxy_holdout,
                                       log=lambda m: print(m, flush=True))
            print(proxy, flush=True)
            advice = _replace(advice, chosen=proxy.chosen, layer_map=tuple(_layer_map(proxy.chosen, advice.teacher_layers)),
                              search=advice.search + f", proxy runs over {len(pool)}",
                              seconds=advice.seconds + proxy.seconds)
        logits_file = runs_root / name / "teacher_logits.safetensors"
        logits_file.parent.mkdir(parents=True, exist_ok=True)
        encoded = encode(tok, task.train.texts, args.max_length)
        cached_tensor(logits_file, True, lambda t=teacher, e=encoded, pad=tok.pad_token_id: predict_logits(
            t, e, pad, torch.device("cpu")))
        trim = choose_vocab(tok, vocab_texts, vocab, max_length=args.max_length)
        coverage = outside_vocab(tok, trim, task.eval.texts, max_length=args.max_length)
        setups[name] = {"task": task, "teacher": folder, "advice": advice, "logits": logits_file, "source": source,
                        "text_column": text_column,
                        "vocab_texts": vocab_texts}
        result["tasks"][name] = {
            "teacher": folder, "source": task.source, "train": len(task.train), "eval": len(task.eval),
            "advisor": {"chosen": list(advice.chosen), "layer_map": list(advice.layer_map),
                        "teacher_layers": advice.teacher_layers,
                        "seconds": advice.seconds, "examples": advice.n_examples, "search": advice.search,
                        "skip_kl": list(advice.skip_kl), "cka_with_input": list(advice.cka_with_input),
                        "probe_accuracy": list(advice.probe_accuracy or []),
                        "baselines": {k: [list(v[0]), v[1]] for k, v in advice.baselines.items()},
                        "candidates": [[list(c[0]), c[1], c[2]] for c in advice.candidates],
                        "wall_s_incl_setup": time.perf_counter() - t0,
                        "proxy": None if proxy is None else {
                            "seconds": proxy.seconds, "holdout": proxy.holdout,
                            "rounds": [[steps, [[list(k), acc, kd] for k, acc, kd in scores]]
                                       for steps, scores in proxy.rounds]}},
            "vocab": {"mode": vocab, "from": args.vocab_from, "texts": len(vocab_texts), "kept": trim.size, "source_size": trim.source_size,
                      "task_tokens": trim.task_tokens, "eval_outside": coverage},
            "runs": []}
        del teacher
        save()
    n = args.student_layers
    variants = {"every_k": {}, "first_k": {"student_layers_from": list(range(n))}}
    for seed in args.seeds:
        for name, setup in setups.items():
            chosen = list(setup["advice"].chosen)
            plan = {**variants, "advisor": {"student_layers_from": chosen},
                    "advisor+vocab": {"student_layers_from": chosen, "student_vocab": vocab},
                    "every_k+vocab": {"student_vocab": vocab}}
            for variant, changes in [(v, c) for v, c in plan.items() if v in args.variants]:
                run_dir = runs_root / name / f"{variant.replace('+', '_')}-s{seed}"
                shutil.rmtree(run_dir, ignore_errors=True)
                run_dir.mkdir(parents=True)
                shutil.copy(setup["logits"], run_dir / "teacher_logits.safetensors")
                config = DistillConfig(
                    teacher=setup["teacher"], dataset=setup["source"], text_column=setup["text_column"],
                    max_train_examples=args.max_train,
                    student_layers=n, max_steps=args.steps, batch_size=args.batch_size,
                    max_length=args.max_length, learning_rate=args.learning_rate, alpha_kd=1.0, alpha_ce=0.5,
                    temperature=2.0, eval_every=10**6, checkpoint_every=10**6, keep_checkpoints=1, seed=seed,
                    device="cpu", num_threads=args.threads, **changes)
                t0 = time.perf_counter()
                record = train(config, run_dir, data=setup["task"], vocab_texts=setup["vocab_texts"],
                               log=lambda m: None)
                seconds = time.perf_counter() - t0
                row = {"variant": variant, "seed": seed, "layers": changes.get("student_layers_from") or
                       every_k_layers(setup["advice"].teacher_layers, n), "accuracy": record["accuracy"],
                       "teacher_accuracy": record["teacher_accuracy"], "agreement": record.get("agreement"),
                       "seconds": seconds, "run_dir": str(run_dir)}
                result["tasks"][name]["runs"].append(row)
                print(f"[shape] {name} seed {seed} {variant:<14} acc {record['accuracy']:.4f} "
                      f"(teacher {record['teacher_accuracy']:.4f}) {seconds:.0f} s", flush=True)
                save()
    for name, setup in setups.items():  # summaries, then sizes and latency of seed 0's trimmed/untrimmed pair
        runs = result["tasks"][name]["runs"]
        summary = {}
        for variant in VARIANTS:
            accs = [r["accuracy"] for r in runs if r["variant"] == variant]
            if accs:
                m, sd = _common.mean_sd(accs)
                summary[variant] = {"mean": m, "sd": sd, "n": len(accs), "accs": accs}
        result["tasks"][name]["summary"] = summary
        save()
        if not args.no_sizes:
            result["tasks"][name].update(sizes(setup["teacher"], setup["task"], runs_root / name, args.seeds[0],
                                               repeats=args.repeats, max_length=args.max_length))
        save()
    print(json.dumps({k: v.get("summary") for k, v in result["tasks"].items()}, indent=1), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
