"""The run-directory contract (issue 12): corrupt files of every kind, symlinks, ids, strict JSON, races, identity.

Each guarantee is checked against a matrix, not one example: one bad run never breaks the listing, nothing is
read or written through a link out of the runs root, NaN never reaches disk or the wire, exactly one of two
concurrent claims wins, and a reused pid is never taken for the worker.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import finishes

from distill_nb import rundir
from distill_nb.cli import main as cli
from distill_nb.config import DistillConfig
from distill_nb.rundir import CorruptRecord, RunBusy, Status, create_run, list_runs, read_status
from distill_nb.runs import Run


def make(root: Path, run_id: str, **status) -> Path:
    path = create_run(DistillConfig(teacher="tiny", max_steps=10), root, run_id)
    if status:
        rundir.write_status(path, **status)
    return path


def strict(text: str):
    """json.loads that refuses NaN/Infinity, as a browser's JSON.parse does."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


# --- a corrupt status.json: that run is "unreadable" with the reason, the others list normally ------------------
CORRUPT_STATUS = {
    "invalid-utf8": (b'{"state": "running", "message": "\xff\xfe"}', "not UTF-8"),
    "json-list": (b'["running"]', "JSON list"),
    "json-string": (b'"completed"', "JSON str"),
    "json-null": (b"null", "JSON NoneType"),
    "unknown-state": (b'{"state": "exploded"}', "'exploded'"),
    "null-state": (b'{"state": null}', "None"),
    "no-state": (b'{"step": 3}', "state"),
    "unreadable-state-written": (b'{"state": "unreadable"}', "'unreadable'"),
    "string-pid": (b'{"state": "running", "pid": "1234"}', "'pid'"),
    "bool-pid": (b'{"state": "running", "pid": true}', "'pid'"),
    "float-step": (b'{"state": "running", "step": 2.5}', "'step'"),
    "string-timestamp": (b'{"state": "completed", "created_at": "yesterday"}', "'created_at'"),
    "nan-timestamp": (b'{"state": "completed", "updated_at": NaN}', None),  # NaN reads as null: usable
    "list-error": (b'{"state": "failed", "error": ["x"]}', "'error'"),
    "truncated": (b'{"state": "runn', "not valid JSON"),
    "empty": (b"", "not valid JSON"),
    "binary-zeros": (b"\x00\x00\x00\x00", "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_STATUS))
def test_corrupt_status_is_listed_unreadable_and_never_hides_others(tmp_path, case, capsys):
    raw, reason = CORRUPT_STATUS[case]
    good = make(tmp_path, "good", state="completed", step=10, total_steps=10)
    rundir.append_metrics(good, {"step": 10, "split": "eval", "accuracy": 0.9})
    bad = make(tmp_path, "bad")
    (bad / "status.json").write_bytes(raw)
    got = read_status(bad)
    if reason is None:
        assert got["state"] == "completed" and got["updated_at"] is None
    else:
        assert got["state"] == "unreadable" and reason in got["error"], got
    listed = {r["run_id"]: r for r in list_runs(tmp_path)}
    assert listed["good"]["state"] == "completed" and listed["good"]["last_eval"]["accuracy"] == 0.9
    assert listed["bad"]["state"] == ("completed" if reason is None else "unreadable")
    strict(rundir.dumps(list(listed.values())))  # the REST body is strict JSON


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink-outside", "symlink-dangling"])
def test_status_json_that_is_not_a_regular_file(tmp_path, kind):
    path = make(tmp_path, "odd")
    target = tmp_path / "outside.json"
    target.write_text(json.dumps({"state": "completed"}))
    (path / "status.json").unlink()
    if kind == "directory":
        (path / "status.json").mkdir()
    elif kind == "fifo":
        os.mkfifo(path / "status.json")  # opening a FIFO must not block the reader
    elif kind == "symlink-outside":
        (path / "status.json").symlink_to(target)
    else:
        (path / "status.json").symlink_to(tmp_path / "nowhere.json")
    got = read_status(path)
    assert got["state"] == "unreadable" and got["error"], got
    assert [r["state"] for r in list_runs(tmp_path)] == ["unreadable"]


def test_missing_status_is_unreadable_not_a_crash(tmp_path):
    path = make(tmp_path, "nostatus")
    (path / "status.json").unlink()
    assert read_status(path) == {"state": "unreadable", "error": "status.json is missing"}


def test_cli_list_survives_every_corrupt_status_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_NB_RUNS", str(tmp_path))
    make(tmp_path, "fine", state="stopped", step=3, total_steps=10)
    for i, (raw, _) in enumerate(CORRUPT_STATUS.values()):
        (make(tmp_path, f"bad-{i:02d}") / "status.json").write_bytes(raw)
    assert cli(["list"]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "fine" in out.out and out.out.count("unreadable") >= 15


def test_cli_list_shows_the_last_reason_agreement(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_NB_RUNS", str(tmp_path))
    rundir.append_metrics(make(tmp_path, "tracked", state="completed", step=10, total_steps=10),
                          {"step": 10, "split": "eval", "accuracy": 0.8, "reason_spearman": 0.4567})
    rundir.append_metrics(make(tmp_path, "untracked", state="completed", step=10, total_steps=10),
                          {"step": 10, "split": "eval", "accuracy": 0.8, "reason_spearman": math.nan})
    assert cli(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["tracked"].endswith("reasons 0.457") and "reasons" not in lines["untracked"]


# --- strict JSON: NaN never reaches disk or the wire -------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_written_as_null(tmp_path, bad):
    path = make(tmp_path, "nan")
    rundir.append_metrics(path, {"step": 1, "split": "eval", "accuracy": bad, "nested": {"x": [bad, 1.0]}})
    rundir.write_status(path, eta_s=bad, final={"retention": bad})
    line = (path / "metrics.jsonl").read_text().splitlines()[0]
    assert strict(line) == {"step": 1, "split": "eval", "accuracy": None, "nested": {"x": [None, 1.0]}}
    status = strict((path / "status.json").read_text())
    assert status["eta_s"] is None and status["final"] == {"retention": None}


def test_old_metrics_with_nan_literals_read_as_null(tmp_path):
    path = make(tmp_path, "old")
    (path / "metrics.jsonl").write_text('{"step": 1, "split": "eval", "accuracy": NaN, "x": -Infinity}\n'
                                        '{"step": "2", "split": "train"}\n[1, 2]\n{"step": 3, "split": "train"}\n')
    assert rundir.read_metrics(path) == [{"step": 1, "split": "eval", "accuracy": None, "x": None},
                                         {"step": 3, "split": "train"}]
    strict(rundir.dumps(list_runs(tmp_path)))


@pytest.mark.parametrize("fields, words", [
    ({"state": "exploded"}, "'exploded'"), ({"state": "unreadable"}, "'unreadable'"), ({"pid": "12"}, "'pid'"),
    ({"step": 1.5}, "'step'"), ({"created_at": "now"}, "'created_at'"), ({"message": 3}, "'message'")])
def test_writers_refuse_an_invalid_status(tmp_path, fields, words):
    path = make(tmp_path, "strict")
    before = (path / "status.json").read_bytes()
    with pytest.raises(CorruptRecord, match=words):
        rundir.write_status(path, **fields)
    assert (path / "status.json").read_bytes() == before  # nothing half written


# --- run ids: \A...\Z semantics ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["run\n", "run\r\n", "\nrun", " run", "run ", "ru n", "a/b", "a\\b", "..", "a..b",
                                 ".hidden", "-dash", "é", "run\x00", "x" * 129, "", None, 7, b"run"])
def test_run_ids_are_matched_whole(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid run id"):
        rundir.validate_run_id(bad)
    if isinstance(bad, str) and bad:
        with pytest.raises(ValueError, match="invalid run id"):
            create_run(DistillConfig(teacher="t"), tmp_path / "runs", bad)
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --- symbolic links: never followed out of the runs root ---------------------------------------------------------
def test_symlinked_run_directory_is_neither_listed_nor_attached(tmp_path):
    root, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    real = make(elsewhere, "secret", state="completed")
    root.mkdir()
    (root / "linked").symlink_to(real)
    make(root, "mine", state="stopped")
    assert [r["run_id"] for r in list_runs(root)] == ["mine"]
    with pytest.raises(ValueError, match="symbolic link"):
        Run.attach("linked", root)


@pytest.mark.parametrize("name", ["metrics.jsonl", "STOP", "log.txt", "status.json", ".lock", ".worker.lock"])
def test_linked_files_are_never_written_through(tmp_path, name):
    path = make(tmp_path / "runs", "r")
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    if os.path.lexists(path / name):
        (path / name).unlink()
    (path / name).symlink_to(target)
    attempts = {
        "metrics.jsonl": lambda: rundir.append_metrics(path, {"step": 1, "split": "train"}),
        "STOP": lambda: rundir.request_stop(path),
        "status.json": lambda: rundir.write_status(path, state="stopped"),
        ".lock": lambda: rundir.write_status(path, state="stopped"),
        ".worker.lock": lambda: rundir.acquire_worker_lock(path),
        "log.txt": lambda: __import__("distill_nb.worker", fromlist=["x"])._open_log(path),
    }
    try:
        attempts[name]()
    except (OSError, CorruptRecord, RunBusy):
        pass  # refusing is fine; writing through the link is not
    assert target.read_text() == "precious"
    if name == "metrics.jsonl":
        assert rundir.read_metrics(path) == []  # and never read through it either


def test_linked_checkpoints_folder_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    from distill_nb.checkpoint import latest_checkpoint, save_student

    path = make(tmp_path / "runs", "r")
    outside = tmp_path / "outside"
    (outside / "step_0000005").mkdir(parents=True)
    (outside / "step_0000005" / "trainer_state.json").write_text('{"step": 5}')
    (path / "checkpoints").symlink_to(outside)
    (path / "student").symlink_to(outside)
    assert latest_checkpoint(path) is None
    with pytest.raises(CorruptRecord, match="symbolic link"):
        save_student(path, torch.nn.Linear(2, 2), None)
    assert sorted(p.name for p in outside.iterdir()) == ["step_0000005"]


# --- two clicks, one winner -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 8])
def test_concurrent_claims_exactly_one_wins(tmp_path, n):
    path = make(tmp_path, "race", state="stopped")
    results, barrier = [], threading.Barrier(n)

    def claim():
        barrier.wait()
        try:
            rundir.transition(path, {Status.STOPPED, Status.FAILED}, state=Status.QUEUED, pid=os.getpid(),
                              host="here")
            results.append("won")
        except RunBusy:
            results.append("busy")

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["busy"] * (n - 1) + ["won"]


def test_concurrent_claims_across_processes(tmp_path):
    path = make(tmp_path, "race", state="failed")
    code = ("import sys, time; from distill_nb import rundir; from distill_nb.rundir import Status, RunBusy\n"
            "time.sleep(max(0, float(sys.argv[2]) - time.time()))\n"
            "try:\n rundir.transition(sys.argv[1], {Status.STOPPED, Status.FAILED}, state=Status.QUEUED,"
            " **rundir.identity()); print('won')\nexcept RunBusy: print('busy')\n")
    at = str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), at], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    # the winners' processes have exited, so the run reads as stale-failed now; exactly one won the race
    assert outs == ["busy", "busy", "busy", "won"], outs


# --- identity: a pid alone is not a process -------------------------------------------------------------------------
def test_reused_pid_is_not_the_worker(tmp_path):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = rundir.process_start(stranger.pid)
        assert rundir.alive(stranger.pid, start) and not rundir.alive(stranger.pid, start + 12345)
        path = make(tmp_path, "reused")
        # the worker died long ago; its pid now belongs to the stranger (another start time)
        rundir.write_status(path, state="running", pid=stranger.pid, pid_start=start + 12345,
                            host=__import__("socket").gethostname())
        got = read_status(path)
        assert got["state"] == "failed" and got["stale"] and "died" in got["error"]
        Run(path).kill()
        time.sleep(0.2)
        assert stranger.poll() is None  # never signalled
    finally:
        stranger.kill()
        stranger.wait()


def test_second_process_cannot_take_the_worker_lock(tmp_path):
    path = make(tmp_path, "locked")
    code = ("import sys, time; from distill_nb import rundir; rundir.acquire_worker_lock(sys.argv[1]);"
            "print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not rundir.worker_lock_free(path)
        with pytest.raises(RunBusy, match=f"pid {holder.pid}"):
            rundir.acquire_worker_lock(path)
    finally:
        holder.kill()
        holder.wait()
    assert rundir.worker_lock_free(path)  # the OS released it with the process
    assert rundir.acquire_worker_lock(path) is True
    rundir.release_worker_lock(path)


def test_kernel_never_handed_its_run_is_stale_and_resume_stops_that_idle_kernel(tmp_path):
    """The notebook that launched a kernel-backend run died before handing the run over (issue 16.6)."""
    launcher = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    idle_kernel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        path = make(tmp_path, "handover")
        rundir.write_status(path, backend="kernel", pid=idle_kernel.pid,
                            pid_start=rundir.process_start(idle_kernel.pid),
                            host=__import__("socket").gethostname(), launcher_pid=int(launcher.stdout),
                            launcher_start=None)
        got = read_status(path)
        assert got["state"] == "failed" and got["stale"] and "handed the run" in got["error"], got
        # the same run with a worker that claimed it is alive, whatever became of the launcher
        rundir.write_status(path, claimed=True)
        assert read_status(path)["state"] == "queued"
        rundir.write_status(path, claimed=None)
        Run(path).resume(backend="subprocess")  # the worker fails fast (no teacher "tiny"); the kernel must go
        idle_kernel.wait(10)
        assert idle_kernel.returncode is not None
        Run(path).wait(60)
    finally:
        idle_kernel.kill()
        idle_kernel.wait()


@pytest.mark.parametrize("case", ["deep-config", "long-teacher", "long-dataset", "nul-teacher", "run-dir-is-file",
                                  "run-dir-in-file", "runs-root-is-file", "bigint-config", "config-is-dev-null"])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, case):
    import json

    monkeypatch.setenv("DISTILL_NB_RUNS", str(tmp_path / "runs"))
    (tmp_path / "afile").write_text("x")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"teacher": "tiny", "max_steps": 1}))
    argv = ["run", str(cfg)]
    if case == "deep-config":
        cfg.write_text("[" * 100_000 + "]" * 100_000)
    elif case == "bigint-config":
        cfg.write_text('{"max_steps": 1' + "0" * 5000 + "}")
    elif case in ("long-teacher", "long-dataset"):
        cfg.write_text(json.dumps({case.split("-")[1]: "a" * 5_000_000}))
    elif case == "config-is-dev-null":
        argv = ["run", "/dev/null"]
    elif case == "nul-teacher":
        cfg.write_text(json.dumps({"teacher": "mini\u0000lm"}))
    elif case == "run-dir-is-file":
        argv += ["--run-dir", str(tmp_path / "afile")]
    elif case == "run-dir-in-file":
        argv += ["--run-dir", str(tmp_path / "afile" / "run")]
    else:
        monkeypatch.setenv("DISTILL_NB_RUNS", str(tmp_path / "afile"))
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("distill-nb: error: ") and err.count("\n") == 1 and len(err) < 1200, err[:300]
    assert (tmp_path / "afile").read_text() == "x"


