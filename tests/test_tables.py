"""The local data-file reader: TSV quoting, header and row shape, non-finite labels, JSON layout messages."""

from __future__ import annotations

import json

import pytest

from distill_nb.data import load_task
from distill_nb.tables import label_value, read_table


def _file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _rows(n, sep):
    return [f"review {i} was {'good' if i % 2 else 'bad'}{sep}{i % 2}" for i in range(n)]


# ---- TSV: no quoting, a double quote is part of the text


@pytest.mark.parametrize("text", [
    '"Jaws" is a classic',                    # balanced quotes at the start
    'the "worst" acting',                     # balanced quotes inside
    '"unforgettable',                         # an opening quote closed rows later (the merge of the bug)
    'as the poster says " forgettable',       # a lone quote
    'he said ""wow""',                        # doubled quotes stay doubled
    '"quoted whole"',                         # a fully quoted cell keeps its quotes
])
def test_tsv_double_quotes_are_text_and_keep_every_row(tmp_path, text):
    rows = _rows(20, "\t")
    rows[5] = f"{text}\t1"
    rows[12] = '"a quote that opens the cell\t0'  # csv quoting would merge the rows after it into one text
    texts, labels, whole = read_table(_file(tmp_path, "train.tsv", "text\tlabel\n" + "\n".join(rows) + "\n"),
                                      ["text"], "label")
    assert whole and len(texts) == 20 and len(labels) == 20
    assert texts[5] == text and labels[5] == 1
    assert texts[12] == '"a quote that opens the cell' and labels[12] == 0


def test_csv_still_reads_quoted_fields(tmp_path):
    path = _file(tmp_path, "train.csv", 'text,label\n"a, b",1\n"say ""hi""",0\n')
    assert read_table(path, ["text"], "label")[:2] == (["a, b", 'say "hi"'], [1, 0])


# ---- a used column named twice in the header


@pytest.mark.parametrize("ext,sep", [("csv", ","), ("tsv", "\t")])
@pytest.mark.parametrize("header,column", [
    (["text", "text", "label"], "text"),
    (["text", "label", "label"], "label"),
    (["text", " text", "label"], "text"),  # equal once the header is stripped
])
def test_duplicate_used_column_in_header_is_refused(tmp_path, ext, sep, header, column):
    body = sep.join(header) + "\n" + "".join(sep.join(["a", "b", "1"]) + "\n" for _ in range(3))
    path = _file(tmp_path, f"train.{ext}", body)
    with pytest.raises(ValueError, match=rf"column '{column}' appears 2 times in the header of .*train\.{ext}.*rename"):
        read_table(path, ["text"], "label")


@pytest.mark.parametrize("ext,sep", [("csv", ","), ("tsv", "\t")])
def test_duplicate_unused_column_is_accepted(tmp_path, ext, sep):
    path = _file(tmp_path, f"train.{ext}", sep.join(["note", "text", "note", "label"]) + "\n"
                 + sep.join(["x", "good", "y", "1"]) + "\n")
    assert read_table(path, ["text"], "label")[:2] == (["good"], [1])


# ---- rows with more fields than the header


@pytest.mark.parametrize("label_col", ["label", None])  # labelled, and unlabelled text (objective='mlm')
@pytest.mark.parametrize("ext,sep,bad,fix", [
    ("csv", ",", "good, really good,1", 'quote texts that contain commas'),
    ("tsv", "\t", "good\treally good\t1", "remove the tab characters"),
])
def test_row_with_more_fields_than_header_is_refused(tmp_path, label_col, ext, sep, bad, fix):
    rows = _rows(10, sep)
    rows[3] = bad
    path = _file(tmp_path, f"train.{ext}", f"text{sep}label\n" + "\n".join(rows) + "\n")
    message = rf"row 4 \(line 5\) of .*train\.{ext}' has 3 fields but the header has 2: {fix}"
    with pytest.raises(ValueError, match=message):
        read_table(path, ["text"], label_col)


def test_csv_row_numbers_count_records_not_lines(tmp_path):
    path = _file(tmp_path, "train.csv", 'text,label\n"two\nlines",1\nok,0\na, b,c,1\n')
    with pytest.raises(ValueError, match=r"row 3 \(line 5\) of .* has 4 fields but the header has 2"):
        read_table(path, ["text"], "label")


def test_blank_trailing_fields_are_a_separator_not_data(tmp_path):
    path = _file(tmp_path, "train.csv", "text,label\ngood,1,\nbad,0,,\n")
    assert read_table(path, ["text"], "label")[:2] == (["good", "bad"], [1, 0])


def test_short_row_is_reported_as_a_missing_label(tmp_path):
    rows = _rows(20, ",")
    rows[3] = "a text without its label"
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "validation.csv").write_text("text,label\n" + "\n".join(_rows(4, ",")) + "\n")
    with pytest.raises(ValueError, match=r"1 label\(s\) are missing"):
        load_task(str(tmp_path), text_column="text")


# ---- non-finite labels are missing, like NaN


