"""Fault injection: a killed worker, a kill inside a checkpoint write, a corrupt metrics line, a full disk, CUDA OOM.

After each fault the run reads as failed with a reason, the last complete checkpoint is intact, resume()
finishes, and metrics.jsonl holds every train step exactly once.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill_nb import DistillConfig, runs
from distill_nb.runs import Run, Status, create_run, list_runs, read_metrics, read_status
from distill_nb.checkpoint import latest_checkpoint
from distill_nb.train import train

PKG_PARENT = Path(runs.__file__).resolve().parent.parent


def tiny_config(teacher: Path, data: Path, **kw) -> DistillConfig:
    base = dict(teacher=str(teacher), dataset=str(data), text_column="text", student_layers=2, max_steps=6,
                batch_size=8, eval_every=3, checkpoint_every=2, seed=0, student_dropout=0.0)
    return DistillConfig(**{**base, **kw})


def assert_each_step_once(path: Path, total: int) -> None:
    lines = (path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # no corrupt or half line survives a resume
    steps = [r["step"] for r in records if r["split"] == "train"]
    assert steps == list(range(1, total + 1)), steps
    evals = [r["step"] for r in records if r["split"] == "eval"]
    assert len(evals) == len(set(evals)) and evals[-1] == total, evals


def assert_checkpoint_intact(path: Path) -> int:
    ckpt = latest_checkpoint(path)
    assert ckpt is not None
    step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
    assert ckpt.name == f"step_{step:07d}"
    weights = load_file(ckpt / "model.safetensors")
    assert weights and all(torch.isfinite(v).all() for v in weights.values())
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == step
    return step


def wait_for(predicate, timeout: float, poll: float = 0.05, what: str = "") -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def last_train_step(path: Path) -> int:
    return max((r["step"] for r in read_metrics(path) if r.get("split") == "train"), default=0)


# --- a real background worker, SIGKILLed ---------------------------------------------------------------------------
def test_sigkill_mid_epoch_then_resume(tiny_teacher, tiny_dataset, runs_root):
    total = 40  # 8 steps per epoch, 10-100 ms a step plus checkpoints: the kill at step 12 lands mid-run
    cfg = tiny_config(tiny_teacher, tiny_dataset, max_steps=total, checkpoint_every=5, eval_every=25)
    run = runs.launch(cfg, backend="subprocess", root=runs_root, run_id="killed")
    try:
        wait_for(lambda: last_train_step(run.path) >= 12 or not run.state.active, 120, what="step 12")
        run.kill()
        wait_for(lambda: not run.state.active, 10, what="the kill to show")
        status = run.status()
        assert status["state"] == "failed" and status["stale"], status
        assert "died" in status["error"] and "Resume" in status["error"]
        assert str(run.path / "log.txt") in status["error"]  # launch() sends the worker's output there
        killed_at = last_train_step(run.path)
        assert 12 <= killed_at < total, "the worker finished before the kill: raise max_steps"
        ckpt_step = assert_checkpoint_intact(run.path)
        assert ckpt_step % 5 == 0 and 5 <= ckpt_step <= killed_at
        assert [s["run_id"] for s in list_runs(runs_root)] == ["killed"]

        run.resume(backend="subprocess")
        assert run.wait(180) == Status.COMPLETED, (run.path / "log.txt").read_text()[-3000:]
    finally:
        run.kill()
    assert f"resumed from step_{ckpt_step:07d}" in (run.path / "log.txt").read_text()
    assert_each_step_once(run.path, total)
    assert (run.path / "student" / "model.safetensors").is_file()


# the worker, with torch.save made to write half a file and hang inside checkpoint ``step_0000010``
SLOW_SAVE_WORKER = """
import sys, time
from pathlib import Path
import torch
import distill_nb.train as t
import distill_nb.worker as w

real_save_checkpoint = t.save_checkpoint

def save_checkpoint(run_dir, student, proj, opt, sched, step, tok, config, keep):
    if step == 10:
        def half_save(obj, f, *a, **k):
            Path(getattr(f, "name", f)).write_bytes(b"PK\\x03\\x04 half an optimizer state")  # a path or a file
            (Path(run_dir) / "SAVING").write_text(str(step))
            time.sleep(300)
        torch.save = half_save
    return real_save_checkpoint(run_dir, student, proj, opt, sched, step, tok, config, keep)

