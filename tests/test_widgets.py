"""Widgets: live estimates equal models.describe, invalid shapes are not offered, exported configs round-trip,
Start makes a run that finishes, the monitor's poll follows a run directory, the explorer renders, errors show."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
import torch

pytest.importorskip("ipywidgets")

from distill_nb import models
from distill_nb.config import DistillConfig
from distill_nb.runs import Run, append_metrics, create_run, write_status
from distill_nb.widgets import (
    AttributionExplorer,
    Comparison,
    DistillApp,
    ErrorAnalysis,
    Launcher,
    RunMonitor,
    StudentDesigner,
    TeacherPicker,
)
from distill_nb.widgets.student import head_options
from distill_nb.widgets.teacher import CUSTOM as CUSTOM_CHOICE


@pytest.fixture(scope="module")
def teacher_config(tiny_teacher):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(tiny_teacher)


def test_picker_shows_shape_and_labels(tiny_teacher):
    picker = TeacherPicker(str(tiny_teacher))
    assert picker.error == ""
    assert picker.info["layers"] == 4 and picker.info["hidden"] == 32 and picker.info["is_classifier"]
    assert picker.info["params"] == models.estimate_params(picker.teacher_config)
    assert "LABEL_0" in picker.summary.value and "4 layers" in picker.summary.value
    assert "4 layers" in repr(picker)


def test_picker_bad_id_shows_error_not_traceback(tmp_path):
    picker = TeacherPicker(str(tiny_path := tmp_path / "nope"))
    assert "cannot load model" in picker.error and str(tiny_path) in picker.error
    assert "cannot load model" in picker._error_box.value
    assert picker.teacher_config is None and picker.info == {}
    assert "not loaded" in repr(picker)


def test_picker_bare_encoder_says_it_will_be_fine_tuned(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "enc")
    picker = TeacherPicker(str(tmp_path / "enc"))
    assert not picker.info["is_classifier"] and "fine-tunes it" in picker.summary.value


def test_packaged_teachers_listed_first():
    picker = TeacherPicker("minilm-l6")
    values = [v for _, v in picker.dropdown.options]
    assert values[: len(models.PACKAGED)] == list(models.PACKAGED)


@pytest.mark.parametrize("init", ["random", "every_k"])
def test_designer_live_estimates_match_describe(teacher_config, init):
    d = StudentDesigner(teacher_config, init=init)
    for layers in (1, 2, 3):
        d.layers_slider.value = layers
        if init == "random":
            d.hidden_slider.value = 16
            d.heads_slider.value = d.heads_slider.options[-1]
            d.ffn_slider.value = d.ffn_slider.options[0]
        scfg = models.student_config(teacher_config, n_layers=d.layers, hidden_size=d.hidden, n_heads=d.heads,
                                     ffn_size=d.ffn)
        expected = models.describe(scfg, teacher_config)
        assert d.estimates == expected
        assert f"{expected['mb']:.1f} MB" in d.estimate_box.value and f"{expected['speedup']:.2f}x" in \
            d.estimate_box.value
    assert d.error == ""


def test_designer_offers_only_valid_shapes(teacher_config):
    d = StudentDesigner(teacher_config, init="random")
    for hidden in d.hidden_slider.options:
        d.hidden_slider.value = hidden
        assert list(d.heads_slider.options) == head_options(hidden)
        assert all(hidden % h == 0 for h in d.heads_slider.options)
        assert d.hidden % d.heads == 0
        models.student_config(teacher_config, n_layers=d.layers, hidden_size=d.hidden, n_heads=d.heads,
                              ffn_size=d.ffn)  # never raises
    d.hidden_slider.value = 16
    d.heads = 3  # not a divisor of 16: refused, shown in the widget, shape stays valid
    assert d.error  # the refusal is shown in the widget
    assert d.heads_slider.value in head_options(16)
    # every_k: widths locked to the teacher's, layers capped at the teacher's
    d.init_dropdown.value = "every_k"
    assert (d.hidden, d.heads, d.ffn) == (32, 4, 64)
    assert d.hidden_slider.disabled and d.heads_slider.disabled and d.ffn_slider.disabled
    assert d.layers_slider.max == 4
    d.layers_slider.value = 4
    assert "copied by student" in d.map_box.value
    assert d.config_fields() == {"student_layers": 4, "student_hidden": None, "student_heads": None,
                                 "student_ffn": None, "student_init": "every_k", "student_vocab": "full",
                                 "student_layers_from": None}


def test_exported_config_round_trips(tmp_path, tiny_teacher, tiny_dataset):
    picker = TeacherPicker(str(tiny_teacher))
    designer = StudentDesigner(picker.teacher_config, layers=2)
    base = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text")
    launcher = Launcher(base, picker=picker, designer=designer)
    launcher.fields["temperature"].value = 4.0
    launcher.fields["alpha_ce"].value = 0.5
    launcher.fields["max_steps"].value = 7
    designer.layers_slider.value = 1
    path = launcher.export(str(tmp_path / "cfg.json"))
    loaded = DistillConfig.from_json(path)
    assert loaded == launcher.build_config()
    assert (loaded.temperature, loaded.alpha_ce, loaded.max_steps, loaded.student_layers) == (4.0, 0.5, 7, 1)
    assert json.loads(launcher.preview.value) == loaded.to_dict()
    launcher.fields["alpha_kd"].value = 0.0
    launcher.fields["alpha_ce"].value = 0.0  # all weights 0: ConfigError shown in the widget
    assert "all loss weights are 0" in launcher.error


def test_launcher_starts_a_masked_lm_run(tmp_path, tiny_dataset, runs_root):
    """objective='mlm' from the dropdown: the run distils the masked-LM teacher and reports masked-token accuracy."""
    from conftest import make_tiny_bert

    teacher = make_tiny_bert(tmp_path / "mlm-teacher", mlm=True)
    base = DistillConfig(teacher=str(teacher), dataset=str(tiny_dataset), text_column="text", max_steps=4,
                         batch_size=8, eval_every=2, checkpoint_every=2, max_length=16, device="cpu",
                         student_layers=1)
    launcher = Launcher(base, backend="subprocess", root=str(runs_root))
    launcher.fields["objective"].value = "mlm"
    assert json.loads(launcher.preview.value)["objective"] == "mlm"
    run = launcher.start()
    assert launcher.error == "", launcher.error
    assert run.wait(180).value == "completed", (run.path / "log.txt").read_text()[-2000:]
    assert run.config.objective == "mlm"
    evals = [m for m in run.metrics() if m.get("split") == "eval"]
    assert evals and evals[-1]["masked_tokens"] > 0 and 0 <= evals[-1]["accuracy"] <= 1


def test_start_runs_in_background_and_monitor_follows(tiny_teacher, tiny_dataset, runs_root):
    base = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text", max_steps=6,
                         batch_size=8, eval_every=3, checkpoint_every=3, max_length=16, device="cpu")
    monitor = RunMonitor(autostart=False)
    launcher = Launcher(base, monitor=monitor, backend="subprocess", root=str(runs_root))
    launcher.start_button.click()
    assert launcher.error == "" and launcher.run_id
    assert (runs_root / launcher.run_id / "config.json").is_file()
    assert launcher.start_button.disabled and not launcher.stop_button.disabled
    state = Run.attach(launcher.run_id, runs_root).wait(180)
    assert state.value == "completed", (runs_root / launcher.run_id / "log.txt").read_text()[-2000:]
    monitor.poll()
    assert monitor.state == "completed" and monitor.step == monitor.total_steps == 6
    assert 0 <= monitor.accuracy <= 1 and "<polyline" in monitor.loss_chart.value
    assert "completed" in repr(monitor)


def test_monitor_poll_updates_from_run_dir(runs_root):
    path = create_run(DistillConfig(teacher="tiny", max_steps=10), runs_root, "r1")
    write_status(path, state="running", step=0, total_steps=10, pid=None)
    mon = RunMonitor.attach("r1", autostart=False)
    assert mon.state == "running" and mon.step == 0
    for step in (1, 2, 3):
        append_metrics(path, {"step": step, "split": "train", "loss": 1.0 / step, "kd": 0.5, "lr": 1e-4,
                              "examples_per_s": 100.0})
    write_status(path, step=3, eta_s=7.0)
    mon.poll()
    assert (mon.step, mon.eta_s, mon.progress.value) == (3, 7.0, 3)
    assert "ETA 0:07" in mon.progress_text.value and "<polyline" in mon.loss_chart.value
    append_metrics(path, {"step": 3, "split": "eval", "accuracy": 0.75, "teacher_accuracy": 0.8,
                          "retention": 0.9375, "agreement": 0.9})  # same step as a train record already read
    mon.poll()
    assert mon.accuracy == 0.75 and mon.retention == 0.9375
    assert len(mon._train["step"]) == 3  # no duplicates from re-reading the newest step
    write_status(path, state="failed", error="CUDA out of memory. Halve batch_size", traceback="Traceback ...")
    finished = []
    mon.on_finish(lambda m: finished.append(m.state))
    assert mon.poll() is False
    assert mon.run_error.startswith("CUDA out of memory") and "CUDA out of memory" in mon.run_error_box.value
    assert finished == ["failed"] and mon.progress.bar_style == "danger"
    assert "svg" in mon.snapshot_html()


def test_monitor_polls_as_asyncio_task(runs_root):
    path = create_run(DistillConfig(teacher="tiny", max_steps=4), runs_root, "r2")
    write_status(path, state="running", step=0, total_steps=4, pid=None)

    async def scenario():
        mon = RunMonitor(Run(path), interval=0.05)  # a running loop: polls as a task on it, not a thread
        assert mon._task is not None and mon._thread is None
        for step in (1, 2):
            append_metrics(path, {"step": step, "split": "train", "loss": 1.0})
            await asyncio.sleep(0.2)
        assert mon.step == 2
        write_status(path, state="completed", step=4)
        await asyncio.sleep(0.2)
        assert mon.state == "completed" and not mon.polling
        return mon.polls

    assert asyncio.run(scenario()) >= 3


def test_callback_errors_show_in_widget(runs_root):
    launcher = Launcher(DistillConfig(teacher="tiny"), root=str(runs_root))
    launcher.stop_button.disabled = False
    launcher.stop_button.click()  # no run yet
    assert "no run to stop" in launcher.error and "no run to stop" in launcher._error_box.value
    assert launcher._traceback.outputs and "Traceback" in launcher._traceback.outputs[0]["text"]
    explorer = AttributionExplorer()
    explorer.explain_button.click()
    assert "empty" in explorer.error or "no models" in explorer.error
    comparison = Comparison()
    comparison.measure_button.click()
    assert "no run" in comparison.error and comparison.report is None


@pytest.fixture(scope="module")
def tiny_pair(tiny_teacher, tmp_path_factory):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval()
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    student = models.make_student(teacher, n_layers=2).eval()
    return teacher, tok, student


def test_attribution_explorer_renders_side_by_side(tiny_pair):
    teacher, tok, student = tiny_pair
    ex = AttributionExplorer(teacher, student, teacher_tokenizer=tok, examples=["the movie was great",
                                                                                "a boring film"], n_steps=4)
    assert ex.text == "the movie was great"
    comp = ex.explain()
    assert ex.error == "" and comp is ex.comparison
    assert "teacher" in ex.teacher_view.value and "student" in ex.student_view.value
    assert "great" in ex.teacher_view.value and "great" in ex.student_view.value
    assert "T − S" in ex.diff_view.value and "Spearman" in ex.metrics_view.value
    assert "against" in ex.legend.value and "display:inline-block" in ex.teacher_view.value  # a scale; tokens wrap
    assert set(ex.metrics) >= {"spearman", "topk_jaccard", "prediction_agree"}
    ex.method_dropdown.value = "saliency"
    assert ex.explain("a boring film").teacher.method == "saliency"
    assert "spearman" in repr(ex)


def test_error_analysis_sorts_filters_and_opens_rows(tiny_pair):
    teacher, tok, student = tiny_pair
    ex = AttributionExplorer(teacher, student, teacher_tokenizer=tok, method="saliency")
    texts = ["the movie was great", "a boring film", "i loved it", "awful acting", "what a mess", "fun story"]
    ea = ErrorAnalysis(ex, texts=texts, labels=[1, 0, 1, 0, 0, 1], label_names=["neg", "pos"], n_examples=6)
    ea.sweep_button.click()
    assert ea.error == "" and len(ea.result) == 6
    ranks = [int(r.split()[0][1:]) for r, _ in ea.rows.options]
    assert ranks == sorted(ranks) and len(ranks) == 6
    ea.label_filter.value = 1
    assert all(ea.result.labels[i] == 1 for i in ea.visible) and len(ea.visible) == 3
    ea.label_filter.value = -1  # all labels
    ea.disagree_only.value = True
    assert all(ea.result[i].metrics["prediction_agree"] == 0 for i in ea.visible)
    ea.disagree_only.value = False
    ea.confidence.value = (0.0, 1.0)
    ea.rows.value = ea.rows.options[-1][1]
    assert ex.comparison is ea.result[ea.selected] and ex.text == texts[ea.selected]


def test_app_shares_state(tiny_teacher, tiny_dataset, runs_root):
    cfg = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text", max_steps=2)
    app = DistillApp(cfg, backend="subprocess", root=str(runs_root))
    assert app.designer.teacher_config is app.picker.teacher_config
    assert app.designer.layers_slider.max == 4  # the tiny teacher's layers (every_k)
    app.designer.layers_slider.value = 1
    assert app.launcher.build_config().student_layers == 1
    assert json.loads(app.launcher.config_json)["student_layers"] == 1
    assert [app.tabs.get_title(i) for i in range(len(app.tabs.children))][:4] == ["Teacher", "Student", "Train",
                                                                                   "Monitor"]
    assert "DistillApp" in repr(app) and not math.isnan(app.designer.estimates["speedup"])


def test_monitor_updates_in_a_real_kernel_while_a_run_trains(tiny_teacher, tiny_dataset, runs_root):
    """ipykernel (7 here): the poll task runs between cells, widget updates reach iopub, cells stay fast."""
    import os
    import queue
    import time

    from jupyter_client.manager import start_new_kernel

    repo = str(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "DISTILL_NB_RUNS": str(runs_root), "PYTHONPATH": repo}
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    try:
        def execute(code: str) -> tuple[float, str]:
            texts: list[str] = []
            start = time.perf_counter()
            reply = kc.execute_interactive(code, timeout=120, output_hook=lambda m: texts.append(
                m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
            assert reply["content"]["status"] == "ok", reply["content"]
            return time.perf_counter() - start, "".join(texts).strip()

        _, out = execute(f"""
