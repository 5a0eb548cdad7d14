"""The one reader of local data files (CSV/TSV/JSON/JSONL/Parquet): rows -> (texts, raw labels).

Preflight (in the notebook, before a run directory exists) and the worker (``data.load_task``) both call
:func:`read_table`, so a file the checks accept is a file training can read, and the other way round. Standard
library only (pyarrow for Parquet, imported when needed): no torch, no ``datasets``.

Accepted shapes: UTF-8 with or without a BOM (Excel's "CSV UTF-8"); JSON as a list of objects, JSON lines, a
dict of columns, or one wrapping key holding a list of objects (``{"data": [...]}``); text in one column or
several (joined, or kept as a pair for the tokenizer: see :func:`join_text`; the pair marker's character U+001E
is dropped from every cell, so whether a text is a pair follows ``text_pair`` alone). A .tsv has no quoting (a ``"``
is part of the text, as in GLUE's SST-2 files); a .csv quotes with ``"``. A header that names a used column twice,
or a row with more fields than the header, is refused (it would shift or drop values silently).
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Two text columns passed to the tokenizer as a pair are kept in one string around this separator;
# data.encode() splits them again. BERT-style normalisers drop the control character, so a view that
# tokenizes the string itself sees the two texts joined by spaces. The reader drops PAIR_MARK from every cell
# (clean_text), so a text read from data holds it only where join_text put it: once, at the column boundary.
PAIR_MARK = "\x1e"  # ASCII record separator: a control character, not text
PAIR_SEP = f" {PAIR_MARK} "
JOIN_SEP = "\n"  # text_pair=False: several columns become one text, one column per line


def clean_text(value: Any) -> str:
    """A text cell as a string: None is "", and PAIR_MARK is dropped (BERT and SentencePiece normalisers drop
    this control character anyway), so no cell's content can read as a text pair or move a pair's split."""
    return "" if value is None else str(value).replace(PAIR_MARK, "")


def join_text(values: Sequence[Any], pair: bool) -> str:
    """One text from the text columns of a row: a pair (``a PAIR_SEP b``) or the columns joined by newlines.

    Raises:
        ValueError: ``pair`` with other than 2 values (a pair has a first and a second text).
    """
    parts = [clean_text(v) for v in values]
    if pair and len(parts) != 2:
        raise ValueError(f"a text pair needs exactly 2 text columns, got {len(parts)} values: give two columns "
                         "(e.g. ['premise', 'hypothesis']), or text_pair=False to join the columns.")
    return PAIR_SEP.join(parts) if pair else JOIN_SEP.join(p for p in parts if p)


def split_pair(text: str) -> tuple[str, str] | None:
    """(first, second) of a text made by ``join_text(..., pair=True)``; None for a single text.

    Unambiguous for data read by this module: join_text drops PAIR_MARK from the texts, so a pair holds it once.
    """
    if PAIR_SEP not in text:
        return None
    first, second = text.split(PAIR_SEP, 1)
    return first, second


def read_table(path: Path, text_cols: Sequence[str], label_col: str | None, *, pair: bool = False,
               max_bytes: int | None = None) -> tuple[list[str], list[Any], bool]:
    """Texts, raw labels and whether the whole file was read.

    Args:
        text_cols: one or more text columns (several are joined, or a pair with ``pair=True``).
        label_col: the label column; None for unlabelled text (every label 0).
        max_bytes: read at most this much (preflight's sample of a huge file); None reads all of it.

    Raises:
        ValueError: an unknown extension, an empty file, not UTF-8, a JSON layout this reader does not know.
        KeyError: a missing column (the message lists the columns there are).
    """
    path = Path(path)
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"data file {str(path)!r} has an unknown extension {path.suffix!r}: rename or convert it "
                         f"to one of {', '.join(sorted(FILE_FORMATS))}.")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"data file {str(path)!r} is empty (0 bytes): give it a header row with the column "
                         "names and one row per example, or set dataset to another file.")
    whole = max_bytes is None or size <= max_bytes
    if fmt == "parquet":
        return (*_parquet(path, text_cols, label_col, pair, whole), whole)
    data = path.read_bytes() if whole else path.open("rb").read(max_bytes)
    try:
        text = data.decode("utf-8-sig")  # a BOM (Excel's "CSV UTF-8") is not part of the first column name
    except UnicodeDecodeError as e:
        if whole or e.start < len(data) - 4:  # a sample may end inside a multi-byte character
            raise ValueError(f"data file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}): re-save "
                             "it as UTF-8 (Excel: 'CSV UTF-8'; or iconv -f latin1 -t utf-8).") from e
        text = data[:e.start].decode("utf-8-sig")
    if not whole:
        text = text[:text.rfind("\n") + 1]  # whole lines only
    if fmt == "csv":
        rows, columns = _csv(text, path)
        _check_unique(columns, [*text_cols, *([label_col] if label_col is not None else [])], path)
    else:
        rows, columns = _json(text, path, whole)
    check_columns(columns, text_cols, label_col, str(path))
    texts = [join_text([r.get(c) for c in text_cols], pair) for r in rows]
    labels = label_values([r.get(label_col) for r in rows], _row_of(path)) if label_col is not None else [0] * len(rows)
    return texts, labels, whole


def _row_of(path: Path) -> Callable[[int], str]:
    """``where(i)`` for :func:`label_values`: the i-th example of a data file (rows counted from 1, header aside)."""
    return lambda i: f"row {i + 1} of data file {str(path)!r}"


def _csv(text: str, path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and (stripped) header of a .csv (``"`` quotes) or a .tsv (no quoting: a ``"`` is text)."""
    tsv = path.suffix.lower() == ".tsv"
    limit = csv.field_size_limit(2**31 - 1)  # a very long text is valid (it is truncated), not an error
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if tsv else ",",
                                quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns  # " label" in a hand-written header is "label"
        rows = []
        for n, row in enumerate(reader, 1):
            _check_width(row, n, reader.line_num, len(columns), path)
            rows.append(row)
        return rows, columns
    finally:
        csv.field_size_limit(limit)


def _check_width(row: dict[Any, Any], n: int, line: int, width: int, path: Path) -> None:
    """ValueError for a row with more (non-blank) fields than the header: its values would shift or be cut.

    A short row keeps its missing cells empty (a missing label is reported as one); blank trailing fields
    (``a,1,`` against ``text,label``) are a trailing separator, not data.
    """
    extra = row.pop(None, None)  # DictReader's restkey: the fields past the header
    if not extra or all(not (v or "").strip() for v in extra):
        return
    if path.suffix.lower() == ".tsv":
        fix = ("remove the tab characters inside texts (a .tsv has no quoting) or use a .csv with quoted texts, "
               "or .jsonl")
    else:
        fix = 'quote texts that contain commas ("...") or use a .tsv/.jsonl file'
    raise ValueError(f"row {n} (line {line}) of data file {str(path)!r} has {width + len(extra)} fields but the "
                     f"header has {width}: {fix}.")


def _check_unique(columns: Sequence[str], used: Sequence[str], path: Path) -> None:
    """ValueError for a used column that the header names twice (a reader would silently take one of them)."""
    twice = next((c for c in dict.fromkeys(used) if columns.count(c) > 1), None)
    if twice is not None:
        raise ValueError(f"column {twice!r} appears {columns.count(twice)} times in the header of data file "
                         f"{str(path)!r} (header: {list(columns)}): rename one, or remove the extra column.")


_LAYOUTS = ("a list of objects [{\"text\": ..., \"label\": ...}, ...], JSON lines (one object per line), a dict of "
            "columns {\"text\": [...], \"label\": [...]}, or one key holding a list of objects")
_NOT_PARSED = object()  # json.loads failed or was not tried (JSON lines); None is a JSON null


def _json(text: str, path: Path, whole: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a JSON list, JSON lines, a dict of columns, or a single key wrapping a list of rows."""
    value, lines = _json_value(text, path, whole)
    if isinstance(value, dict):
        value = _dict_rows(value, path)
    _check_records(value, lines, path)
    columns = list(dict.fromkeys(k for r in value[:1000] for k in r))
    if not columns:
        raise ValueError(f"data file {str(path)!r} holds JSON objects with no keys ({_show(value[0])}): give each "
                         f"example its fields, e.g. {{\"text\": \"...\", \"label\": 1}}.")
    return value, columns


def _json_value(text: str, path: Path, whole: bool) -> tuple[Any, list[int] | None]:
    """(the parsed JSON, None) or, for JSON lines, (the list of line values, their 1-based line numbers)."""
    value: Any = _NOT_PARSED
    if whole and path.suffix.lower() != ".jsonl":
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            pass
    if isinstance(value, dict) and not any(isinstance(v, list) for v in value.values()):
        return [value], [1]  # JSON lines with a single line
    if value is not _NOT_PARSED:
        return value, None
    values, numbers = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"data file {str(path)!r} is not valid JSON or JSON lines (line {number}: {e}): use one "
                             f"of the layouts: {_LAYOUTS}.") from e
        numbers.append(number)
    return values, numbers


def _dict_rows(value: dict[str, Any], path: Path) -> list[Any]:
    """Rows of {"data": [{...}, ...]} (the wrapper of many exports) or of a dict of equally long columns."""
    lists = {k: v for k, v in value.items() if isinstance(v, list)}
    records = [k for k, v in lists.items() if v and all(isinstance(r, dict) for r in v)]
    if len(records) == 1 and len(lists) == 1:
        return lists[records[0]]
    if not lists or len(lists) != len(value):
        raise ValueError(f"data file {str(path)!r} is a JSON object with keys {list(value)[:10]} this reader "
                         f"cannot turn into rows: use one of the layouts: {_LAYOUTS}.")
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"data file {str(path)!r} is a dict of columns of different lengths {lengths}: "
                         "give every column one value per example.")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"data file {str(path)!r} holds a JSON object whose lists are all empty "
                         f"({_show(value)}): it has no examples. Use one of the layouts: {_LAYOUTS}.")
    return [{k: v[i] for k, v in lists.items()} for i in range(n)]


def _check_records(value: Any, lines: list[int] | None, path: Path) -> None:
    """ValueError saying what the file holds unless it is a non-empty list of JSON objects."""
    where = f"data file {str(path)!r}"
    if lines is not None and not value:
        raise ValueError(f"{where} holds no JSON (only blank lines): give it one object per example, as "
                         f"{_LAYOUTS}.")
    if not isinstance(value, list):  # a data file's content, not an argument's type: ValueError
        raise ValueError(f"{where} holds {_describe(value)}, not a list of examples: use one of the "  # noqa: TRY004
                         f"layouts: {_LAYOUTS}.")
    if not value:
        raise ValueError(f"{where} holds an empty JSON list [] (no examples): give it one object per example, "
                         f"as {_LAYOUTS}.")
    bad = next((i for i, r in enumerate(value) if not isinstance(r, dict)), None)
    if bad is not None:
        item = f"line {lines[bad]}" if lines is not None else f"item {bad} of its list"
        raise ValueError(f"{where}: {item} is {_describe(value[bad])}, not an object: each example is one object, "
                         f"as {_LAYOUTS}.")


def _describe(value: Any) -> str:
    """'JSON null', 'a JSON int (42)', 'a JSON string ("abc")', ... for a message."""
    if value is None:
        return "JSON null"
    name = {dict: "object", list: "list", str: "string", bool: "boolean"}.get(type(value), type(value).__name__)
    return f"a JSON {name} ({_show(value)})"


def _show(value: Any, limit: int = 60) -> str:
    shown = json.dumps(value, ensure_ascii=False, default=str)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _parquet(path: Path, text_cols: Sequence[str], label_col: str | None, pair: bool,
             whole: bool) -> tuple[list[str], list[Any]]:
    import pyarrow.parquet as pq

    check_columns(pq.read_schema(path).names, text_cols, label_col, str(path))
    if not whole:  # preflight's look at a huge file: the row count only
        return [""] * pq.ParquetFile(path).metadata.num_rows, []
    wanted = list(dict.fromkeys([*text_cols, *([label_col] if label_col else [])]))
    table = pq.read_table(path, columns=wanted).to_pydict()
    n = len(table[text_cols[0]])
    texts = [join_text([table[c][i] for c in text_cols], pair) for i in range(n)]
    labels = label_values(table[label_col], _row_of(path)) if label_col is not None else [0] * n
    return texts, labels


def check_columns(columns: Sequence[str], text_cols: Sequence[str], label_col: str | None, where: str) -> None:
    """KeyError naming the missing column(s), the columns there are and the field to set."""
    missing_text = [c for c in text_cols if c not in columns]
    missing_label = label_col is not None and label_col not in columns
    if not missing_text and not missing_label:
        return
    if not columns:
        raise KeyError(f"data file {where!r} has no columns (no header row, or no rows): give it a first line that names "
                       "the columns, e.g. 'text,label'.")
    fields = (["text_column"] if missing_text else []) + (["label_column"] if missing_label else [])
    missing = missing_text + ([label_col] if missing_label else [])
    guess = next((c for c in columns if c.lower() in ("text", "sentence", "review", "content")), None)
    extra = f" (e.g. text_column={guess!r})" if guess and missing_text else ""
    raise KeyError(f"{where}: column(s) {missing} not found; columns are {list(columns)}. Set "
                   f"{' / '.join(fields)} to one of those columns{extra}.")


_NON_FINITE = re.compile(r"[-+]?(nan|inf|infinity)", re.IGNORECASE)
_INTEGER = re.compile(r"[-+]?\d+")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")  # a decimal number, as a CSV cell spells it


def label_value(value: Any) -> Any:
    """A label cell as a Python value: whole numbers (3, 3.0, numpy's, '3', '3.0', '3e0') become ints, the rest str.

    Booleans become their names ('true', 'false'). Missing labels are None: empty cells and non-finite numbers
    (NaN, +/-Infinity, also spelled in a text cell as 'nan', 'inf', '-Infinity'), which name no class;
    ``data.label_ids`` reports them.

    Raises:
        ValueError: a number that is not whole (0.5, '2.5'): it names no class (the message says what to do).
    """
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        value = value.item()  # a numpy scalar or a 0-d array/tensor -> the Python number
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        value = value.strip()
        if value == "" or _NON_FINITE.fullmatch(value):
            return None
        if _INTEGER.fullmatch(value):
            return int(value)  # exact, however many digits
        if not _NUMBER.fullmatch(value):
            return value
        number, shown = float(value), value
    elif isinstance(value, numbers.Real):
        number, shown = float(value), value
    else:
        return None if value is None else str(value)
    if not math.isfinite(number):
        return None
    if not number.is_integer():
        raise ValueError(f"label {shown!r} is a number with a fraction, so it names no class: give whole class ids "
                         "(0, 1, ...) or class names; round or map these values to classes first (scores, as in "
                         "a regression task like STS-B, need binning into classes).")
    return int(number)


def label_values(cells: Sequence[Any], where: Callable[[int], str]) -> list[Any]:
    """:func:`label_value` of each cell; a ValueError for a cell that is no class names its place (``where(i)``)."""
    out = []
    for i, cell in enumerate(cells):
        try:
            out.append(label_value(cell))
        except ValueError as e:
            raise ValueError(f"{where(i)}: {e}") from None
    return out