t.save_checkpoint = save_checkpoint
sys.exit(w.main(sys.argv[1]))
"""


def test_sigkill_inside_a_checkpoint_write_then_resume(tiny_teacher, tiny_dataset, runs_root):
    total = 24
    cfg = tiny_config(tiny_teacher, tiny_dataset, max_steps=total, checkpoint_every=5, eval_every=7)
    path = create_run(cfg, runs_root, "half-saved")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PKG_PARENT), os.environ.get("PYTHONPATH", "")])}
    with open(path / "log.txt", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE_WORKER, str(path)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=path)
    run = Run(path)
    try:
        wait_for(lambda: (path / "SAVING").exists() or proc.poll() is not None, 120, 0.05, "the checkpoint write")
        tmp = path / "checkpoints" / ".tmp-step_0000010"
        assert (tmp / "model.safetensors").is_file() and not (tmp / "trainer_state.json").exists()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        status = run.status()
        assert status["state"] == "failed" and status["stale"] and "Resume" in status["error"], status
        assert latest_checkpoint(path).name == "step_0000005"  # the half-written one is never picked
        assert assert_checkpoint_intact(path) == 5

        run.resume(backend="subprocess")
        assert run.wait(180) == Status.COMPLETED, (path / "log.txt").read_text()[-3000:]
    finally:
        proc.kill()
        run.kill()
    assert "resumed from step_0000005" in (path / "log.txt").read_text()
    assert_each_step_once(path, total)
    assert not list((path / "checkpoints").glob(".tmp-*"))  # the next save at step 10 replaced it


# --- in-process faults -------------------------------------------------------------------------------------------
def test_corrupt_last_metrics_line_is_skipped_and_resume_repairs_it(tiny_teacher, tiny_dataset, tmp_path,
                                                                      monkeypatch):
    from distill_nb import rundir

    run = tmp_path / "run"
    real_append = rundir.append_metrics

    def die_mid_line(path, rec):
        if rec["step"] == 5 and rec["split"] == "train":
            with open(path / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(rec)[:17])  # the process dies inside the write: half a line, no newline
            raise KeyboardInterrupt
        real_append(path, rec)

    monkeypatch.setattr(rundir, "append_metrics", die_mid_line)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_teacher, tiny_dataset, max_steps=7, checkpoint_every=2), run, log=lambda *_: None)
    assert not (run / "metrics.jsonl").read_text().endswith("\n")
    assert [r["step"] for r in read_metrics(run) if r["split"] == "train"] == [1, 2, 3, 4]
    assert read_metrics(run, since=3)[-1]["step"] == 4
    status = read_status(run)
    assert status["state"] == "failed" and "interrupted" in status["error"] and "Resume" in status["error"]

    # readers also survive garbage in the middle of the file (a crash on a filesystem that zero-fills)
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b"\n\x00\x00\x00\xff\xfe{not json\n")
    assert [r["step"] for r in read_metrics(run) if r["split"] == "train"] == [1, 2, 3, 4]

    monkeypatch.setattr(rundir, "append_metrics", real_append)
    train(tiny_config(tiny_teacher, tiny_dataset, max_steps=7, checkpoint_every=2), run, log=lambda *_: None)
    assert read_status(run)["state"] == "completed"
    assert_each_step_once(run, 7)


def test_disk_full_while_checkpointing_fails_with_the_reason_then_resumes(tiny_teacher, tiny_dataset, tmp_path,
                                                                          monkeypatch):
    import distill_nb.train as tr

    run = tmp_path / "run"
    cfg = tiny_config(tiny_teacher, tiny_dataset, max_steps=7, checkpoint_every=2)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if "step_0000004" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(tr.torch, "save", full_disk)
    with pytest.raises(OSError) as info:
        train(cfg, run, log=lambda *_: None)
    assert info.value.errno == errno.ENOSPC
    status = read_status(run)
    assert status["state"] == "failed" and not status.get("stale")
    assert "disk is full" in status["error"] and "free space" in status["error"]
    assert "No space left on device" in status["traceback"]
    assert latest_checkpoint(run).name == "step_0000002"  # the failed one stays a temp dir
    assert assert_checkpoint_intact(run) == 2

    monkeypatch.setattr(tr.torch, "save", real_save)  # space freed
    train(cfg, run, log=lambda *_: None)
    assert read_status(run)["state"] == "completed"
    assert_each_step_once(run, 7)
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_disk_full_while_logging_metrics_fails_with_the_reason(tiny_teacher, tiny_dataset, tmp_path, monkeypatch):
    from distill_nb import rundir

    def full_disk(path, rec):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir, "append_metrics", full_disk)
    with pytest.raises(OSError):
        train(tiny_config(tiny_teacher, tiny_dataset), tmp_path / "run", log=lambda *_: None)
    status = read_status(tmp_path / "run")
    assert status["state"] == "failed" and "disk is full" in status["error"]


def test_disk_full_even_for_the_status_raises_the_real_error(tiny_teacher, tiny_dataset, tmp_path, monkeypatch):
    """When status.json cannot be written either, the ENOSPC is raised, not a second error from the handler."""
    from distill_nb import rundir

    real_write = rundir.write_status

    def write_status(path, **fields):
        if fields.get("state") == Status.FAILED:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, **fields)

    def full_disk(path, rec):
        raise OSError(errno.ENOSPC, "No space left on device (metrics)")

    monkeypatch.setattr(rundir, "write_status", write_status)
    monkeypatch.setattr(rundir, "append_metrics", full_disk)
    with pytest.raises(OSError, match=r"\(metrics\)"):
        train(tiny_config(tiny_teacher, tiny_dataset), tmp_path / "run", log=lambda *_: None)


def test_cuda_oom_fails_with_a_smaller_batch_hint(tiny_teacher, tiny_dataset, tmp_path, monkeypatch):
    import distill_nb.train as tr

    calls = {"n": 0}
    real_kd = tr.losses.kd_loss

    def oom_on_step_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8 GiB total)")
        return real_kd(*args, **kwargs)

    monkeypatch.setattr(tr.losses, "kd_loss", oom_on_step_3)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        train(tiny_config(tiny_teacher, tiny_dataset, batch_size=16), tmp_path / "run", log=lambda *_: None)
    status = read_status(tmp_path / "run")
    assert status["state"] == "failed" and status["step"] <= 2
    error = status["error"]
    assert "CUDA out of memory" in error and "half the batch_size (now 16)" in error, error
    assert "run.fork(batch_size=" in error


# --- how readers judge a run whose worker is gone ------------------------------------------------------------------
def test_stale_detection_and_half_written_status(tmp_path):
    path = create_run(DistillConfig(teacher="t", max_steps=5), tmp_path, "elsewhere")
    # running on another host, silent for longer than STALE_AFTER_S: failed, resumable
    status = json.loads((path / "status.json").read_text())
    status.update(state="running", host="another-host", pid=1, updated_at=time.time() - runs.STALE_AFTER_S - 5)
    (path / "status.json").write_text(json.dumps(status))
    got = read_status(path)
    assert got["state"] == "failed" and got["stale"] and "Resume" in got["error"]
    status["updated_at"] = time.time()  # a recent heartbeat from another host: still running
    (path / "status.json").write_text(json.dumps(status))
    assert read_status(path)["state"] == "running"
    # a worker killed inside write_status leaves only its temp file; the last status still reads
    (path / ".status.json.abc.tmp").write_text('{"state": "compl')
    assert read_status(path)["state"] == "running"
    # a truncated status.json (written by something non-atomic) reads as unreadable with the reason, never raises
    (path / "status.json").write_text('{"state": "runn')
    got = read_status(path)
    assert got["state"] == "unreadable" and "not valid JSON" in got["error"]
    assert [r["state"] for r in list_runs(tmp_path)] == ["unreadable"]


def test_queued_worker_killed_while_waiting_is_stale(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    path = create_run(DistillConfig(teacher="t", max_steps=5), tmp_path, "waiting")
    runs.write_status(path, state="queued", pid=sleeper.pid, host=socket.gethostname())
    assert read_status(path)["state"] == "queued"
    sleeper.kill()
    sleeper.wait()
    assert read_status(path)["state"] == "failed"


def test_run_whose_launcher_died_before_starting_a_worker_is_stale(tmp_path):
    """A process that created a run and died before starting its worker must not leave it queued forever."""
    code = ("import sys; from distill_nb.config import DistillConfig; from distill_nb.runs import create_run; "
            "create_run(DistillConfig(teacher='t', max_steps=5), sys.argv[1], 'orphan')")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=120)
    got = read_status(tmp_path / "orphan")
    assert got["state"] == "failed" and got["stale"], got
    assert "launched this run" in got["error"] and "Resume" in got["error"]
    # created by this (living) process and not started yet: still queued, as between create and start
    assert read_status(create_run(DistillConfig(teacher="t", max_steps=5), tmp_path, "mine"))["state"] == "queued"


def test_stop_reaches_a_worker_waiting_for_the_device(tmp_path):
    """A queued worker blocked behind another run on the same device must still obey stop()."""
    import fcntl
    import threading

    from distill_nb.worker import main

    root = tmp_path / "runs"
    path = create_run(DistillConfig(teacher="t", max_steps=5, device="cpu"), root, "queued-behind")
    (root / ".queue").mkdir()
    with open(root / ".queue" / "cpu.lock", "w") as busy:
        fcntl.flock(busy, fcntl.LOCK_EX)  # another run holds the device
        result = {}
        worker = threading.Thread(target=lambda: result.update(code=main(path)), daemon=True)
        worker.start()
        wait_for(lambda: "waiting for device" in (read_status(path).get("message") or ""), 10, what="queue")
        assert read_status(path)["state"] == "queued"
        stopped = Run(path).stop(wait=10)
        worker.join(5)
    assert result == {"code": 0} and stopped["state"] == "stopped", stopped
    assert read_status(path)["message"] == "stopped while queued"


# --- a damaged checkpoint: every kind, passed over for the one before it, never a silent wrong resume ----------
def _damage(case: str, ckpt: Path, outside: Path) -> None:
    from safetensors.torch import save_file

    model = ckpt / "model.safetensors"
    good = load_file(model)
    first = next(iter(good))
    if case == "unrelated-keys":
        save_file({"junk.weight": torch.zeros(3)}, model)
    elif case == "no-tensors":
        save_file({}, model)
    elif case == "half-the-keys":
        save_file(dict(list(good.items())[: len(good) // 2]), model)
    elif case == "extra-key":
        save_file({**good, "junk.weight": torch.zeros(3)}, model)
    elif case == "wrong-shape":
        save_file({**good, first: torch.zeros(2, 2)}, model)
    elif case == "truncated":
        model.write_bytes(model.read_bytes()[:200])
    elif case == "garbage":
        model.write_bytes(os.urandom(4096))
    elif case == "model-missing":
        model.unlink()
    elif case == "model-is-dir":
        model.unlink()
        model.mkdir()
    elif case in ("model-link", "optimizer-link"):
        target = model if case == "model-link" else ckpt / "optimizer.pt"
        (outside / target.name).write_bytes(target.read_bytes())
        target.unlink()
        target.symlink_to(outside / target.name)
    elif case == "optimizer-missing":
        (ckpt / "optimizer.pt").unlink()
    elif case == "optimizer-garbage":
        (ckpt / "optimizer.pt").write_bytes(b"not a torch file")
    elif case == "optimizer-other-shapes":
        state = torch.load(ckpt / "optimizer.pt", weights_only=True)
        for st in state["optimizer"]["state"].values():
            st["exp_avg"] = torch.zeros(3)
        torch.save(state, ckpt / "optimizer.pt")
    elif case == "optimizer-not-dict":
        torch.save([1, 2], ckpt / "optimizer.pt")
    else:  # trainer_state.json
        text = {"step-999": '{"step": 999}', "step-str": '{"step": "4"}', "step-bool": '{"step": true}',
                "state-list": "[4]", "state-garbage": "{x", "step-float": '{"step": 4.0}'}[case]
        (ckpt / "trainer_state.json").write_text(text)


DAMAGE = ["unrelated-keys", "no-tensors", "half-the-keys", "extra-key", "wrong-shape", "truncated", "garbage",
          "model-missing", "model-is-dir", "model-link", "optimizer-link", "optimizer-missing", "optimizer-garbage",
          "optimizer-other-shapes", "optimizer-not-dict", "step-999", "step-str", "step-bool", "state-list",
          "state-garbage", "step-float"]


@pytest.fixture(scope="module")
def stopped_at_5(tiny_teacher, tiny_dataset, tmp_path_factory):
    """A run killed after step 5: checkpoints step 2 and step 4."""
    from distill_nb import rundir

    path = tmp_path_factory.mktemp("damage") / "base"
    config = tiny_config(tiny_teacher, tiny_dataset, max_steps=8, keep_checkpoints=3, num_threads=1)
    real = rundir.append_metrics

    def die_at_5(run, record):
        if record.get("split") == "train" and record["step"] == 5:
            raise KeyboardInterrupt
        real(run, record)

    rundir.append_metrics = die_at_5
    try:
        with pytest.raises(KeyboardInterrupt):
            train(config, path, log=lambda *_: None)
    finally:
        rundir.append_metrics = real
    assert [p.name for p in sorted((path / "checkpoints").iterdir())] == ["step_0000002", "step_0000004"]
    return config, path


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_checkpoint_is_passed_over_for_the_one_before(stopped_at_5, tmp_path, case):
    import shutil

    config, base = stopped_at_5
    run = tmp_path / "run"
    shutil.copytree(base, run, symlinks=True)
    _damage(case, run / "checkpoints" / "step_0000004", tmp_path)
    logs: list[str] = []
    train(config, run, log=logs.append)
    assert "resumed from step_0000002 (step 2)" in logs, logs
    note = next(m for m in logs if "step_0000004" in m and "damaged" in m)
    assert "Delete that folder" in note
    assert read_status(run)["state"] == "completed" and "step_0000004" in read_status(run)["resume_note"]
    assert_each_step_once(run, 8)


@pytest.fixture(scope="module")
def resumed_clean(stopped_at_5, tmp_path_factory):
    """The undamaged resume of the run killed after step 5: its final student."""
    import shutil

    config, base = stopped_at_5
    run = tmp_path_factory.mktemp("clean") / "run"
    shutil.copytree(base, run, symlinks=True)
    logs: list[str] = []
    train(config, run, log=logs.append)
    assert not any("computing it again" in m for m in logs)  # a good cache is reused
    assert read_status(run).get("resume_note") is None  # nothing was passed over
    return load_file(run / "student" / "model.safetensors")


@pytest.mark.parametrize("case", ["truncated", "garbage", "wrong-rows", "wrong-classes", "nan", "other-key",
                                  "int-dtype", "directory", "empty-file"])
def test_a_damaged_teacher_logit_cache_is_computed_again(stopped_at_5, resumed_clean, tmp_path, case):
    import shutil

    from safetensors.torch import save_file

    config, base = stopped_at_5
    run = tmp_path / "run"
    shutil.copytree(base, run, symlinks=True)
    cache = run / "teacher_logits.safetensors"
    good = load_file(cache)["logits"].clone()  # not a view of the file about to be damaged
    if case == "truncated":
        cache.write_bytes(cache.read_bytes()[:100])
    elif case == "garbage":
        cache.write_bytes(os.urandom(2048))
    elif case == "wrong-rows":
        save_file({"logits": good[:-3].contiguous()}, cache)
    elif case == "wrong-classes":
        save_file({"logits": torch.zeros(good.shape[0], good.shape[1] + 1)}, cache)
    elif case == "nan":
        save_file({"logits": torch.full_like(good, float("nan"))}, cache)
    elif case == "other-key":
        save_file({"something": good}, cache)
    elif case == "int-dtype":
        save_file({"logits": good.long()}, cache)
    elif case == "directory":
        cache.unlink()
        cache.mkdir()
    else:
        cache.write_bytes(b"")
    logs: list[str] = []
    train(config, run, log=logs.append)
    assert any("teacher_logits.safetensors cannot be used" in m for m in logs), logs
    assert torch.equal(load_file(cache)["logits"], good)  # computed again, the same numbers
    final = load_file(run / "student" / "model.safetensors")
    assert all(torch.equal(final[k], resumed_clean[k]) for k in final)  # trained exactly as with a good cache


# --- a device queue planted with links: the launched worker fails with the reason, nothing outside is touched ---------
@pytest.mark.parametrize("link", ["cpu", "cpu.lock"])
def test_a_launched_run_whose_device_queue_links_elsewhere_fails_with_the_reason(tiny_teacher, tiny_dataset, tmp_path,
                                                                                 link):
    root = tmp_path / "runs"
    (root / ".queue").mkdir(parents=True)
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    for name in [".config", "-todo.txt", "0001-notes.md", "notes.md"]:
        (victim / name).write_text("precious")
    (tmp_path / "important.txt").write_text("precious")
    (root / ".queue" / link).symlink_to(victim if link == "cpu" else tmp_path / "important.txt")
    run = runs.launch(tiny_config(tiny_teacher, tiny_dataset, max_steps=2, device="cpu"), root=root,
                      backend="subprocess")
    assert run.wait(120) is Status.FAILED
    error = run.status()["error"]
    assert error.startswith("the device queue cannot be used") and str(root / ".queue" / link) in error, error
    assert "remove it" in error and not run.status().get("stale")  # its own reason, not "the worker died"
    assert sorted(p.name for p in victim.iterdir()) == ["-todo.txt", ".config", "0001-notes.md", "notes.md"]
    assert all(p.read_text() == "precious" for p in victim.iterdir())
    assert (tmp_path / "important.txt").read_text() == "precious"
