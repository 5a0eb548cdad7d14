"""Start/Stop/Resume and the monitor follow the run's real state: a late Stop, a second Resume, a run resumed
elsewhere, an opened run whose teacher is gone, an unreadable run. Fabricated run folders, no real worker."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

pytest.importorskip("ipywidgets")

from distill_nb import worker
from distill_nb.config import DistillConfig
from distill_nb.runs import Run, append_metrics, create_run, write_status
from distill_nb.widgets import DistillApp, Launcher, RunMonitor


def _monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("RunMonitor-")]


@pytest.fixture(autouse=True)
def no_leaked_polls():
    """Every test here ends its monitors' background polls (close / stop_polling)."""
    before = set(_monitor_threads())
    yield
    deadline = time.time() + 5
    while [t for t in _monitor_threads() if t not in before] and time.time() < deadline:
        time.sleep(0.05)
    assert not [t for t in _monitor_threads() if t not in before], "a RunMonitor thread was left polling"


def buttons(launcher: Launcher) -> dict[str, bool]:
    """Which buttons can be pressed."""
    return {b: not getattr(launcher, f"{b}_button").disabled for b in ("start", "stop", "resume")}


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture()
def no_worker(monkeypatch):
    """worker.start records the call and starts nothing: the run stays queued (its launcher, this process, lives)."""
    calls = []
    monkeypatch.setattr(worker, "start", lambda path, backend="auto", nproc=2: calls.append(path) or "subprocess")
    return calls


def _launcher(runs_root, run_id: str, state: str, monitor=None) -> Launcher:
    launcher = Launcher(DistillConfig(teacher="tiny"), monitor=monitor, root=str(runs_root))
    launcher.run_id = run_id
    launcher.run_finished(state)
    return launcher


# --- F7: a Stop click that arrives after the run finished --------------------------------------------------------
def test_stop_after_the_run_completed_leaves_the_buttons_usable(runs_root):
    path = create_run(DistillConfig(teacher="tiny", max_steps=6), runs_root, "done")
    write_status(path, state="running", pid=None, step=5, total_steps=6)
    launcher = _launcher(runs_root, "done", "running")
    assert buttons(launcher) == {"start": False, "stop": True, "resume": False}
    write_status(path, state="completed", step=6)  # finished; the browser still shows Stop enabled
    launcher.stop_button.click()
    assert launcher.error == ""
    assert buttons(launcher) == {"start": True, "stop": False, "resume": False}
    assert "already finished" in launcher.message.value and "asked run" not in launcher.message.value
    assert not (path / "STOP").exists()


def test_a_click_on_a_disabled_stop_is_ignored(runs_root):
    path = create_run(DistillConfig(teacher="tiny", max_steps=6), runs_root, "done2")
    write_status(path, state="completed", pid=None, step=6, total_steps=6)
    launcher = _launcher(runs_root, "done2", "completed")
    launcher.message.value = ""
    launcher.stop_button.click()  # the click was sent while the button was enabled, it arrives after the poll
    assert buttons(launcher) == {"start": True, "stop": False, "resume": False}
    assert launcher.message.value == "" and launcher.error == ""


# --- F8: Resume clicked twice; Resume on a run that is already running ---------------------------------------------
def test_resume_twice_starts_one_worker_and_no_error(runs_root, no_worker):
    path = create_run(DistillConfig(teacher="tiny", max_steps=60), runs_root, "twice")
    write_status(path, state="stopped", pid=None, step=20, total_steps=60)
    monitor = RunMonitor(autostart=False)
    launcher = _launcher(runs_root, "twice", "stopped", monitor)
    assert buttons(launcher)["resume"]
    launcher.resume_button.click()
    launcher.resume_button.click()  # the second click of a double-click
    assert len(no_worker) == 1 and launcher.error == ""
    assert buttons(launcher) == {"start": False, "stop": True, "resume": False}
    assert monitor.run_id == "twice" and monitor.state == "queued"


def test_resume_of_a_run_already_running_follows_it(runs_root, no_worker):
    path = create_run(DistillConfig(teacher="tiny", max_steps=60), runs_root, "busy")
    write_status(path, state="stopped", pid=None, step=20, total_steps=60)
    monitor = RunMonitor(autostart=False)
    launcher = _launcher(runs_root, "busy", "stopped", monitor)
    monitor.watch(Run(path))
    write_status(path, state="running", step=21)  # resumed elsewhere (sidebar, CLI, another notebook)
    launcher.resume_button.click()  # the app still shows the run stopped: Resume is enabled
    assert no_worker == []  # Run.resume refused (RunBusy): no second worker
    assert launcher.error == "", launcher.error  # no error panel for a run that simply runs
    assert "already running" in launcher.message.value
    assert buttons(launcher) == {"start": False, "stop": True, "resume": False}
    assert monitor.state == "running" and monitor.step == 21  # the monitor watches it again