def test_cli_list_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_NB_RUNS", str(tmp_path / "nothing-here"))
    assert cli(["list"]) == 0
    assert capsys.readouterr().out.startswith(f"0 run(s) in {tmp_path / 'nothing-here'}")


def _old_last_eval(path):
    evals = [m for m in rundir.read_metrics(path) if m.get("split") == "eval"]
    return evals[-1] if evals else None


@pytest.mark.parametrize("layout", ["eval last", "train after eval", "eval 200 KB back", "no eval", "empty",
                                    "garbage lines", "cut last line", "crlf", "bad utf-8", "eval in first line only",
                                    "eval step not a number"])
def test_last_eval_reads_the_end_and_agrees_with_reading_everything(tmp_path, layout):
    import random

    rng = random.Random(0)
    train = [json.dumps({"step": i, "split": "train", "loss": rng.random()}) for i in range(1, 3000)]
    ev = json.dumps({"step": 2999, "split": "eval", "accuracy": 0.75})
    lines = {"eval last": train + [ev], "train after eval": train[:-20] + [ev] + train[-20:],
             "eval 200 KB back": train[:200] + [ev] + train[200:], "no eval": train, "empty": [],
             "garbage lines": [ev] + ["{not json", "[1, 2]", '"x"', "null"] * 50 + train[:10] + ["{]"],
             "cut last line": train + [ev, '{"step": 3000, "split": "eval", "accur'],
             "crlf": train[:100] + [ev] + train[100:200], "bad utf-8": train[:100] + [ev] + train[100:110],
             "eval in first line only": [ev] + train,
             "eval step not a number": train + [ev, json.dumps({"step": "x", "split": "eval"})]}[layout]
    text = ("\r\n" if layout == "crlf" else "\n").join(lines) + ("\n" if lines else "")
    data = text.encode()
    if layout == "bad utf-8":
        data = data.replace(b'"loss"', b'"lo\xff\xfes"', 3)
    (tmp_path / "metrics.jsonl").write_bytes(data)
    assert rundir.last_eval(tmp_path) == _old_last_eval(tmp_path)
    if layout not in ("no eval", "empty"):
        assert rundir.last_eval(tmp_path)["accuracy"] == 0.75


