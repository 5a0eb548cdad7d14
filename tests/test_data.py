"""Data loading from files, lists and the shared real data; length bucketing and dynamic padding."""

from __future__ import annotations

import json

import pytest

from distill_nb.data import TaskData, collate, length_batches, load_task


def test_csv_tsv_json_jsonl_parquet_folders_and_string_labels(tmp_path):
    rows = [{"t": f"text {i}", "y": ["neg", "pos"][i % 2]} for i in range(20)]
    import pandas as pd

    frame = pd.DataFrame(rows)
    for ext in ["csv", "tsv", "json", "jsonl", "parquet"]:
        folder = tmp_path / ext
        folder.mkdir()
        for split in ["train", "dev"]:
            path = folder / f"{split}.{ext}"
            if ext == "csv":
                frame.to_csv(path, index=False)
            elif ext == "tsv":
                frame.to_csv(path, sep="\t", index=False)
            elif ext == "json":
                path.write_text(json.dumps(rows))
            elif ext == "jsonl":
                frame.to_json(path, orient="records", lines=True)
            else:
                frame.to_parquet(path)
        task = load_task(str(folder), text_column="t", label_column="y")
        assert task.label_names == ["neg", "pos"] and len(task.train) == 20 and len(task.eval) == 20, ext
        assert task.train.labels[:2] == [0, 1] and task.train.texts[0] == "text 0"


def test_single_file_holds_out_a_reproducible_eval_split(tmp_path):
    path = tmp_path / "all.csv"
    path.write_text("text,label\n" + "".join(f"example {i},{i % 3}\n" for i in range(50)))
    a, b = load_task(str(path), text_column="text"), load_task(str(path), text_column="text")
    assert len(a.eval) == 5 and len(a.train) == 45 and a.eval.texts == b.eval.texts
    assert not set(a.eval.texts) & set(a.train.texts)


def test_in_memory_lists_and_jsonl_round_trip(tmp_path):
    task = TaskData.from_lists(["good", "bad", "fine"], ["pos", "neg", "pos"], ["ok"], ["pos"])
    assert task.label_names == ["neg", "pos"] and task.train.labels == [1, 0, 1]
    back = load_task(str(task.write_jsonl(tmp_path / "d")), text_column="text", label_column="label")
    assert back.train.texts == task.train.texts and back.label_names == task.label_names


def test_errors_name_the_problem(tmp_path):
    (tmp_path / "train.csv").write_text("sentence,label\nhi,0\n")
    (tmp_path / "validation.csv").write_text("sentence,label\nho,1\n")
    with pytest.raises(KeyError, match=r"\['text'\] not found; columns are \['sentence', 'label'\]"):
        load_task(str(tmp_path), text_column="text")
    with pytest.raises(FileNotFoundError, match="no-such.csv"):
        load_task(str(tmp_path / "no-such.csv"))
    with pytest.raises(ValueError, match="empty"):
        TaskData.from_lists([], [], ["x"], [0])


def test_real_sst2_and_trec6_from_shared_data(shared_data, monkeypatch):
    monkeypatch.setenv("DISTILL_NB_DATA", str(shared_data))
    sst2 = load_task("sst2", max_train=1000)
    assert len(sst2.train) == 1000 and len(sst2.eval) == 872 and sst2.label_names == ["negative", "positive"]
    assert sum(sst2.eval.labels) == 444  # dev: 428 negative / 444 positive
    trec = load_task("trec6")
    assert len(trec.train) == 5452 and len(trec.eval) == 500 and trec.num_labels == 6


