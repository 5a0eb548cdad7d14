"""Text from users and files never becomes markup: every source of a string that reaches HTML the notebook renders
unsanitised (``widgets.HTML`` sets innerHTML, ``_repr_html_``, snapshots) is fed a hostile string, and the HTML must
hold its escaped form and never the raw ``<img``.

Sources: a run's status.json (message, error, data_note, traceback, phase, device, ...), metrics.jsonl values,
config.json values, data files (texts, labels, column names), file and folder paths, teacher names, a teacher's
config.json labels and its teacher.json (a prepared teacher's cache entry), the speed cache, token strings of a
tokenizer vocabulary, exception messages that quote the user's input, and tables of reports and students.
No training: runs are fabricated directories, models are tiny random BERTs (tests/conftest.py).
"""

from __future__ import annotations

import csv
import html
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("ipywidgets")

import ipywidgets as W

from distill_nb.config import DistillConfig
from distill_nb.runs import append_metrics, create_run, write_status

HOSTILE = "<img src=x onerror=alert(1)>\"'&"
ESCAPED = html.escape(HOSTILE, quote=True)  # &lt;img src=x onerror=alert(1)&gt;&quot;&#x27;&amp;
TAG = "&lt;img src=x onerror=alert(1)&gt;"  # what is left when a message quotes the value with repr()


def html_of(widget) -> str:
    """Every HTML value in a widget tree (what JupyterLab puts into innerHTML), concatenated."""
    out, todo, seen = [], [widget], set()
    while todo:
        w = todo.pop()
        if id(w) in seen:
            continue
        seen.add(id(w))
        if isinstance(w, (W.HTML, W.HTMLMath)):
            out.append(w.value)
        todo.extend(getattr(w, "children", ()) or ())
    return "\n".join(out)


def assert_escaped(markup: str, needle: str | None = ESCAPED) -> None:
    """``markup`` never holds the raw tag, and (when ``needle`` is given) holds the escaped form."""
    assert "<img" not in markup.lower(), markup
    assert "onerror=alert(1)>" not in markup, markup
    if needle is not None:
        assert needle in markup, (needle, markup)


