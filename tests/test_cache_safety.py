"""Damaged, odd and linked entries of the prepared-teacher cache and of a run's student: listed or refused with a
clear message, never a crash, never followed out of their folder, never deleting another entry."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from conftest import clear_error

from distill_nb.safeio import number
from distill_nb.teacher_cache import (
    remove_teacher,
    teacher_meta,
    teachers,
    teachers_dir,
)


@pytest.fixture(autouse=True)
def no_hang():
    """A FIFO read that blocks fails the test instead of hanging the suite."""
    def hung(*_):
        raise TimeoutError("the test blocked for 120 s (a FIFO opened for reading?)")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


GOOD_META = {"task": "good", "base": "bert", "steps": 10, "dev_accuracy": 0.9, "created_at": 1.0,
             "stopped_by": "plateau"}


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """A private cache holding one good teacher (``good-bert-aaaa``); returns the teachers folder."""
    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path / "cache"))
    entry(teachers_dir() / "good-bert-aaaa", GOOD_META)
    return teachers_dir()


def entry(folder: Path, meta: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if meta is not None:
        (folder / "teacher.json").write_text(json.dumps(meta))
    return folder


def damage(path: Path, how: str, outside: Path, inside: Path) -> None:
    """Make the file ``path`` damaged in one way (``outside``/``inside``: real files a link may point to)."""
    if how == "folder":
        path.mkdir()
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "link-out":
        path.symlink_to(outside)
    elif how == "link-in":
        path.symlink_to(inside)
    elif how == "dangling":
        path.symlink_to(outside.parent / "nothing-there")
    elif how == "huge":
        path.write_text('{"pad": "' + "x" * (5 << 20) + '"}')
    else:
        path.write_bytes({"deep-list": b"[" * 100_000 + b"]" * 100_000,
                          "deep-dict": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                          "nested-65": b"[" * 65 + b"]" * 65, "garbage": b"\xff\xfe\x00garbage",
                          "truncated": json.dumps(GOOD_META).encode()[:20], "empty": b""}[how])


TEACHER_JSON_DAMAGE = ["deep-list", "deep-dict", "nested-65", "garbage", "truncated", "empty", "folder", "fifo",
                       "link-out", "link-in", "dangling", "huge"]


@pytest.mark.parametrize("how", TEACHER_JSON_DAMAGE)
def test_an_unreadable_teacher_json_is_listed_with_why_and_hides_nothing(cache, tmp_path, capsys, how):
    from distill_nb.cli import main as cli

    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"task": "SECRET-OUTSIDE", "base": "x", "steps": 99}))
    bad = entry(cache / "sst2-bad-1111")
    damage(bad / "teacher.json", how, secret, cache / "good-bert-aaaa" / "teacher.json")
    listed = {t.path.name: t for t in teachers()}
    assert set(listed) == {"good-bert-aaaa", "sst2-bad-1111"}
    assert listed["good-bert-aaaa"].problem is None and listed["good-bert-aaaa"].label.startswith("good · bert")
    bad_entry = listed["sst2-bad-1111"]
    assert bad_entry.problem and "teacher.json" in bad_entry.problem
    assert f"unreadable: {bad_entry.problem}" in bad_entry.label
    assert "SECRET" not in bad_entry.label and bad_entry.steps == 0 and bad_entry.meta == {}  # never followed
    assert teacher_meta(bad) is None
    assert cli(["teachers"]) == 0
    out = capsys.readouterr().out
    assert "2 prepared teacher(s)" in out and "good · bert" in out and bad_entry.problem in out


@pytest.mark.parametrize("how", ["folder", "fifo", "link-out", "link-in", "dangling"])
def test_a_config_json_that_is_not_a_regular_file_is_listed_unreadable_and_removable(cache, tmp_path, how):
    outside = entry(tmp_path / "outside-teacher")
    bad = cache / "sst2-cfg-2222"
    bad.mkdir()
    (bad / "teacher.json").write_text(json.dumps(GOOD_META))
    damage(bad / "config.json", how, outside / "config.json", cache / "good-bert-aaaa" / "config.json")
    listed = {t.path.name: t for t in teachers()}
    assert set(listed) == {"good-bert-aaaa", "sst2-cfg-2222"}
    assert "config.json is" in listed["sst2-cfg-2222"].problem
    from distill_nb.widgets.teacher import teacher_info  # the Teacher tab never loads it through the link

    clear_error(lambda: teacher_info(str(bad)), ValueError, ["'sst2-cfg-2222' cannot be used", "config.json is",
                                                             "Remove it"])
    assert remove_teacher("sst2-cfg-2222") == bad and not os.path.lexists(bad)
    assert (outside / "config.json").is_file() and (cache / "good-bert-aaaa" / "config.json").is_file()
    assert [t.path.name for t in teachers()] == ["good-bert-aaaa"]


@pytest.mark.parametrize("target", ["inside", "outside", "dangling", "loop"])
def test_a_teacher_folder_that_is_a_link_is_neither_listed_nor_followed_by_remove(cache, tmp_path, target):
    outside = entry(tmp_path / "outside-teacher", {"task": "OUTSIDE"})
    alias = cache / "sst2-alias-3333"
    alias.symlink_to({"inside": cache / "good-bert-aaaa", "outside": outside, "dangling": tmp_path / "nothing",
                      "loop": alias}[target])
    assert [t.path.name for t in teachers()] == ["good-bert-aaaa"]  # list and remove agree: no link entry
    for name in ("sst2-alias-3333", alias, str(alias)):
        clear_error(lambda n=name: remove_teacher(n), ValueError, ["'sst2-alias-3333'", "symbolic link"])
    assert os.path.islink(alias)  # the link itself stays: the user removes it
    assert (cache / "good-bert-aaaa" / "config.json").is_file() and (outside / "config.json").is_file()


def test_cached_teacher_never_takes_a_link_entry(cache, tmp_path, monkeypatch):
    import distill_nb.teacher_cache as tc

    outside = entry(tmp_path / "outside-teacher", {"task": "OUTSIDE"})
    link = cache / "sst2-x-4444"
    link.symlink_to(outside)
    monkeypatch.setattr(tc, "_cache_entry", lambda *a: (link, {}))
    assert tc.cached_teacher("x", None) is None
    monkeypatch.setattr(tc, "_cache_entry", lambda *a: (cache / "good-bert-aaaa", {}))
    assert tc.cached_teacher("x", None) == cache / "good-bert-aaaa"


@pytest.mark.parametrize("name, error, needles", [
    ("a\0b", ValueError, ["NUL"]), ("x" * 5000, ValueError, ["longer than a file name"]),
    ("..", ValueError, ["not a prepared teacher"]), (".", ValueError, ["not a prepared teacher"]),
    ("", ValueError, ["not a prepared teacher"]), ("/etc", ValueError, ["'/etc' is not a prepared teacher"]),
    ("../..", ValueError, ["not a prepared teacher"]), ("good-bert-aaaa/..", ValueError, ["not a prepared"]),
    ("good-bert-aaaa/config.json", ValueError, ["not a prepared teacher"]),
    (".good-bert-aaaa.lock", FileNotFoundError, ["no prepared teacher"]),
    ("nothing-here", FileNotFoundError, ["no prepared teacher 'nothing-here'", "good-bert-aaaa"]),
    (5, TypeError, ["int 5"]), (b"good-bert-aaaa", TypeError, ["bytes"]), (None, TypeError, ["NoneType"]),
])
def test_odd_names_get_a_clear_error_and_delete_nothing(cache, name, error, needles):
    clear_error(lambda: remove_teacher(name), error, needles)
    assert (cache / "good-bert-aaaa" / "config.json").is_file()


def test_hidden_and_non_folder_entries_are_not_removable(cache):
    entry(cache / ".tmp-good-bert-aaaa-1-ab")  # an interrupted prepare: not listed, so not removable by name
    (cache / "sst2-file-5555").write_text("x")
    os.mkfifo(cache / "sst2-fifo-6666")
    assert [t.path.name for t in teachers()] == ["good-bert-aaaa"]
    clear_error(lambda: remove_teacher(".tmp-good-bert-aaaa-1-ab"), FileNotFoundError, ["no prepared teacher"])
    clear_error(lambda: remove_teacher("sst2-file-5555"), FileNotFoundError, ["a regular file"])
    clear_error(lambda: remove_teacher("sst2-fifo-6666"), FileNotFoundError, ["a FIFO"])


def test_remove_by_listed_entry_and_by_absolute_path(cache):
    entry(cache / "sst2-b-7777", GOOD_META)
    (listed,) = [t for t in teachers() if t.path.name == "sst2-b-7777"]
    assert remove_teacher(listed) == cache / "sst2-b-7777" and not (cache / "sst2-b-7777").exists()
    assert remove_teacher(str(cache / "good-bert-aaaa")) == cache / "good-bert-aaaa" and teachers() == []


def test_a_cache_variable_naming_an_unknown_users_home_says_so(monkeypatch):
    from distill_nb.families import cache_dir

    monkeypatch.setenv("DISTILL_NB_CACHE", "~no_such_user_distill_nb/x")
    clear_error(cache_dir, ValueError, ["$DISTILL_NB_CACHE='~no_such_user_distill_nb/x'", "unset it"])
    clear_error(teachers, ValueError, ["~no_such_user_distill_nb"])


@pytest.mark.parametrize("name", ["DISTILL_NB_CACHE", "DISTILL_NB_RUNS", "DISTILL_NB_DATA"])
def test_every_folder_variable_naming_an_unknown_users_home_says_so(name, monkeypatch, capsys):
    """The CLI checks every folder variable first (env_folders): a bad '~user' is a clear error there too."""
    from distill_nb import cli
    from distill_nb.config import env_folders

    monkeypatch.setenv(name, "~no_such_user_distill_nb/x")
    clear_error(env_folders, ValueError, [f"${name}='~no_such_user_distill_nb/x'", "absolute path"])
    assert cli.main(["teachers"]) != 0
    assert "no home folder" in capsys.readouterr().err


def test_no_home_folder_says_to_set_the_cache_variable(monkeypatch):
    from distill_nb.families import cache_dir

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("DISTILL_NB_CACHE", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    clear_error(cache_dir, ValueError, ["no home folder", "DISTILL_NB_CACHE"])


ODD = ["10", [1], {"a": 1}, True, None, -5, 1e400, float("nan"), 10**400]


@pytest.mark.parametrize("field", ["steps", "max_minutes"])
@pytest.mark.parametrize("value", ODD, ids=repr)
def test_an_odd_cap_in_teacher_json_means_prepare_again(field, value):
    from distill_nb.teacher_cache import _covers

    stop = {"steps": "max_steps", "max_minutes": "time"}[field]
    assert _covers({"stopped_by": stop, field: value}, 100, 5.0) is False
    assert _covers({"stopped_by": value}, 100, 5.0) is (value == "plateau")


# --- report: what compare_run says about a prepared teacher, and the student it loads ----------------------------
@pytest.mark.parametrize("field", ["steps", "seconds", "dev_accuracy", "stopped_by"])
@pytest.mark.parametrize("value", ["missing", *ODD, 1.5, "plateau"], ids=repr)
def test_the_prepared_teacher_note_says_what_is_known(field, value):
    from distill_nb.report import prepared_note

    meta = {"steps": 5, "seconds": 120.0, "dev_accuracy": 0.85, "stopped_by": "max_steps"}
    if value == "missing":
        del meta[field]
    else:
        meta[field] = value
    note = prepared_note(meta)
    v = number(value)
    valid = {"steps": v is not None and 0 <= v < 1e12, "seconds": v is not None and v >= 0,
             "dev_accuracy": v is not None and 0 <= v <= 1, "stopped_by": value == "plateau"}[field]
    unknown = {"steps": "steps", "seconds": "time", "dev_accuracy": "dev accuracy", "stopped_by": "what stopped it"}
    assert (unknown[field] in note.partition("not recorded: ")[2]) is not valid, note
    assert "None" not in note and "nan" not in note and "inf" not in note, note
    others = {"steps": "5 steps", "seconds": "2.0 min", "dev_accuracy": "dev accuracy 0.8500",
              "stopped_by": "stopped by max_steps"}
    assert all(text in note for name, text in others.items() if name != field), note


def test_an_empty_teacher_json_gives_a_note_of_unknowns():
    from distill_nb.report import prepared_note

    assert prepared_note({}) == ("head fine-tuned to an unknown point (not recorded: steps, time, dev accuracy, "
                                 "what stopped it)")


@pytest.fixture(scope="module")
def run_parts(tmp_path_factory):
    """(teacher folder, data folder) for fabricated runs: a tiny classifier and a 12-example eval split."""
    from conftest import make_tiny_bert

    base = tmp_path_factory.mktemp("report_runs")
    data = base / "data"
    data.mkdir()
    for split, n in [("train", 16), ("validation", 12)]:
        rows = "".join(f"the movie was {'good' if i % 2 else 'bad'},{i % 2}\n" for i in range(n))
        (data / f"{split}.csv").write_text("text,label\n" + rows)
    return make_tiny_bert(base / "teacher", layers=1), data


def fabricated_run(root: Path, parts: tuple[Path, Path], run_id: str, *, student: bool = True, **status) -> Path:
    from conftest import make_tiny_bert

    from distill_nb.config import DistillConfig
    from distill_nb.rundir import create_run, write_status

    teacher, data = parts
    path = create_run(DistillConfig(teacher=str(teacher), dataset=str(data), text_column="text", max_steps=5,
                                    max_length=32), root, run_id)
    write_status(path, state="completed", **status)
    if student:
        make_tiny_bert(path / "student", layers=1, seed=3)
    return path


@pytest.mark.parametrize("meta", [{"stopped_by": "plateau", "steps": 5},
                                  '{"dev_accuracy": NaN, "stopped_by": "plateau"}',
                                  {"dev_accuracy": 0.9, "seconds": "10", "steps": [1]}], ids=["no-dev", "nan", "odd"])
def test_compare_run_with_an_incomplete_teacher_json(tmp_path, monkeypatch, run_parts, meta):
    from distill_nb.report import compare_run

    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path / "cache"))
    prep = teachers_dir() / "x-t-1"
    shutil.copytree(run_parts[0], prep)
    (prep / "teacher.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    run = fabricated_run(tmp_path / "runs", run_parts, "m", teacher_path=str(prep))
    note = compare_run(run, repeats=1).rows[0].note
    assert "head fine-tuned to" in note and "not recorded: " in note and "nan" not in note, note


STUDENT_DAMAGE = ["folder-link-out", "folder-link-in", "config-link-out", "weights-link-out", "config-fifo",
                  "weights-fifo", "tokenizer-link-in"]


def damage_student(run: Path, how: str, outside: Path) -> None:
    student = run / "student"
    if how == "folder-link-out":
        shutil.rmtree(student)
        student.symlink_to(outside)
    elif how == "folder-link-in":  # a link to another folder inside the run is still a link
        student.rename(run / "elsewhere")
        student.symlink_to(run / "elsewhere")
    else:
        name = {"config": "config.json", "weights": "model.safetensors", "tokenizer": "tokenizer.json"}[
            how.split("-")[0]]
        (student / name).unlink(missing_ok=True)
        if how.endswith("fifo"):
            os.mkfifo(student / name)
        else:
            (student / name).symlink_to(outside / name if how.endswith("out") else run / "config.json")


@pytest.mark.parametrize("how", STUDENT_DAMAGE)
def test_a_student_reached_through_a_link_or_a_fifo_is_refused(tmp_path, run_parts, how):
    from conftest import make_tiny_bert

    from distill_nb.report import compare_run, load_run_models

    outside = make_tiny_bert(tmp_path / "outside_student", layers=1, seed=4)
    run = fabricated_run(tmp_path / "runs", run_parts, "linked")
    damage_student(run, how, outside)
    needle = "symbolic link" if "link" in how else "a FIFO"
    for call in (lambda: load_run_models(run), lambda: compare_run(run, repeats=1),
                 lambda: load_run_models(run, final_only=False)):
        clear_error(call, ValueError, ["run 'linked'", "student", needle, "never loads a student"])


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty", "folder", "header-only"])
def test_damaged_student_weights_name_the_run_the_file_and_the_fix(tmp_path, run_parts, how):
    from distill_nb.report import load_run_models

    run = fabricated_run(tmp_path / "runs", run_parts, "dmg")
    weights = run / "student" / "model.safetensors"
    data = weights.read_bytes()
    if how == "folder":
        weights.unlink()
        weights.mkdir()
    else:
        weights.write_bytes({"garbage": b"garbage" * 10, "truncated": data[: len(data) // 2], "empty": b"",
                             "header-only": data[:8 + int.from_bytes(data[:8], "little")]}[how])
    clear_error(lambda: load_run_models(run), ValueError,
                ["run 'dmg'", "student/model.safetensors is damaged", "fork()"])


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty", "deep"])
def test_a_damaged_student_config_names_the_run_and_the_file(tmp_path, run_parts, how):
    from distill_nb.report import load_run_models

    run = fabricated_run(tmp_path / "runs", run_parts, "cfg")
    config = run / "student" / "config.json"
    config.write_bytes({"garbage": b"\xff\xfe\x00", "truncated": config.read_bytes()[:30], "empty": b"",
                        "deep": b"[" * 100_000 + b"]" * 100_000}[how])
    clear_error(lambda: load_run_models(run), ValueError, ["run 'cfg'", "student/config.json is damaged", "fork()"])
