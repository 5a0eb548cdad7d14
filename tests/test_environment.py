"""Environment failures: a full disk, write limits, folder variables, stale pids, odd folder names, Ctrl-C.

Full disks are simulated deterministically (os.write / atomic writes raising ENOSPC, RLIMIT_FSIZE in a
subprocess with SIGXFSZ ignored); no mounts.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import clear_error

from distill_nb import DistillConfig, cli, families, rundir, worker
from distill_nb.recorder import Recorder, explain
from distill_nb.runs import Run, create_run, launch, list_runs, read_status

PKG_PARENT = Path(rundir.__file__).resolve().parent.parent


def tiny(teacher: Path | str, data: Path) -> DistillConfig:
    return DistillConfig(teacher=str(teacher), dataset=str(data), text_column="text", student_layers=2, max_steps=6,
                         batch_size=8, eval_every=3, checkpoint_every=2, seed=0, student_dropout=0.0)


class SafetensorError(Exception):
    """What safetensors raises for a full disk (its own type, the errno only in the words)."""


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def a_run(root: Path, run_id: str = "r") -> Path:
    return create_run(DistillConfig(teacher="minilm-l6"), root, run_id)


# --- D1, D7: a full disk still ends in "failed", with the real reason and the last step ------------------------
def test_full_disk_failure_is_written_in_place_with_the_last_step(tmp_path, monkeypatch):
    path = a_run(tmp_path)
    rec = Recorder(path, beat_s=1000)
    rec.started()
    rec.phase("training", "training", 3, 100, step=3)
    rec.phase("training", "training", 69, 100, step=69)  # throttled: status.json still says step 3
    assert read_status(path)["step"] == 3
    monkeypatch.setattr(rundir, "atomic_write_text", enospc)  # no room for a temp copy of status.json
    rec.failed(OSError(errno.ENOSPC, "No space left on device", str(path / "metrics.jsonl")))
    status = read_status(path)
    assert status["state"] == "failed" and not status.get("stale"), status
    assert "disk is full" in status["error"] and "metrics.jsonl" in status["error"] and "free space" in status["error"]
    assert status["step"] == 69
    assert not list(path.glob(".status.json.*"))  # no temp file left taking space


def test_a_worker_that_fails_before_train_records_anything_still_says_why(tmp_path, monkeypatch):
    import distill_nb.train as tr

    path = a_run(tmp_path)
    rundir.write_status(path, state="queued", claimed=True, **rundir.identity())

    def no_room(config, run_dir):  # train()'s first status write found the disk full
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "status.json"))

    monkeypatch.setattr(tr, "train", no_room)
    assert worker._train(path, DistillConfig(teacher="minilm-l6")) == 1
    status = read_status(path)
    assert status["state"] == "failed" and "disk is full" in status["error"], status


def test_a_dead_worker_is_reported_with_its_checkpoint_and_log_not_a_made_up_step(tmp_path):
    path = a_run(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    rundir.write_status(path, state="running", step=36, pid=dead.pid, pid_start=None, host=socket.gethostname(),
                        backend="subprocess")
    ckpt = path / "checkpoints" / "step_0000050"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text('{"step": 50}')
    status = read_status(path)
    assert status["state"] == "failed" and status["stale"]
    assert "checkpoint at step 50" in status["error"] and str(path / "log.txt") in status["error"], status["error"]


def test_a_dead_worker_started_by_hand_points_to_its_terminal_and_to_the_process_that_failed_first(tmp_path):
    """torchrun started by hand (no backend recorded, no log.txt): its output is in its terminal. torchrun ends
    process 0 when process 1 fails, often before process 0 could say why: process 1's own record says it."""
    path = a_run(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    rundir.write_status(path, state="running", step=3, pid=dead.pid, pid_start=None, host=socket.gethostname())
    error = read_status(path)["error"]
    assert str(path / "log.txt") not in error and "terminal of torchrun" in error, error
    rundir.write_peer_error(path, 1, "ValueError: bad row 7", "Traceback ...")
    error = read_status(path)["error"]
    assert error.startswith("process 1 failed: ValueError: bad row 7; then the worker process died"), error


GLOO = "[/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:37786. remote worker crashing."


def test_process_0_reports_the_failure_of_the_process_that_broke_its_connection(tmp_path):
    path = a_run(tmp_path)
    Recorder(path, rank=1).failed(RuntimeError(GLOO))  # a broken connection only echoes someone else's failure
    assert rundir.peer_error(path) is None
    Recorder(path, rank=2).failed(ValueError("bad row 7"))
    Recorder(path, rank=0).failed(RuntimeError(GLOO))
    status = read_status(path)
    assert status["state"] == "failed" and status["error"] == "process 2 failed: ValueError: bad row 7", status
    assert "bad row 7" in status["traceback"] and "Connection closed by peer" in status["traceback"]
    Recorder(path, rank=0).failed(MemoryError("process 0's own"))  # its own failure stays its own
    assert read_status(path)["error"] == "MemoryError: process 0's own"
    rundir.clear_peer_errors(path)  # a new attempt
    Recorder(path, rank=0).failed(RuntimeError(GLOO))
    assert "Connection closed by peer" in read_status(path)["error"]


@pytest.mark.parametrize("damage", ["empty", "cut", "list", "error-not-text", "rank-not-int", "folder", "link",
                                    "rank0-name", "other-name"])
def test_a_damaged_or_foreign_peer_error_file_is_passed_over(tmp_path, damage):
    """Anything in the run folder that is not a well-formed record of a process > 0 never becomes the run's error:
    process 0 keeps its own (the broken connection) and the dead-worker message names no process."""
    path = a_run(tmp_path)
    target = path / "rank1_error.json"
    if damage == "empty":
        target.write_text("")
    elif damage == "cut":
        target.write_text('{"rank": 1, "error": "Val')
    elif damage == "list":
        target.write_text('["ValueError: bad row 7"]')
    elif damage == "error-not-text":
        target.write_text('{"rank": 1, "error": {"text": "bad"}, "time": 1}')
    elif damage == "rank-not-int":
        target.write_text('{"rank": "1", "error": "ValueError: bad", "time": 1}')
    elif damage == "folder":
        target.mkdir()
    elif damage == "link":
        outside = tmp_path / "elsewhere.json"
        outside.write_text('{"rank": 1, "error": "planted", "time": 1}')
        target.symlink_to(outside)
    elif damage == "rank0-name":
        (path / "rank0_error.json").write_text('{"rank": 0, "error": "planted", "time": 1}')
    else:
        (path / "rank1_error.json.tmp").write_text('{"rank": 1, "error": "planted", "time": 1}')
    assert rundir.peer_error(path) is None
    Recorder(path, rank=0).failed(RuntimeError(GLOO))
    assert "Connection closed by peer" in read_status(path)["error"]


def test_of_several_failed_processes_the_first_to_fail_is_named(tmp_path):
    path = a_run(tmp_path)
    rundir.write_peer_error(path, 3, "ValueError: later")
    (path / "rank2_error.json").write_text('{"rank": 2, "error": "ValueError: first", "time": 1.0}')
    assert rundir.peer_error(path)["error"] == "ValueError: first"


def test_a_process_other_than_0_that_cannot_read_the_config_says_why(tmp_path, monkeypatch):
    path = a_run(tmp_path)
    (path / "config.json").write_text("{cut")
    monkeypatch.setenv("RANK", "1")
    assert worker._train(path, None) == 1
    peer = rundir.peer_error(path)
    assert peer["rank"] == 1 and "config.json" in peer["error"], peer


@pytest.mark.parametrize("tail", ["", "{cut", "\n\n"])
def test_a_killed_worker_shows_the_last_step_it_logged_not_its_last_heartbeat(tmp_path, tail):
    """status.json's step is throttled to one write per heartbeat; a SIGKILL leaves it behind metrics.jsonl."""
    path = a_run(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    rundir.write_status(path, state="running", step=0, pid=dead.pid, pid_start=None, host=socket.gethostname())
    for step in range(1, 50):
        rundir.append_metrics(path, {"step": step, "split": "train", "loss": 1.0})
    with open(path / "metrics.jsonl", "a") as f:
        f.write(tail)
    status = read_status(path)
    assert status["state"] == "failed" and status["step"] == 49 and "last recorded step 49" in status["error"]
    assert [s["step"] for s in rundir.list_runs(tmp_path)] == [49]


# --- D5: EFBIG, quotas and short writes say which file and what to do ------------------------------------------
@pytest.mark.parametrize("code, words", [(errno.EFBIG, "ulimit -f"), (errno.EDQUOT, "quota"),
                                         (errno.ENOSPC, "free space")])
def test_no_room_errors_name_the_file_and_the_fix(tmp_path, code, words):
    file = str(tmp_path / "run" / "checkpoints" / "step_0000004" / "optimizer.pt")
    message = explain(OSError(code, os.strerror(code), file))
    assert file in message and words in message and "Resume" in message, message
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 202432 vs 202320")
    wrapped.__context__ = OSError(code, os.strerror(code))  # what torch.save leaves of a file object's error
    assert words in explain(wrapped)


EFBIG_SCRIPT = r"""
import errno, resource, signal, sys
from pathlib import Path
import torch
from distill_nb import checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
for how in ("file", "path"):
    target = Path(sys.argv[1]) / how
    try:
        with checkpoint._replacing(target, folder=True) as tmp:
            if how == "file":
                with open(tmp / "optimizer.pt", "wb") as f:
                    torch.save({"a": torch.zeros(100000)}, f)
            else:
                torch.save({"a": torch.zeros(100000)}, tmp / "optimizer.pt")
    except OSError as e:
        print(how, e.errno == errno.EFBIG, e.filename, sorted(p.name for p in target.parent.iterdir()))
"""


def test_a_file_size_limit_while_checkpointing_is_efbig_naming_the_file(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PKG_PARENT)}
    out = subprocess.run([sys.executable, "-c", EFBIG_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    for how, line in zip(("file", "path"), lines):
        assert line.startswith(f"{how} True {tmp_path / how / 'optimizer.pt'} []"), line  # no temp folder left


def test_a_short_metrics_write_leaves_no_half_line(tmp_path, monkeypatch):
    path = a_run(tmp_path)
    rundir.append_metrics(path, {"step": 1, "split": "train", "loss": 1.0})
    real_write = os.write
    calls = {"n": 0}

    def short_then_full(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:5]))  # a short write: the disk had room for 5 bytes
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError) as info:
        rundir.append_metrics(path, {"step": 2, "split": "train", "loss": 0.5})
    monkeypatch.setattr(os, "write", real_write)
    assert info.value.errno == errno.ENOSPC and info.value.filename.endswith("metrics.jsonl")
    assert (path / "metrics.jsonl").read_text().endswith("}\n")
    rundir.append_metrics(path, {"step": 2, "split": "train", "loss": 0.5})
    assert [r["step"] for r in rundir.read_metrics(path)] == [1, 2]


