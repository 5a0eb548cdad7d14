"""Widget inputs that are odd but possible: eval records with missing / null / non-number values (plots and the
monitor draw gaps, never raise), values the StudentDesigner refuses (rolled back with a message, never exported
as another value), and configs outside the Launcher's widget ranges (kept exactly as given)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("ipywidgets")

from conftest import clear_error

from distill_nb import plots
from distill_nb.config import DistillConfig
from distill_nb.runs import Run, append_metrics, create_run, write_status
from distill_nb.widgets import Launcher, RunMonitor, StudentDesigner
from distill_nb.widgets._util import elapsed_s, fmt_number, run_progress

MISSING = object()  # the key is left out of the record
ODD = [MISSING, None, float("nan"), float("inf"), -float("inf"), "0.5", "abc", True, False, 10**400, -(10**400),
       [0.5], {"v": 1}]
ODD_IDS = ["missing", "none", "nan", "inf", "-inf", "str-number", "str", "true", "false", "huge-int",
           "huge-negative-int", "list", "dict"]
EVAL_KEYS = ["accuracy", "teacher_accuracy", "agreement", "retention", "reason_spearman", "reason_topk",
             "reason_sign", "eval_examples"]
TRAIN_KEYS = ["loss", "kd", "ce", "attr", "examples_per_s"]


def _with(record: dict, key: str, value) -> dict:
    record = dict(record)
    if value is MISSING:
        record.pop(key, None)
    else:
        record[key] = value
    return record


def odd_records(value) -> list[dict]:
    """Good train/eval records around records that each carry ``value`` in one numeric key (and one in all)."""
    good_train = {"split": "train", "loss": 1.0, "kd": 0.5, "ce": 0.4, "attr": 0.2, "examples_per_s": 50.0}
    good_eval = {"split": "eval", "accuracy": 0.7, "teacher_accuracy": 0.8, "agreement": 0.9, "retention": 0.875,
                 "reason_spearman": 0.3, "reason_topk": 0.5, "reason_sign": 0.7, "eval_examples": 24}
    records, step = [], 1
    for key in TRAIN_KEYS:
        records.append(_with({**good_train, "step": step}, key, value))
        step += 1
    records.append({"step": step, "split": "eval", **good_eval})
    for key in EVAL_KEYS:
        step += 1
        records.append(_with({**good_eval, "step": step}, key, value))
    step += 1
    every = {"step": step, "split": "eval"}
    for key in EVAL_KEYS:
        every = _with(every, key, value)
    records.append(every)
    records.append(_with({**good_eval, "step": step + 1}, "step", value))  # no usable step: left out
    records.append(_with({**good_train, "step": step + 1}, "step", value))
    return records


class FakeRun:
    """A run whose status and metrics are given in memory (records JSON could not even hold)."""

    def __init__(self, path, records, status):
        self.id, self.path, self._records, self._status = "odd", path / "odd", records, status

    @property
    def config(self):
        raise FileNotFoundError("no config.json: use a real run")

    def status(self):
        return dict(self._status)

    def metrics(self, since=None):
        return list(self._records)


@pytest.mark.parametrize("value", ODD, ids=ODD_IDS)
def test_run_figure_draws_odd_eval_values_as_gaps(value):
    records = odd_records(value)
    fig = plots.run_figure(records, title="odd")
    assert plots.to_png(fig, dpi=20).startswith(b"\x89PNG")
    ax_acc = fig.axes[1]
    labels = [line.get_label() for line in ax_acc.lines]
    assert "student accuracy" in labels and "teacher accuracy" in labels  # the good records still show
    teacher = next(line for line in ax_acc.lines if line.get_label() == "teacher accuracy")
    assert teacher.get_ydata()[0] == pytest.approx(0.8)  # the latest *measured* teacher accuracy
    # only "not measured" values: no teacher line, no crash, no legend entry for nothing
    only = [_with(_with(_with({"step": 1, "split": "eval"}, k, value), "teacher_accuracy", value), "agreement", value)
            for k in ("accuracy",)]
    fig = plots.run_figure(only)
    assert "teacher accuracy" not in [line.get_label() for line in fig.axes[1].lines]
    plots.to_png(fig, dpi=20)


def test_run_figure_of_the_null_eval_record():
    """The record a NaN accuracy is stored as (null), and one without 'agreement'."""
    fig = plots.run_figure([{"step": 1, "split": "eval", "accuracy": None, "teacher_accuracy": None,
                             "agreement": None}, {"step": 2, "split": "eval", "accuracy": 0.6}])
    assert "teacher accuracy" not in [line.get_label() for line in fig.axes[1].lines]
    plots.to_png(fig, dpi=20)


@pytest.mark.parametrize("value", ODD, ids=ODD_IDS)
def test_run_figure_shows_every_loss_part_and_the_reason_curves(value):
    records = [{"step": 1, "split": "train", "loss": 1.0, "attr": 0.4, "hidden": 0.2, "attn": value},
               {"step": 2, "split": "train", "loss": 0.8, "attr": value, "hidden": 0.1, "attn": value},
               {"step": 2, "split": "eval", "accuracy": 0.7, "reason_spearman": value, "reason_topk": 0.5,
                "reason_sign": 0.9},
               {"step": 4, "split": "eval", "accuracy": 0.8, "reason_spearman": 0.3, "reason_topk": value,
                "reason_sign": 0.8}]
    fig = plots.run_figure(records)
    assert [line.get_label() for line in fig.axes[0].lines] == ["loss", "hidden", "attr"]  # attn: never measured
    assert len(fig.axes) == 3 and fig.axes[2].get_title() == "reason agreement (probe)"
    assert [line.get_label() for line in fig.axes[2].lines] == ["Spearman", "top-k overlap", "sign"]
    plots.to_png(fig, dpi=20)
    no_probe = plots.run_figure([r for r in records if r["split"] == "train"] + [{"step": 2, "split": "eval",
                                                                                  "accuracy": 0.7}])
    assert len(no_probe.axes) == 2


def test_monitor_title_when_the_probe_ran_but_measured_nothing_comparable(tmp_path, monkeypatch):
    from distill_nb import DistillConfig
    from distill_nb.rundir import append_metrics, create_run, write_status
    from distill_nb.widgets.monitor import RunMonitor

    monkeypatch.setenv("DISTILL_NB_RUNS", str(tmp_path))
    path = create_run(DistillConfig(teacher="tiny", max_steps=4), tmp_path, "short-texts")
    write_status(path, state="running", step=0, total_steps=4, pid=None)
    append_metrics(path, {"step": 2, "split": "eval", "accuracy": 0.7, "reason_spearman": None, "reason_topk": None,
                          "reason_sign": None, "reason_s": 0.1})
    mon = RunMonitor.attach("short-texts", autostart=False)
    assert "nothing comparable yet" in mon.reason_chart.value and "off (reason_probe=0)" not in mon.reason_chart.value
    append_metrics(path, {"step": 4, "split": "eval", "accuracy": 0.7, "reason_spearman": None, "reason_topk": None,
                          "reason_sign": 0.375, "reason_s": 0.1})
    mon.poll()
    assert "reason agreement (probe)" in mon.reason_chart.value and "<polyline" in mon.reason_chart.value


@pytest.mark.parametrize("value", ODD, ids=ODD_IDS)
def test_monitor_reads_odd_records_and_status_without_raising(value, tmp_path):
    status = {"state": "running", "step": 3, "total_steps": 20, "eta_s": 5.0, "created_at": 1.0, "phase": "training",
              "teacher_accuracy": 0.8}
    for key in ("step", "total_steps", "eta_s", "created_at", "teacher_accuracy"):
        status = _with(status, key, value)
    mon = RunMonitor(FakeRun(tmp_path, odd_records(value), status), autostart=False)
    assert mon.error == "", mon.error
    assert mon.polls == 1 and "<polyline" in mon.acc_chart.value and "<polyline" in mon.loss_chart.value
    for trait in ("accuracy", "teacher_accuracy", "agreement", "retention", "reason_spearman", "eta_s"):
        got = getattr(mon, trait)  # the last eval's value; "not measured" there: nan (or an earlier poll's value)
        assert math.isnan(got) or math.isfinite(got), (trait, got)
    assert mon.eval_examples in (0, 24) and 0 <= mon.progress.value <= mon.progress.max
    html = mon.snapshot_html()
    assert mon.error == "" and html.count("<svg") == 3 and "last eval" in html
    assert "Traceback" not in html
    fig = mon.figure()
    assert "student accuracy" in [line.get_label() for line in fig.axes[1].lines]
    repr(mon)


def test_monitor_of_a_run_with_null_evals_on_disk(runs_root):
    path = create_run(DistillConfig(teacher="tiny", max_steps=4), runs_root, "nulls")
    write_status(path, state="completed", step=4, total_steps=4, pid=None)
    append_metrics(path, {"step": 2, "split": "train", "loss": 1.0, "kd": 0.5})
    append_metrics(path, {"step": 2, "split": "eval", "accuracy": None, "teacher_accuracy": None, "agreement": None})
    append_metrics(path, {"step": 4, "split": "eval", "accuracy": float("nan"), "teacher_accuracy": float("nan")})
    mon = RunMonitor(Run(path), autostart=False)
    assert mon.error == "" and math.isnan(mon.accuracy) and math.isnan(mon.teacher_accuracy)
    html = mon.snapshot_html()
    assert mon.error == "" and "stroke-dasharray='4 3'" not in mon.acc_chart.value  # no teacher line
    assert ">-<" in html  # not measured: shown as "-"
    mon.figure()


@pytest.mark.parametrize("value", ODD, ids=ODD_IDS)
def test_record_helpers_take_odd_values(value):
    assert fmt_number(value, "{:.3f}") == "-"
    status = {"state": "running", "created_at": 1.0, "phase": "caching_logits", "phase_step": 2, "phase_total": 4}
    for key in ("created_at", "finished_at", "updated_at", "step", "total_steps", "eta_s", "phase_step",
                "phase_total"):
        odd = _with(status, key, value)
        for state in ("running", "completed", "failed"):
            text, now, top = run_progress({**odd, "state": state})
            assert isinstance(text, str) and math.isfinite(now) and math.isfinite(top)
            seconds = elapsed_s({**odd, "state": state})
            assert seconds is None or math.isfinite(seconds)
    assert run_progress(_with({"state": "running"}, "phase", value))[0]


# --- StudentDesigner: refused values are rolled back with a message, never exported as another value -------------
@pytest.fixture(scope="module")
def teacher_config(tiny_teacher):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(tiny_teacher)  # 4 layers, hidden 32, 4 heads, FFN 64


@pytest.mark.parametrize("name, value, needles", [
    ("hidden", 33, ["hidden=33", "8, 16, 24, 32", "Kept hidden=32"]),
    ("hidden", 0, ["hidden=0", "8, 16, 24, 32"]),
    ("heads", 5, ["heads=5", "divide hidden=32", "1, 2, 4, 8, 16, 32", "Kept heads=4"]),
    ("ffn", 65, ["ffn=65", "32, 48, 64"]),
    ("layers", 0, ["layers=0", "1.."]),
    ("layers", 100, ["layers=100", "1..12"]),
])
def test_designer_rolls_back_a_refused_shape(teacher_config, name, value, needles):
    d = StudentDesigner(teacher_config, init="random")
    before = d.config_fields()
    setattr(d, name, value)
    for needle in needles:
        assert needle in d.error, (needle, d.error)
    assert needle in d._error_box.value  # visible in the panel
    assert getattr(d, name) == before[f"student_{name}"]  # rolled back ...
    assert d.config_fields() == before  # ... and exported as it was, never the refused value
    assert d.hidden % d.heads == 0


def test_designer_every_k_refuses_widths_and_deep_students(teacher_config):
    d = StudentDesigner(teacher_config)
    d.layers = 100
    assert "layers=100" in d.error and "1..4" in d.error and "init='random'" in d.error
    assert d.layers == 3 and d.config_fields()["student_layers"] == 3
    d.hidden = 16
    assert "hidden=16" in d.error and "init='random'" in d.error and d.hidden == 32


def test_designer_refuses_an_unknown_init(teacher_config):
    d = StudentDesigner(teacher_config, init="random")
    d.init = "bogus"
    assert "init='bogus'" in d.error and "'every_k', 'random', 'pretrained'" in d.error
    assert d.init == "random" and d.init_dropdown.value == "random"
    assert d.config_fields()["student_init"] == "random"
    clear_error(lambda: StudentDesigner(teacher_config, init="bogus"), ValueError, ["init='bogus'", "every_k"])


@pytest.mark.parametrize("value, needles", [
    (-5, ["vocab=-5", "at least 16"]), (0, ["vocab=0", "at least 16"]), (15, ["vocab=15"]),
    ("abc", ["vocab='abc'", "'full'", "'task'"]), ("count", ["vocab='count'"]), (True, ["vocab=True"]),
])
def test_designer_refuses_a_bad_vocabulary(teacher_config, value, needles):
    d = StudentDesigner(teacher_config)
    d.vocab = 500
    assert d.error == "" and d.config_fields()["student_vocab"] == 500
    d.vocab = value
    for needle in needles:
        assert needle in d.error, (needle, d.error)
    assert d.vocab == 500 and d.config_fields()["student_vocab"] == 500
    assert (d.vocab_dropdown.value, d.vocab_size.value) == ("count", 500)


def test_designer_exports_the_vocabulary_it_was_given(teacher_config):
    d = StudentDesigner(teacher_config)
    for vocab in (500, "task", 9000, "full", 2 * 10**7, 16):
        d.vocab = vocab
        assert d.error == "" and d.config_fields()["student_vocab"] == vocab  # 500 used to export 8000
    d.vocab_dropdown.value = "count"
    d.vocab_size.value = 1234
    assert d.config_fields()["student_vocab"] == 1234


@pytest.mark.parametrize("layers_from, needles", [
    ([0, 9, 12], ["[0, 9, 12]", "0..3"]), ([2, 1, 0], ["[2, 1, 0]", "increasing"]),
    ([-1, 0, 1], ["[-1, 0, 1]", "0..3"]), ([0, 0, 1], ["[0, 0, 1]", "increasing"]),
    ([0, 1], ["[0, 1]", "2 entries", "3 layers"]),
])
def test_designer_checks_layers_from_against_the_teacher(teacher_config, layers_from, needles):
    d = StudentDesigner(teacher_config)
    d.layers_from = [0, 2, 3]
    assert d.error == "" and d.config_fields()["student_layers_from"] == [0, 2, 3]
    d.layers_from = layers_from
    for needle in needles:
        assert needle in d.error, (needle, d.error)
    assert d.layers_from == [0, 2, 3] and d.config_fields()["student_layers_from"] == [0, 2, 3]


def test_designer_never_exports_an_invalid_state(teacher_config):
    d = StudentDesigner(teacher_config, init="random")
    d._syncing = True  # bypass the checks, as a thread or a future code path might
    d.hidden = 33
    d._syncing = False
    clear_error(d.config_fields, ValueError, ["hidden=33", "8, 16, 24, 32"])
    d = StudentDesigner()  # no teacher yet: layers_from is checked against the teacher once it is known
    d.layers_from = [0, 9, 12]
    assert d.error == "" and d.config_fields()["student_layers_from"] == [0, 9, 12]
    d.teacher_config = teacher_config
    clear_error(d.config_fields, ValueError, ["[0, 9, 12]", "0..3"])
    d = StudentDesigner(teacher_config)
    d.set_trait("init", "pretrained")
    clear_error(d.config_fields, ValueError, ["init='pretrained'", "pretrained"])


def test_designer_shows_a_configs_student_as_given(teacher_config, tiny_teacher):
    d = StudentDesigner(teacher_config)
    cfg = DistillConfig(teacher=str(tiny_teacher), student_layers=3, student_vocab="task",
                        student_layers_from=[0, 1, 3])
    d.set_config(cfg)
    assert d.error == ""
    assert d.config_fields() == {k: getattr(cfg, k) for k in d.config_fields()}
    cfg = DistillConfig(teacher=str(tiny_teacher), student_init="random", student_layers=6, student_hidden=16,
                        student_heads=2, student_ffn=32, student_vocab=700)
    d.set_config(cfg)
    assert d.error == "" and d.config_fields() == {k: getattr(cfg, k) for k in d.config_fields()}
    d.set_config(DistillConfig(teacher=str(tiny_teacher), student_init="random", student_hidden=40))
    assert "hidden=40" in d.error and "8, 16, 24, 32" in d.error  # cannot be shown: said, not silently changed


# --- Launcher: set_config / Launcher(config) keep every valid value, whatever the widgets' ranges -----------------
EXTREMES = [
    ("teacher_prep_steps", 0), ("teacher_prep_steps", 2_000_000), ("teacher_prep_steps", 2**63 - 1),
    ("temperature", 0.1), ("temperature", 0.25), ("temperature", 2.3), ("temperature", 100.0),
    ("alpha_kd", 150.0), ("alpha_kd", 1e300), ("alpha_kd", 1e-300), ("alpha_kd", 3),
    ("alpha_ce", 1e300), ("alpha_hidden", 1e300), ("alpha_attn", 250.5), ("alpha_attr", 1e300),
    ("learning_rate", 1e-7), ("learning_rate", 5e-324), ("learning_rate", 1.0), ("learning_rate", 0.5),
    ("learning_rate", 1.2345e-5), ("learning_rate", 10**-4.3),
    ("epochs", 0.005), ("epochs", 1e-9), ("epochs", 10_000.0), ("epochs", 7),
    ("max_steps", 1), ("max_steps", 2**63 - 1),
    ("eval_every", 1), ("eval_every", 2**63 - 1),
    ("max_train_examples", 2), ("max_train_examples", 2**63 - 1),
    ("max_eval_examples", 1), ("max_eval_examples", 2**63 - 1),
    ("max_length", 8), ("max_length", 100_000), ("max_length", 2**63 - 1),
    ("batch_size", 1), ("batch_size", 7), ("batch_size", 2**63 - 1),
    ("device", "cuda:3"), ("label_names", ["neg, really", " pos "]), ("dataset", "DATA "),
]


@pytest.mark.parametrize("field, value", EXTREMES, ids=[f"{f}={v!r}"[:40] for f, v in EXTREMES])
def test_launcher_keeps_every_valid_config_as_given(field, value, tiny_dataset, tmp_path):
    base = {"teacher": "tiny", "dataset": str(tiny_dataset), "text_column": "text", "max_steps": 3}
    if field == "epochs":
        base["max_steps"] = None
    if field == "dataset":
        value = str(tiny_dataset) + " "  # a trailing space is a valid (if odd) path: kept, not stripped
    cfg = DistillConfig(**{**base, field: value})
    launcher = Launcher()
    launcher.set_config(cfg)
    assert launcher.build_config().diff(cfg) == {}
    assert Launcher(cfg).build_config().diff(cfg) == {}
    assert DistillConfig.from_json(launcher.config_json) == cfg  # what Export writes
    widget = launcher.fields[field]
    if hasattr(widget, "max") and not isinstance(widget, type(launcher.fields["learning_rate"])):
        assert widget.value == value  # shown as given (the range was widened), not clamped


def test_launcher_epochs_without_max_steps_and_rounding_after_an_edit(tiny_dataset):
    cfg = DistillConfig(teacher="tiny", dataset=str(tiny_dataset), text_column="text", epochs=0.0, max_steps=5)
    launcher = Launcher(cfg)
    assert launcher.build_config() == cfg
    launcher.fields["max_steps"].value = 0  # epochs 0 without max_steps: refused by the config, and said so
    assert "epochs=0.0" in launcher.error
    launcher.set_config(DistillConfig(teacher="tiny", dataset=str(tiny_dataset), text_column="text",
                                      learning_rate=1.2345e-5))
    assert launcher.build_config().learning_rate == 1.2345e-5 and launcher.error == ""
    launcher.fields["learning_rate"].value = 10 ** -4.3  # a slider drag is still rounded as a person types it
    assert launcher.build_config().learning_rate == 5e-05


@pytest.mark.parametrize("dataset", ["", "   ", "x" * 300, "a\x00b"], ids=["empty", "spaces", "name-too-long", "nul"])
@pytest.mark.parametrize("field", ["dataset", "train_split"])
def test_launcher_keeps_showing_a_bad_dataset_and_never_previews_a_stale_config(dataset, field, tiny_dataset):
    """The data fields had two observers: the second (columns) cleared the error the first showed, and the
    preview kept the last good config; a long name showed a raw OSError with the whole path."""
    launcher = Launcher(DistillConfig(teacher="tiny", dataset=str(tiny_dataset), text_column="text"))
    assert launcher.error == "" and str(tiny_dataset) in launcher.preview.value
    launcher.fields["dataset"].value = dataset
    if field == "train_split":  # another data field changed while the dataset is bad: still said
        launcher.fields["train_split"].value = "validation"
    assert launcher.error.startswith("ConfigError: dataset=") and "Errno" not in launcher.error, launcher.error
    assert str(tiny_dataset) not in launcher.preview.value  # no config Start would not run
    with pytest.raises(Exception, match="dataset="):
        launcher.build_config()
    launcher.fields["dataset"].value = str(tiny_dataset)  # fixed: the error goes, the preview is back
    assert launcher.error == "" and str(tiny_dataset) in launcher.preview.value


def test_buttons_say_leaves_code_the_person_may_copy_as_code():
    from distill_nb.widgets._util import buttons_say

    said = buttons_say("pick another run_id, or continue it with Run.attach(run_id).resume(). resume() continues "
                       "from step 3; stop() it first, or call run.stop() it")
    assert "Run.attach(run_id).resume()." in said and "Resume continues from step 3" in said
    assert "Stop it first" in said and "run.stop() it" in said
