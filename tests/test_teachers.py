"""Prepared teachers: plateau stopping, the cache key (data and recipe, not run settings), listing and removal."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill_nb.data import TaskData
from distill_nb.teacher_cache import (
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
    assert accuracy_noise(0.5, 0.5, 100) == pytest.approx(2 * (0.5 / 102) ** 0.5)  # Agresti-Caffo
    for n in (1, 2, 3, 29):  # too few texts: never "beyond noise", even at the extremes
        assert student_beats_teacher(1.0, 0.0, n) is None and student_beats_teacher(1.0, 2 / 3, n) is None
    assert accuracy_noise(1.0, 1.0, 3) > 0.3 and accuracy_noise(1.0, 0.9, 200) > 0.02  # no collapse at 0 or 1
    assert student_beats_teacher(1.0, 0.9, 200) and student_beats_teacher(1.0, 0.0, 30)


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


@pytest.mark.parametrize("how", ["deep", "fifo", "link-out"])
def test_teacher_tab_and_app_show_an_unreadable_teacher_with_why(tmp_path, monkeypatch, how):
    import os

    import distill_nb
    from distill_nb.teacher_cache import teachers_dir
    from distill_nb.widgets.teacher import TeacherPicker, teacher_options

    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DISTILL_NB_RUNS", str(tmp_path / "runs"))
    for name in ("good-bert-aaaa", "sst2-bad-1111"):
        (teachers_dir() / name).mkdir(parents=True)
        (teachers_dir() / name / "config.json").write_text("{}")
    (teachers_dir() / "good-bert-aaaa" / "teacher.json").write_text('{"task": "good", "dev_accuracy": 0.9}')
    meta = teachers_dir() / "sst2-bad-1111" / "teacher.json"
    if how == "deep":
        meta.write_text("[" * 100_000 + "]" * 100_000)
    elif how == "fifo":
        os.mkfifo(meta)
    else:
        (tmp_path / "secret.json").write_text('{"task": "SECRET"}')
        meta.symlink_to(tmp_path / "secret.json")
    labels = [label for label, _ in teacher_options() if label.startswith("prepared: ")]
    assert len(labels) == 2 and any(" · unreadable: teacher.json " in lab for lab in labels), labels
    assert not any("SECRET" in lab for lab in labels)
    picker = TeacherPicker(str(teachers_dir() / "good-bert-aaaa"))
    assert "2 prepared teachers" in picker.cache_note.value
    assert "Teacher" in repr(distill_nb.app())


@pytest.mark.parametrize("target", ["outside", "dangling"])
def test_a_link_where_a_teacher_belongs_is_never_used_and_is_replaced(bare, tmp_path, target):
    import os

    from distill_nb.teacher_cache import RECIPE, _cache_entry, cached_teacher

    out, _ = _cache_entry(bare, toy(), dict(RECIPE), False)
    outside = tmp_path / "outside"
    if target == "outside":
        outside.mkdir()
        (outside / "config.json").write_text("{}")
        (outside / "teacher.json").write_text('{"stopped_by": "plateau", "task": "OUTSIDE"}')
    out.parent.mkdir(parents=True)
    out.symlink_to(outside)
    assert cached_teacher(bare, toy()) is None and teachers() == []
    logs = []
    assert prepare_teacher(bare, toy(), max_steps=3, log=logs.append) == out
    assert not any("found in the cache" in m for m in logs)
    assert not out.is_symlink() and teacher_meta(out)["steps"] == 3 and cached_teacher(bare, toy()) == out
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".removing-")] == []
    assert target == "dangling" or sorted(os.listdir(outside)) == ["config.json", "teacher.json"]


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


def test_package_teachers_is_callable_every_time(tmp_path, monkeypatch):
    """``distill_nb.teachers()`` stays the function after its module is imported (no submodule of that name)."""
    import importlib

    import distill_nb

    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path / "cache"))
    importlib.import_module("distill_nb.teacher_cache")
    assert distill_nb.teachers() == [] and distill_nb.teachers() == []
    for name in distill_nb.__all__:  # no public name is also a submodule that an import would put in its place
        assert importlib.util.find_spec(f"distill_nb.{name}") is None, name


BAD_META = {"steps-inf": '{"steps": 1e400}', "steps-str": '{"steps": "ten"}', "steps-list": '{"steps": [1]}',
            "steps-neg": '{"steps": -3}', "created-str": '{"created_at": "yesterday"}',
            "created-huge": '{"created_at": 1e300}', "created-neg": '{"created_at": -1e18}',
            "seconds-str": '{"seconds": "5"}', "dev-str": '{"dev_accuracy": "0.9"}', "dev-big": '{"dev_accuracy": 7}',
            "dev-bool": '{"dev_accuracy": true}', "task-obj": '{"task": {"a": 1}}', "base-num": '{"base": 3}',
            "stopped-list": '{"stopped_by": ["plateau"]}', "bad-json": "{x", "list": "[1, 2]", "nan": '{"steps": NaN}',
            "binary": b"\xff\xfe\x00garbage", "empty": "", "meta-is-dir": None,
            "deep-list": "[" * 100_000 + "]" * 100_000, "deep-dict": '{"a":' * 50_000 + "1" + "}" * 50_000}


@pytest.mark.parametrize("case", sorted(BAD_META))
def test_one_damaged_teacher_json_never_hides_the_others(tmp_path, monkeypatch, capsys, case):
    from distill_nb.cli import main as cli
    from distill_nb.teacher_cache import teachers_dir

    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path / "cache"))
    good = teachers_dir() / "good-bert-aaaa"
    good.mkdir(parents=True)
    (good / "config.json").write_text("{}")
    (good / "teacher.json").write_text('{"task": "good", "steps": 10, "dev_accuracy": 0.9, "created_at": 1.0}')
    bad = teachers_dir() / f"{case}-x-1"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    meta = BAD_META[case]
    if meta is None:
        (bad / "teacher.json").mkdir()
    elif isinstance(meta, bytes):
        (bad / "teacher.json").write_bytes(meta)
    else:
        (bad / "teacher.json").write_text(meta)
    listed = {t.path.name: t for t in teachers()}
    assert set(listed) == {good.name, bad.name}
    assert listed[good.name].label.startswith("good · ? · dev 0.900 · 10 steps")
    entry = listed[bad.name]
    assert entry.label and 0 <= entry.steps < 1e12 and entry.seconds >= 0
    assert entry.dev_accuracy is None or 0 <= entry.dev_accuracy <= 1
    assert isinstance(entry.task, str) and isinstance(entry.base, str) and isinstance(entry.stopped_by, str)
    assert cli(["teachers"]) == 0 and good.name in capsys.readouterr().out
    assert cli(["teachers", "--remove", "typo"]) == 2 and "no prepared teacher 'typo'" in capsys.readouterr().err


@pytest.mark.parametrize("pair", [(float("nan"), float("nan")), (float("nan"), 0.5), (0.9, float("nan")),
                                  (float("inf"), 0.5), (None, 0.5), (0.9, None)])
def test_nothing_measured_makes_no_claim_about_the_teacher(pair):
    assert student_beats_teacher(*pair, 1000) is None


# --- the cache under concurrency and damage -----------------------------------------------------------------------
def test_two_preparers_of_one_teacher_take_turns(bare):
    import threading

    from distill_nb.teacher_cache import teachers_dir

    results, errors = {}, []

    def prepare(cap):
        try:
            results[cap] = prepare_teacher(bare, toy(), max_steps=cap, log=quiet)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=prepare, args=(cap,)) for cap in (3, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and results[3] == results[6]
    assert teacher_meta(results[6])["steps"] == 6  # the larger cap wins, whichever ran first
    assert sorted(p.name for p in teachers_dir().iterdir() if not p.name.endswith(".lock")) == [results[6].name]


def test_an_encoder_resaved_with_other_weights_is_another_base(bare, tmp_path):
    import torch
    from transformers import BertModel

    from distill_nb.teacher_cache import cached_teacher

    first = prepare_teacher(bare, toy(), max_steps=2, log=quiet)
    assert cached_teacher(bare, toy()) == first
    model = BertModel.from_pretrained(bare)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.add_(0.01)  # same shape, same file size
    model.save_pretrained(bare)
    assert cached_teacher(bare, toy()) is None
    twin = tmp_path / "elsewhere" / Path(bare).name  # another folder of the same name and shape
    BertModel(model.config).save_pretrained(twin)
    import shutil

    for f in Path(bare).glob("*.txt"):
        shutil.copy(f, twin)
    for f in Path(bare).glob("tokenizer*"):
        shutil.copy(f, twin)
    assert cached_teacher(str(twin), toy()) is None


def test_leftovers_of_an_interrupted_prepare_are_swept(bare):
    from distill_nb.teacher_cache import RECIPE, _cache_entry

    out, _ = _cache_entry(bare, toy(), RECIPE, False)
    out.parent.mkdir(parents=True)
    for junk in (f".tmp-{out.name}-1-abcd", f".removing-{out.name}-1-ef01"):
        (out.parent / junk).mkdir()
        (out.parent / junk / "model.safetensors").write_bytes(b"x" * 100)
    prepare_teacher(bare, toy(), max_steps=2, log=quiet)
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.endswith(".lock")) == [out.name]


def test_a_teacher_being_loaded_is_not_removed_under_it(bare):
    from distill_nb.owner import RunBusy
    from distill_nb.teacher_cache import _key_lock

    path = prepare_teacher(bare, toy(), max_steps=2, log=quiet)
    # what load_prepared holds while a run loads it
    with _key_lock(path, shared=True), pytest.raises(RunBusy, match="being prepared or loaded"):
        remove_teacher(path)
    remove_teacher(path)
    assert not path.exists()


@pytest.mark.parametrize("damage", ["truncated", "removed"])
def test_a_damaged_cached_teacher_is_prepared_again_by_the_run(bare, tmp_path, damage):
    from distill_nb import DistillConfig
    from distill_nb.rundir import read_status
    from distill_nb.train import train

    data = tmp_path / "data"
    data.mkdir()
    rows = "".join(f"the movie was {(POS if i % 2 else NEG)[i % 5]},{i % 2}\n" for i in range(40))
    for split in ("train", "validation"):
        (data / f"{split}.csv").write_text("text,label\n" + rows)
    config = DistillConfig(teacher=bare, dataset=str(data), text_column="text", teacher_prep_steps=2,
                           student_layers=2, max_steps=2, batch_size=8, reason_probe=0)
    train(config, tmp_path / "run1", log=quiet)
    cached = Path(read_status(tmp_path / "run1")["teacher_path"])
    if damage == "truncated":
        weights = cached / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:200])
    else:
        (cached / "model.safetensors").unlink()  # teacher.json says all is well
    logs: list[str] = []
    train(config, tmp_path / "run2", log=logs.append)
    assert read_status(tmp_path / "run2")["state"] == "completed"
    assert any("cannot be loaded" in m and "Preparing it again" in m for m in logs), logs
    assert (cached / "model.safetensors").stat().st_size > 1000
    (cached / "teacher.json").unlink()  # a folder that looks cached but says nothing about itself
    logs.clear()
    train(config, tmp_path / "run3", log=logs.append)
    assert any("has no readable teacher.json; preparing it again" in m for m in logs), logs


def test_a_read_only_cache_can_still_be_loaded_from(bare, monkeypatch):
    from distill_nb import teacher_cache

    path = prepare_teacher(bare, toy(), max_steps=2, log=quiet)

    def read_only(_):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(teacher_cache, "open_lock_file", read_only)
    model, _, meta = teacher_cache.load_prepared(path)
    assert model is not None and meta["steps"] == 2
    with pytest.raises(PermissionError):  # preparing there is refused, as writing would be
        prepare_teacher(bare, toy(), max_steps=3, log=quiet)


def test_pair_tasks_get_a_new_cache_key_and_single_texts_keep_theirs(tiny_teacher):
    """Teachers are fine-tuned on text pairs with their segment ids since 1 Dec 2026: a pair teacher cached
    before (every pair read as segment 0) must not be reused; a single-text task's identity gains no flag."""
    import hashlib
    import json

    from distill_nb.tables import PAIR_SEP
    from distill_nb.teacher_cache import RECIPE, _cache_entry, base_key, data_key

    def old_key(task):
        identity = {"base": base_key(str(tiny_teacher)), "data": data_key(task), "recipe": RECIPE}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]

    single = TaskData.from_lists(["good film", "bad film"], [1, 0], ["fine"], [1])
    pairs = TaskData.from_lists([f"a man{PAIR_SEP}a person", f"a dog{PAIR_SEP}a cat"], [1, 0],
                                [f"x{PAIR_SEP}y"], [1])
    assert _cache_entry(str(tiny_teacher), single, RECIPE, False)[0].name.endswith(old_key(single))
    folder, identity = _cache_entry(str(tiny_teacher), pairs, RECIPE, False)
    assert identity["pair_segments"] is True and not folder.name.endswith(old_key(pairs))


