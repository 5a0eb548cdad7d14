"""The worker's guarantees (issue 12), with real processes and tiny models.

1. nothing in a run directory is imported or executed; 2. exactly one worker per run, a completed run is never
trained again, resuming never changes a run's config; 3. each step once in metrics.jsonl after any kill/resume;
4. non-finite loss, gradient or weights fail the run and never save a NaN student; 6. every failure path ends
with its real reason (device set-up, a real full disk); 7. the device queue is first come, first served;
and (issue 16) a run survives a restart of the kernel that launched it.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import finishes
from safetensors.torch import load_file

from distill_nb import DistillConfig, rundir, worker
from distill_nb.checkpoint import latest_checkpoint
from distill_nb.precision import cpu_bf16_supported
from distill_nb.cli import main as cli
from distill_nb.rundir import RunBusy, Status, create_run, read_metrics, read_status
from distill_nb.runs import Run, launch
from distill_nb.train import train


def tiny(teacher: Path, data: Path, **kw) -> DistillConfig:
    base = dict(teacher=str(teacher), dataset=str(data), text_column="text", student_layers=2, max_steps=8,
                batch_size=8, eval_every=4, checkpoint_every=3, seed=0, student_dropout=0.0)
    return DistillConfig(**{**base, **kw})


def wait_for(predicate, timeout: float = 120, what: str = "") -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def train_steps(path: Path) -> list[int]:
    return [r["step"] for r in read_metrics(path) if r.get("split") == "train"]


def assert_each_step_once(path: Path, total: int) -> None:
    assert train_steps(path) == list(range(1, total + 1)), train_steps(path)
    evals = [r["step"] for r in read_metrics(path) if r["split"] == "eval"]
    assert len(evals) == len(set(evals)) and evals[-1] == total, evals


def quiet(*_):
    pass


# --- 1. nothing in a run directory runs ---------------------------------------------------------------------------
PLANTED = ["safetensors", "torch", "transformers", "json", "sitecustomize", "usercustomize", "distill_nb"]


@pytest.mark.parametrize("backend", ["subprocess", "kernel"])
def test_modules_planted_in_a_run_directory_never_run(tiny_teacher, tiny_dataset, runs_root, backend, tmp_path):
    path = create_run(tiny(tiny_teacher, tiny_dataset, max_steps=3), runs_root, "planted")
    rundir.write_status(path, state="stopped")  # as a stopped run that someone resumes from the sidebar
    marker = tmp_path / "pwned"
    for name in PLANTED:
        code = f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n"
        if name == "distill_nb":
            (path / name).mkdir()
            (path / name / "__init__.py").write_text(code)
        else:
            (path / f"{name}.py").write_text(code)
    Run(path).resume(backend=backend)
    assert Run(path).wait(180) == Status.COMPLETED, (path / "log.txt").read_text()[-2000:]
    assert not marker.exists(), f"code from the run directory ran: {marker.read_text()}"


def test_worker_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("JPY_PARENT_PID", "4242")
    monkeypatch.setenv("JPY_SESSION_NAME", "x.ipynb")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["relative/dir", "", "/abs/dir"]))
    env = worker.worker_env()
    assert not any(k.startswith("JPY_") for k in env) and "MPLBACKEND" not in env
    assert env["PYTHONSAFEPATH"] == "1"
    assert all(os.path.isabs(p) for p in env["PYTHONPATH"].split(os.pathsep)) and "/abs/dir" in env["PYTHONPATH"]


LEAKED_RENDEZVOUS = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999", "TORCHELASTIC_RUN_ID": "x", "GROUP_RANK": "0"}


def test_a_rendezvous_left_in_the_callers_environment_never_reaches_a_worker(monkeypatch, tiny_teacher, tiny_dataset,
                                                                            runs_root):
    """A kernel started under torchrun (or a copied cell) leaves RANK/WORLD_SIZE/MASTER_*: a plain launch must still
    be one process that trains and writes its run (RANK=1 alone made it train and write nothing)."""
    from distill_nb.runs import launch

    for key, value in LEAKED_RENDEZVOUS.items():
        monkeypatch.setenv(key, value)
    env = worker.worker_env()
    assert not set(LEAKED_RENDEZVOUS) & set(env)
    run = launch(tiny(tiny_teacher, tiny_dataset, max_steps=2), root=runs_root, backend="subprocess")
    run.wait(120)
    status = run.status()
    assert status["state"] == "completed" and status.get("world_size", 1) == 1, status
    assert (run.path / "student" / "config.json").is_file()


# --- 2. one worker per run; completed runs and configs are never overwritten -------------------------------------
def test_double_resume_starts_one_worker(tiny_teacher, tiny_dataset, runs_root):
    path = create_run(tiny(tiny_teacher, tiny_dataset, max_steps=12), runs_root, "double")
    rundir.write_status(path, state="stopped")
    results, barrier = [], threading.Barrier(2)

    def click():
        barrier.wait()
        try:
            Run(path).resume(backend="subprocess")
            results.append("started")
        except RunBusy as e:
            results.append(f"busy: {e}")

    threads = [threading.Thread(target=click) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r[:7] for r in results) == ["busy: r", "started"], results
    assert "already queued" in [r for r in results if r.startswith("busy")][0]
    assert Run(path).wait(180) == Status.COMPLETED
    assert_each_step_once(path, 12)
    assert (path / "log.txt").read_text().count("resumed from") == 0  # one worker, one pass


def test_second_worker_on_a_running_run_exits_without_touching_it(tiny_teacher, tiny_dataset, runs_root):
    run = launch(tiny(tiny_teacher, tiny_dataset, max_steps=400, checkpoint_every=100), backend="subprocess",
                 run_id="busy")
    try:
        wait_for(lambda: len(train_steps(run.path)) > 3, what="training")
        before = read_status(run.path)
        assert worker.main(run.path) == worker.EXIT_BUSY
        after = read_status(run.path)
        assert after["pid"] == before["pid"] and after["state"] == "running"
        with pytest.raises(RunBusy, match="already running"):
            train(run.config, run.path, log=quiet)
    finally:
        run.stop(wait=60)
    assert run.state is Status.STOPPED


def test_completed_run_is_never_trained_again(tiny_teacher, tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_NB_RUNS", str(tmp_path / "runs"))
    cfg = tiny(tiny_teacher, tiny_dataset, max_steps=4)
    path = create_run(cfg, tmp_path / "runs", "done")
    assert worker.main(path) == 0 and read_status(path)["state"] == "completed"
    student = (path / "student" / "model.safetensors").read_bytes()
    metrics = (path / "metrics.jsonl").read_bytes()
    # every door: the worker entry, train(), resume(), the CLI with the same and with another config
    assert worker.main(path) == worker.EXIT_BUSY
    with pytest.raises(ValueError, match="completed"):
        train(cfg, path, log=quiet)
    with pytest.raises(ValueError, match="already completed"):
        Run(path).resume(backend="subprocess")
    other = tmp_path / "new.json"
    other.write_text(cfg.replace(learning_rate=1e-3).to_json())
    same = tmp_path / "same.json"
    same.write_text(cfg.to_json())
    for config_file in (same, other):
        assert cli(["run", str(config_file), "--run-dir", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("never trained again") >= 2 and "Traceback" not in err  # completed first: whatever the config
    assert (path / "student" / "model.safetensors").read_bytes() == student
    assert (path / "metrics.jsonl").read_bytes() == metrics
    assert DistillConfig.from_json(path / "config.json") == cfg


def test_resume_with_another_config_is_refused_and_fork_makes_a_new_run(tiny_teacher, tiny_dataset, runs_root):
    cfg = tiny(tiny_teacher, tiny_dataset, max_steps=9, checkpoint_every=3)
    path = create_run(cfg, runs_root, "orig")
    rundir.request_stop(path)
    rundir.clear_stop(path)

    def stop_at_4(p, rec, real=rundir.append_metrics):
        real(p, rec)
        if rec.get("step") == 4:
            rundir.request_stop(p)

    rundir_append, rundir.append_metrics = rundir.append_metrics, stop_at_4
    try:
        train(cfg, path, log=quiet)
    finally:
        rundir.append_metrics = rundir_append
    assert read_status(path)["state"] == "stopped"
    stopped_at = read_status(path)["step"]
    rundir.clear_stop(path)
    saved = (path / "config.json").read_bytes()
    with pytest.raises(Exception, match="another config"):
        train(cfg.replace(learning_rate=1e-3), path, log=quiet)
    assert (path / "config.json").read_bytes() == saved and read_status(path)["state"] == "stopped"
    # a checkpoint carries its config: editing config.json by hand does not sneak a new lr into a resume
    (path / "config.json").write_text(cfg.replace(learning_rate=1e-3).to_json())
    with pytest.raises(Exception, match="another config"):
        train(cfg.replace(learning_rate=1e-3), path, log=quiet)
    status = read_status(path)
    assert status["state"] == "failed" and "was written with another config" in status["error"]
    assert train_steps(path)[-1] == stopped_at  # nothing trained with the edited settings
    (path / "config.json").write_bytes(saved)
    fork = Run(path).fork(run_id="orig-lr", backend="subprocess", learning_rate=1e-3)
    assert fork.wait(180) == Status.COMPLETED and fork.config.learning_rate == 1e-3
    assert Run(path).config.learning_rate == cfg.learning_rate and not (path / "student").exists()
    # the checkpoint's own config.json stays the student's: an unfinished run's student loads from it
    from transformers import AutoModelForSequenceClassification

    ckpt = latest_checkpoint(path)
    assert AutoModelForSequenceClassification.from_pretrained(ckpt).config.num_hidden_layers == 2
    assert DistillConfig.from_json(ckpt / "distill_config.json") == cfg


# --- 3. each step once, whatever was killed when ------------------------------------------------------------------
def test_killed_before_the_first_checkpoint_then_resumed_logs_each_step_once(tiny_teacher, tiny_dataset, tmp_path,
                                                                             monkeypatch):
    cfg = tiny(tiny_teacher, tiny_dataset, max_steps=10, checkpoint_every=100, eval_every=3)
    real = rundir.append_metrics

    def die_at_7(path, rec):
        real(path, rec)
        if rec.get("step") == 7 and rec["split"] == "train":
            raise KeyboardInterrupt  # as a kill would, before any checkpoint exists

    monkeypatch.setattr(rundir, "append_metrics", die_at_7)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", log=quiet)
    assert latest_checkpoint(tmp_path / "run") is None and train_steps(tmp_path / "run")[-1] == 7
    monkeypatch.setattr(rundir, "append_metrics", real)
    train(cfg, tmp_path / "run", log=quiet)
    assert_each_step_once(tmp_path / "run", 10)


def test_kill_minus_nine_at_random_points_gives_the_uninterrupted_student(tiny_teacher, tiny_dataset, runs_root,
                                                                          tmp_path):
    total = 30
    cfg = tiny(tiny_teacher, tiny_dataset, max_steps=total, checkpoint_every=4, eval_every=5)
    train(cfg, tmp_path / "straight", log=quiet)
    run = launch(cfg, backend="subprocess", run_id="killed")
    rng, kills = random.Random(12), 0
    try:
        while run.wait(0.01) is not Status.COMPLETED and kills < 3:
            target = min(total - 1, (train_steps(run.path) or [0])[-1] + rng.randint(1, 8))
            wait_for(lambda: (train_steps(run.path) or [0])[-1] >= target or not run.state.active, what="a step")
            if not run.state.active:
                break
            run.kill()
            kills += 1
            wait_for(lambda: not run.state.active, 30, "the kill to show")
            assert run.state is Status.FAILED and run.status()["stale"]
            run.resume(backend="subprocess")
        assert run.wait(180) is Status.COMPLETED, (run.path / "log.txt").read_text()[-2000:]
    finally:
        run.kill()
    assert kills >= 2
    assert_each_step_once(run.path, total)
    a, b = load_file(run.path / "student" / "model.safetensors"), load_file(tmp_path / "straight" / "student" /
                                                                              "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


# --- 4. non-finite numbers fail the run, keep the last good checkpoint, never save a NaN student -------------------
class _InfGrad(torch.autograd.Function):
    """Zero in the forward pass, an infinite gradient in the backward pass."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sum() * 0

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.full_like(x, float("inf"))