def test_length_bucketing_covers_every_example_once_and_pads_less():
    import random

    lengths = [random.Random(i).randint(3, 120) for i in range(1000)]
    batches = length_batches(lengths, 32, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == length_batches(lengths, 32, seed=0) and batches != length_batches(lengths, 32, seed=1)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    naive = sum(32 * 120 for _ in batches)  # static padding to the max length
    assert padded < 0.5 * naive
    enc = [[1] * n for n in (3, 5)]
    batch = collate(enc, [0, 1], pad_id=0)
    assert batch["input_ids"].shape == (2, 5) and batch["attention_mask"].sum().item() == 8
    with pytest.raises(ValueError, match="batch_size=0"):
        length_batches(lengths, 0, seed=0)


@pytest.mark.parametrize("files, eval_split, found", [
    (["train", "validation", "test"], "tets", None),  # a typo: refused, never another file
    (["train", "validation"], "test", None),  # a named split that is not there
    (["train", "validation", "test"], "test", "test"),
    (["train", "dev"], "validation", "dev"),  # the default finds the usual other names
    (["train", "test"], "validation", "test"),
    (["train", "holdout"], "holdout", "holdout"),
])
def test_a_named_eval_split_must_exist(tmp_path, files, eval_split, found):
    from distill_nb.data import data_files

    for name in files:
        (tmp_path / f"{name}.csv").write_text("text,label\na,0\n")
    if found is None:
        with pytest.raises(FileNotFoundError, match=rf"needs train\.<csv.*and {eval_split}\.<\.\.\.>: rename"):
            data_files(tmp_path, "train", eval_split)
    else:
        assert data_files(tmp_path, "train", eval_split)["eval"].stem == found


# ---- labels: whole numbers of any type are class ids; a fraction, NaN or infinity is refused where it is --------
def _write_labels(folder, ext: str, labels: list) -> None:
    """train.<ext> and validation.<ext> with ``labels`` as the label column's values, typed as the format keeps them
    (CSV/TSV: their text; JSON: the JSON number, NaN/Infinity literals included; Parquet: a float64 column)."""
    import pandas as pd

    folder.mkdir()
    texts = [f"text {i}" for i in range(len(labels))]
    for split in ("train", "validation"):
        path = folder / f"{split}.{ext}"
        if ext in ("csv", "tsv"):
            sep = "," if ext == "csv" else "\t"
            path.write_text(f"text{sep}label\n" + "".join(f"{t}{sep}{y}\n" for t, y in zip(texts, labels)))
        elif ext in ("json", "jsonl"):
            objs = [json.dumps({"text": t, "label": y}) for t, y in zip(texts, labels)]  # nan -> NaN literal
            path.write_text("[" + ",".join(objs) + "]" if ext == "json" else "\n".join(objs) + "\n")
        else:
            pd.DataFrame({"text": texts, "label": [float(y) for y in labels]}).to_parquet(path)


FORMATS = ["csv", "tsv", "json", "jsonl", "parquet"]


@pytest.mark.parametrize("ext", FORMATS)
def test_whole_float_labels_in_every_file_format_are_class_ids(tmp_path, ext):
    _write_labels(tmp_path / ext, ext, [1.0, 0.0, 2.0, 0.0] * 3)
    task = load_task(str(tmp_path / ext), text_column="text")
    assert task.label_names == ["0", "1", "2"] and not task.named_labels and task.label_values == (0, 1, 2)
    assert task.train.labels[:4] == [1, 0, 2, 0]


def _whole_numbers():
    import numpy as np
    import torch

    return [(1.0, 0.0), (np.float64(1), np.float64(0)), (np.float32(1), np.float32(0)), (np.int64(1), np.int64(0)),
            (torch.tensor(1.0), torch.tensor(0.0)), (torch.tensor(1), torch.tensor(0)), ("1.0", "0.0"), ("1", "0"),
            (" 1.0 ", "0e0"), (1, 0.0), (1.0, -0.0)]


@pytest.mark.parametrize("pos,neg", _whole_numbers(), ids=lambda v: f"{type(v).__name__}:{v}")
def test_whole_number_labels_in_memory_are_class_ids_as_in_a_file(tmp_path, pos, neg):
    """1.0, numpy/torch numbers and '1' are the ids a data file's 1 / 1.0 / "1" would be: not class names '1.0'."""
    from distill_nb.rundata import align_labels

    task = TaskData.from_lists(["good", "bad"] * 3, [pos, neg] * 3, ["fine", "poor"], [pos, neg])
    assert task.label_names == ["0", "1"] and not task.named_labels and task.label_values == (0, 1)
    assert task.train.labels == [1, 0] * 3 and task.eval.labels == [1, 0]
    assert all(type(y) is int for y in [*task.train.labels, *task.label_values])
    # ids stay ids: a teacher that names its classes gives its names (string labels '1.0' would be refused)
    assert align_labels(task, ["NEGATIVE", "POSITIVE"], "t").label_names == ["NEGATIVE", "POSITIVE"]
    _write_labels(tmp_path / "same", "jsonl", [1, 0] * 3)
    assert load_task(str(tmp_path / "same"), text_column="text").label_names == task.label_names


def test_boolean_labels_are_the_same_classes_in_memory_and_in_a_file(tmp_path):
    import numpy as np

    (tmp_path / "b").mkdir()
    for split in ("train", "validation"):
        (tmp_path / "b" / f"{split}.jsonl").write_text("".join(
            json.dumps({"text": t, "label": y}) + "\n" for t, y in [("a", True), ("b", False)] * 3))
    from_file = load_task(str(tmp_path / "b"), text_column="text")
    for yes, no in [(True, False), (np.True_, np.False_)]:
        memory = TaskData.from_lists(["a", "b"] * 3, [yes, no] * 3, ["c", "d"], [yes, no])
        assert (memory.label_names, memory.named_labels, memory.train.labels) == \
            (from_file.label_names, from_file.named_labels, from_file.train.labels) == (["false", "true"], True,
                                                                                         [1, 0] * 3)


NAN, INF = float("nan"), float("inf")
NOT_A_CLASS = [(0.5, "fraction", "0.5"), (-2.25, "fraction", "-2.25"), (1.000001, "fraction", "1.000001"),
               (NAN, "missing", None), (INF, "missing", None), (-INF, "missing", None)]


def _refusal(kind: str, value: str | None, place: str) -> list[str]:
    """What the message of a refused label must hold: where it is, the value (a fraction), and the fix."""
    if kind == "fraction":
        return [place, value, "a number with a fraction", "round or map"]
    return [place, "missing (empty cells, NaN or +/-Infinity)", "drop those examples or fill them in"]


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("bad,kind,shown", NOT_A_CLASS, ids=lambda v: str(v))
def test_a_label_that_names_no_class_is_refused_with_its_row_in_every_format(tmp_path, ext, bad, kind, shown):
    from conftest import clear_error

    labels = [1, 0, 1, 0, 1, 0, bad, 0, 1, 0]  # the 7th example
    _write_labels(tmp_path / ext, ext, labels)
    if ext in ("csv", "tsv") and kind == "fraction":
        shown = repr(str(bad))  # a CSV cell is text: the message shows it as written
    clear_error(lambda: load_task(str(tmp_path / ext), text_column="text"), ValueError,
                _refusal(kind, shown, f"row 7 of {'data file ' if kind == 'fraction' else ''}")
                + [f"train.{ext}"])


@pytest.mark.parametrize("cell", ["0.5", "2.50", "-0.1", ".5", "1e-1", "nan", "-Infinity", "inf", ""])
def test_a_csv_label_cell_that_names_no_class_is_refused_with_its_row(tmp_path, cell):
    from conftest import clear_error

    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(10))
                                        + f"odd,{cell}\n")
    (tmp_path / "validation.csv").write_text("text,label\na,0\nb,1\n")
    kind = "missing" if cell in ("nan", "-Infinity", "inf", "") else "fraction"
    clear_error(lambda: load_task(str(tmp_path), text_column="text"), ValueError,
                _refusal(kind, repr(cell), "row 11 of") + ["train.csv"])