from distill_nb.config import DistillConfig
from distill_nb.widgets import Launcher, RunMonitor
mon = RunMonitor(interval=0.25)
cfg = DistillConfig(teacher={str(tiny_teacher)!r}, dataset={str(tiny_dataset)!r}, text_column="text",
                    max_steps=5000, batch_size=8, eval_every=100, checkpoint_every=10000, max_length=16,
                    device="cpu", num_threads=1)
launcher = Launcher(cfg, monitor=mon, backend="subprocess")
launcher.start()
print(type(mon._task).__name__, mon._thread, launcher.error)""")
        assert out == "Task None", out  # an asyncio task on the kernel's loop, not a thread
        steps, latencies, updates = [], [], 0
        deadline = time.time() + 120
        while time.time() < deadline and len({s for s in steps if s > 0}) < 3:
            idle_end = time.time() + 1.0  # the kernel is idle: only the poll task can send updates now
            while time.time() < idle_end:
                try:
                    msg = kc.get_iopub_msg(timeout=0.1)
                except queue.Empty:
                    msg = None
                if msg is not None:
                    updates += msg["msg_type"] == "comm_msg" and msg["content"]["data"].get("method") == "update"
            seconds, out = execute("print(mon.step, mon.state)")
            latencies.append(seconds)
            steps.append(int(out.split()[0]))
        assert len({s for s in steps if s > 0}) >= 3, steps  # the step kept advancing between cells
        assert steps == sorted(steps)
        assert updates > 0  # the frontend receives the new values without any cell running
        assert max(latencies) < 1.0, latencies
        execute("launcher.stop()")
        _, out = execute("import time\nfor _ in range(300):\n    if not mon.poll(): break\n    time.sleep(0.1)\n"
                         "print(mon.state)")
        assert out == "stopped"
    finally:
        km.shutdown_kernel(now=True)


# --- issue 16: cost before Start, one progress model, no stale state, data fields, Explain on long text -------
def test_monitor_shows_phase_progress_and_clears_on_a_new_run(runs_root):
    old = create_run(DistillConfig(teacher="tiny", max_steps=10, max_eval_examples=50), runs_root, "old")
    write_status(old, state="completed", step=10, total_steps=10, pid=None)
    for step in (5, 10):
        append_metrics(old, {"step": step, "split": "train", "loss": 1.0 / step})
        append_metrics(old, {"step": step, "split": "eval", "accuracy": 0.8, "teacher_accuracy": 0.9,
                             "retention": 0.89, "agreement": 0.95})
    mon = RunMonitor.attach("old", autostart=False)
    assert "<polyline" in mon.loss_chart.value and "on 50 eval examples" in mon.last_eval.value
    assert "eval accuracy (50 examples)" in mon.acc_chart.value and mon.accuracy == 0.8
    new = create_run(DistillConfig(teacher="tiny", max_steps=300), runs_root, "new")
    write_status(new, state="running", pid=None, phase="preparing_teacher", phase_step=40, phase_total=300,
                 eta_s=80.0, message="preparing the teacher")
    mon.watch(Run(new))
    assert mon.run_id == "new" and mon.phase == "preparing_teacher"
    assert "preparing the teacher 40/300" in mon.progress_text.value and "ETA 1:20" in mon.progress_text.value
    assert (mon.progress.value, mon.progress.max) == (40, 300)
    # nothing of the old run is left: no curves, no last-eval table, no accuracy
    assert "<polyline" not in mon.loss_chart.value and "<polyline" not in mon.acc_chart.value
    assert mon.last_eval.value == "" and math.isnan(mon.accuracy)
    assert [o[1] for o in mon.overlay_dropdown.options] == ["", "old"]  # earlier evals can be overlaid
    mon.overlay_dropdown.value = "old"
    assert "old acc" in mon.acc_chart.value and "stroke-dasharray='5 3'" in mon.acc_chart.value
    write_status(new, phase="training", phase_step=3, phase_total=300, step=3, total_steps=300)
    mon.poll()
    assert "training step 3/300 · phase 5/7" in mon.progress_text.value and "elapsed" in mon.progress_text.value


def test_monitor_smoothing_and_rounded_ticks(runs_root):
    path = create_run(DistillConfig(teacher="tiny", max_steps=40), runs_root, "s")
    write_status(path, state="running", pid=None, step=40, total_steps=40)
    for step in range(1, 41):
        append_metrics(path, {"step": step, "split": "train", "loss": 1.0 + (step % 2)})
    mon = RunMonitor.attach("s", autostart=False)
    raw = mon.loss_chart.value
    assert ">40 step<" in raw and "0.30000000000000004" not in raw and "<title>loss at step 3: 2</title>" in raw
    mon.smoothing_slider.value = 0.9
    assert mon.loss_chart.value != raw and "smoothed 0.90" in mon.loss_chart.value


def test_monitor_says_resume_where_the_button_is(runs_root):
    path = create_run(DistillConfig(teacher="tiny"), runs_root, "f")
    write_status(path, state="failed", pid=None, error="the worker process died (last step 3); resume() continues "
                 "from the last checkpoint.")
    mon = RunMonitor.attach("f", autostart=False)
    assert "Resume continues" in mon.run_error_box.value and "resume()" not in mon.run_error_box.value


def test_monitor_shows_an_unreadable_run(runs_root):
    path = create_run(DistillConfig(teacher="tiny"), runs_root, "u")
    (path / "status.json").write_bytes(b"\xff\xfe not json")
    mon = RunMonitor.attach("u", autostart=False)
    assert mon.state == "unreadable" and "cannot be read" in mon.run_error_box.value and not mon.polling


def test_launcher_double_click_launches_one_run(monkeypatch, tiny_teacher, tiny_dataset, runs_root):
    import distill_nb.runs as runs

    calls = []

    def fake_launch(config, **kw):
        calls.append(config)
        return Run(create_run(config, runs_root))

    monkeypatch.setattr(runs, "launch", fake_launch)
    base = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text", max_steps=2)
    launcher = Launcher(base, root=str(runs_root))
    launcher.start_button.click()
    launcher.start_button.click()  # the second click of a double-click
    assert len(calls) == 1 and launcher.start_button.disabled


def test_launcher_failed_start_enables_start_again(tmp_path, runs_root):
    launcher = Launcher(DistillConfig(teacher=str(tmp_path / "missing"), text_column="text"), root=str(runs_root))
    launcher.start_button.click()
    assert launcher.error and not launcher.start_button.disabled


@pytest.mark.parametrize("state, start_enabled", [("running", False), ("queued", False), ("stopped", True),
                                                  ("completed", True)])
def test_a_failed_start_keeps_the_buttons_of_the_run_the_launcher_holds(monkeypatch, tiny_teacher, tiny_dataset,
                                                                        runs_root, state, start_enabled):
    """Re-running start(run_id=...) fails ("run already exists"): a live run keeps Stop and gets no second Start."""
    base = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text", max_steps=2)
    path = create_run(base, runs_root, "mine")
    write_status(path, state=state, pid=None, claimed=True)
    launcher = Launcher(base, root=str(runs_root))
    launcher.run_id = "mine"
    launcher._buttons(state)
    launcher.start(run_id="mine")  # guarded: the error is shown in the tab
    assert "already exists" in launcher.error or "exists" in launcher.error, launcher.error
    assert launcher.start_button.disabled is not start_enabled
    assert launcher.stop_button.disabled is start_enabled


def test_launcher_offers_the_files_columns_and_counts_steps(tmp_path, tiny_teacher, runs_root):
    data = tmp_path / "reviews.csv"
    data.write_text("id,review,category\n" + "".join(f"{i},the movie was good,{i % 2}\n" for i in range(50)))
    base = DistillConfig(teacher=str(tiny_teacher), dataset=str(data), batch_size=8, max_steps=None, epochs=1.0,
                         eval_every=3)
    launcher = Launcher(base, root=str(runs_root))  # text_column="sentence" is not in the file
    assert list(launcher.fields["text_column"].allowed_tags) == ["id", "review", "category"]
    assert launcher.fields["text_column"].value == ["review"] and launcher.fields["label_column"].value == "category"
    config = launcher.build_config()
    assert (config.text_column, config.label_column) == ("review", "category")
    assert "review" in launcher.columns_note.value and "category" in launcher.columns_note.value
    # 50 rows, one file: 45 train (10 % held out), 6 steps of 8, evaluated at 3 and 6
    assert launcher.plan["train_examples"] == 45 and launcher.plan["total_steps"] == 6
    assert launcher.plan["evaluations"] == 2 and "<b>6</b> steps" in launcher.estimate.value
    launcher.fields["teacher_prep_steps"].value = 17
    assert launcher.build_config().teacher_prep_steps == 17
    launcher.fields["label_column"].value = "nope"
    assert "nope" in launcher.estimate.value  # the missing column is named before Start


def test_launcher_prints_a_readable_learning_rate(tiny_teacher, runs_root):
    launcher = Launcher(DistillConfig(teacher=str(tiny_teacher)), root=str(runs_root))
    launcher.fields["learning_rate"].value = 10 ** -4.3
    assert json.loads(launcher.preview.value)["learning_rate"] == 5e-05
    assert '"learning_rate": 5e-05' in launcher.preview.value


def test_estimate_measures_this_machine_and_stores_the_rate(tiny_teacher, tiny_dataset, monkeypatch, tmp_path):
    from distill_nb.widgets import estimate

    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path / "cache"))
    config = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text", batch_size=8,
                           max_steps=20, max_length=16, device="cpu")
    assert estimate.stored_rates(config) is None
    launcher = Launcher(config)
    assert "press Estimate time" in launcher.estimate.value and "<b>20</b> steps" in launcher.estimate.value
    rates = launcher.measure()
    assert rates["student_train_s"] > 0 and rates["teacher_forward_s"] > 0
    assert "≈" in launcher.estimate.value and "on CPU" in launcher.estimate.value
    assert estimate.stored_rates(config) == rates  # the next app reads it instead of measuring
    secs = estimate.minutes(launcher.plan, rates, 8)
    assert secs["training"] == pytest.approx(20 * rates["student_train_s"])


def test_app_reattached_shows_the_runs_config(tiny_teacher, tiny_dataset, runs_root):
    cfg = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text", max_steps=7,
                        student_layers=2, temperature=4.0, learning_rate=3e-4, batch_size=16, alpha_ce=0.5)
    path = create_run(cfg, runs_root, "attached")
    write_status(path, state="stopped", pid=None, step=3, total_steps=7)
    app = DistillApp(run_id="attached", root=str(runs_root))
    built = app.launcher.build_config()
    for key in ("teacher", "max_steps", "student_layers", "temperature", "learning_rate", "batch_size", "alpha_ce",
                "text_column", "dataset"):
        assert getattr(built, key) == getattr(cfg, key), key
    assert not app.launcher.resume_button.disabled and not app.launcher.start_button.disabled
    app.close()  # a stopped run is watched slowly for a resume from elsewhere: end it


def test_app_defaults_are_workshop_sized():
    from distill_nb.widgets.workshop import app_config

    cfg = app_config()
    assert cfg.max_steps and cfg.max_steps <= 500 and cfg.max_train_examples and cfg.teacher_prep_steps <= 300


def test_picker_bad_id_keeps_dropdown_and_config_agreeing(tiny_teacher, tmp_path):
    picker = TeacherPicker(str(tiny_teacher))
    picker.text.value = str(tmp_path / "typo")
    picker.load_button.click()
    assert "cannot load model" in picker.error and "stays" in picker.error
    assert picker.teacher == str(tiny_teacher) and picker.teacher_config is not None
    assert picker.dropdown.value == CUSTOM_CHOICE and picker.text.value == str(tiny_teacher)
    picker.dropdown.value = "minilm-l6"
    picker.text.value = str(tmp_path / "typo")
    picker.load_button.click()
    assert picker.teacher == "minilm-l6" and picker.dropdown.value == "minilm-l6"


def test_explorer_target_class_names_and_clear(tiny_pair):
    teacher, tok, student = tiny_pair
    ex = AttributionExplorer(teacher, student, teacher_tokenizer=tok, label_names=["negative", "positive"],
                             n_steps=4, method="saliency")
    long_text = " ".join(["the movie was very good but the acting was awful and the story was boring"] * 3)
    assert len(long_text.split()) > 40
    ex.target_dropdown.value = 0
    comp = ex.explain(long_text)
    assert comp.teacher.target == 0 and comp.student.target == 0
    assert "explaining class <b>negative</b>" in ex.status.value and "teacher → " in ex.teacher_view.value
    assert "(0)" not in ex.teacher_view.value  # names, not ids
    assert "flex-wrap:wrap" in ex.diff_view.value  # the aligned view wraps instead of running off the side
    ex.clear()
    assert ex.comparison is None and ex.teacher_view.value == "" and ex.diff_view.value == "" and ex.text == ""


def test_errors_headers_and_compare_without_a_run(tiny_pair):
    teacher, tok, student = tiny_pair
    ex = AttributionExplorer(teacher, student, teacher_tokenizer=tok, method="saliency")
    ea = ErrorAnalysis(ex, texts=["good", "bad"], labels=[1, 0], label_names=["neg", "pos"], n_examples=2)
    ea.run_sweep()
    assert "teacher says" in ea.table.value and "teacher_pred" not in ea.table.value
    assert "on these 2 examples" in ea.summary.value
    comp = Comparison()
    assert comp.chart.layout.display == "none"  # no broken image before a report


def test_launcher_several_text_columns(tmp_path, tiny_teacher, runs_root):
    """Two text columns become a list when the config takes one; otherwise the tab says the config refuses it."""
    data = tmp_path / "pairs.csv"
    data.write_text("premise,hypothesis,label\n" + "".join(f"a good movie,it was fun,{i % 2}\n" for i in range(20)))
    launcher = Launcher(DistillConfig(teacher=str(tiny_teacher), dataset=str(data)), root=str(runs_root))
    launcher.fields["text_column"].value = ["premise", "hypothesis"]
    takes_lists = "list" in str(DistillConfig.__annotations__["text_column"])
    if takes_lists:
        assert launcher.build_config().text_column == ["premise", "hypothesis"] and launcher.error == ""
    else:
        assert "text_column" in launcher.error


def test_monitor_draws_the_reason_agreement_curve_and_the_launcher_has_alpha_attr(runs_root):
    path = create_run(DistillConfig(teacher="tiny", max_steps=4), runs_root, "reasons")
    write_status(path, state="running", step=0, total_steps=4, pid=None)
    mon = RunMonitor.attach("reasons", autostart=False)
    for step, rho in ((2, 0.31), (4, None)):  # None: no probe example gave a Spearman value
        append_metrics(path, {"step": step, "split": "train", "loss": 1.0, "kd": 0.5, "attr": 0.7})
        append_metrics(path, {"step": step, "split": "eval", "accuracy": 0.7, "teacher_accuracy": 0.8,
                              "retention": 0.875, "agreement": 0.9, "reason_spearman": rho, "reason_topk": 0.5,
                              "reason_sign": 0.8, "reason_s": 0.1})
    mon.poll()
    assert "reason agreement (probe)" in mon.reason_chart.value and "<polyline" in mon.reason_chart.value
    assert "reason agreement" in mon.snapshot_html() and "attr" in mon.loss_chart.value
    assert math.isnan(mon.reason_spearman) or mon.reason_spearman == pytest.approx(0.31)
    off = create_run(DistillConfig(teacher="tiny", max_steps=2, reason_probe=0), runs_root, "no-reasons")
    append_metrics(off, {"step": 2, "split": "eval", "accuracy": 0.7, "teacher_accuracy": 0.8})
    quiet = RunMonitor.attach("no-reasons", autostart=False)
    assert "off (reason_probe=0)" in quiet.reason_chart.value
    launcher = Launcher(DistillConfig(teacher="tiny"))
    launcher.fields["alpha_attr"].value = 0.5
    assert launcher.build_config().alpha_attr == 0.5 and "α attribution" in launcher.children[2].value


def test_students_table_marks_the_better_student():
    import pandas as pd

    from distill_nb.widgets.comparison import students_html

    frame = pd.DataFrame([{"run": "kd", "accuracy": 0.80, "teacher_accuracy": 0.85, "alpha_attr": 0.0,
                           "reason_spearman": 0.40, "reason_topk": 0.5, "reason_sign": 0.7,
                           "comprehensiveness": 0.2, "sufficiency": 0.1},
                          {"run": "aligned", "accuracy": 0.79, "teacher_accuracy": 0.85, "alpha_attr": 1.0,
                           "reason_spearman": 0.55, "reason_topk": float("nan"), "reason_sign": 0.8,
                           "comprehensiveness": 0.3, "sufficiency": 0.05}]).set_index("run")
    html = students_html(frame)
    assert "<b>0.550</b>" in html and "<b>0.8000</b>" in html and "<b>0.050</b>" in html and ">-<" in html


def test_waiting_on_a_monitor_without_a_run_says_what_to_do():
    mon = RunMonitor()
    for call in (mon.wait, lambda: asyncio.run(mon.wait_async())):
        with pytest.raises(RuntimeError, match="shows no run.*run the launch cell first.*RunMonitor.attach"):
            call()


class _NonFinite(torch.nn.Module):
    """``model`` whose logit 0 is ``value`` on every text (``every=True``) or on texts with ``word`` only."""

    def __init__(self, model, value: float, token_id: int | None = None):
        super().__init__()
        self.model, self.value, self.token_id = model, value, token_id

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward(self, input_ids, attention_mask):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        hit = torch.ones(len(logits), dtype=torch.bool) if self.token_id is None else (input_ids == self.token_id).any(1)
        first = torch.zeros_like(logits, dtype=torch.bool)
        first[:, 0] = True
        return torch.where(hit[:, None] & first, torch.full_like(logits, self.value), logits)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("who", ["student", "both", "some student rows"])
def test_errors_tab_never_calls_a_nonfinite_model_good(tiny_pair, value, who):
    """NaN/inf logits are no prediction: no ✓ row, no "agree on 100%", the count said, never label_names[-1]."""
    teacher, tok, _ = tiny_pair
    texts = ["the movie was good", "bad film", "a great story", "it was awful"]
    bad_id = tok.convert_tokens_to_ids("awful") if who == "some student rows" else None
    student = _NonFinite(teacher, value, bad_id)

    class Explorer:
        method = "saliency"

        def models(self):
            return (student if who == "both" else teacher), tok, student, tok

        def show(self, comparison):
            pass

    ea = ErrorAnalysis(Explorer(), texts=texts, labels=[0, 0, 0, 0], label_names=["neg", "pos"], n_examples=4,
                       n_steps=2)
    ea.run_sweep()
    assert ea.error == ""
    n_bad = 1 if bad_id is not None else 4
    assert f"student's outputs are NaN/inf on {n_bad} of 4 examples" in ea.summary.value
    assert ("teacher's outputs are NaN/inf on 4 of 4" in ea.summary.value) == (who == "both")
    if bad_id is None:
        assert "agree on 0%" in ea.summary.value and "student 0.00" in ea.summary.value
        assert not any("✓" in label for label, _ in ea.rows.options)
    rows = {i: label for label, i in ea.rows.options}
    assert len(rows) == 4  # a NaN teacher (no confidence) is not filtered out by the full confidence range
    broken = [i for i in range(4) if bad_id is None or i == 3]
    assert all("⚠" in rows[i] and "S:none (NaN/inf)" in rows[i] and "S:pos" not in rows[i] for i in broken)
    assert ea.result.order[0] in broken
    assert "NaN/inf" in repr(ea)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("who", ["student", "both"])
def test_attribution_explorer_says_a_nonfinite_model_made_no_prediction(tiny_pair, value, who):
    """Not "→ class -1 (p=nan)" nor the last label's name: the model made no prediction."""
    teacher, tok, _ = tiny_pair
    student = _NonFinite(teacher, value)
    ex = AttributionExplorer(student if who == "both" else teacher, student, teacher_tokenizer=tok,
                             label_names=["negative", "positive"], method="saliency")
    ex.explain("the movie was good")
    assert "student → no prediction (NaN/inf outputs)" in ex.student_view.value
    assert ("teacher → no prediction" in ex.teacher_view.value) == (who == "both")
    assert "-1" not in ex.student_view.value.split("</div>")[0] and "p=nan" not in ex.student_view.value
    if who == "both":
        assert "no class (NaN/inf outputs)" in ex.legend.value
