"""Load a labelled text task and turn it into length-bucketed, dynamically padded batches.

Sources: a packaged alias (``sst2``, ``trec6``: read from the project's ``shared/data`` when present, else the
hub), a local CSV/TSV/JSON/JSONL/Parquet file or folder (``tables.read_table``, the reader preflight uses
too; a single file holds out a random 10 % for evaluation), any ``datasets`` name
(``glue:sst2`` picks a configuration), or in-memory lists (:meth:`TaskData.from_lists`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import env_folder
from .tables import (
    FILE_FORMATS,
    PAIR_MARK,
    check_columns,
    clean_text,
    join_text,
    label_values,
    read_table,
    split_pair,
)

if TYPE_CHECKING:  # torch loads in collate() only: preflight() reads data with this module, torch-free
    import torch

EVAL_ALIASES = ("validation", "dev", "test", "valid", "val")
DEFAULT_EVAL_SPLIT = "validation"  # only this default falls back to the aliases
LABEL_NAMES = {"sst2": ["negative", "positive"], "trec6": ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"]}
HOLDOUT = 0.1  # a single data file: this fraction (at least 1 row) is held out for evaluation, seeded
MIN_SINGLE_FILE_ROWS = 10  # below it a 10 % hold-out leaves nothing worth measuring
MIN_TRAIN_ROWS = 2


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
    label_names: list[str]  # class names in id order (these end in the student's id2label)
    source: str  # where the data came from, for reports
    named_labels: bool = False  # the classes have names (string labels or label_names), not bare integer ids
    label_values: tuple[Any, ...] = ()  # the raw label value of each id (e.g. (1, 5) or ('neg', 'pos'))
    note: str = ""  # how the eval split was made, when not given (e.g. the hold-out of a single file)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def relabel(self, names: Sequence[str]) -> TaskData:
        """The same examples with label ids following ``names`` (e.g. a teacher's id2label order).

        Names match case-insensitively; every current label name must be among ``names``.
        """
        index = {str(n).lower(): i for i, n in enumerate(names)}
        new_id = [index[n.lower()] for n in self.label_names]  # KeyError: caller checked with match_labels()
        remap = lambda split: TextSplit(split.texts, [new_id[y] for y in split.labels])
        values = [None] * len(names)
        for old, new in enumerate(new_id):
            values[new] = self.label_values[old] if old < len(self.label_values) else self.label_names[old]
        return replace(self, train=remap(self.train), eval=remap(self.eval), label_names=[str(n) for n in names],
                       label_values=tuple(values))

    @classmethod
    def from_lists(cls, train_texts: Sequence[str], train_labels: Sequence[Any], eval_texts: Sequence[str],
                   eval_labels: Sequence[Any], label_names: Sequence[str] | None = None) -> TaskData:
        """A task from Python lists; labels map to ids as in :func:`label_ids` (strings in sorted order).

        A text is a string, or a ``(first, second)`` tuple for a text pair (``text_pair=True``); a string made
        by ``tables.join_text(..., pair=True)`` (e.g. the texts of a loaded pair task) is a pair too. Labels are
        read as a data file's cells are (``tables.label_value``): whole numbers of any type (1, 1.0, numpy's,
        '1') are ids, booleans and other strings are names, NaN/inf/None are missing.

        Raises:
            ValueError: a missing label, or a number with a fraction (0.5), naming its position; a text that
                holds the pair marker U+001E stray, or pairs mixed with single texts.
        """
        raw = {"train": (_list_texts(train_texts, "train_texts"),
                         label_values(list(train_labels), lambda i: f"train_labels[{i}]")),
               "eval": (_list_texts(eval_texts, "eval_texts"),
                        label_values(list(eval_labels), lambda i: f"eval_labels[{i}]"))}
        check_present({k: ys for k, (_, ys) in raw.items()}, "in-memory lists", lambda k, i: f"{k}_labels[{i}]")
        _check_pair_marks(raw, "in-memory lists")
        return _finish(raw, label_names, "in-memory lists")

    def write_jsonl(self, folder: str | os.PathLike) -> Path:
        """Write ``train.jsonl`` / ``validation.jsonl`` (text, label name) so a background run can read them.

        Read them back with ``label_names=task.label_names`` (``DistillConfig.label_names``) to keep these ids;
        without it the names map to ids in sorted order. A text pair is written as ``text_a`` and ``text_b``
        (no ``text``): read those back with ``text_column=["text_a", "text_b"], text_pair=True``.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, split in [("train", self.train), ("validation", self.eval)]:
            lines = (_jsonl_row(t, self.label_names[y]) for t, y in zip(split.texts, split.labels))
            (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return folder


def _jsonl_row(text: Any, label: str) -> str:
    """One line of :meth:`TaskData.write_jsonl`: a pair keeps its two texts apart (the reader drops the marker)."""
    pair = split_pair(text) if isinstance(text, str) else None
    fields = {"text": text} if pair is None else {"text_a": pair[0], "text_b": pair[1]}
    return json.dumps({**fields, "label": label})


def _list_texts(texts: Sequence[Any], name: str) -> list[Any]:
    """The texts of :meth:`TaskData.from_lists`: a (first, second) tuple becomes a text pair, the rest as given."""
    out = []
    for i, text in enumerate(texts):
        if isinstance(text, tuple | list):
            if len(text) != 2:
                raise ValueError(f"{name}[{i}] is a {type(text).__name__} of {len(text)} items: give a text (a "
                                 "string), or a text pair as a (first, second) tuple.")
            text = join_text(text, pair=True)
        out.append(text)
    return out


def _check_pair_marks(raw: dict[str, tuple[list[Any], list[Any]]], source: str) -> None:
    """ValueError for a text that holds the pair marker (U+001E) other than as one pair, or pairs mixed with
    single texts: whether a text is a pair must not hang on its content, and one task is all pairs or none."""
    first: dict[bool, tuple[str, int, str]] = {}  # pair? -> the first such text (split, index, text)
    for split, (texts, _) in raw.items():
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                continue
            pair = split_pair(text) is not None
            if text.count(PAIR_MARK) > pair:
                raise ValueError(f"{source}: {split} text {i} ({text[:60]!r}) holds the control character U+001E "
                                 "that marks a text pair (tables.PAIR_SEP) where it makes no pair: remove it from "
                                 "the text, and give a text pair as a (first, second) tuple.")
            first.setdefault(pair, (split, i, text))
    if len(first) == 2:
        (ps, pi, pt), (ss, si, _) = first[True], first[False]
        raise ValueError(f"{source}: {ps} text {pi} ({pt[:60]!r}) is a text pair (it holds tables.PAIR_SEP) but "
                         f"{ss} text {si} is a single text: give every text as a (first, second) pair, or every "
                         "text as one string (remove the control character U+001E from a single text).")


def find_shared_data() -> Path | None:
    """``$DISTILL_NB_DATA`` (absolute: ``~`` expanded, relative to the cwd), else the first ``shared/data`` folder
    beside or above the cwd or this package.

    Raises:
        ValueError: ``$DISTILL_NB_DATA`` is a file or inside one (the message names it and the fix).
    """
    env = env_folder("DISTILL_NB_DATA")
    if env:
        return env if env.is_dir() else None
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in [start, *start.parents]:
            for cand in (folder / "shared" / "data", folder.parent / "shared" / "data"):
                if cand.is_dir():
                    return cand
    return None


def load_task(dataset: str, *, text_column: str | Sequence[str] = "sentence", label_column: str | None = "label",
              train_split: str = "train", eval_split: str = "validation", max_train: int | None = None,
              max_eval: int | None = None, seed: int = 0, label_names: Sequence[str] | None = None,
              text_pair: bool = False) -> TaskData:
    """Load train and eval texts with integer labels (all 0 with ``label_column=None``: unlabelled text).

    Args:
        text_column: a column, or several (joined by newlines; with ``text_pair`` two become a tokenizer pair).
        label_names: class names in label order (see :func:`label_ids`).

    Raises:
        FileNotFoundError: the dataset is neither an alias, a file/folder, nor loadable by ``datasets``.
        KeyError: the text or label column is missing (the message lists the columns there are).
        ValueError: a split is empty or too small, or labels are unusable.
    """
    cols = [text_column] if isinstance(text_column, str) else list(text_column)
    key = dataset.lower().replace("-", "")
    if key in LABEL_NAMES and (shared := find_shared_data()) and (shared / key).is_dir():
        raw = _read_shared(shared / key, key)
        task = _finish(raw, LABEL_NAMES[key], f"{key} ({shared / key})")
    elif key in LABEL_NAMES:  # no local copy: the real thing from the hub (works for users with a network)
        name = "glue:sst2" if key == "sst2" else "CogComp/trec:default"
        text_col = "sentence" if key == "sst2" else "text"
        label_col = "label" if key == "sst2" else "coarse_label"
        eval_name = "validation" if key == "sst2" else "test"
        raw = _read_datasets(name, [text_col], label_col, "train", eval_name, False)
        task = _finish(raw, LABEL_NAMES[key], name)
    else:
        path = Path(dataset).expanduser()
        if path.exists():
            raw, _, note = read_local(path, cols, label_column, train_split, eval_split, seed, text_pair)
        elif any(sep in dataset for sep in ("/", ":")) or not path.suffix:
            raw, note = _read_datasets(dataset, cols, label_column, train_split, eval_split, text_pair), ""
        else:
            raise FileNotFoundError(f"dataset {dataset!r}: no such file. Give a CSV/TSV/JSON/JSONL/Parquet "
                                    f"file or folder, a datasets name, or an alias: {sorted(LABEL_NAMES)}.")
        task = replace(_finish(raw, label_names, str(dataset), labelled=label_column is not None), note=note)
    return _cap(task, max_train, max_eval, seed)


def _read_shared(folder: Path, key: str) -> dict[str, tuple[list[str], list[Any]]]:
    if key == "sst2":
        def read(name: str) -> tuple[list[str], list[int]]:
            with open(folder / name, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
            return [clean_text(r["sentence"]) for r in rows], [int(r["label"]) for r in rows]
        return {"train": read("train.tsv"), "eval": read("dev.tsv")}

    def read_trec(name: str) -> tuple[list[str], list[int]]:
        lines = (folder / name).read_text(encoding="utf-8", errors="replace").splitlines()
        pairs = [line.split(" ", 1) for line in lines if line.strip()]
        return [clean_text(t) for _, t in pairs], [int(y) for y, _ in pairs]
    return {"train": read_trec("train.txt"), "eval": read_trec("test.txt")}


def data_files(path: Path, train_split: str, eval_split: str) -> dict[str, Path]:
    """{"train": file, "eval": file} of a data folder, or {"train": path} for a single file."""
    if not path.is_dir():
        return {"train": path}
    files = {p.stem: p for p in sorted(path.iterdir()) if p.suffix.lower() in FILE_FORMATS}
    train = files.get(train_split)
    # the default eval split may be called dev/test/...; a split the user named must exist (a typo never silently
    # evaluates on another file)
    names = (eval_split, *EVAL_ALIASES) if eval_split == DEFAULT_EVAL_SPLIT else (eval_split,)
    evals = [files[n] for n in names if n in files and n != train_split]
    if train is None or not evals:
        raise FileNotFoundError(f"data folder {str(path)!r} has {sorted(files) or 'no data files'}; it needs "
                                f"{train_split}.<csv|tsv|json|jsonl|parquet> and {eval_split}.<...>"
                                f"{' (or dev/test)' if eval_split == DEFAULT_EVAL_SPLIT else ''}: "
                                "rename the files, or set train_split/eval_split to their names.")
    return {"train": train, "eval": evals[0]}


def read_local(path: Path, text_cols: Sequence[str], label_col: str | None, train_split: str, eval_split: str,
               seed: int, pair: bool = False, max_bytes: int | None = None
               ) -> tuple[dict[str, tuple[list[str], list[Any]]], bool, str]:
    """(raw splits, read whole?, note) of a local file or folder: the reader preflight and the worker share.

    A single file holds out a random 10 % (seeded, at least one row) for evaluation; ``note`` says so.
    """
    files = data_files(path, train_split, eval_split)
    raw, whole = {}, True
    for split, file in files.items():
        texts, labels, complete = read_table(file, text_cols, label_col, pair=pair, max_bytes=max_bytes)
        whole &= complete
        if not texts and complete:
            raise ValueError(f"data file {str(file)!r} is empty: it has a header but no rows. Give it examples (one "
                             "per row), or set dataset to another file.")
        raw[split] = (texts, labels)
    check_present({k: ys for k, (_, ys) in raw.items()}, str(path), lambda k, i: f"row {i + 1} of {files[k].name}")
    if "eval" in raw:
        return raw, whole, ""
    texts, labels = raw["train"]
    if len(texts) < MIN_SINGLE_FILE_ROWS and whole:
        raise ValueError(f"data file {str(path)!r} has {len(texts)} row(s): a single file is split into train and a "
                         f"random {HOLDOUT:.0%} eval hold-out, which needs at least {MIN_SINGLE_FILE_ROWS} rows. Add "
                         "examples, or give a folder with train.<ext> and validation.<ext>.")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(order) * HOLDOUT))
    pick = lambda idx: ([texts[i] for i in idx], [labels[i] for i in idx])
    note = (f"eval split: a random {HOLDOUT:.0%} of {path.name} held out ({n_eval} of {len(order)} rows, seed "
            f"{seed}); give a folder with train/validation files to choose it")
    return {"train": pick(order[n_eval:]), "eval": pick(order[:n_eval])}, whole, note