# ---- the data key: different training sets never share a teacher ----------------------------------------------
def _task(texts, labels, names=("0", "1")):
    return TaskData.from_lists(texts, labels, texts[:1], labels[:1], list(names))


@pytest.mark.parametrize("a,b", [  # the old key (label TAB text NEWLINE per example) was equal for the first four
    ((["the film\n1\tis good", "dull"], [0, 1]), (["the film", "is good", "dull"], [0, 1, 1])),  # the repro
    ((["a\n1\tb\tc", "d"], [0, 1]), (["a", "b\tc", "d"], [0, 1, 1])),  # a tab inside a text
    ((["a\n0\tb", "c"], [1, 0]), (["a", "b", "c"], [1, 0, 0])),  # a newline and a label inside a text
    ((["a\n1\t", "b", "c"], [0, 0, 1]), (["a", "", "b", "c"], [0, 1, 0, 1])),  # an empty text
    ((["a", '"b"', "c"], [0, 1, 1]), (['a", "b', "c"], [0, 1])),  # quotes and commas
    ((["a\\", "b"], [0, 1]), (["a\\\n1\tb", "c"], [0, 1])),  # a backslash before the boundary
    (([("a", "b"), ("c", "d")], [0, 1]), (["a\nb", "c\nd"], [0, 1])),  # a pair vs its columns joined
    (([("a", "b c"), ("d", "e")], [0, 1]), ([("a b", "c"), ("d", "e")], [0, 1])),  # the same words, split elsewhere
    (([("a", ""), ("b", "c")], [0, 1]), ([("", "a"), ("b", "c")], [0, 1])),  # an empty first or second text
])
def test_different_training_sets_get_different_data_keys(a, b):
    from distill_nb.teacher_cache import data_key

    first, second = _task(*a), _task(*b)
    assert first.train.texts != second.train.texts or first.train.labels != second.train.labels
    assert data_key(first) != data_key(second)


def test_the_same_data_gets_the_same_key_and_label_names_count():
    from distill_nb.teacher_cache import data_key

    texts, labels = ["a\nb", "c\td", ""] * 2, [0, 1, 0] * 2
    assert data_key(_task(texts, labels)) == data_key(_task(list(texts), list(labels)))
    assert data_key(_task(texts, labels)) != data_key(_task(texts, labels, ("neg", "pos")))
    pairs = [("a", "b"), ("c", "")] * 2
    assert data_key(_task(pairs, [0, 1] * 2)) == data_key(_task(list(pairs), [0, 1] * 2))