@pytest.mark.parametrize("split", ["train", "eval"])
@pytest.mark.parametrize("bad,kind,shown", [*NOT_A_CLASS, (None, "missing", None), ("2.5", "fraction", "'2.5'"),
                                            ("nan", "missing", None)], ids=lambda v: str(v))
def test_an_in_memory_label_that_names_no_class_is_refused_with_its_position(split, bad, kind, shown):
    import numpy as np
    from conftest import clear_error

    for box in (lambda v: v, lambda v: np.float64(v) if isinstance(v, float) else v):
        train, evals = [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0]
        (train if split == "train" else evals)[2] = box(bad)
        clear_error(lambda t=train, e=evals: TaskData.from_lists(["a", "b", "c", "d"], t, ["e", "f", "g"], e),
                    ValueError, _refusal(kind, shown, f"{split}_labels[2]"))


# ---- text pairs keep the tokenizer's segment ids; single texts are encoded exactly as before -------------------
def _tokenizers(folder):
    """A BERT tokenizer (gives token_type_ids) and the same vocabulary without them (DistilBERT/RoBERTa-style)."""
    from conftest import write_vocab
    from transformers import BertTokenizerFast

    vocab = str(write_vocab(folder))
    return (BertTokenizerFast(vocab=vocab, do_lower_case=True),
            BertTokenizerFast(vocab=vocab, do_lower_case=True, model_input_names=["input_ids", "attention_mask"]))