def _poison(kind: str, monkeypatch) -> None:
    """Make training go non-finite after a few good steps (and checkpoints), in one of four ways."""
    import distill_nb.train as tr

    real_kd, calls = tr.losses.kd_loss, {"n": 0}

    def kd(*args, **kwargs):
        calls["n"] += 1
        loss = real_kd(*args, **kwargs)
        if calls["n"] < 6:
            return loss
        if kind == "loss-nan":
            return loss * float("nan")
        if kind == "loss-inf":
            return loss + float("inf")
        if kind == "grad-inf":  # a finite loss whose gradient is infinite
            return loss + _InfGrad.apply(args[0])
        return loss

    monkeypatch.setattr(tr.losses, "kd_loss", kd)
    if kind == "weights-nan":  # loss and gradients stay finite: a weight the loss never reads goes NaN
        real_save = tr.save_checkpoint

        def save(run_dir, student, *args, **kwargs):
            if calls["n"] >= 6:
                with torch.no_grad():
                    student.bert.embeddings.position_embeddings.weight[-1].fill_(float("nan"))
            return real_save(run_dir, student, *args, **kwargs)

        monkeypatch.setattr(tr, "save_checkpoint", save)


@pytest.mark.parametrize("kind", ["loss-nan", "loss-inf", "grad-inf", "weights-nan"])
def test_non_finite_training_fails_and_keeps_the_last_good_checkpoint(tiny_teacher, tiny_dataset, tmp_path,
                                                                      monkeypatch, kind, capsys):
    cfg = tiny(tiny_teacher, tiny_dataset, max_steps=12, checkpoint_every=2, eval_every=100)
    _poison(kind, monkeypatch)
    run = tmp_path / "run"
    with pytest.raises(FloatingPointError):
        train(cfg, run, log=quiet)
    status = read_status(run)
    assert status["state"] == "failed" and "diverged" in status["error"] and "learning_rate" in status["error"]
    assert not (run / "student").exists()
    ckpt = latest_checkpoint(run)
    assert ckpt is not None
    weights = load_file(ckpt / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert not list((run / "checkpoints").glob(".tmp-*"))
    strict = json.loads((run / "status.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert strict["state"] == "failed"


def test_cli_exits_non_zero_for_a_diverged_run(tiny_teacher, tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_NB_RUNS", str(tmp_path / "runs"))
    _poison("loss-nan", monkeypatch)
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(tiny(tiny_teacher, tiny_dataset, max_steps=12).to_json())
    assert cli(["run", str(cfg_file), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "diverged at step" in err and "Traceback" not in err


# --- 6. every failure path says the real reason ---------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only host's message")
@pytest.mark.parametrize("fields, words", [({"device": "cuda"}, "CUDA is not available"),
                                           ({"device": "cuda:1"}, "CUDA is not available"),
                                           ({"precision": "fp16"}, "needs a CUDA device"),
                                           # bf16 runs on a CPU with native bf16 (test_precision covers it)
                                           *([] if cpu_bf16_supported() else
                                             [({"precision": "bf16"}, "native bf16")])])
def test_device_and_precision_failures_say_why(tiny_teacher, tiny_dataset, runs_root, fields, words):
    run = launch(tiny(tiny_teacher, tiny_dataset, **fields), backend="subprocess", run_id="dev", check=False)
    assert run.wait(120) is Status.FAILED
    status = run.status()
    assert words in status["error"] and not status.get("stale"), status
    assert "died" not in status["error"]


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_real_full_disk_fails_with_the_reason_and_leaves_no_partial_checkpoint(tiny_teacher, tiny_dataset,
                                                                                 tmp_path):
    cfg = tiny(tiny_teacher, tiny_dataset, max_steps=10, checkpoint_every=2, eval_every=100, keep_checkpoints=5)
    probe = tmp_path / "probe"
    train(cfg.replace(max_steps=3), probe, log=quiet)
    ckpt_bytes = sum(f.stat().st_size for f in latest_checkpoint(probe).rglob("*") if f.is_file())
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "16m"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount); the full-disk path is then only "
                    "covered by test_faults' simulated ENOSPC")
    try:
        free = shutil.disk_usage(disk).free
        room = int(ckpt_bytes * 2.5) + 512 * 1024  # two checkpoints fit, the third does not
        with open(disk / "filler", "wb") as f:
            f.write(b"\0" * max(0, free - room))
        run = disk / "run"
        with pytest.raises(Exception) as info:
            train(cfg, run, log=quiet)
        assert "No space left on device" in str(info.value) or "os error 28" in str(info.value)
        status = read_status(run)
        assert status["state"] == "failed" and "disk is full" in status["error"], status
        assert not list((run / "checkpoints").glob(".tmp-*")) and not (run / ".tmp-student").exists()
        good = latest_checkpoint(run)
        assert good is not None and all(torch.isfinite(v).all() for v in load_file(good / "model.safetensors").values())
        (disk / "filler").unlink()  # space freed: Resume finishes
        train(cfg, run, log=quiet)
        assert read_status(run)["state"] == "completed"
        assert_each_step_once(run, 10)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# --- 7. first come, first served --------------------------------------------------------------------------------------
def test_device_queue_is_first_come_first_served(tiny_teacher, tiny_dataset, runs_root):
    queue = runs_root / ".queue"
    queue.mkdir(parents=True)
    order = ["c-first", "a-second", "b-third"]  # names sort differently from arrival
    with open(queue / "cpu.lock", "w") as busy:
        fcntl.flock(busy, fcntl.LOCK_EX)  # another run holds the CPU
        runs = []
        for i, run_id in enumerate(order):
            runs.append(launch(tiny(tiny_teacher, tiny_dataset, max_steps=2, device="cpu"), backend="subprocess",
                               run_id=run_id))
            wait_for(lambda: len(list((queue / "cpu").glob("*"))) == i + 1, 60, f"{run_id} in the queue")
    for run in runs:
        assert run.wait(180) is Status.COMPLETED
    started = sorted(runs, key=lambda r: r.status()["started_at"])
    assert [r.id for r in started] == order


# --- issue 16: a restart of the launching kernel does not kill the run --------------------------------------------------
def test_run_survives_a_restart_of_the_kernel_that_launched_it(tiny_teacher, tiny_dataset, runs_root):
    from jupyter_client.manager import KernelManager

    cfg = tiny(tiny_teacher, tiny_dataset, max_steps=300, checkpoint_every=50, eval_every=100)
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ, "DISTILL_NB_RUNS": str(runs_root)}, independent=False)  # like a notebook's
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        reply = kc.execute_interactive(
            "from distill_nb import DistillConfig, launch\n"
            f"run = launch(DistillConfig.from_json({cfg.to_json()!r}), run_id='survivor')\n"
            "print(run.status()['backend'])", timeout=120)
        assert reply["content"]["status"] == "ok"
        path = runs_root / "survivor"
        wait_for(lambda: len(train_steps(path)) >= 5, 120, "training in the background kernel")
        status = read_status(path)
        assert status["backend"] == "kernel"
        environ = Path(f"/proc/{status['pid']}/environ").read_bytes().split(b"\0")
        assert not [e for e in environ if e.startswith(b"JPY_PARENT_PID=")]
        km.restart_kernel(now=True)  # what "Restart kernel" does
        steps_at_restart = len(train_steps(path))
        wait_for(lambda: len(train_steps(path)) > steps_at_restart + 10, 60, "training to go on after the restart")
        assert read_status(path)["state"] == "running"
        # the new kernel re-attaches by id and stops it
        reply = kc.execute_interactive("from distill_nb.runs import Run\nprint(Run.attach('survivor').stop(wait=60)"
                                       "['state'])", timeout=120)
        assert reply["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        Run(runs_root / "survivor").kill() if (runs_root / "survivor").exists() else None
    assert read_status(path)["state"] == "stopped"
    steps = train_steps(path)
    assert steps == list(range(1, len(steps) + 1))  # no step lost or doubled across the restart


@pytest.mark.parametrize("damage", ["truncated", "list", "missing", "directory", "bad-state"])
def test_a_completed_run_with_a_damaged_status_is_still_never_trained_again(tiny_teacher, tiny_dataset, tmp_path,
                                                                          damage):
    config = tiny(tiny_teacher, tiny_dataset, max_steps=2)
    path = tmp_path / "run"
    train(config, path, log=quiet)
    weights = (path / "student" / "model.safetensors").read_bytes()
    status = path / "status.json"
    if damage == "truncated":
        status.write_text('{"state": "compl')
    elif damage == "list":
        status.write_text("[1]")
    elif damage == "missing":
        status.unlink()
    elif damage == "directory":
        status.unlink()
        status.mkdir()
    else:
        status.write_text('{"state": "exploded"}')
    with pytest.raises(ValueError, match="never trained again"):
        train(config, path, log=quiet)
    assert worker.main(path) == worker.EXIT_BUSY
    assert (path / "student" / "model.safetensors").read_bytes() == weights


def test_a_stop_answered_before_the_worker_starts_stands(tiny_teacher, tiny_dataset, tmp_path, monkeypatch):
    """Resume queues the run; a Stop lands before its worker starts (answered "stopped"): no training follows."""
    path = create_run(tiny(tiny_teacher, tiny_dataset, max_steps=2), tmp_path, "r")
    rundir.write_status(path, state=Status.STOPPED)
    answers = []

    def start_late(run_path, backend, nproc):
        answers.append(Run(run_path).stop(wait=None)["state"])  # the Stop click, in between
        return str(worker.main(run_path))  # then the worker runs, in-process

    monkeypatch.setattr(worker, "start", start_late)
    Run(path).resume()
    assert answers == ["stopped"]
    assert read_status(path)["state"] == "stopped" and not (path / "student").exists()
    assert not read_metrics(path)


def test_a_stop_left_from_before_does_not_stop_the_resumed_run(tiny_teacher, tiny_dataset, tmp_path, monkeypatch):
    path = create_run(tiny(tiny_teacher, tiny_dataset, max_steps=2), tmp_path, "r")
    rundir.write_status(path, state=Status.STOPPED)
    rundir.request_stop(path)  # an old STOP file
    monkeypatch.setattr(worker, "start", lambda run_path, backend, nproc: str(worker.main(run_path)))
    Run(path).resume()
    assert read_status(path)["state"] == "completed"


# --- the device queue and the run's own files never follow a link, never block on a FIFO ----------------------------
def plant(where: Path, kind: str, outside: Path) -> None:
    """Put a ``kind`` ("link", "dangling", "folder", "file", "fifo") at ``where``; a link points to ``outside``."""
    where.parent.mkdir(parents=True, exist_ok=True)
    if kind == "link":
        where.symlink_to(outside)
    elif kind == "dangling":
        where.symlink_to(outside.parent / "nowhere")
    elif kind == "folder":
        where.mkdir()
    elif kind == "file":
        where.write_text("x")
    else:
        os.mkfifo(where)


def victims(tmp_path: Path) -> tuple[Path, Path]:
    """A folder whose entries sort like tickets and around them, and a file: what a link may point to."""
    folder, file = tmp_path / "victim_home", tmp_path / "victim.txt"
    folder.mkdir()
    for name in [".bashrc", "-notes.txt", "0-important.txt", f"{1:020d}-1-x-r", "zz-later.txt"]:
        (folder / name).write_text("precious")
    file.write_text("precious")
    return folder, file


def untouched(folder: Path, file: Path) -> bool:
    return ({p.name for p in folder.iterdir()} == {f"{1:020d}-1-x-r", "-notes.txt", ".bashrc", "0-important.txt",
                                                  "zz-later.txt"}
            and all(p.read_text() == "precious" for p in folder.iterdir()) and file.read_text() == "precious")


QUEUE_DAMAGE = [(".queue", "link"), (".queue", "file"), (".queue", "fifo"), (".queue/cpu", "link"),
                (".queue/cpu", "dangling"), (".queue/cpu", "file"), (".queue/cpu", "fifo"), (".queue/cpu.lock", "link"),
                (".queue/cpu.lock", "dangling"), (".queue/cpu.lock", "folder"), (".queue/cpu.lock", "fifo")]


@pytest.mark.parametrize("where, kind", QUEUE_DAMAGE)
def test_the_device_queue_refuses_links_and_odd_kinds_and_touches_nothing_outside(tmp_path, where, kind):
    folder, file = victims(tmp_path)
    root = tmp_path / "runs"
    path = create_run(DistillConfig(teacher="t", max_steps=5, device="cpu"), root, "r")
    plant(root / where, kind, file if where.endswith(".lock") else folder)
    got = finishes(lambda: worker.wait_for_device("cpu", path), fifo=root / where)
    error = got.get("error")
    assert isinstance(error, OSError) and str(root / where) in str(error) and "remove it" in str(error), got
    assert untouched(folder, file)
    if (root / ".queue" / "cpu").is_dir() and not (root / ".queue" / "cpu").is_symlink():
        assert list((root / ".queue" / "cpu").iterdir()) == []  # its own ticket is taken back


def test_the_device_queue_deletes_only_dead_tickets_that_are_regular_files(tmp_path):
    folder, file = victims(tmp_path)
    root = tmp_path / "runs"
    path = create_run(DistillConfig(teacher="t", max_steps=5, device="cpu"), root, "r")
    queue = root / ".queue" / "cpu"
    queue.mkdir(parents=True)
    (queue / f"{1:020d}-1-x-dead").write_text("")  # a dead waiter's ticket: nobody holds it
    (queue / f"{2:020d}-2-x-link").symlink_to(file)
    (queue / f"{3:020d}-3-x-folder").mkdir()
    os.mkfifo(queue / f"{4:020d}-4-x-fifo")
    (queue / "0-notes.txt").write_text("not a ticket")
    lock = finishes(lambda: worker.wait_for_device("cpu", path), fifo=queue / f"{4:020d}-4-x-fifo")["value"]
    lock.close()
    assert sorted(p.name for p in queue.iterdir()) == ["0-notes.txt", f"{2:020d}-2-x-link", f"{3:020d}-3-x-folder",
                                                       f"{4:020d}-4-x-fifo"]
    assert untouched(folder, file)


@pytest.mark.parametrize("name", ["my run", "ünïcode-run", ".hidden", "run\nwith-newline"])
def test_a_run_folder_whose_name_is_no_run_id_still_gets_its_turn(name, tmp_path):
    """A worker started on any folder (train() and the CLI take one): its ticket counts as one, or it would wait
    behind nobody for ever."""
    path = tmp_path / "runs" / name
    path.mkdir(parents=True)
    lock = finishes(lambda: worker.wait_for_device("cpu", path))["value"]
    lock.close()
    assert list((tmp_path / "runs" / ".queue" / "cpu").iterdir()) == []  # its ticket is taken back


def test_a_worker_whose_device_queue_is_a_link_fails_with_the_reason(tmp_path):
    folder, file = victims(tmp_path)
    root = tmp_path / "runs"
    path = create_run(DistillConfig(teacher="t", max_steps=5, device="cpu"), root, "r")
    (root / ".queue").mkdir()
    (root / ".queue" / "cpu").symlink_to(folder)
    (root / ".queue" / "cpu.lock").symlink_to(file)
    assert worker.main(path) == 1
    status = read_status(path)
    assert status["state"] == "failed" and "device queue" in status["error"], status
    assert str(root / ".queue" / "cpu") in status["error"] and "remove it" in status["error"]
    assert untouched(folder, file) and rundir.worker_lock_free(path)


@pytest.mark.parametrize("kind", ["folder", "fifo", "link", "dangling"])
def test_an_odd_worker_lock_ends_the_run_with_the_reason_and_resume_names_it(tmp_path, kind):
    folder, file = victims(tmp_path)
    path = create_run(DistillConfig(teacher="t", max_steps=5, device="cpu"), tmp_path / "runs", "r")
    lock = path / ".worker.lock"
    plant(lock, kind, file)
    assert finishes(lambda: worker.main(path), fifo=lock) == {"value": 1}  # a worker started by hand
    status = read_status(path)
    assert status["state"] == "failed" and str(lock) in status["error"] and "remove it" in status["error"], status
    error = finishes(lambda: Run(path).resume(backend="subprocess"), fifo=lock).get("error")
    assert isinstance(error, OSError) and str(lock) in str(error) and "remove it" in str(error), error  # no worker
    assert read_status(path)["state"] == "failed" and str(lock) in read_status(path)["error"]
    assert untouched(folder, file) and not (path / "log.txt").exists()


@pytest.mark.parametrize("kind", ["folder", "fifo", "link"])
def test_an_odd_log_file_is_refused_before_a_worker_starts(tmp_path, kind):
    folder, file = victims(tmp_path)
    path = create_run(DistillConfig(teacher="t", max_steps=5, device="cpu"), tmp_path / "runs", "r")
    plant(path / "log.txt", kind, file)
    error = finishes(lambda: worker.start(path, "subprocess"), fifo=path / "log.txt").get("error")
    assert isinstance(error, OSError) and str(path / "log.txt") in str(error) and "remove it" in str(error), error
    status = read_status(path)
    assert status["state"] == "failed" and str(path / "log.txt") in status["error"] and status.get("pid") is None
    assert untouched(folder, file)


@pytest.mark.parametrize("kind", ["oversized", "folder"])
def test_a_worker_refuses_a_config_the_run_list_calls_unreadable_without_reading_it(tmp_path, kind):
    import tracemalloc

    path = create_run(DistillConfig(teacher="t", max_steps=5, device="cpu"), tmp_path, "r")
    (path / "config.json").unlink()
    if kind == "folder":
        (path / "config.json").mkdir()
    else:
        with open(path / "config.json", "wb") as f:
            f.truncate(64 << 20)  # sparse: reading it would cost 64 MB
    tracemalloc.start()
    try:
        assert worker.main(path) == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"the worker held {peak >> 20} MB: it read config.json"
    error = read_status(path)["error"]
    expected = "config.json is 64.0 MB, more than the 4 MB cap" if kind == "oversized" else "it is a folder"
    assert error.startswith("config.json cannot be used: ") and expected in error, error
    assert rundir.list_runs(tmp_path)[0]["error"] in error  # the same reason as the run list's