def _read_datasets(name: str, text_cols: Sequence[str], label_col: str | None, train_split: str,
                   eval_split: str, pair: bool) -> dict[str, tuple[list[str], list[Any]]]:
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

    def columns(table: Any, split: str) -> tuple[list[str], list[Any]]:
        check_columns(table.column_names, text_cols, label_col, name)
        texts = [join_text(row, pair) for row in zip(*(table[c] for c in text_cols))]
        if label_col is None:
            return texts, [0] * len(texts)
        return texts, label_values(table[label_col], lambda i: f"row {i} of the {split} split of {name!r}")
    return {"train": columns(ds[train_split], train_split), "eval": columns(ds[evals[0]], evals[0])}


def label_ids(train: Sequence[Any], evals: Sequence[Any], label_names: Sequence[str] | None,
              source: str) -> tuple[list[Any], list[str], bool]:
    """(raw value of each id, class name of each id, named?) for the labels of a task.

    Integer labels that are already 0..n-1 keep their ids; any other set of integers ({1, 5}, {-1, 0, 1}) and
    any strings map to contiguous ids in sorted order. ``label_names`` names the classes: by id for 0-based
    integers, else in sorted label order; for string labels it fixes the order (and every label must be in it).
    ``named`` is True for string labels only: they are matched to a teacher's names; integer ids are not.

    Raises:
        ValueError: missing labels, eval labels outside the label set (with the hidden-test-split hint), a
            ``label_names`` that does not fit.
    """
    check_present({"train": train, "eval": evals}, source, lambda k, i: f"{k} example {i}")
    ints = all(isinstance(y, int) for y in [*train, *evals])
    if not ints:
        train, evals = [str(y) for y in train], [str(y) for y in evals]
    hidden = ints and any(y < 0 for y in set(evals) - set(train))
    if hidden:
        raise ValueError(f"{source}: the eval split has labels {sorted(set(evals) - set(train))[:10]} that no training "
                         "example has: -1 marks a hidden test split (GLUE-style test sets publish no labels). Use "
                         "the validation split (eval_split='validation'), or an eval file with real labels.")
    if label_names is None:
        values = sorted(set(train) | set(evals))
        if ints and values == list(range(len(values))):
            return values, [str(v) for v in values], False
        return values, [str(v) for v in values], not ints
    names = [str(n) for n in label_names]
    if ints:
        every = sorted(set(train) | set(evals))
        # integer ids stay ids (named=False): a teacher's own names win over these display names
        if all(0 <= y < len(names) for y in every):
            return list(range(len(names))), names, False
        if len(every) == len(names):
            return every, names, False
        raise ValueError(f"label_names={names} has {len(names)} names but the labels are {every[:20]}: give one "
                         "name per class (ids 0..n-1, or the sorted label values), or label_names=None.")
    unknown = sorted((set(train) | set(evals)) - set(names))
    if unknown:
        raise ValueError(f"{source}: labels {unknown[:10]} are not among label_names={names}: add them to "
                         "label_names, fix the data, or set label_names=None.")
    return names, names, True