def test_a_failed_resume_sets_the_buttons_from_the_runs_state(runs_root):
    path = create_run(DistillConfig(teacher="tiny", max_steps=6), runs_root, "fin")
    write_status(path, state="completed", pid=None, step=6, total_steps=6)
    launcher = _launcher(runs_root, "fin", "stopped")  # the app shows it stopped; it completed meanwhile
    launcher.resume_button.click()
    assert "already completed" in launcher.error
    assert buttons(launcher) == {"start": True, "stop": False, "resume": False}


# --- F9: a run resumed elsewhere ------------------------------------------------------------------------------
def test_monitor_on_a_stopped_run_notices_a_resume_elsewhere(runs_root):
    path = create_run(DistillConfig(teacher="tiny", max_steps=10), runs_root, "elsewhere")
    write_status(path, state="stopped", pid=None, step=3, total_steps=10)
    for step in (1, 2, 3):
        append_metrics(path, {"step": step, "split": "train", "loss": 1.0})
    mon = RunMonitor(Run(path), interval=0.05, idle_interval=0.05)
    try:
        time.sleep(0.2)  # the background poll has found the run stopped
        assert mon.state == "stopped" and mon.polling and not mon.watching  # a slow status check goes on
        polls = mon.polls
        time.sleep(0.3)
        assert mon.polls == polls  # stopped: only status.json is read, the widgets are not redrawn
        finished = []
        mon.on_finish(lambda m: finished.append(m.state))
        write_status(path, state="running", step=4)  # Run.attach(id).resume() in another process
        append_metrics(path, {"step": 4, "split": "train", "loss": 0.5})
        assert wait_for(lambda: mon.state == "running" and mon.step == 4), (mon.state, mon.step)
        assert mon.watching and mon._train["step"] == [1, 2, 3, 4]
        write_status(path, state="completed", step=10)
        assert wait_for(lambda: mon.state == "completed" and not mon.polling)  # completed: the poll ends
        assert finished == ["completed"] and mon.progress.bar_style == "success"
    finally:
        mon.close()


def test_monitor_slow_poll_ends_on_watch_close_and_deletion(runs_root):
    a = create_run(DistillConfig(teacher="tiny"), runs_root, "a")
    write_status(a, state="failed", pid=None, error="boom; Resume continues")
    b = create_run(DistillConfig(teacher="tiny"), runs_root, "b")
    write_status(b, state="stopped", pid=None)
    mon = RunMonitor(Run(a), interval=0.05, idle_interval=0.05)
    first = mon._thread
    assert mon.polling and first.is_alive()
    mon.watch(Run(b))
    assert not first.is_alive() and mon.polling and len(_monitor_threads()) >= 1
    second = mon._thread
    Run(b).delete()  # a deleted run is never resumed: nothing to wait for
    assert wait_for(lambda: not second.is_alive())
    mon.watch(Run(a))
    third = mon._thread
    mon.close()
    assert not third.is_alive() and not mon.polling


def test_monitor_slow_poll_as_asyncio_task(runs_root):
    path = create_run(DistillConfig(teacher="tiny", max_steps=4), runs_root, "task")
    write_status(path, state="stopped", pid=None, step=1, total_steps=4)

    async def scenario():
        mon = RunMonitor(Run(path), interval=0.02, idle_interval=0.02)
        assert mon._task is not None and mon._thread is None
        await asyncio.sleep(0.1)  # the task has found the run stopped: it only checks its status now
        assert mon.polling and mon.state == "stopped"
        write_status(path, state="running", step=2)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if mon.state == "running":
                break
        assert mon.state == "running" and mon.step == 2
        mon.stop_polling()
        await asyncio.sleep(0.05)
        assert not mon.polling
        return mon.state

    assert asyncio.run(scenario()) == "running"


def test_app_buttons_follow_a_run_resumed_elsewhere(tiny_teacher, tiny_dataset, runs_root):
    cfg = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text", max_steps=50)
    path = create_run(cfg, runs_root, "sidebar")
    write_status(path, state="stopped", pid=None, step=3, total_steps=50)
    app = DistillApp(run_id="sidebar", root=str(runs_root))
    try:
        assert app.monitor.state == "stopped" and app.monitor.polling
        assert buttons(app.launcher) == {"start": True, "stop": False, "resume": True}
        app.monitor.idle_interval = app.monitor.interval = 0.05
        app.monitor.start_polling()
        write_status(path, state="running", step=4)  # the sidebar's Resume
        assert wait_for(lambda: app.monitor.state == "running")
        assert wait_for(lambda: buttons(app.launcher) == {"start": False, "stop": True, "resume": False})
        write_status(path, state="stopped", step=5)  # stopped elsewhere too
        assert wait_for(lambda: buttons(app.launcher) == {"start": True, "stop": False, "resume": True})
        assert app.monitor.progress.bar_style == "warning" and app.monitor.step == 5
    finally:
        app.close()
    assert not app.monitor.polling


