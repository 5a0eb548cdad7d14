"""Background runs: the caller stays free, stop/resume/kill/attach, a queue per device, corrupt lines."""

from __future__ import annotations

import os
import time

import pytest

from distill_nb import DistillConfig
from distill_nb.runs import Run, Status, create_run, launch, list_runs, read_metrics, read_status, validate_run_id, write_status


def config(teacher, data, **kw) -> DistillConfig:
    base = dict(teacher=str(teacher), dataset=str(data), text_column="text", student_layers=2, batch_size=4,
                max_steps=600, eval_every=200, checkpoint_every=50, student_dropout=0.0)
    return DistillConfig(**{**base, **kw})


def wait_for(predicate, timeout=90.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def train_steps(run: Run) -> list[int]:
    return [m["step"] for m in run.metrics() if m.get("split") == "train"]


def test_launch_returns_at_once_and_metrics_stream_while_caller_works(tiny_teacher, tiny_dataset, runs_root):
    start = time.perf_counter()
    run = launch(config(tiny_teacher, tiny_dataset), backend="subprocess", run_id="bg")
    assert time.perf_counter() - start < 2.0  # returns before any model is loaded
    assert run.state in (Status.QUEUED, Status.RUNNING)
    wait_for(lambda: len(run.metrics()) > 5, what="first metrics")
    # the caller is free: it does its own work while the run trains, and metrics keep growing
    n_before, busy = len(run.metrics()), sum(i * i for i in range(200_000))
    wait_for(lambda: len(run.metrics()) > n_before + 5, what="more metrics")
    assert busy > 0
    last = train_steps(run)[-1]  # the run keeps writing: read once, then ask only for what came after it
    assert all(r["step"] > last for r in run.metrics(since=last)) and run.metrics(since=10**9) == []
    status = run.stop(wait=60)
    assert status["state"] == "stopped" and status["step"] < 600
    assert [r["run_id"] for r in list_runs()] == ["bg"]


def test_stop_resume_and_reattach_give_continuous_metrics(tiny_teacher, tiny_dataset, runs_root):
    run = launch(config(tiny_teacher, tiny_dataset, max_steps=120, checkpoint_every=20), backend="subprocess")
    wait_for(lambda: len(train_steps(run)) >= 30, what="30 steps")
    assert run.stop(wait=60)["state"] == "stopped"
    stopped_at = run.status()["step"]
    again = Run.attach(run.id)  # as a fresh kernel would, by id only
    assert again.state == Status.STOPPED and again.status()["step"] == stopped_at
    again.resume(backend="subprocess")
    assert again.wait(120) == Status.COMPLETED
    assert train_steps(again) == list(range(1, 121))
    assert again.status()["final"]["step"] == 120
    with pytest.raises(ValueError, match="already completed"):
        again.resume()


def test_kill_minus_nine_is_detected_and_resume_completes(tiny_teacher, tiny_dataset, runs_root):
    run = launch(config(tiny_teacher, tiny_dataset, max_steps=150, checkpoint_every=20), backend="subprocess")
    wait_for(lambda: len(train_steps(run)) >= 50, what="50 steps")
    run.kill()
    wait_for(lambda: run.state == Status.FAILED, timeout=20, what="stale detection")
    status = run.status()
    assert status["stale"] and "Resume" in status["error"]
    run.resume(backend="subprocess")
    assert run.wait(120) == Status.COMPLETED
    assert train_steps(run) == list(range(1, 151))  # none lost, none twice


def test_two_runs_on_one_device_queue(tiny_teacher, tiny_dataset, runs_root):
    first = launch(config(tiny_teacher, tiny_dataset, max_steps=100000), backend="subprocess", run_id="first")
    wait_for(lambda: first.state == Status.RUNNING and first.metrics(), what="first running")
    second = launch(config(tiny_teacher, tiny_dataset, max_steps=20), backend="subprocess", run_id="second")
    time.sleep(6)  # long enough for the second worker to start and reach the device lock
    assert second.state == Status.QUEUED and second.metrics() == []
    assert "waiting for device" in second.status()["message"]
    first.stop(wait=60)
    assert second.wait(120) == Status.COMPLETED


def test_corrupt_last_metrics_line_is_skipped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n{"step": 2, "spl')
    assert read_metrics(tmp_path) == [{"step": 1, "split": "train"}]


@pytest.mark.parametrize("bad", ["../etc", "/abs", "a/b", "..", "", ".hidden", "x" * 200, None])
def test_run_ids_are_validated(bad):
    with pytest.raises(ValueError, match="invalid run id"):
        validate_run_id(bad)


def test_kernel_backend_runs_in_its_own_jupyter_kernel(tiny_teacher, tiny_dataset, runs_root):
    run = launch(config(tiny_teacher, tiny_dataset, max_steps=20), backend="kernel")
    assert run.status()["backend"] == "kernel"
    assert not (run.path / "kernel.json").exists()  # the connection file (it holds a key) stays out of the run
    assert run.wait(120) == Status.COMPLETED, run.status()
    assert train_steps(run) == list(range(1, 21))


# --- second-round probes: launch/resume/delete races and odd arguments -----------------------------------------
@pytest.mark.parametrize("nproc", [0, -1, "x", True, 2.0, None])
def test_a_bad_nproc_is_refused_before_anything_is_written(tmp_path, nproc):
    from distill_nb.runs import launch

    with pytest.raises(ValueError, match="nproc=.* is invalid"):
        launch(DistillConfig(teacher="tiny", max_steps=1), backend="torchrun", nproc=nproc, root=tmp_path,
               run_id="r", check=False)
    assert not (tmp_path / "r").exists()
    path = create_run(DistillConfig(teacher="tiny", max_steps=1), tmp_path, "s")
    write_status(path, state="stopped")
    with pytest.raises(ValueError, match="nproc=.* is invalid"):
        Run(path).resume(backend="torchrun", nproc=nproc)
    assert read_status(path)["state"] == "stopped"


def test_two_launches_of_one_id_at_once_the_second_is_told_it_exists(tmp_path, monkeypatch):
    from distill_nb import rundir

    create_run(DistillConfig(teacher="tiny"), tmp_path, "same")
    monkeypatch.setattr(rundir.os.path, "lexists", lambda p: False)  # both passed the check before either renamed
    with pytest.raises(FileExistsError, match="run 'same' already exists"):
        create_run(DistillConfig(teacher="tiny"), tmp_path, "same")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]  # no temp folder left


def test_a_runs_root_that_is_a_file_is_named(tmp_path):
    (tmp_path / "afile").write_text("x")
    for root in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        with pytest.raises(ValueError, match="is \\(or is inside\\) a file"):
            create_run(DistillConfig(teacher="tiny"), root, "r")


@pytest.mark.parametrize("state,claimed", [("running", None), ("queued", True), ("completed", None)])
def test_the_launcher_never_records_its_worker_over_an_owner(tmp_path, state, claimed):
    from distill_nb import rundir

    path = create_run(DistillConfig(teacher="tiny"), tmp_path, "r")
    write_status(path, state=state, pid=4242, claimed=claimed)
    assert rundir.update_unclaimed(path, pid=999999, backend="subprocess") is None
    status = rundir._read_raw_status(path)
    assert status["pid"] == 4242 and status.get("backend") is None
    write_status(path, state="queued", claimed=None)
    assert rundir.update_unclaimed(path, pid=5151)["pid"] == 5151


def test_delete_with_a_leftover_trash_folder_of_the_same_name(tmp_path):
    for _ in range(2):
        path = create_run(DistillConfig(teacher="tiny"), tmp_path, "x")
        write_status(path, state="completed")
        (tmp_path / f".deleting-x-{os.getpid()}").mkdir(exist_ok=True)
        (tmp_path / f".deleting-x-{os.getpid()}" / "junk").write_text("left by a failed rmtree")
        Run(path).delete()
        assert not path.exists()


@pytest.mark.parametrize("kind", ["fifo", "file", "link"])
def test_delete_of_a_handle_on_something_that_is_no_folder_never_blocks_or_follows(kind, tmp_path):
    """Run(path) takes any path: a FIFO there blocked rmtree for good. Only a run folder is deleted: a FIFO, a
    file or a link is refused, untouched, and what a link points to is never reached."""
    import threading

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    path = tmp_path / "runs" / "r"
    path.parent.mkdir()
    {"fifo": lambda: os.mkfifo(path), "file": lambda: path.write_text("x"),
     "link": lambda: path.symlink_to(outside)}[kind]()
    out = {}
    thread = threading.Thread(target=lambda: out.update(error=_error_of(Run(path).delete)), daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        os.close(os.open(path.parent / next(p.name for p in path.parent.iterdir()), os.O_RDWR | os.O_NONBLOCK))
        pytest.fail("Run.delete() blocked")
    assert isinstance(out["error"], ValueError) and "yourself" in str(out["error"])
    assert (outside / "keep.txt").read_text() == "x" and os.path.lexists(path)  # refused, nothing touched
    assert [p.name for p in path.parent.iterdir()] == ["r"]  # no trash left behind


def _error_of(call):
    try:
        call()
    except Exception as e:  # noqa: BLE001 — handed to the test
        return e
    return None


def test_resume_of_a_run_deleted_meanwhile_says_so(tmp_path, monkeypatch):
    import shutil

    from distill_nb import rundir
    from distill_nb.rundir import RunNotFound

    path = create_run(DistillConfig(teacher="tiny"), tmp_path, "gone")
    write_status(path, state="stopped")
    real = rundir.transition

    def deleted_first(p, *a, **k):
        shutil.rmtree(p)
        return real(p, *a, **k)

    monkeypatch.setattr(rundir, "transition", deleted_first)
    with pytest.raises(RunNotFound, match="no longer exists"):
        Run(path).resume()


def test_resume_racing_a_delete_at_the_config_read_says_run_not_found(tmp_path, monkeypatch):
    import shutil

    from distill_nb.rundir import RunNotFound

    path = create_run(DistillConfig(teacher="tiny"), tmp_path, "gone")
    write_status(path, state="stopped")
    real = Run.config

    def deleted_first(self):
        shutil.rmtree(self.path)
        return real.fget(self)

    monkeypatch.setattr(Run, "config", property(deleted_first))
    with pytest.raises(RunNotFound, match="no longer exists"):
        Run(path).resume()