def check_present(labels: dict[str, Sequence[Any]], source: str, place: Callable[[str, int], str]) -> None:
    """ValueError counting the missing labels (None) of the splits and naming the first one's ``place(split, i)``."""
    missing = [(split, i) for split, ys in labels.items() for i, y in enumerate(ys) if y is None]
    if missing:
        raise ValueError(f"{source}: {len(missing)} label(s) are missing (empty cells, NaN or +/-Infinity), the first "
                         f"at {place(*missing[0])}: drop those examples or fill them in (a data file: or set "
                         "label_column to the column that holds the labels).")


def check_some_text(raw: dict[str, tuple[list[Any], list[Any]]], source: str) -> None:
    """A split whose every text is blank was read from the wrong column: say so (a few blank texts are fine)."""
    blank = lambda t: not t.strip() if isinstance(t, str) else all(not str(x or "").strip() for x in t)
    for split, (texts, _) in raw.items():
        if texts and all(blank(t) for t in texts):
            raise ValueError(f"every text of the {split} split of {source} is blank ({len(texts)} rows): the text "
                             "column is empty; set text_column to the column that holds the texts.")


def _finish(raw: dict[str, tuple[list[str], list[Any]]], label_names: Sequence[str] | None, source: str,
            *, labelled: bool = True) -> TaskData:
    check_some_text(raw, source)
    for split, (texts, labels) in raw.items():
        if not texts:
            raise ValueError(f"the {split} split of {source} is empty: give at least one example.")
        if len(texts) != len(labels):
            raise ValueError(f"{source}: {len(texts)} texts but {len(labels)} labels in the {split} split.")
    if len(raw["train"][0]) < MIN_TRAIN_ROWS:
        raise ValueError(f"the train split of {source} has {len(raw['train'][0])} example(s): distillation needs at "
                         f"least {MIN_TRAIN_ROWS} (hundreds to learn anything); give more examples.")
    if not labelled:
        return TaskData(TextSplit(*raw["train"]), TextSplit(*raw["eval"]), ["0"], source, False, (0,))
    values, names, named = label_ids(raw["train"][1], raw["eval"][1], label_names, source)
    if len({str(y) for y in raw["train"][1]}) < 2:
        raise ValueError(f"the train split of {source} has one class only ({raw['train'][1][0]!r}): a classifier "
                         "needs at least 2. Check label_column (is it the label column?) and the file.")
    index = {v: i for i, v in enumerate(values)}
    key = (lambda y: y) if all(isinstance(v, int) for v in values) else str
    split = {k: TextSplit(list(t), [index[key(y)] for y in ys]) for k, (t, ys) in raw.items()}
    return TaskData(split["train"], split["eval"], names, source, named, tuple(values))