def test_a_text_pair_keeps_the_tokenizers_segment_ids_and_collate_pads_them(tmp_path):
    from distill_nb.data import PairIds, encode
    from distill_nb.tables import PAIR_SEP

    bert, _ = _tokenizers(tmp_path)
    first, second = ["the movie was good", "bad", "a"], ["it is fun", "the plot was very very dull", ""]
    encoded = encode(bert, [a + PAIR_SEP + b for a, b in zip(first, second)], 32)
    direct = bert(first, second, truncation=True, max_length=32)
    assert all(isinstance(e, PairIds) for e in encoded)
    assert [list(e) for e in encoded] == direct["input_ids"]
    assert [e.token_type_ids for e in encoded] == direct["token_type_ids"] and any(1 in t for t in direct["token_type_ids"])
    batch = collate(encoded, [1, 0, 2], bert.pad_token_id, token_types=True)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    for row, i in enumerate([1, 0, 2]):
        n = len(encoded[i])
        assert batch["token_type_ids"][row, :n].tolist() == direct["token_type_ids"][i]
        assert batch["token_type_ids"][row, n:].eq(0).all()  # padding: segment 0, as the tokenizer pads
    assert set(collate(encoded, [0, 1], bert.pad_token_id)) == {"input_ids", "attention_mask"}  # model takes none


def test_single_texts_and_tokenizers_without_segment_ids_give_plain_ids(tmp_path):
    from distill_nb.data import encode
    from distill_nb.tables import PAIR_SEP

    bert, plain = _tokenizers(tmp_path)
    single = encode(bert, ["the movie was good", "bad"], 32)
    assert all(type(e) is list for e in single)  # exactly as before: no segment ids (they would all be 0)
    assert set(collate(single, [0, 1], bert.pad_token_id, token_types=True)) == {"input_ids", "attention_mask"}
    pairs = encode(plain, ["the movie" + PAIR_SEP + "was good", "bad" + PAIR_SEP + "fun"], 32)
    assert all(type(e) is list for e in pairs)
    assert set(collate(pairs, [0, 1], plain.pad_token_id, token_types=True)) == {"input_ids", "attention_mask"}


# ---- whether a text is a pair follows text_pair (two columns), never what the text holds ------------------------
RS = "\x1e"  # the character of tables.PAIR_SEP


def _marked_folder(folder, columns):
    """train/validation .jsonl whose texts hold the pair marker in the middle, at the start and end, repeated."""
    marked = [f"the movie {RS} was good", f" {RS} bad", f"fun {RS} ", f"a {RS} b {RS} c", "plain text"]
    folder.mkdir()
    for split, shift in [("train", 0), ("validation", 2)]:
        rows = []
        for i in range(10):
            cells = {c: marked[(i + shift + k) % len(marked)] for k, c in enumerate(columns)}
            rows.append(json.dumps({**cells, "label": i % 2}))
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return folder


@pytest.mark.parametrize("columns", [["text"], ["title", "body"]])
def test_single_texts_with_the_marker_are_encoded_as_single_texts_in_train_and_eval(tmp_path, columns):
    from distill_nb.data import PairIds, encode
    from distill_nb.tables import split_pair

    bert, _ = _tokenizers(tmp_path)
    task = load_task(str(_marked_folder(tmp_path / "d", columns)), text_column=columns)
    for split in (task.train, task.eval):
        assert not any(RS in t or split_pair(t) for t in split.texts)
        encoded = encode(bert, split.texts, 32)
        assert not any(isinstance(e, PairIds) for e in encoded)
        assert encoded == bert(split.texts, truncation=True, max_length=32)["input_ids"]
        assert all(e.count(bert.sep_token_id) == 1 for e in encoded)  # [CLS] text [SEP]: never a second [SEP]


