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