@pytest.mark.parametrize("cell", ["Infinity", "-Infinity", "+inf", "inf", "-inf", "NaN", "nan"])
def test_non_finite_label_in_csv_is_missing(tmp_path, cell):
    path = _file(tmp_path, "train.csv", f"text,label\ngood,1\nbad,{cell}\n")
    assert read_table(path, ["text"], "label")[1] == [1, None]


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e400"])
@pytest.mark.parametrize("ext", ["jsonl", "json"])
def test_non_finite_label_in_json_is_missing(tmp_path, literal, ext):
    lines = ['{"text": "good", "label": 1}', f'{{"text": "bad", "label": {literal}}}']
    text = "\n".join(lines) + "\n" if ext == "jsonl" else "[" + ", ".join(lines) + "]"
    assert read_table(_file(tmp_path, f"train.{ext}", text), ["text"], "label")[1] == [1, None]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_label_value_of_non_finite_floats_is_none(value):
    assert label_value(value) is None
    assert label_value(2.0) == 2 and label_value("info") == "info" and label_value("Infinite") == "Infinite"


@pytest.mark.parametrize("ext,label", [("csv", "-Infinity"), ("jsonl", "Infinity")])
def test_infinity_label_is_refused_as_missing_by_load_task(tmp_path, ext, label):
    if ext == "csv":
        body = "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(10)) + f"odd,{label}\n"
    else:
        body = "".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(10))
        body += f'{{"text": "odd", "label": {label}}}\n'
    (tmp_path / f"train.{ext}").write_text(body)
    (tmp_path / f"validation.{ext}").write_text(body)
    with pytest.raises(ValueError, match=r"2 label\(s\) are missing \(empty cells, NaN or \+/-Infinity\)"):
        load_task(str(tmp_path), text_column="text")


# ---- JSON messages say what the file holds and the shape expected


@pytest.mark.parametrize("name,content,needles", [
    ("train.json", "[]", ["holds an empty JSON list []", '[{"text": ..., "label": ...}', "JSON lines"]),
    ("train.json", "null", ["holds JSON null", "not a list of examples", '[{"text": ..., "label": ...}']),
    ("train.json", '"just a text"', ['holds a JSON string ("just a text")', "JSON lines"]),
    ("train.json", "42", ["holds a JSON int (42)", "layouts"]),
    ("train.json", '[{"text": "a", "label": 1}, "b"]', ['item 1 of its list is a JSON string ("b")', "not an object"]),
    ("train.jsonl", '{"text": "a", "label": 1}\n\nnull\n', ["line 3 is JSON null", "not an object"]),
    ("train.jsonl", "\n\n", ["holds no JSON (only blank lines)", "JSON lines"]),
    ("train.json", '{"text": [], "label": []}', ["lists are all empty", "no examples"]),
    ("train.json", "[{}, {}]", ["JSON objects with no keys", '"text"']),
    ("train.jsonl", '{"text": "a", "label": 1}\n{"text": \n', ["not valid JSON", "line 2"]),
])
def test_json_messages_say_what_the_file_holds(tmp_path, name, content, needles):
    with pytest.raises(ValueError) as info:
        read_table(_file(tmp_path, name, content), ["text"], "label")
    message = str(info.value)
    assert name in message and all(n in message for n in needles), message
    assert "header" not in message and "'text,label'" not in message  # no CSV advice for a JSON file


# ---- the pair marker (U+001E) in a cell: whether a text is a pair follows text_pair, never the text -----------
RS = "\x1e"
MARKED = [f"the {RS} good", f" {RS} the good", f"the good {RS} ", f"a {RS} b {RS} c", f"{RS}{RS}", f"x{RS}y",
          f"the {RS}  {RS} good"]  # in the middle, at the start, at the end, repeated, alone, without spaces


def _clean(text):
    return text.replace(RS, "")


@pytest.mark.parametrize("text", MARKED)
@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_a_marker_in_a_single_text_never_makes_a_pair(tmp_path, text, ext):
    from distill_nb.tables import split_pair

    rows = [{"text": text, "label": 1}, {"text": "plain", "label": 0}]
    body = ("text,label\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in rows) if ext == "csv"
            else "".join(json.dumps(r) + "\n" for r in rows))
    texts, _, _ = read_table(_file(tmp_path, f"train.{ext}", body), ["text"], "label")
    assert texts == [_clean(text), "plain"]
    assert all(split_pair(t) is None for t in texts)


@pytest.mark.parametrize("text", MARKED)
def test_joined_columns_with_a_marker_stay_one_text(tmp_path, text):
    from distill_nb.tables import split_pair

    path = _file(tmp_path, "train.jsonl", json.dumps({"a": text, "b": f"second {RS} part", "label": 1}) + "\n")
    (joined,), _, _ = read_table(path, ["a", "b"], "label")
    assert split_pair(joined) is None and joined == "\n".join(p for p in (_clean(text), "second  part") if p)


@pytest.mark.parametrize("text", MARKED)
@pytest.mark.parametrize("column", [0, 1])
def test_a_pair_splits_at_the_column_boundary_whatever_its_texts_hold(tmp_path, text, column):
    from distill_nb.tables import split_pair

    cells = ["the first", "the second"]
    cells[column] = text
    row = {"a": cells[0], "b": cells[1], "label": 1}
    path = _file(tmp_path, "train.jsonl", json.dumps(row) + "\n" + json.dumps({"a": "x", "b": "", "label": 0}))
    texts, _, _ = read_table(path, ["a", "b"], "label", pair=True)
    assert split_pair(texts[0]) == (_clean(cells[0]), _clean(cells[1]))
    assert split_pair(texts[1]) == ("x", "")  # an empty second text is still a pair


def test_join_text_refuses_a_pair_of_other_than_two_texts():
    from distill_nb.tables import join_text

    with pytest.raises(ValueError, match="exactly 2 text columns, got 3"):
        join_text(["a", "b", "c"], pair=True)