def _cap(task: TaskData, max_train: int | None, max_eval: int | None, seed: int) -> TaskData:
    def cap(split: TextSplit, n: int | None, salt: int) -> TextSplit:
        if n is None or n >= len(split):
            return split
        idx = sorted(random.Random(seed + salt).sample(range(len(split)), n))  # a seeded, fixed subset
        return TextSplit([split.texts[i] for i in idx], [split.labels[i] for i in idx])
    return replace(task, train=cap(task.train, max_train, 0), eval=cap(task.eval, max_eval, 1))


# --- tokens and batches ----------------------------------------------------------------------------------------
class PairIds(list):
    """The token ids of a text pair (a list like any other), with the tokenizer's segment id of each token.

    ``token_type_ids`` is 0 for the first text and 1 for the second (BERT-style); :func:`collate` passes them to
    a model that takes them, so it reads a pair as a teacher fine-tuned on pairs (e.g. MNLI) was trained.
    """

    __slots__ = ("token_type_ids",)

    def __init__(self, ids: Sequence[int], token_type_ids: Sequence[int]):
        super().__init__(ids)
        self.token_type_ids = list(token_type_ids)


def encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text (with special tokens, truncated to ``max_length``, unpadded).

    A text pair (``text_pair=True``: ``tables.split_pair`` finds its two texts) is encoded as the tokenizer's
    pair; where the tokenizer gives segment ids (BERT, ELECTRA, ALBERT, DeBERTa; not DistilBERT, RoBERTa, MPNet)
    each pair's ids are a :class:`PairIds`. A single text gets plain ids, as its segment ids would all be 0.
    Each text is encoded on its own terms: a pair among single texts never turns them into pairs.
    """
    pairs = [split_pair(t) for t in texts]
    out: list[Any] = [None] * len(texts)
    singles = [i for i, p in enumerate(pairs) if p is None]
    if singles:
        ids = tokenizer([texts[i] for i in singles], truncation=True, max_length=max_length)["input_ids"]
        for i, e in zip(singles, ids):
            out[i] = e
    both = [i for i, p in enumerate(pairs) if p is not None]
    if both:
        for i, e in zip(both, _encode_pairs(tokenizer, [pairs[i] for i in both], max_length)):
            out[i] = e
    return out


def _encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int) -> list[list[int]]:
    """The tokenizer's own pair format of (first, second) texts, with their segment ids where it gives them."""
    first, second = zip(*pairs)
    enc = tokenizer(list(first), list(second), truncation=True, max_length=max_length)
    if "token_type_ids" not in enc:
        return enc["input_ids"]
    return [PairIds(ids, types) for ids, types in zip(enc["input_ids"], enc["token_type_ids"])]


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


def collate(encoded: Sequence[Sequence[int]], idx: Sequence[int], pad_id: int, *,
            token_types: bool = False) -> dict[str, torch.Tensor]:
    """Pad the chosen examples to the longest of them: input_ids and attention_mask, both (B, S).

    Args:
        token_types: add ``token_type_ids`` (B, S), padded with 0, when a chosen example is a :class:`PairIds`;
            pass ``models.accepts_token_types(model)`` (a model without the argument must not get it).
    """
    import torch

    longest = max(len(encoded[i]) for i in idx)
    ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), longest), dtype=torch.long)
    for row, i in enumerate(idx):
        ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
        mask[row, :len(encoded[i])] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    segments = [getattr(encoded[i], "token_type_ids", None) for i in idx]
    if token_types and any(s is not None for s in segments):
        batch["token_type_ids"] = torch.zeros((len(idx), longest), dtype=torch.long)
        for row, s in enumerate(segments):
            if s is not None:
                batch["token_type_ids"][row, :len(s)] = torch.tensor(s, dtype=torch.long)
    return batch


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / batch_size)
