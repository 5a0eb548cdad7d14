"""One run, one set of numbers and names: training, compare_run, run_examples and the saved student agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_tiny_bert

from distill_nb.config import DistillConfig

# eval: 6 pos, 2 neg, 2 neutral -- a teacher that always answers "pos" scores 0.6 with the right mapping and
# 0.2 with the alphabetical one (neg=0), so a consumer that forgets the run's mapping shows another number
TRAIN = [("the movie was good", "pos"), ("the movie was awful", "neg"), ("it was a movie", "neutral")] * 4
EVAL = [("good fun", "pos")] * 6 + [("awful mess", "neg")] * 2 + [("a film", "neutral")] * 2


def _always_first_class_teacher(folder: Path, id2label: dict[int, str]) -> Path:
    """A tiny BERT classifier whose classifier bias makes it answer id 0 whatever the text."""
    import torch
    from transformers import BertForSequenceClassification

    make_tiny_bert(folder, labels=len(id2label))
    model = BertForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([5.0] + [0.0] * (len(id2label) - 1)))
    model.config.id2label, model.config.label2id = id2label, {n: i for i, n in id2label.items()}
    model.save_pretrained(folder)
    return folder


def _write(folder: Path, name: str, pairs: list[tuple[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in pairs))


def test_named_non_alphabetical_teacher_and_string_labels_agree_everywhere(tmp_path):
    from distill_nb.report import compare_run
    from distill_nb.rundata import run_task
    from distill_nb.train import train
    from distill_nb.widgets.attribution import run_examples

    teacher = _always_first_class_teacher(tmp_path / "teacher", {0: "pos", 1: "neg", 2: "neutral"})
    data = tmp_path / "data"
    _write(data, "train.csv", TRAIN)
    _write(data, "validation.csv", EVAL)
    config = DistillConfig(teacher=str(teacher), dataset=str(data), text_column="text", student_layers=2,
                           max_steps=2, batch_size=8, max_length=16, eval_every=10, checkpoint_every=10, device="cpu")
    run = tmp_path / "run"
    final = train(config, run, log=lambda m: None)
    assert final["teacher_accuracy"] == pytest.approx(0.6)  # training maps labels by the teacher's names

    report = compare_run(run, repeats=1)
    assert report.rows[0].accuracy == pytest.approx(final["teacher_accuracy"])
    assert report.rows[1].accuracy == pytest.approx(final["accuracy"])

    texts, labels, names = run_examples(run, 10)
    assert names == ["pos", "neg", "neutral"]
    assert all(names[y] == dict(EVAL)[t] for t, y in zip(texts, labels))
    assert run_task(run).label_names == names
    from distill_nb.widgets.comparison import Comparison
    from distill_nb.widgets.errors import ErrorAnalysis

    panel = Comparison(str(run), repeats=1)
    assert panel.measure().rows[0].accuracy == pytest.approx(0.6) and panel.error == ""
    errors = ErrorAnalysis(None, n_examples=10)
    errors.set_run(str(run))
    assert errors.label_names == names and [o[0] for o in errors.label_filter.options][1:] == names
    saved = json.loads((run / "student" / "config.json").read_text())["id2label"]
    assert saved == {"0": "pos", "1": "neg", "2": "neutral"}


def test_label_names_for_integer_classes_reach_the_student_and_status_states_the_hold_out(tmp_path, tiny_teacher):
    from distill_nb.report import compare_run
    from distill_nb.runs import read_status
    from distill_nb.train import train
    from distill_nb.widgets.attribution import run_examples

    path = tmp_path / "all.csv"  # one file, labels 1 and 5: two classes, held-out eval
    path.write_text("text,label\n" + "the movie was good,5\nthe movie was awful,1\n" * 12)
    config = DistillConfig(teacher=str(tiny_teacher), dataset=str(path), text_column="text", student_layers=2,
                           label_names=["bad", "good"], max_steps=2, batch_size=8, max_length=16, eval_every=10,
                           checkpoint_every=10, device="cpu")
    run = tmp_path / "run"
    final = train(config, run, log=lambda m: None)
    status = read_status(run)
    assert "a random 10% of all.csv held out (2 of 24 rows, seed 0)" in status["data_note"], status
    from distill_nb.runs import Run
    from distill_nb.widgets.monitor import RunMonitor

    monitor = RunMonitor(Run(run), autostart=False)
    monitor.poll()
    assert "held out" in monitor.header.value
    saved = json.loads((run / "student" / "config.json").read_text())["id2label"]
    assert saved == {"0": "bad", "1": "good"}
    texts, labels, names = run_examples(run, 10)
    assert names == ["bad", "good"] and all((y == 1) == ("good" in t) for t, y in zip(texts, labels))
    assert compare_run(run, repeats=1).rows[1].accuracy == pytest.approx(final["accuracy"])
