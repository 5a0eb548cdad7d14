"""What a data set offers the Train tab: its columns and splits, read from the file's header (no torch)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..data import EVAL_ALIASES, FILE_FORMATS, LABEL_NAMES

ALIAS_COLUMNS = {"sst2": (["sentence", "label"], ["train", "validation"]),
                 "trec6": (["text", "coarse_label"], ["train", "test"])}


def _header(path: Path) -> list[str]:
    fmt = FILE_FORMATS[path.suffix.lower()]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        head = f.read(1 << 20)
    if fmt == "csv":
        first = head.splitlines()[0] if head else ""
        return next(csv.reader([first], delimiter="\t" if path.suffix.lower() == ".tsv" else ","), [])
    stripped = head.lstrip()
    if stripped.startswith("["):  # a JSON list of objects: the first object's keys
        try:
            rows = json.loads(Path(path).read_text(encoding="utf-8"))
            return list(rows[0]) if rows and isinstance(rows[0], dict) else []
        except (json.JSONDecodeError, OSError):
            return []
    for line in head.splitlines():  # JSON lines, or a dict of columns
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                try:
                    row = json.loads(Path(path).read_text(encoding="utf-8"))
                except (json.JSONDecodeError, OSError):
                    return []
            return list(row) if isinstance(row, dict) else []
    return []


def data_columns(dataset: str, train_split: str = "train") -> tuple[list[str], list[str], bool]:
    """(columns, splits, fixed) of ``dataset``.

    ``fixed`` is True for packaged aliases (their columns are set by the alias). A single file has the split
    "train" (10 % is held out for evaluation); a folder has one split per data file. A datasets name or a
    path that does not exist gives ([], [], False): any column may be typed.
    """
    key = dataset.strip().lower().replace("-", "")
    if key in LABEL_NAMES:
        columns, splits = ALIAS_COLUMNS.get(key, ([], []))
        return list(columns), list(splits), True
    try:
        path = Path(dataset.strip()).expanduser()
        exists = bool(dataset.strip()) and path.exists()
    except (OSError, RuntimeError):  # a name too long for a path, '~' of an unknown user: DistillConfig says why
        exists = False
    if not exists:
        return [], [], False
    if path.is_dir():
        files = {p.stem: p for p in sorted(path.iterdir()) if p.suffix.lower() in FILE_FORMATS}
        if not files:
            return [], [], False
        first = files.get(train_split) or next(iter(files.values()))
        splits = sorted(files, key=lambda s: (s != "train", s not in EVAL_ALIASES, s))
        return _header(first), splits, False
    if path.suffix.lower() not in FILE_FORMATS:
        return [], [], False
    return _header(path), ["train"], False


def guess_text_column(columns: list[str]) -> str | None:
    return next((c for c in columns if c.lower() in ("text", "sentence", "review", "content", "question")), None)


def guess_label_column(columns: list[str]) -> str | None:
    return next((c for c in columns if c.lower() in ("label", "labels", "class", "category", "target")), None)


__all__ = ["data_columns", "guess_label_column", "guess_text_column"]