def test_last_eval_reads_a_bounded_tail_of_a_huge_metrics_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    with open(path, "wb") as f:  # a 300 MB sparse file of NULs, then an eval record: the run list stays cheap
        f.truncate(300 << 20)
        f.seek(0, 2)
        f.write(b'\n{"step": 7, "split": "eval", "accuracy": 0.5}\n')
    asked = []
    real = rundir.read_tail
    monkeypatch.setattr(rundir, "read_tail", lambda p, n: asked.append(n) or real(p, n))
    assert rundir.last_eval(tmp_path) == {"step": 7, "split": "eval", "accuracy": 0.5}
    assert asked == [1 << 16]
    path.write_bytes(b'{"step": 1, "split": "eval", "accuracy": 0.1}\n' + b"x" * (20 << 20) + b"\n")
    asked.clear()
    assert rundir.last_eval(tmp_path) is None and max(asked) <= 8 << 20  # too far back: not read, not shown


@pytest.mark.parametrize("kind", ["link", "directory", "fifo"])
def test_last_eval_of_a_metrics_file_that_is_not_a_regular_file_is_none(tmp_path, kind):
    target = tmp_path / "elsewhere.jsonl"
    target.write_text('{"step": 1, "split": "eval", "accuracy": 0.9}\n')
    path = tmp_path / "metrics.jsonl"
    {"link": lambda: path.symlink_to(target), "directory": path.mkdir, "fifo": lambda: os.mkfifo(path)}[kind]()
    assert rundir.last_eval(tmp_path) is None