# --- D2, D3, D8, D11: folder variables -----------------------------------------------------------------------
def test_folder_variables_are_absolute_and_tilde_expanded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DISTILL_NB_CACHE", "cache_rel")
    monkeypatch.setenv("DISTILL_NB_DATA", "mydata")
    monkeypatch.setenv("DISTILL_NB_RUNS", "~/runs")
    (tmp_path / "mydata").mkdir()
    assert families.cache_dir() == tmp_path / "cache_rel"
    from distill_nb.data import find_shared_data

    assert find_shared_data() == tmp_path / "mydata"
    env = worker.worker_env()  # the worker runs in "/": it must get the same folders
    assert env["DISTILL_NB_CACHE"] == str(tmp_path / "cache_rel")
    assert env["DISTILL_NB_DATA"] == str(tmp_path / "mydata")
    assert env["DISTILL_NB_RUNS"] == str(tmp_path / "home" / "runs")
    monkeypatch.setenv("DISTILL_NB_CACHE", "~/cachex")
    assert families.cache_dir() == tmp_path / "home" / "cachex"


@pytest.mark.parametrize("var", ["DISTILL_NB_CACHE", "DISTILL_NB_DATA", "DISTILL_NB_RUNS"])
@pytest.mark.parametrize("under", [False, True])
def test_a_folder_variable_naming_a_file_is_refused_at_launch(tmp_path, monkeypatch, var, under):
    afile = tmp_path / "afile"
    afile.write_text("x")
    value = str(afile / "sub" if under else afile)
    monkeypatch.setenv("DISTILL_NB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv(var, value)
    clear_error(lambda: launch(DistillConfig(teacher="minilm-l6"), backend="subprocess"), ValueError,
                [f"${var}={value!r}", "not a folder", f"set {var} to a folder"])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_cli_list_and_teachers_fail_clearly_for_a_file(tmp_path, monkeypatch, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setenv("DISTILL_NB_RUNS", str(afile))
    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err
    assert "$DISTILL_NB_RUNS" in err and str(afile) in err and "run(s)" not in err
    monkeypatch.setenv("DISTILL_NB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("DISTILL_NB_CACHE", str(afile / "below"))
    assert cli.main(["teachers"]) == 2
    captured = capsys.readouterr()
    assert "$DISTILL_NB_CACHE" in captured.err and "teacher(s)" not in captured.out
    clear_error(lambda: list_runs(afile), NotADirectoryError, [str(afile), "is (or is inside) a file"])


# --- D4: the cache's disk, not the run's --------------------------------------------------------------------
class _Saves:
    def __init__(self, fail: bool = False):
        self.fail = fail

    def eval(self):
        return self

    def save_pretrained(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        if self.fail:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def test_a_full_cache_names_the_cache_and_leaves_no_temp_folder(tmp_path, monkeypatch):
    from distill_nb import teacher_cache

    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path / "cache"))
    out = teacher_cache.teachers_dir() / "sst2-encoder-abc"
    with pytest.raises(OSError) as info:
        teacher_cache._save(_Saves(fail=True), _Saves(), {"task": "sst2"}, out)
    assert info.value.errno == errno.ENOSPC
    assert not [p for p in teacher_cache.teachers_dir().iterdir() if p.name.startswith(".tmp-")]
    message = explain(info.value, None, tmp_path / "run")
    assert "cache folder" in message and "DISTILL_NB_CACHE" in message and "old runs" not in message, message
    assert str(tmp_path / "cache") in message


def test_an_optional_cache_file_that_cannot_be_saved_is_only_logged(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path / "cache"))
    logged = []

    def write(tmp):
        tmp.write_bytes(b"half")
        raise SafetensorError("I/O error: No space left on device (os error 28)")

    target = families.cache_dir() / "attributions" / "k.safetensors"
    assert families.save_cache_file(target, write, logged.append) is False
    assert not list(target.parent.iterdir())
    assert "cache folder" in logged[0] and "DISTILL_NB_CACHE" in logged[0] and "goes on" in logged[0], logged
    assert families.save_cache_file(target, lambda tmp: tmp.write_bytes(b"ok"), logged.append)
    assert target.read_bytes() == b"ok"


# --- D6: a pid that proves nothing: the worker lock decides -----------------------------------------------------
@pytest.fixture()
def stranger():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("no_proc", [False, True])
def test_a_running_status_with_an_unprovable_pid_and_a_free_lock_is_dead(tmp_path, monkeypatch, stranger, no_proc):
    path = a_run(tmp_path)
    start = None
    if no_proc:  # a host without /proc: no start time can be read for any pid
        start = 12345
        monkeypatch.setattr(rundir, "process_start", lambda pid: None)
    rundir.write_status(path, state="running", step=5, pid=stranger.pid, pid_start=start, host=socket.gethostname())
    run = Run(path)
    assert run.status()["state"] == "failed" and run.status()["stale"]
    assert run.stop(wait=1)["state"] == "failed"
    run.kill()  # never signals a process it cannot prove is the worker
    assert stranger.poll() is None
    rundir.acquire_worker_lock(path)  # while a worker holds the lock, the run is running
    try:
        assert run.status()["state"] == "running"
    finally:
        rundir.release_worker_lock(path)
    run.delete()
    assert not path.exists() and stranger.poll() is None


def test_a_ghost_ticket_naming_a_live_unrelated_pid_does_not_block_the_queue(tmp_path, stranger):
    path = a_run(tmp_path)
    queue = tmp_path / ".queue" / "cpu"
    queue.mkdir(parents=True)
    ghost = queue / f"{1:020d}-{stranger.pid}-x-ghost"
    ghost.touch()
    folder = os.open(queue, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert not worker._ticket_alive(folder, ghost.name)
    finally:
        os.close(folder)
    t0 = time.time()
    lock = worker.wait_for_device("cpu", path, poll=0.01)
    try:
        assert lock is not None and time.time() - t0 < 5 and not ghost.exists()
    finally:
        lock.close()


# --- D9, D10: paths in the CLI, folder names that are not UTF-8 ------------------------------------------------
def test_cli_expands_tilde_in_the_config_and_run_dir(tmp_path, monkeypatch, tiny_teacher, tiny_dataset):
    home = tmp_path / "home"
    home.mkdir()
    (home / "tiny teacher").symlink_to(tiny_teacher)
    monkeypatch.setenv("HOME", str(home))
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(tiny("~/tiny teacher", tiny_dataset).to_dict()))
    config = cli._config(str(cfg), None)
    assert config.teacher == str(tiny_teacher.resolve())
    assert cli._run_dir_arg("~/x") == home / "x"


def test_a_runs_folder_whose_name_is_not_utf8_is_refused_before_training(tmp_path):
    root = tmp_path / os.fsdecode(b"lat\xe9n") / "runs"
    clear_error(lambda: create_run(DistillConfig(teacher="minilm-l6"), root, "r"), ValueError,
                ["not valid UTF-8", "rename the folder"])
    clear_error(lambda: cli._run_dir_arg(str(root / "r")), ValueError, ["not valid UTF-8", "--run-dir"])


# --- D12: Ctrl-C on `distill-nb run` ----------------------------------------------------------------------------
def test_ctrl_c_on_cli_run_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys, tiny_teacher, tiny_dataset):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(tiny(tiny_teacher, tiny_dataset).to_dict()))

    def interrupted(config, run_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run", interrupted)
    assert cli.main(["run", str(cfg), "--run-dir", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "interrupted" in err and "--run-dir" in err and "Traceback" not in err


def test_a_running_status_naming_only_an_unprovable_launcher_is_dead_when_the_lock_is_free(tmp_path, stranger):
    path = a_run(tmp_path)
    rundir.write_status(path, state="running", pid=None, pid_start=None, backend="kernel", claimed=None,
                        launcher_pid=stranger.pid, launcher_start=None, launcher_host=socket.gethostname())
    assert read_status(path)["state"] == "failed"
    Run(path).delete()
    assert stranger.poll() is None


@pytest.mark.parametrize("kind, words", [("dangling link", "a link to"), ("fifo", "is a FIFO"),
                                         ("file", "is a file")])
def test_a_folder_variable_that_is_not_a_folder_says_what_it_is(tmp_path, monkeypatch, kind, words):
    from distill_nb.config import env_folder

    path = tmp_path / "x"
    {"dangling link": lambda: path.symlink_to(tmp_path / "nowhere"), "fifo": lambda: os.mkfifo(path),
     "file": lambda: path.write_text("")}[kind]()
    monkeypatch.setenv("DISTILL_NB_CACHE", str(path))
    with pytest.raises(ValueError, match=f"{words}.*not a folder: set DISTILL_NB_CACHE to a folder"):
        env_folder("DISTILL_NB_CACHE")


@pytest.mark.parametrize("limit, named", [(5000, "model.safetensors"), (6000, None)])
def test_a_file_size_limit_names_the_file_it_cut_or_else_the_folder(tmp_path, monkeypatch, limit, named):
    """Only a file that reached the limit can be the one cut; when it is gone (a library removed its partial
    file) the folder is named, never an unrelated small file."""
    import resource

    from distill_nb import checkpoint

    tmp, target = tmp_path / ".tmp-step", tmp_path / "step_0000004"
    tmp.mkdir()
    (tmp / "config.json").write_text("x" * 100)
    (tmp / "model.safetensors").write_bytes(b"\0" * 5000)
    monkeypatch.setattr(checkpoint.resource, "getrlimit", lambda what: (limit, resource.RLIM_INFINITY))
    with pytest.raises(OSError) as info:
        checkpoint._raise_no_room(tmp, target, OSError(errno.EFBIG, "File too large"))
    assert info.value.errno == errno.EFBIG
    assert info.value.filename == str(target / named if named else target)