# --- shared material ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_models(tiny_teacher, tmp_path_factory):
    """(teacher, tokenizer, student) whose vocabulary holds HOSTILE as one token."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill_nb import models

    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    tok.add_tokens([HOSTILE])
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval()
    teacher.resize_token_embeddings(len(tok))
    student = models.make_student(teacher, n_layers=2).eval()
    assert HOSTILE in tok.convert_ids_to_tokens(tok(f"good {HOSTILE} film")["input_ids"])
    return teacher, tok, student


def hostile_csv(folder: Path, name: str = "data.csv", *, columns=("text", "label")) -> Path:
    """A csv whose texts hold HOSTILE (and SST-2's legitimate ``<br />`` and ``&``) and whose labels are
    HOSTILE and "pos"."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i in range(20):
            text = f"a good film {HOSTILE} <br /> fun & fine" if i % 2 else "a bad film"
            writer.writerow([text, HOSTILE if i % 2 else "pos"] + ["x"] * (len(columns) - 2))
    return path


def fabricated_run(root: Path, run_id: str, config: DistillConfig | None = None, **status):
    path = create_run(config or DistillConfig(teacher="tiny", max_steps=10), root, run_id)
    write_status(path, pid=None, **status)
    return path


def monitor_html(run_id: str) -> tuple[str, object]:
    from distill_nb.widgets import RunMonitor

    mon = RunMonitor.attach(run_id, autostart=False)
    mon.poll()
    return html_of(mon) + mon.snapshot_html(), mon


# --- the sources -------------------------------------------------------------------------------------------------
def case_status_message(request):
    fabricated_run(request.getfixturevalue("runs_root"), "msg", state="running", step=1, total_steps=10,
                   message=HOSTILE)
    return monitor_html("msg")[0]


def case_status_queued_message(request):
    """A queued run's progress line is its message."""
    fabricated_run(request.getfixturevalue("runs_root"), "queued", state="queued", message=HOSTILE)
    markup, mon = monitor_html("queued")
    assert HOSTILE in mon.progress_line  # the trait holds the text; only the HTML escapes it
    return markup


def case_status_error(request):
    fabricated_run(request.getfixturevalue("runs_root"), "err", state="failed", error=HOSTILE, message=HOSTILE,
                   traceback=f"Traceback\nValueError: {HOSTILE}")
    markup, mon = monitor_html("err")
    assert mon.run_traceback.outputs[0]["output_type"] == "stream"  # a traceback is text, never HTML
    return markup


def case_status_data_note(request):
    fabricated_run(request.getfixturevalue("runs_root"), "note", state="running", data_note=HOSTILE)
    return monitor_html("note")[0]


def case_status_other_fields(request):
    """Fields no widget shows today (teacher_warning, device, precision, phase, ...) must not appear raw either."""
    fabricated_run(request.getfixturevalue("runs_root"), "other", state="stopped", teacher_warning=HOSTILE,
                   device=HOSTILE, precision=HOSTILE, phase=HOSTILE, backend=HOSTILE, teacher_path=HOSTILE)
    return monitor_html("other")[0], None


def case_unreadable_status(request):
    """A status.json whose state is the hostile string: the run reads as unreadable, its reason quotes it."""
    path = fabricated_run(request.getfixturevalue("runs_root"), "bad", state="running")
    (path / "status.json").write_text(json.dumps({"state": HOSTILE, "message": HOSTILE}))
    markup, mon = monitor_html("bad")
    assert mon.state == "unreadable"
    return markup, TAG


def case_metrics_strings(request):
    """metrics.jsonl with strings where numbers are expected (and a hostile split)."""
    path = fabricated_run(request.getfixturevalue("runs_root"), "metrics", state="running", step=2,
                          total_steps=10)
    append_metrics(path, {"step": 1, "split": "train", "loss": HOSTILE, "kd": 0.5, "examples_per_s": HOSTILE})
    append_metrics(path, {"step": 2, "split": "eval", "accuracy": HOSTILE, "teacher_accuracy": 0.8,
                          "retention": HOSTILE, "agreement": 0.5, "eval_examples": HOSTILE,
                          "reason_spearman": HOSTILE})
    append_metrics(path, {"step": 2, "split": HOSTILE, "loss": 1.0})
    return monitor_html("metrics")[0], None


def case_app_open_run(request):
    """A run whose config holds hostile values (label names, data columns) and whose status holds a hostile
    message and error, opened in the whole app."""
    from distill_nb.widgets import DistillApp

    root, tmp = request.getfixturevalue("runs_root"), request.getfixturevalue("tmp_path")
    data = hostile_csv(tmp / "data", columns=("text", "label", HOSTILE))
    teacher = str(request.getfixturevalue("tiny_teacher"))
    config = DistillConfig(teacher=teacher, dataset=str(data), text_column="text", label_column="label",
                           max_steps=2)
    if "label_names" in DistillConfig.__dataclass_fields__:
        config = config.replace(label_names=[HOSTILE, "pos"])
    fabricated_run(root, "app", config, state="failed", error=HOSTILE, message=HOSTILE)
    app = DistillApp(DistillConfig(teacher=teacher), root=str(root))
    app.open_run("app")
    app.monitor.stop_polling()
    return html_of(app)


def case_launcher_columns(request):
    """Column names read from a data file's header are listed in the Train tab."""
    from distill_nb.widgets import Launcher

    tmp = request.getfixturevalue("tmp_path")
    data = hostile_csv(tmp / "cols", columns=("text", "label", HOSTILE))
    launcher = Launcher(DistillConfig(teacher=str(request.getfixturevalue("tiny_teacher")), dataset=str(data)),
                        root=str(request.getfixturevalue("runs_root")))
    assert HOSTILE in launcher.fields["label_column"].options  # offered as text
    return html_of(launcher)


def case_launcher_estimate_error(request):
    """A text column the file does not have: the estimate's error quotes it."""
    from distill_nb.widgets import Launcher

    tmp = request.getfixturevalue("tmp_path")
    data = hostile_csv(tmp / "est")
    config = DistillConfig(teacher=str(request.getfixturevalue("tiny_teacher")), dataset=str(data),
                           text_column=HOSTILE, label_column="label")
    launcher = Launcher(config, root=str(request.getfixturevalue("runs_root")))
    launcher.set_config(config)  # a run's config is shown as given (the construction guesses a column)
    markup = html_of(launcher)
    assert "cannot count the steps" in launcher.estimate.value, launcher.estimate.value
    return markup, TAG


def case_launcher_export_path(request):
    """A file path (the export box) shown back in a message."""
    from distill_nb.widgets import Launcher

    folder = request.getfixturevalue("tmp_path") / HOSTILE
    folder.mkdir()
    launcher = Launcher(DistillConfig(teacher=str(request.getfixturevalue("tiny_teacher"))),
                        root=str(request.getfixturevalue("runs_root")))
    launcher.export(str(folder / "c.json"))
    assert launcher.error == "" and "config written" in launcher.message.value
    return html_of(launcher)


def case_launcher_start_error(request):
    """An exception whose message quotes the user's input, raised by Start."""
    from distill_nb import runs
    from distill_nb.widgets import Launcher

    def refuse(*args, **kwargs):
        raise ValueError(f"cannot start: the teacher {HOSTILE} is not a model; pick another one.")

    request.getfixturevalue("monkeypatch").setattr(runs, "launch", refuse)
    launcher = Launcher(DistillConfig(teacher=str(request.getfixturevalue("tiny_teacher"))),
                        root=str(request.getfixturevalue("runs_root")))
    launcher.start()
    assert "cannot start" in launcher.error
    return html_of(launcher)


def case_speed_cache(request):
    """The speed cache (speed.json) is a file anyone can edit: device, batch size and tokens are shown."""
    from distill_nb.widgets.estimate import SPEED_FILE, _key, stored_rates, summary_html

    plan = {"prep_steps": 0, "cache_examples": 10, "total_steps": 5, "train_examples": 40, "steps_per_epoch": 5,
            "evaluations": 1, "eval_examples": 8, "teacher_every_step": False}
    rates = {"device": HOSTILE, "batch_size": HOSTILE, "tokens": HOSTILE, "teacher_forward_s": 0.1,
             "teacher_train_s": 0.2, "student_forward_s": 0.05, "student_train_s": 0.1}
    markup = summary_html(plan, rates, 8)
    # an entry whose timings are not numbers is not used (measured again), instead of breaking the estimate
    cache = request.getfixturevalue("tmp_path") / "cache"
    cache.mkdir()
    request.getfixturevalue("monkeypatch").setenv("DISTILL_NB_CACHE", str(cache))
    config = DistillConfig(teacher="tiny")
    (cache / SPEED_FILE).write_text(json.dumps({_key(config): {**rates, "student_train_s": HOSTILE}}))
    assert stored_rates(config) is None
    bad = summary_html(plan, {**rates, "student_train_s": HOSTILE}, 8)
    assert_escaped(bad, None)
    return markup


def case_teacher_name_error(request):
    from distill_nb.widgets import TeacherPicker

    picker = TeacherPicker(str(request.getfixturevalue("tmp_path") / HOSTILE))
    assert picker.error
    return html_of(picker), TAG


def case_teacher_labels_and_cache_entry(request):
    """A teacher folder named hostile whose config.json labels and teacher.json (a prepared teacher's record:
    task, base, stopped_by, precision) hold the hostile string; the cache folder's path is hostile too."""
    from distill_nb.widgets import TeacherPicker

    tmp = request.getfixturevalue("tmp_path")
    cache = tmp / HOSTILE / "cache"
    request.getfixturevalue("monkeypatch").setenv("DISTILL_NB_CACHE", str(cache))
    folder = cache / "teachers" / HOSTILE
    shutil.copytree(request.getfixturevalue("tiny_teacher"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["id2label"], cfg["label2id"] = {"0": HOSTILE, "1": "pos"}, {HOSTILE: 0, "pos": 1}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "teacher.json").write_text(json.dumps({
        "task": HOSTILE, "base": HOSTILE, "dev_accuracy": 0.9, "dev_examples": HOSTILE, "steps": HOSTILE,
        "seconds": HOSTILE, "stopped_by": HOSTILE, "precision": HOSTILE, "created_at": 1.0}))
    picker = TeacherPicker(str(folder))
    assert picker.error == "", picker.error
    assert HOSTILE in picker.info["labels"] and picker.info["prepared"]["task"] == HOSTILE
    return html_of(picker)


def case_designer_errors(request):
    """Values the designer refuses are quoted in its error (init, vocab, a pretrained student's id)."""
    from transformers import AutoConfig

    from distill_nb.widgets import StudentDesigner

    designer = StudentDesigner(AutoConfig.from_pretrained(request.getfixturevalue("tiny_teacher")))
    markup = []
    for name, value in (("init", HOSTILE), ("vocab", HOSTILE)):
        setattr(designer, name, value)
        assert designer.error, name
        markup.append(html_of(designer))
    designer.pretrained = str(request.getfixturevalue("tmp_path") / HOSTILE)
    designer.init = "pretrained"
    assert designer.error
    markup.append(html_of(designer))
    return "\n".join(markup), TAG


def case_explorer_vocab_token_and_label_names(request):
    """A vocabulary entry that is markup, in a text whose class names are markup too."""
    from distill_nb.widgets import AttributionExplorer

    teacher, tok, student = request.getfixturevalue("hostile_models")
    ex = AttributionExplorer(teacher, student, teacher_tokenizer=tok, label_names=[HOSTILE, "pos"],
                             method="saliency", n_steps=4)
    ex.target_dropdown.value = 0
    comp = ex.explain(f"a good film {HOSTILE} <br /> fun & fine")
    assert ex.error == "" and HOSTILE in comp.teacher.tokens
    assert "<br />" not in html_of(ex)  # the text's own (legitimate) markup is text too
    return html_of(ex) + ex.snapshot_html() + comp.to_html() + comp.teacher.to_html()


def case_error_analysis(request):
    """Texts and label names of the sweep table."""
    from distill_nb.widgets import AttributionExplorer, ErrorAnalysis

    teacher, tok, student = request.getfixturevalue("hostile_models")
    ex = AttributionExplorer(teacher, student, teacher_tokenizer=tok, method="saliency", n_steps=4)
    ea = ErrorAnalysis(ex, texts=[f"good {HOSTILE}", "bad & <br /> dull"], labels=[0, 1],
                       label_names=[HOSTILE, "pos"], n_examples=2)
    ea.run_sweep()
    assert ea.error == "" and len(ea.result) == 2
    return html_of(ea)


def case_run_examples(request):
    """A run's data file holds hostile texts and labels: the explorer lists them and explains one."""
    from distill_nb.widgets import AttributionExplorer, ErrorAnalysis

    tmp, root = request.getfixturevalue("tmp_path"), request.getfixturevalue("runs_root")
    for split in ("train", "validation"):
        hostile_csv(tmp / "rundata", f"{split}.csv")
    teacher, tok, student = request.getfixturevalue("hostile_models")
    config = DistillConfig(teacher=str(request.getfixturevalue("tiny_teacher")), dataset=str(tmp / "rundata"),
                           text_column="text", label_column="label", max_steps=2)
    path = fabricated_run(root, "data", config, state="completed")
    ex = AttributionExplorer.from_run(path, n_examples=10)
    assert ex.error == "", ex.error
    assert any(HOSTILE in t for t in ex.label_names), ex.label_names
    ex._models = (teacher, tok, student, tok)
    ex.method = ex.method_dropdown.value = "saliency"
    ex.target_dropdown.value = next(i for i, n in enumerate(ex.label_names) if HOSTILE in n)
    hostile_text = next(v for _, v in ex.examples.options if HOSTILE in v)
    ex.explain(hostile_text)
    assert ex.error == "", ex.error
    ea = ErrorAnalysis(ex)
    ea.set_run(path)
    ea.run_sweep()
    assert ea.error == "", ea.error
    return html_of(ex) + html_of(ea)


def case_explorer_and_comparison_bad_run(request):
    """A run folder whose name is hostile: the errors and notes that quote it."""
    from distill_nb.widgets import AttributionExplorer, Comparison, ErrorAnalysis

    folder = request.getfixturevalue("tmp_path") / HOSTILE
    folder.mkdir()
    ex = AttributionExplorer()
    ex.set_run(folder)
    assert ex.error
    ea = ErrorAnalysis(ex)
    ea.set_run(folder)
    comparison = Comparison()
    comparison.set_run(folder)  # the status names the run
    comparison.compare_students(HOSTILE, "also-missing")
    assert comparison.error
    return html_of(ex) + html_of(ea) + html_of(comparison), TAG


def case_reports(request):
    """Report and students tables: model names and notes, a string where a number is expected."""
    import pandas as pd

    from distill_nb.report import ModelRow, Report
    from distill_nb.widgets import Comparison
    from distill_nb.widgets.comparison import report_html, students_html

    report = Report(rows=[ModelRow(HOSTILE, 1000, 1.0, 2.0, 3.0, None, note=HOSTILE),
                          ModelRow(f"student {HOSTILE}", 500, 0.5, 1.0, 1.5, HOSTILE, note=HOSTILE)],
                    device=HOSTILE, data=HOSTILE, notes=[HOSTILE])
    frame = pd.DataFrame([{"run": HOSTILE, "accuracy": 0.8, "teacher_accuracy": 0.85, "alpha_attr": 0.0,
                           "reason_spearman": 0.4, "reason_topk": 0.5, "reason_sign": 0.7,
                           "comprehensiveness": 0.2, "sufficiency": 0.1, "examples": 2},
                          {"run": f"b {HOSTILE}", "accuracy": 0.7, "teacher_accuracy": 0.85, "alpha_attr": 1.0,
                           "reason_spearman": 0.5, "reason_topk": 0.6, "reason_sign": 0.8,
                           "comprehensiveness": 0.3, "sufficiency": 0.05, "examples": 2}]).set_index("run")
    comparison = Comparison()
    comparison.table.value = report_html(report)
    comparison.students_table.value = students_html(frame)
    return report_html(report) + students_html(frame) + report._repr_html_() + html_of(comparison)


def case_render_fabricated(request):
    """attribution/render.py and the explorer's renderers with fabricated attributions: tokens, units, the
    method, the alignment and class names are all text."""
    import numpy as np

    from distill_nb.attribution.render import attribution_html, comparison_html
    from distill_nb.widgets.attribution import aligned_html, legend_html, token_strip_html

    attr = SimpleNamespace(tokens=["[CLS]", HOSTILE, "good", "[SEP]"], scores=np.array([0.0, 0.5, -0.2, 0.0]),
                           special=np.array([True, False, False, True]), method=HOSTILE, label=1, target=1,
                           probs=np.array([0.4, 0.6]))
    comp = SimpleNamespace(teacher=attr, student=attr, units=(HOSTILE, "good"), alignment=HOSTILE,
                           teacher_scores=np.array([0.5, -0.2]), student_scores=np.array([0.1, 0.3]),
                           metrics={"spearman": 0.5, "topk_jaccard": 1.0}, top_k=2)
    return (attribution_html(attr) + comparison_html(comp) + token_strip_html(attr) + aligned_html(comp)
            + legend_html(HOSTILE))


def case_util_helpers(request):
    """The shared helpers: chart titles, series names, reference lines, colours (attributes), x label; error
    boxes; table keys; a note's colour (an attribute)."""
    from distill_nb.widgets._util import error_html, note_html, svg_chart, table_html

    chart = svg_chart([(HOSTILE, [1, 2, 3], [0.1, 0.5, 0.3], HOSTILE), (HOSTILE, [1, 2], [0.2, 0.4], "#888", True)],
                      title=HOSTILE, hlines=[(0.4, HOSTILE, HOSTILE)], x_label=HOSTILE,
                      y_format=lambda y: HOSTILE)
    assert "stroke='&lt;img" in chart  # the colour attribute cannot be closed early: quotes are escaped
    return chart + error_html(HOSTILE) + table_html([(HOSTILE, "1")]) + note_html("x", colour=HOSTILE)


CASES = {name[len("case_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


@pytest.mark.parametrize("source", list(CASES))
def test_hostile_text_is_escaped(source, request, monkeypatch):
    """The hostile string from ``source`` reaches the HTML only escaped (and, where the source is shown, it is)."""
    result = CASES[source](request)
    markup, needle = result if isinstance(result, tuple) else (result, ESCAPED)
    assert markup.strip()
    assert_escaped(markup, needle)


def test_intended_markup_is_kept(runs_root):
    """Escaping is at the point of interpolation: the widgets' own markup stays markup."""
    from distill_nb.widgets import RunMonitor

    fabricated_run(runs_root, "kept", state="failed", error="out of memory: halve batch_size", message="failed")
    mon = RunMonitor.attach("kept", autostart=False)
    assert "<b>Run <code>kept</code></b>" in mon.header.value
    assert mon.run_error_box.value.startswith("<div style=") and "out of memory" in mon.run_error_box.value


def test_sidebar_puts_run_fields_in_the_dom_as_text():
    """The JupyterLab sidebar never writes run fields as HTML: no innerHTML/insertAdjacentHTML, and the run's
    state becomes a class name only when it is a known state."""
    src = Path(__file__).resolve().parents[1] / "labextension" / "src"
    for path in src.glob("*.ts"):
        text = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "dangerouslySetInnerHTML"):
            assert sink not in text, (path.name, sink)
    sidebar = "\n".join(p.read_text() for p in src.glob("*.ts"))  # the panel and its rows (rows.ts)
    assert "jp-DistillNb-state-${run.state}" not in sidebar and "stateClass(run.state)" in sidebar