# --- the rank of a peer error is its file name's -------------------------------------------------------------------
def dead_worker_run(root: Path, run_id: str) -> Path:
    """A run whose (claimed) worker is gone: readers call it failed and say why."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return make(root, run_id, state="running", pid=dead.pid, pid_start=None, claimed=True,
                host=__import__("socket").gethostname())


@pytest.mark.parametrize("written", [True, False, 0, -5, 7, 2, "1", 1.0, None, "missing"])
def test_a_peer_error_whose_rank_is_not_its_file_names_is_passed_over(tmp_path, written):
    path = dead_worker_run(tmp_path, "r")
    record = {"error": "ValueError: bad row 7", "time": 1.0}
    if written != "missing":
        record["rank"] = written
    (path / "rank1_error.json").write_text(json.dumps(record))
    assert rundir.peer_error(path) is None
    error = read_status(path)["error"]
    assert error.startswith("the worker process died") and "failed:" not in error and "bad row" not in error, error


def test_a_peer_error_is_reported_with_its_file_names_rank(tmp_path):
    path = dead_worker_run(tmp_path, "r")
    (path / "rank3_error.json").write_text(json.dumps({"rank": 3, "error": "ValueError: bad row 7", "time": 1.0}))
    assert rundir.peer_error(path)["rank"] == 3
    assert read_status(path)["error"].startswith("process 3 failed: ValueError: bad row 7; then")


# --- records larger than any distill_nb writes are never read whole ------------------------------------------------
def huge(file: Path, size: int = 1 << 30) -> None:
    """``file`` as a sparse file of ``size`` bytes (zeros): costs no disk, but reading it whole costs its size."""
    with open(file, "wb") as f:
        f.truncate(size)


@pytest.mark.parametrize("name", ["status.json", "config.json"])
def test_an_oversized_record_is_listed_unreadable_with_its_size_and_never_read(tmp_path, name):
    import tracemalloc

    make(tmp_path, "good", state="completed", step=10, total_steps=10)
    bad = make(tmp_path, "bad")
    huge(bad / name, 64 << 20)
    tracemalloc.start()
    try:
        listed = {r["run_id"]: r for r in list_runs(tmp_path)}
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"list_runs held {peak >> 20} MB: it read the 64 MB {name}"
    assert listed["good"]["state"] == "completed" and listed["good"]["summary"]["teacher"] == "tiny"
    assert listed["bad"]["state"] == "unreadable", listed["bad"]
    assert f"{name} is 64.0 MB, more than the 4 MB cap" in listed["bad"]["error"], listed["bad"]["error"]
    strict(rundir.dumps(list(listed.values())))


def test_a_record_at_the_cap_is_read_and_one_byte_more_is_not(tmp_path):
    path = make(tmp_path, "r", state="completed")
    text = json.dumps({"state": "completed", "run_id": "r"})
    (path / "status.json").write_text(text + " " * (rundir.MAX_RECORD_BYTES - len(text)))
    assert read_status(path)["state"] == "completed"
    (path / "status.json").write_text(text + " " * (rundir.MAX_RECORD_BYTES - len(text) + 1))
    got = read_status(path)
    assert got["state"] == "unreadable" and "more than the 4 MB cap" in got["error"], got


def test_an_oversized_peer_error_is_passed_over(tmp_path):
    path = dead_worker_run(tmp_path, "r")
    huge(path / "rank1_error.json")
    assert rundir.peer_error(path) is None
    assert read_status(path)["error"].startswith("the worker process died")


# --- the run's own files of the wrong kind: refused with the path and the fix, never followed, never blocking --------
WRITES = {
    ".lock": lambda path: rundir.write_status(path, state="stopped"),
    ".worker.lock": lambda path: rundir.acquire_worker_lock(path),
    "metrics.jsonl": lambda path: rundir.append_metrics(path, {"step": 1, "split": "train"}),
    "status.json": lambda path: rundir.write_status_in_place(path, state="failed", error="disk full"),
}


@pytest.mark.parametrize("kind", ["folder", "fifo", "link"])
@pytest.mark.parametrize("name", sorted(WRITES))
def test_a_run_file_of_the_wrong_kind_is_refused_with_its_path_and_never_blocks(tmp_path, name, kind):
    path = make(tmp_path / "runs", "r")
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    (path / name).unlink(missing_ok=True)
    if kind == "folder":
        (path / name).mkdir()
    elif kind == "fifo":
        os.mkfifo(path / name)
    else:
        (path / name).symlink_to(target)
    error = finishes(lambda: WRITES[name](path), fifo=path / name).get("error")
    assert isinstance(error, OSError) and str(path / name) in str(error) and "remove it" in str(error), error
    assert target.read_text() == "precious"
    rundir.release_worker_lock(path)


def test_a_folder_named_stop_is_named_when_resume_clears_it(tmp_path):
    path = make(tmp_path, "r", state="stopped")
    (path / "STOP").mkdir()
    with pytest.raises(OSError, match=f"{path / 'STOP'} is a folder.*remove it"):
        rundir.clear_stop(path)
    (path / "STOP").rmdir()
    (path / "STOP").symlink_to(tmp_path / "elsewhere")  # a link (or a FIFO) goes as the entry itself
    rundir.clear_stop(path)
    assert not os.path.lexists(path / "STOP")


def test_clearing_peer_errors_never_follows_a_link_and_survives_a_folder(tmp_path):
    path = make(tmp_path / "runs", "r")
    outside = tmp_path / "rank1_error.json"
    outside.write_text('{"rank": 1, "error": "elsewhere"}')
    (path / "rank1_error.json").symlink_to(outside)
    (path / "rank2_error.json").mkdir()
    os.mkfifo(path / "rank3_error.json")
    rundir.write_peer_error(path, 4, "ValueError: bad row 7")
    finishes(lambda: rundir.clear_peer_errors(path))
    assert sorted(p.name for p in path.glob("rank*")) == ["rank2_error.json"]  # a folder is never an error record
    assert outside.read_text() == '{"rank": 1, "error": "elsewhere"}' and rundir.peer_error(path) is None


def test_a_linked_checkpoints_folder_is_not_read_for_the_resume_hint(tmp_path):
    path = dead_worker_run(tmp_path / "runs", "r")
    outside = tmp_path / "outside"
    (outside / "step_0000005").mkdir(parents=True)
    (outside / "step_0000005" / "trainer_state.json").write_text('{"step": 5}')
    (path / "checkpoints").symlink_to(outside)
    assert "Resume continues from the start" in read_status(path)["error"]
    (path / "checkpoints").unlink()
    (path / "checkpoints").mkdir()
    (path / "checkpoints" / "step_0000003").symlink_to(outside / "step_0000005")  # nor a linked step
    (path / "checkpoints" / "step_0000002").mkdir()
    (path / "checkpoints" / "step_0000002" / "trainer_state.json").write_text('{"step": 2}')
    assert "from its checkpoint at step 2" in read_status(path)["error"]
