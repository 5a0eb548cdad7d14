"""Prepared teachers: plateau stopping, the cache key (data and recipe, not run settings), listing and removal."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill_nb.data import TaskData
from distill_nb.teachers import (
    accuracy_noise,
    prepare_teacher,
    remove_teacher,
    student_beats_teacher,
    teacher_meta,
    teachers,
)

POS = ["good", "great", "fun", "loved", "wonderful"]
NEG = ["bad", "awful", "boring", "hated", "dull"]


@pytest.fixture()
def bare(tmp_path, monkeypatch):
    """A tiny bare BERT encoder (no classification head) and a private cache."""
    from conftest import make_tiny_bert
    from transformers import BertModel

    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path / "cache"))
    folder = make_tiny_bert(tmp_path / "bare")
    BertModel.from_pretrained(folder).save_pretrained(folder)
    return str(folder)


def toy(n: int = 60, flip: bool = False) -> TaskData:
    texts = [f"the movie was {(POS if i % 2 else NEG)[i % 5]}" for i in range(n)]
    labels = [(i % 2) ^ int(flip) for i in range(n)]
    return TaskData.from_lists(texts, labels, texts[:10], labels[:10], ["negative", "positive"])


def quiet(*_):
    pass


def test_stops_at_a_plateau_keeps_the_best_and_records_it(bare):
    path = prepare_teacher(bare, toy(), max_steps=400, log=quiet, recipe={"eval_every": 2, "patience": 2})
    meta = teacher_meta(path)
    assert meta["stopped_by"] == "plateau" and meta["steps"] < 400, meta
    assert meta["best_step"] <= meta["steps"] - 2 * 2  # two evaluations without improvement after the best
    assert 0 <= meta["dev_accuracy"] <= 1 and meta["dev_examples"] == 10 and meta["seconds"] > 0
    assert meta["precision"] == "fp32"


def test_cache_key_is_the_data_and_recipe_not_the_run(bare):
    logs = []
    first = prepare_teacher(bare, toy(), max_steps=3, log=quiet)
    again = prepare_teacher(bare, toy(), max_steps=3, log=logs.append)  # same data, any run settings
    assert again == first and any("found in the cache" in m for m in logs)
    other_labels = prepare_teacher(bare, toy(flip=True), max_steps=3, log=quiet)  # other contents/column
    other_recipe = prepare_teacher(bare, toy(), max_steps=3, log=quiet, recipe={"learning_rate": 1e-4})
    assert len({first, other_labels, other_recipe}) == 3
    # a teacher stopped by a smaller cap is prepared again when more is allowed; a plateau would be reused
    logs.clear()
    bigger = prepare_teacher(bare, toy(), max_steps=5, log=logs.append)
    assert bigger == first and teacher_meta(bigger)["steps"] == 5 and not any("found" in m for m in logs)


def test_teachers_are_listed_readably_and_removable(bare, tmp_path):
    path = prepare_teacher(bare, toy(), max_steps=3, log=quiet)
    (listed,) = teachers()
    assert listed.path == path and listed.task == "in-memory-lists" and listed.steps == 3
    assert f"dev {listed.dev_accuracy:.3f}" in listed.label and "bare" in listed.label
    with pytest.raises(ValueError, match="not a prepared teacher"):
        remove_teacher(tmp_path / "bare")  # never deletes anything outside the cache
    with pytest.raises(FileNotFoundError, match="no prepared teacher"):
        remove_teacher("nothing-here")
    remove_teacher(listed)
    assert teachers() == [] and not Path(path).exists()


def test_student_above_teacher_beyond_noise_is_flagged():
    # the case: a student 4 points above its teacher on 1,000 texts
    warning = student_beats_teacher(0.893, 0.852, 1000)
    assert warning and "undertrained" in warning and "teacher_prep_steps" in warning
    assert student_beats_teacher(0.855, 0.852, 1000) is None  # within noise
    assert student_beats_teacher(0.80, 0.85, 1000) is None  # below the teacher
    assert student_beats_teacher(0.9, 0.85, 20) is None  # 20 texts cannot tell
    assert accuracy_noise(0.5, 0.5, 100) == pytest.approx(2 * (0.5 / 100) ** 0.5)


def test_teacher_tab_lists_refreshes_and_removes_prepared_teachers(bare):
    from distill_nb.widgets.teacher import TeacherPicker

    picker = TeacherPicker("minilm-l6") if _has_minilm() else TeacherPicker(bare)
    assert picker.remove_button.disabled  # nothing prepared is selected
    path = prepare_teacher(bare, toy(), max_steps=3, log=quiet)  # e.g. by a run, after the tab was built
    assert str(path) not in [v for _, v in picker.dropdown.options]
    picker.refresh()
    label = {v: k for k, v in picker.dropdown.options}[str(path)]
    assert label.startswith("prepared: in-memory-lists · ") and " dev " in label and "1 prepared teacher" in \
        picker.cache_note.value
    picker.dropdown.value = str(path)
    assert not picker.remove_button.disabled and "dev accuracy" in picker.summary.value
    picker.remove_selected()
    assert not picker.error, picker.error
    assert str(path) not in [v for _, v in picker.dropdown.options] and not Path(path).exists()


def _has_minilm() -> bool:
    try:
        from distill_nb.families import packaged_folder

        return packaged_folder("minilm-l6") is not None
    except FileNotFoundError:
        return False


def test_cli_lists_and_removes_prepared_teachers(bare, capsys):
    from distill_nb.cli import main as cli

    path = prepare_teacher(bare, toy(), max_steps=3, log=quiet)
    assert cli(["teachers"]) == 0
    out = capsys.readouterr().out
    assert "1 prepared teacher(s)" in out and path.name in out and "in-memory-lists · " in out
    assert cli(["teachers", "--remove", "nope"]) == 2 and "no prepared teacher 'nope'" in capsys.readouterr().err
    assert cli(["teachers", "--remove", path.name]) == 0 and not path.exists()