# --- F10: the opened run's teacher is gone ---------------------------------------------------------------------
def test_open_run_keeps_a_missing_teacher_and_clears_the_error_later(tiny_teacher, tiny_dataset, runs_root,
                                                                     tmp_path):
    gone = tmp_path / "teacher_gone"  # never there (deleted since the run)
    base = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text", max_steps=6)
    for run_id, teacher in (("ok", str(tiny_teacher)), ("gone", str(gone))):
        write_status(create_run(base.replace(teacher=teacher), runs_root, run_id), state="completed", pid=None,
                     step=6, total_steps=6)
    app = DistillApp(base, root=str(runs_root))
    try:
        app.open_run("gone")
        assert app.launcher.build_config().teacher == str(gone)  # Start runs what the run ran, not another teacher
        assert app.picker.teacher == str(gone) and str(gone) in app.picker.error
        assert app.picker.teacher_config is None and "cannot be loaded" in app.launcher.message.value
        app.open_run("ok")
        assert app.picker.error == "" and app.picker.teacher == str(tiny_teacher)
        assert app.launcher.build_config().teacher == str(tiny_teacher) and app.picker.teacher_config is not None
        assert "cannot be loaded" not in app.launcher.message.value
    finally:
        app.close()


def test_open_run_clears_a_picker_error_for_the_same_teacher(tiny_teacher, tiny_dataset, runs_root):
    base = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text", max_steps=6)
    write_status(create_run(base, runs_root, "same"), state="completed", pid=None, step=6, total_steps=6)
    app = DistillApp(base, root=str(runs_root))
    try:
        app.picker.error = "FileNotFoundError: an earlier failure"
        app.open_run("same")  # the picker already holds this teacher: it is read again, the stale error goes
        assert app.picker.error == "" and app.picker.teacher_config is not None
    finally:
        app.close()


def test_open_run_says_when_it_replaces_settings_the_person_edited(tiny_teacher, tiny_dataset, runs_root):
    """Re-running the quickstart's launch cell after editing the config: the run is shown, and the edits it
    replaces are named instead of vanishing."""
    base = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text", max_steps=6)
    write_status(create_run(base, runs_root, "done"), state="completed", pid=None, step=6, total_steps=6)
    app = DistillApp(base.replace(max_steps=60, temperature=4.0), root=str(runs_root))
    try:
        app.open_run("done")
        message = app.launcher.message.value
        assert "max_steps 60 → 6" in message and "temperature 4.0 → 2.0" in message and "another run id" in message
        assert app.launcher.build_config().max_steps == 6
        app.open_run("done")  # nothing edited since: no warning
        assert "other settings" not in app.launcher.message.value
    finally:
        app.close()


# --- F11: an unreadable run -----------------------------------------------------------------------------------
def test_unreadable_run_offers_no_resume_and_a_red_bar(tiny_teacher, tiny_dataset, runs_root):
    cfg = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text", max_steps=6)
    path = create_run(cfg, runs_root, "garbled")
    (path / "status.json").write_text("{not json")
    app = DistillApp(run_id="garbled", root=str(runs_root))
    try:
        assert app.monitor.state == "unreadable"
        assert buttons(app.launcher) == {"start": True, "stop": False, "resume": False}
        assert app.monitor.progress.bar_style == "danger"
    finally:
        app.close()
    launcher = _launcher(runs_root, "garbled", "unreadable")
    assert buttons(launcher) == {"start": True, "stop": False, "resume": False}


def test_a_monitor_says_so_when_its_run_is_deleted(tiny_teacher, tiny_dataset, runs_root):
    """The idle poll of a stopped run finds its folder gone: it looks once more (shown, not left stale), then ends."""
    from distill_nb.widgets import RunMonitor

    base = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text", max_steps=6)
    path = create_run(base, runs_root, "doomed")
    write_status(path, state="stopped", pid=None, step=3, total_steps=6)
    mon = RunMonitor.attach("doomed", autostart=False)
    try:
        assert mon.poll() is False and mon.state == "stopped"
        assert mon._tick(True) == (mon.idle_interval, True)  # stopped: it may be resumed elsewhere, keep checking
        Run(path).delete()
        assert mon._tick(True) == (None, True)  # gone: the poll ends ...
        assert mon.state == "unreadable" and "no longer exists" in mon.run_error_box.value  # ... after saying so
    finally:
        mon.close()