def test_pairs_with_the_marker_in_either_column_split_at_the_column_boundary(tmp_path):
    from distill_nb.data import PairIds, encode
    from distill_nb.tables import split_pair

    bert, _ = _tokenizers(tmp_path)
    folder = _marked_folder(tmp_path / "d", ["premise", "hypothesis"])
    task = load_task(str(folder), text_column=["premise", "hypothesis"], text_pair=True)
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    expected = [(r["premise"].replace(RS, ""), r["hypothesis"].replace(RS, "")) for r in rows]
    assert [split_pair(t) for t in task.train.texts] == expected
    assert all(split_pair(t) for t in task.eval.texts)
    encoded = encode(bert, task.train.texts, 32)
    direct = bert([a for a, _ in expected], [b for _, b in expected], truncation=True, max_length=32)
    assert all(isinstance(e, PairIds) for e in encoded) and [list(e) for e in encoded] == direct["input_ids"]


def test_a_pair_among_single_texts_leaves_theirs_alone(tmp_path):
    from distill_nb.data import PairIds, encode
    from distill_nb.tables import PAIR_SEP

    bert, _ = _tokenizers(tmp_path)
    singles = ["the movie was good", "bad film"]
    mixed = encode(bert, [singles[0], "a" + PAIR_SEP + "b", singles[1]], 32)
    assert [mixed[0], mixed[2]] == encode(bert, singles, 32) == bert(singles)["input_ids"]
    assert type(mixed[0]) is list and isinstance(mixed[1], PairIds)
    assert list(mixed[1]) == bert("a", "b")["input_ids"]
    assert encode(bert, [], 32) == []


def test_in_memory_pairs_are_tuples_and_a_stray_marker_is_refused(tmp_path):
    from distill_nb.tables import PAIR_SEP, split_pair

    pairs = [("a man sleeps", "a person rests"), (f"a {RS} dog", "a cat")] * 3
    task = TaskData.from_lists(pairs, [1, 0] * 3, [("x", "y")], [1])
    assert [split_pair(t) for t in task.train.texts] == [("a man sleeps", "a person rests"), ("a  dog", "a cat")] * 3
    again = TaskData.from_lists(task.train.texts, task.train.labels, task.eval.texts, task.eval.labels)
    assert again.train.texts == task.train.texts  # the texts of a loaded pair task stay pairs
    with pytest.raises(ValueError, match=r"train text 1 \('b\\x1ec'\) holds the control character U\+001E"):
        TaskData.from_lists(["a", f"b{RS}c", "d"], [0, 1, 0], ["e"], [1])
    with pytest.raises(ValueError, match="holds the control character U"):  # a second marker: no pair of two texts
        TaskData.from_lists([f"a{PAIR_SEP}b{PAIR_SEP}c", f"d{PAIR_SEP}e"], [0, 1], [f"f{PAIR_SEP}g"], [1])
    with pytest.raises(ValueError, match=r"train text 1 \('b \\x1e c'\) is a text pair .* but train text 0 is a "
                                         "single text"):  # one single text holding " \x1e " among single texts
        TaskData.from_lists(["a", f"b {RS} c", "d"], [0, 1, 0], ["e"], [1])
    with pytest.raises(ValueError, match="train text 0 .* is a text pair .* but eval text 0 is a single text"):
        TaskData.from_lists([("a", "b"), ("c", "d")], [0, 1], ["e"], [1])
    with pytest.raises(ValueError, match=r"train_texts\[1\] is a tuple of 3 items"):
        TaskData.from_lists([("a", "b"), ("c", "d", "e")], [0, 1], [("e", "f")], [1])


def test_a_pair_task_round_trips_through_jsonl_as_two_columns(tmp_path):
    from distill_nb.tables import split_pair

    task = TaskData.from_lists([("a man", "a person"), ("a dog", "")] * 3, ["yes", "no"] * 3, [("x", "y")], ["yes"])
    folder = task.write_jsonl(tmp_path / "d")
    assert set(json.loads((folder / "train.jsonl").read_text().splitlines()[0])) == {"text_a", "text_b", "label"}
    back = load_task(str(folder), text_column=["text_a", "text_b"], text_pair=True, label_names=task.label_names)
    assert back.train.texts == task.train.texts and back.train.labels == task.train.labels
    assert split_pair(back.eval.texts[0]) == ("x", "y")
    with pytest.raises(KeyError, match="text_a"):  # read as single texts: refused, not the first text alone
        load_task(str(folder), text_column="text")
