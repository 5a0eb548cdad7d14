"""Load a labelled text task and turn it into length-bucketed, dynamically padded batches.

Sources: a packaged alias (``sst2``, ``trec6``: read from the project's ``shared/data`` when present, else the
hub), a local CSV/TSV/JSON/JSONL/Parquet file or folder (through ``datasets``), any ``datasets`` name
(``glue:sst2`` picks a configuration), or in-memory lists (:meth:`TaskData.from_lists`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # torch loads in collate() only: preflight() reads data with this module, torch-free
    import torch

FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
EVAL_ALIASES = ("validation", "dev", "test", "valid", "val")
LABEL_NAMES = {"sst2": ["negative", "positive"], "trec6": ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"]}


@dataclass(frozen=True)
class TextSplit:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class TaskData:
    train: TextSplit
    eval: TextSplit
    label_names: list[str]
    source: str  # where the data came from, for reports
    named_labels: bool = False  # the source gave label names (strings), not integer ids

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def relabel(self, names: Sequence[str]) -> TaskData:
        """The same examples with label ids following ``names`` (e.g. a teacher's id2label order).

        Names match case-insensitively; every current label name must be among ``names``.
        """
        index = {str(n).lower(): i for i, n in enumerate(names)}
        new_id = [index[n.lower()] for n in self.label_names]  # KeyError: caller checked with match_labels()
        remap = lambda split: TextSplit(split.texts, [new_id[y] for y in split.labels])  # noqa: E731
        return TaskData(remap(self.train), remap(self.eval), [str(n) for n in names], self.source,
                        self.named_labels)

    @classmethod
    def from_lists(cls, train_texts: Sequence[str], train_labels: Sequence[Any], eval_texts: Sequence[str],
                   eval_labels: Sequence[Any], label_names: Sequence[str] | None = None) -> TaskData:
        """A task from Python lists; string labels are mapped to ids in sorted order."""
        raw = {"train": (list(train_texts), list(train_labels)), "eval": (list(eval_texts), list(eval_labels))}
        return _finish(raw, label_names, "in-memory lists")

    def write_jsonl(self, folder: str | os.PathLike) -> Path:
        """Write ``train.jsonl`` / ``validation.jsonl`` (text, label) so a background run can read them."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, split in [("train", self.train), ("validation", self.eval)]:
            lines = (json.dumps({"text": t, "label": self.label_names[y]}) for t, y in zip(split.texts,
                                                                                          split.labels))
            (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return folder


def find_shared_data() -> Path | None:
    """``$DISTILL_NB_DATA``, else the first ``shared/data`` folder beside or above the cwd or this package."""
    env = os.environ.get("DISTILL_NB_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in [start, *start.parents]:
            for cand in (folder / "shared" / "data", folder.parent / "shared" / "data"):
                if cand.is_dir():
                    return cand
    return None


def load_task(dataset: str, *, text_column: str = "sentence", label_column: str | None = "label",
              train_split: str = "train", eval_split: str = "validation", max_train: int | None = None,
              max_eval: int | None = None, seed: int = 0) -> TaskData:
    """Load train and eval texts with integer labels (all 0 with ``label_column=None``: unlabelled text).

    Raises:
        FileNotFoundError: the dataset is neither an alias, a file/folder, nor loadable by ``datasets``.
        KeyError: the text or label column is missing (the message lists the columns there are).
        ValueError: a split is empty, or labels are unusable.
    """
    key = dataset.lower().replace("-", "")
    if key in LABEL_NAMES and (shared := find_shared_data()) and (shared / key).is_dir():
        raw = _read_shared(shared / key, key)
        task = _finish(raw, LABEL_NAMES[key], f"{key} ({shared / key})")
    elif key in LABEL_NAMES:  # no local copy: the real thing from the hub (works for users with a network)
        name = "glue:sst2" if key == "sst2" else "CogComp/trec:default"
        text_col = "sentence" if key == "sst2" else "text"
        label_col = "label" if key == "sst2" else "coarse_label"
        eval_name = "validation" if key == "sst2" else "test"
        raw = _read_datasets(name, text_col, label_col, "train", eval_name)
        task = _finish(raw, LABEL_NAMES[key], name)
    else:
        path = Path(dataset).expanduser()
        if path.exists():
            raw = _read_files(path, text_column, label_column, train_split, eval_split, seed)
        elif any(sep in dataset for sep in ("/", ":")) or not path.suffix:
            raw = _read_datasets(dataset, text_column, label_column, train_split, eval_split)
        else:
            raise FileNotFoundError(f"dataset {dataset!r}: no such file. Give a CSV/TSV/JSON/JSONL/Parquet "
                                    f"file or folder, a datasets name, or an alias: {sorted(LABEL_NAMES)}.")
        task = _finish(raw, None, str(dataset))
    return _cap(task, max_train, max_eval, seed)


def _read_shared(folder: Path, key: str) -> dict[str, tuple[list[str], list[Any]]]:
    if key == "sst2":
        def read(name: str) -> tuple[list[str], list[int]]:
            with open(folder / name, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
            return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]
        return {"train": read("train.tsv"), "eval": read("dev.tsv")}

    def read_trec(name: str) -> tuple[list[str], list[int]]:
        lines = (folder / name).read_text(encoding="utf-8", errors="replace").splitlines()
        pairs = [line.split(" ", 1) for line in lines if line.strip()]
        return [t for _, t in pairs], [int(y) for y, _ in pairs]
    return {"train": read_trec("train.txt"), "eval": read_trec("test.txt")}


def _read_files(path: Path, text_col: str, label_col: str | None, train_split: str, eval_split: str,
                seed: int) -> dict[str, tuple[list[str], list[Any]]]:
    if path.is_dir():
        files = {p.stem: p for p in sorted(path.iterdir()) if p.suffix.lower() in FILE_FORMATS}
        train = files.get(train_split)
        evals = [files[n] for n in (eval_split, *EVAL_ALIASES) if n in files and n != train_split]
        if train is None or not evals:
            raise FileNotFoundError(f"folder {str(path)!r} has {sorted(files) or 'no data files'}; it needs "
                                    f"{train_split}.<csv|tsv|json|jsonl|parquet> and {eval_split}.<...> "
                                    "(or dev/test).")
        return {"train": _read_table(train, text_col, label_col), "eval": _read_table(evals[0], text_col,
                                                                                         label_col)}
    texts, labels = _read_table(path, text_col, label_col)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, len(order) // 10)  # one file: hold out 10 % for evaluation, reproducibly
    pick = lambda idx: ([texts[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
    return {"train": pick(order[n_eval:]), "eval": pick(order[:n_eval])}


def _read_table(path: Path, text_col: str, label_col: str | None) -> tuple[list[str], list[Any]]:
    from datasets import load_dataset

    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{str(path)!r} has an unknown extension; use one of {sorted(FILE_FORMATS)}.")
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        table = load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}); re-save it as "
                         "UTF-8 (e.g. iconv -f latin1 -t utf-8).") from e
    except Exception as e:  # datasets wraps parse errors in several types
        if "corresponds to no data" in str(e):
            raise ValueError(f"{str(path)!r} is empty (no rows): give at least one example.") from e
        if isinstance(e.__cause__ or e.__context__, UnicodeDecodeError) or "utf-8" in str(e).lower():
            raise ValueError(f"{str(path)!r} is not UTF-8 text; re-save it as UTF-8.") from e
        raise
    return _columns(table, text_col, label_col, str(path))


def _read_datasets(name: str, text_col: str, label_col: str | None, train_split: str,
                   eval_split: str) -> dict[str, tuple[list[str], list[Any]]]:
    from datasets import load_dataset

    repo, _, conf = name.partition(":")
    try:
        ds = load_dataset(repo, conf or None)
    except Exception as e:
        raise FileNotFoundError(f"dataset {name!r} could not be loaded with datasets ({type(e).__name__}: "
                                f"{str(e)[:200]}). Offline? Use a local CSV/JSON file or folder, or an alias "
                                f"{sorted(LABEL_NAMES)} with shared/data present.") from e
    evals = [n for n in (eval_split, *EVAL_ALIASES) if n in ds and n != train_split]
    if train_split not in ds or not evals:
        raise KeyError(f"dataset {name!r} has splits {list(ds)}; set train_split/eval_split to two of them.")
    return {"train": _columns(ds[train_split], text_col, label_col, name),
            "eval": _columns(ds[evals[0]], text_col, label_col, name)}


def _columns(table: Any, text_col: str, label_col: str | None, where: str) -> tuple[list[str], list[Any]]:
    missing = [c for c in (text_col, label_col) if c is not None and c not in table.column_names]
    if missing:
        raise KeyError(f"{where}: column(s) {missing} not found; columns are {table.column_names}. Set "
                       "text_column / label_column to the right names.")
    texts = [str(t) if t is not None else "" for t in table[text_col]]
    return texts, list(table[label_col]) if label_col is not None else [0] * len(texts)


def _finish(raw: dict[str, tuple[list[str], list[Any]]], label_names: Sequence[str] | None,
            source: str) -> TaskData:
    for split, (texts, labels) in raw.items():
        if not texts:
            raise ValueError(f"the {split} split of {source} is empty: give at least one example.")
        if len(texts) != len(labels):
            raise ValueError(f"{source}: {len(texts)} texts but {len(labels)} labels in the {split} split.")
    all_labels = raw["train"][1] + raw["eval"][1]
    if any(y is None for y in all_labels):
        raise ValueError(f"{source}: some labels are missing (None); drop those rows or fill them.")
    if all(isinstance(y, (int,)) and not isinstance(y, bool) for y in all_labels):
        names = list(label_names) if label_names else [str(i) for i in range(max(all_labels) + 1)]
        bad = sorted({y for y in all_labels if not 0 <= y < len(names)})
        if bad:
            raise ValueError(f"{source}: labels {bad[:10]} are outside 0..{len(names) - 1} "
                             f"({len(names)} label names: {names}).")
        to_id = lambda ys: list(ys)  # noqa: E731
    else:
        names = list(label_names) if label_names else sorted({str(y) for y in all_labels})
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted({str(y) for y in all_labels} - set(index))
        if unknown:
            raise ValueError(f"{source}: labels {unknown[:10]} are not among {names}.")
        to_id = lambda ys: [index[str(y)] for y in ys]  # noqa: E731
    split = {k: TextSplit(list(t), to_id(y)) for k, (t, y) in raw.items()}
    return TaskData(split["train"], split["eval"], names, source, named_labels=not all(
        isinstance(y, int) and not isinstance(y, bool) for y in all_labels))


def _cap(task: TaskData, max_train: int | None, max_eval: int | None, seed: int) -> TaskData:
    def cap(split: TextSplit, n: int | None, salt: int) -> TextSplit:
        if n is None or n >= len(split):
            return split
        idx = sorted(random.Random(seed + salt).sample(range(len(split)), n))  # a seeded, fixed subset
        return TextSplit([split.texts[i] for i in idx], [split.labels[i] for i in idx])
    return TaskData(cap(task.train, max_train, 0), cap(task.eval, max_eval, 1), task.label_names, task.source,
                    task.named_labels)


# --- tokens and batches ----------------------------------------------------------------------------------------
def encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text (with special tokens, truncated to ``max_length``, unpadded)."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def length_batches(lengths: Sequence[int], batch_size: int, *, seed: int, shuffle: bool = True,
                   bucket: int = 50) -> list[list[int]]:
    """Batches of indices, grouped by similar length so padding stays small.

    Shuffles, cuts into pools of ``bucket * batch_size``, sorts each pool by length, slices batches and
    shuffles the batch order: random like plain shuffling, but with far less padding.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is invalid: use an integer >= 1.")
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    if not shuffle:
        order.sort(key=lambda i: lengths[i])
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(order)
    pool = batch_size * bucket
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(encoded: Sequence[Sequence[int]], idx: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the chosen examples to the longest of them: input_ids and attention_mask, both (B, S)."""
    import torch

    longest = max(len(encoded[i]) for i in idx)
    ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), longest), dtype=torch.long)
    for row, i in enumerate(idx):
        ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
        mask[row, :len(encoded[i])] = 1
    return {"input_ids": ids, "attention_mask": mask}


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / batch_size)
