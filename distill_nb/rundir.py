"""The run directory's files: ids, ``status.json``, ``metrics.jsonl``, ``STOP``, listing. Standard library only.

The one owner of these formats (the server, the CLI, the widgets and the worker all go through here)::

    <root>/<run_id>/
        config.json      the DistillConfig, verbatim (never changed after the run is made)
        status.json      one JSON object, validated by :func:`validate_status` (a str Enum ``state``)
        metrics.jsonl    one JSON object per line, appended and flushed per line
        STOP             present while someone asks the run to stop
        rankN_error.json why process N > 0 failed (torchrun/accelerate), for process 0 to report
        .lock            short-lived lock around status changes (compare-and-set)
        .worker.lock     held by the worker for its whole life (exactly one worker per run)

Writers are strict (``allow_nan=False``: a NaN becomes ``null``, an unknown state is refused); readers are
tolerant (a corrupt file makes that run ``unreadable`` with the reason, never breaks a listing; a record larger
than ``MAX_RECORD_BYTES`` is corrupt, and never read whole). Files are opened with ``O_NOFOLLOW`` (and never
block on a FIFO), and run directories that are symbolic links are refused, so nothing is read or written outside
the runs root.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

from .config import DistillConfig, atomic_write_text, env_folder
from .owner import (
    RunBusy,
    acquire_worker_lock,
    alive,
    identity,
    open_lock_file,
    process_start,
    release_worker_lock,
    worker_lock_free,
)
from .safeio import (
    MAX_RECORD_BYTES,
    CorruptRecord,
    UnsafeEntry,
    dumps,
    finite,
    kind,
    loads,
    not_utf8,
    number,
    open_folder,
    open_regular_for_writing,
    read_json,
    read_tail,
    read_text,
    too_big,
    write_all,
    write_in_place,
)

__all__ = ["CorruptRecord", "RunBusy", "RunNotFound", "Status", "acquire_worker_lock", "alive", "append_metrics",
           "create_run", "dumps", "identity", "list_runs", "new_run_id", "process_start", "read_json",
           "read_metrics", "read_status", "release_worker_lock", "request_stop", "run_dir", "runs_root",
           "stop_requested", "transition", "truncate_metrics", "validate_run_id", "worker_lock_free",
           "write_status"]

STALE_AFTER_S = 120.0  # a running status whose heartbeat is older than this (other host) is stale
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # used with fullmatch: \A...\Z, no trailing newline


class Status(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    UNREADABLE = "unreadable"  # only ever reported by readers (a corrupt status.json); never written

    @property
    def active(self) -> bool:
        return self in (Status.QUEUED, Status.RUNNING)


class RunNotFound(LookupError):
    """No run directory with that id."""


# --- ids and paths ---------------------------------------------------------------------------------------------
def runs_root(root: str | os.PathLike | None = None) -> Path:
    """Where runs live: ``root``, else ``$DISTILL_NB_RUNS``, else ``~/.distill_nb/runs``."""
    if root is None:  # a file there raises ValueError naming $DISTILL_NB_RUNS
        root = env_folder("DISTILL_NB_RUNS") or Path.home() / ".distill_nb" / "runs"
    return Path(root).expanduser().resolve()


def validate_run_id(run_id: Any) -> str:
    """Return ``run_id`` if it is a plain name; raise ValueError for anything path-like."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise ValueError(f"invalid run id {run_id!r}: use 1-128 letters, digits, '-', '_' and '.', starting with "
                         "a letter or digit (no '/', no '..', no spaces or newlines).")
    return run_id


def run_dir(run_id: str, root: str | os.PathLike | None = None) -> Path:
    """The directory of an existing run; RunNotFound when there is none, ValueError for a symbolic link."""
    base = runs_root(root)
    path = base / validate_run_id(run_id)
    if path.is_symlink():
        raise ValueError(f"run {run_id!r} in {base} is a symbolic link; distill_nb never follows links out of "
                         "the runs root: move the run directory itself there.")
    if not path.is_dir() or not _is_file(path / "config.json"):
        raise RunNotFound(f"no run {run_id!r} under {base}: use list_runs() to see the existing ones, or pass "
                          "root= (or set $DISTILL_NB_RUNS) if the run lives elsewhere.")
    return path


def new_run_id(prefix: str = "run") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def _is_file(path: Path) -> bool:
    """A regular file that is not a symbolic link."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


# --- status.json -----------------------------------------------------------------------------------------------
_NUM = (int, float)
_SCHEMA: dict[str, tuple[type, ...]] = {  # field -> allowed types (None always allowed except for state)
    "state": (str,), "run_id": (str,), "step": (int,), "total_steps": (int,), "epoch": _NUM,
    "pid": (int,), "pid_start": (int,), "host": (str,), "launcher_pid": (int,), "launcher_start": (int,),
    "launcher_host": (str,), "created_at": _NUM, "updated_at": _NUM, "started_at": _NUM, "finished_at": _NUM,
    "eta_s": _NUM, "message": (str,), "error": (str,), "traceback": (str,), "stale": (bool,),
    "phase": (str,), "phase_step": (int,), "phase_total": (int,), "backend": (str,), "device": (str,),
    "precision": (str,), "world_size": (int,), "teacher_path": (str,), "teacher_accuracy": _NUM,
    "final": (dict,), "claimed": (bool,), "summary": (dict,),
}
_POSITIVE = {"pid", "launcher_pid", "world_size"}
_COUNTS = {"step", "total_steps", "phase_step", "phase_total", "pid_start", "launcher_start"}
DISK_STATES = {s.value for s in Status if s is not Status.UNREADABLE}


def validate_status(status: Any) -> dict[str, Any]:
    """Check the shape of a status record; return it, or raise CorruptRecord saying what is wrong."""
    if not isinstance(status, dict):
        raise CorruptRecord(f"status.json holds a JSON {type(status).__name__}, not an object")
    if status.get("state") not in DISK_STATES:
        raise CorruptRecord(f"status.json has state {status.get('state')!r}, not one of {sorted(DISK_STATES)}")
    for key, types in _SCHEMA.items():
        value = status.get(key)
        if value is None:
            continue
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if ok and key in _POSITIVE and not 0 < value < 2**31:  # pid 0 / -1 would signal a process group
            ok = False
        if ok and key in _COUNTS and not 0 <= value < 2**53:
            ok = False
        if not ok:
            shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
            raise CorruptRecord(f"status.json field {key!r} is {shown}, expected "
                                f"{' or '.join(t.__name__ for t in types)}"
                                + (" > 0" if key in _POSITIVE else " >= 0" if key in _COUNTS else ""))
    return status


def status_path(path: Path) -> Path:
    return Path(path) / "status.json"


def _read_raw_status(path: Path) -> dict[str, Any]:
    """The validated status.json; FileNotFoundError or CorruptRecord otherwise."""
    return validate_status(read_json(status_path(path), max_bytes=MAX_RECORD_BYTES))


@contextmanager
def _status_lock(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of status.json between the launcher, the worker and the server."""
    fd = open_lock_file(Path(path) / ".lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_status(path: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``status.json`` atomically (a corrupt old file is replaced) and stamp ``updated_at``.

    Raises:
        CorruptRecord: the merged status would not be valid (an unknown state, a wrong type).
    """
    with _status_lock(path):
        return _merge_status(path, fields)


def _merge_status(path: Path, fields: dict[str, Any], in_place: bool = False) -> dict[str, Any]:
    try:
        status = _read_raw_status(path)
    except (FileNotFoundError, CorruptRecord):
        status = {}
    status.update(finite(fields))
    status["updated_at"] = time.time()
    validate_status(status)
    if in_place:
        write_in_place(status_path(path), dumps({k: v for k, v in status.items() if v is not None}))
    else:
        atomic_write_text(status_path(path), dumps(status, indent=1))  # replaces a symlink, never writes through it
    return status


def write_status_in_place(path: Path, **fields: Any) -> dict[str, Any]:
    """:func:`write_status` for a full disk: the merged record (compact, without empty fields) is written over
    status.json in place, which needs no room for a temp copy. Only for a worker's last word (not atomic).

    Raises:
        OSError: not even that could be written.
    """
    with _status_lock(path):
        return _merge_status(path, fields, in_place=True)


def update_unclaimed(path: Path, **fields: Any) -> dict[str, Any] | None:
    """Write ``fields`` only while the run is queued and no process has claimed it (the launcher's notes about
    the worker it started); returns the new status, or None when a process already owns the run."""
    with _status_lock(path):
        current = read_status(path)
        if current["state"] != Status.QUEUED.value or current.get("claimed"):
            return None
        return _merge_status(path, fields)


def transition(path: Path, allowed: set[Status], **fields: Any) -> dict[str, Any]:
    """Compare-and-set: write ``fields`` only if the run's live state is in ``allowed``.

    Raises:
        RunBusy: the run is queued or running. ValueError: any other state not in ``allowed``.
    """
    with _status_lock(path):
        current = read_status(path)
        state = Status(current["state"])
        if state not in allowed:
            if state.active:
                raise RunBusy(f"run {Path(path).name!r} is already {state.value} ({owner_of(current)}); wait for it or "
                              "stop it first.")
            if state is Status.UNREADABLE:
                raise ValueError(f"run {Path(path).name!r} cannot be used: {current['error']}.")
            raise ValueError(f"run {Path(path).name!r} is {state.value}; this needs one of "
                             f"{sorted(s.value for s in allowed)}.")
        return _merge_status(path, fields)


def owner_of(status: dict[str, Any]) -> str:
    """"pid N on host" for a status (the worker, or the launcher before one started)."""
    pid = status.get("pid") or status.get("launcher_pid")
    return f"pid {pid} on {status.get('host') or status.get('launcher_host') or '?'}" if pid else "no worker yet"


def read_status(path: Path) -> dict[str, Any]:
    """The run's status as readers should see it; never raises for a bad file.

    A corrupt or missing ``status.json`` gives ``state="unreadable"`` with the reason in ``error``; a queued or
    running status whose worker is gone (dead pid, a pid reused by another process, a silent other host) gives
    ``state="failed"`` with ``stale: true``.
    """
    try:
        status = _read_raw_status(path)
    except FileNotFoundError:
        if not os.path.isdir(path):  # the whole run is gone, not one file of it
            return {"state": Status.UNREADABLE.value, "error": f"run {Path(path).name!r} no longer exists (its folder "
                    "was deleted or moved): distill_nb.list_runs() shows the runs there are."}
        return {"state": Status.UNREADABLE.value, "error": "status.json is missing"}
    except CorruptRecord as e:
        return {"state": Status.UNREADABLE.value, "error": str(e)}
    if Status(status["state"]).active:
        status = _liveness(status, Path(path))
    return status


def _proven(pid: int, start: int | None) -> bool:
    """True if ``pid`` can be checked against its recorded start time (so a reused pid is told apart)."""
    return start is not None and process_start(pid) is not None


def _worker_gone(status: dict[str, Any], path: Path) -> bool:
    """Whether the run's worker on this host is gone.

    The pid decides when its start time proves who it is. Otherwise (no start time recorded, or no /proc to read
    one) the worker lock decides: a worker holds it from before it claims the run to its last write, so a claimed
    run with a free lock has no worker, whatever process now has that pid. An unclaimed run with a free lock is
    given ``STALE_AFTER_S`` for its worker to start.
    """
    return _process_gone(status, path, status["pid"], status.get("pid_start"))


def _process_gone(status: dict[str, Any], path: Path, pid: int, start: int | None) -> bool:
    """:func:`_worker_gone` for any recorded process (the worker, or the launcher before a worker claimed it)."""
    if _proven(pid, start):
        return not alive(pid, start)
    if not alive(pid):
        return True
    if not worker_lock_free(path):
        return False
    claimed = status.get("claimed") or status.get("state") == Status.RUNNING.value
    return bool(claimed) or time.time() - (status.get("updated_at") or 0) > STALE_AFTER_S


def _died(status: dict[str, Any], path: Path) -> str:
    """Why a run's worker is gone, with the last step it recorded, where its output went, and where Resume starts."""
    ckpt = _last_checkpoint_step(path)
    resume = f"from its checkpoint at step {ckpt}" if ckpt else "from the start (no checkpoint was written)"
    peer = peer_error(path)  # torchrun ends process 0 (SIGTERM) when another one fails: that one said why
    first = f"process {peer['rank']} failed: {peer['error']}; then " if peer else ""
    # launch() and Resume record their backend and send the worker's output to log.txt; a worker started by hand
    # (torchrun, accelerate launch, train() in a notebook) prints where it was started, and no log.txt is written
    where = (f"at the end of {path / 'log.txt'}" if status.get("backend") else
             "in the output of the command that started it (the terminal of torchrun or accelerate launch, or the "
             "notebook that called train()): only runs started with launch() or Resume write log.txt")
    return (f"{first}the worker process died without finishing (last recorded step {status.get('step') or 0}); its "
            f"last error, if any, is {where}. Resume continues {resume}.")


def _last_logged_step(path: Path) -> int | float | None:
    """The step of the newest record in metrics.jsonl (its end only): status.json's step is written at most once per
    heartbeat, so a killed worker's last step is here."""
    rec = _newest_record(path, lambda r: (number(r.get("step")) or 0) > 0)
    return None if rec is None else number(rec.get("step"))


def _last_checkpoint_step(path: Path) -> int | None:
    """The newest complete checkpoint's step (the file layout is checkpoint.py's; read here without torch)."""
    try:
        folder = open_folder(Path(path) / "checkpoints")  # a link there is not followed (checkpoint.py refuses it)
    except OSError:
        return None
    try:
        steps = [int(name[5:]) for name in os.listdir(folder)
                 if name.startswith("step_") and name[5:].isdigit() and _is_file_in(folder, name, "trainer_state.json")]
    finally:
        os.close(folder)
    return max(steps, default=None)


def _is_file_in(folder: int, name: str, file: str) -> bool:
    """Whether ``<folder>/<name>`` is a real folder (not a link) holding the regular file ``file``."""
    try:
        sub = open_folder(Path(name), dir_fd=folder)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.stat(file, dir_fd=sub, follow_symlinks=False).st_mode)
    except OSError:
        return False
    finally:
        os.close(sub)


def _liveness(status: dict[str, Any], path: Path) -> dict[str, Any]:
    here = socket.gethostname()
    pid, launcher = status.get("pid"), status.get("launcher_pid")
    if pid is not None:
        if status.get("host") == here:
            dead = _worker_gone(status, path)
        else:
            dead = time.time() - (status.get("updated_at") or 0) > STALE_AFTER_S
        if dead:
            logged = _last_logged_step(path)
            if logged is not None and logged > (number(status.get("step")) or 0):
                status = {**status, "step": int(logged)}
            return {**status, "state": Status.FAILED.value, "stale": True,
                    "error": status.get("error") or _died(status, path)}
        if status.get("claimed") or status.get("backend") != "kernel":
            return status
    # no worker has claimed the run yet: the process handing it over must still be there
    if launcher is not None and status.get("launcher_host") == here and _process_gone(status, path, launcher,
                                                                                      status.get("launcher_start")):
        return {**status, "state": Status.FAILED.value, "stale": True,
                "error": status.get("error") or f"the process that launched this run (pid {launcher}) ended "
                "before it handed the run to a worker; Resume starts one."}
    return status


def never_train_again(path: Path) -> str | None:
    """Why the run in ``path`` must not be trained (again), or None: it completed, or its status cannot be read
    but its final student is there (a completed run whose status.json was damaged is still completed)."""
    status = read_status(path)
    if status["state"] == Status.COMPLETED.value:
        return f"run {Path(path).name!r} is completed"
    if status["state"] == Status.UNREADABLE.value and os.path.lexists(Path(path) / "student"):
        return (f"run {Path(path).name!r} has a final student/ but its status cannot be read "
                f"({status.get('error')}); it is treated as completed")
    return None


# --- metrics.jsonl ---------------------------------------------------------------------------------------------
def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one record (strict JSON, one line) and flush it, so readers see whole lines as they come."""
    line = (dumps(record) + "\n").encode("utf-8")
    file = Path(path) / "metrics.jsonl"
    fd = open_regular_for_writing(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # never a link, folder or FIFO
    try:
        end = os.fstat(fd).st_size
        try:
            write_all(fd, line)  # a short write is continued, never left as half a line
        except OSError as e:
            try:
                os.ftruncate(fd, end)  # no room for the rest: take back the part that was written
            except OSError:
                pass
            raise OSError(e.errno, e.strerror, str(file)) from None
    finally:
        os.close(fd)


def read_metrics(path: Path, since: int | None = None) -> list[dict[str, Any]]:
    """Records with ``step > since``; a half-written or corrupt line (or a linked file) is skipped, never fatal."""
    try:
        data = read_text(Path(path) / "metrics.jsonl", errors="replace")  # a garbled line costs that line only
    except (FileNotFoundError, CorruptRecord):
        return []
    out = []
    for line in data.splitlines():
        try:
            rec = loads(line)
        except json.JSONDecodeError:
            continue
        step = number(rec.get("step", 0)) if isinstance(rec, dict) else None
        if step is None:  # not a number, a bool, NaN/inf
            continue
        if since is None or step > since:
            out.append(rec)
    return out


TAIL_BYTES = (1 << 16, 1 << 20, 1 << 23)  # how much of metrics.jsonl's end last_eval reads, growing: at most 8 MB


def last_eval(path: Path) -> dict[str, Any] | None:
    """The newest eval record of a run, read from the end of its metrics.jsonl.

    The run list asks this of every run on every poll, so the cost does not grow with the run's length: only the
    file's end is read (at most the last 8 MB; an eval record further back than that is not shown in the list).
    """
    return _newest_record(path, lambda r: r.get("split") == "eval" and number(r.get("step", 0)) is not None)


def _newest_record(path: Path, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """The newest record of metrics.jsonl for which ``wanted`` holds, reading back from its end (``TAIL_BYTES``)."""
    for size in TAIL_BYTES:
        try:
            text, whole = read_tail(Path(path) / "metrics.jsonl", size)
        except (FileNotFoundError, CorruptRecord):
            return None
        lines = text.splitlines()
        for line in reversed(lines if whole else lines[1:]):  # the first line of a tail may be cut
            try:
                rec = loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and wanted(rec):
                return rec
        if whole:
            return None
    return None


def truncate_metrics(path: Path, max_step: int) -> None:
    """Keep only records with ``step <= max_step``: a resumed run redoes later steps, so none appears twice."""
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= max_step]
    atomic_write_text(Path(path) / "metrics.jsonl", "".join(dumps(r) + "\n" for r in kept))


# --- STOP ------------------------------------------------------------------------------------------------------
def request_stop(path: Path) -> None:
    atomic_write_text(Path(path) / "STOP", str(time.time()))


def clear_stop(path: Path) -> None:
    """Withdraw a stop request. A folder named STOP (not ours: :func:`request_stop` writes a file) is left alone.

    Raises:
        UnsafeEntry: ``STOP`` is a folder; the message names it and says to remove it.
    """
    stop = Path(path) / "STOP"
    try:
        stop.unlink(missing_ok=True)  # a link or a FIFO goes as the entry itself: unlink never follows or opens it
    except IsADirectoryError:
        raise UnsafeEntry(f"{stop} is a folder: distill_nb only ever writes a file there, to ask the run to stop, "
                          "and a folder reads as a standing stop request; remove it and try again") from None


def stop_requested(path: Path) -> bool:
    return os.path.lexists(Path(path) / "STOP")


# --- errors of the other processes (torchrun/accelerate) --------------------------------------------------------
# Process 0 alone writes status.json. Another process that fails leaves its error here, so that process 0, which
# then only sees its connection to it break, records the real failure. A worker that claims a run clears these
# before the other processes can join it: a file found here is the current attempt's, never an earlier one's.
_PEER_ERROR = re.compile(r"rank([1-9][0-9]{0,5})_error\.json")


def write_peer_error(path: Path, rank: int, error: str, traceback: str | None = None) -> None:
    """Record why process ``rank`` (> 0) failed: ``error`` is one line for users, ``traceback`` the detail."""
    atomic_write_text(Path(path) / f"rank{rank}_error.json",
                      dumps({"rank": rank, "error": error, "traceback": traceback, "time": time.time()}))


def peer_error(path: Path) -> dict[str, Any] | None:
    """The first recorded failure of a process other than 0 (``rank``, ``error``, ``traceback``, ``time``), or
    None; a corrupt, oversized or linked file is passed over, and so is one whose ``rank`` is not its file name's N
    (a copied or hand-edited file: it would name another process, or none)."""
    found = []
    for file in _peer_error_files(path):
        try:
            record = read_json(file, max_bytes=MAX_RECORD_BYTES)
        except (OSError, CorruptRecord):
            continue
        rank = int(_PEER_ERROR.fullmatch(file.name).group(1))
        if isinstance(record, dict) and isinstance(record.get("error"), str) and _same_rank(record.get("rank"), rank):
            found.append(record)
    return min(found, key=lambda r: number(r.get("time")) or math.inf, default=None)


def _same_rank(written: Any, rank: int) -> bool:
    """Whether a record's ``rank`` is the integer ``rank`` (not a bool: ``True == 1`` in Python)."""
    return isinstance(written, int) and not isinstance(written, bool) and written == rank


def clear_peer_errors(path: Path) -> None:
    """Forget the other processes' errors of an earlier attempt (a new worker claims the run).

    A folder with such a name is left (distill_nb never makes one, and :func:`peer_error` never reads it as an
    error); anything else goes as the entry itself (unlink never follows a link or opens a FIFO).
    """
    for file in _peer_error_files(path):
        try:
            file.unlink()
        except (FileNotFoundError, IsADirectoryError):
            pass


def _peer_error_files(path: Path) -> list[Path]:
    try:
        return [Path(path) / n for n in sorted(os.listdir(path)) if _PEER_ERROR.fullmatch(n)]
    except OSError:
        return []


# --- creating and listing --------------------------------------------------------------------------------------
def create_run(config: DistillConfig, root: str | os.PathLike | None = None, run_id: str | None = None,
               **status: Any) -> Path:
    """Make a run directory with config.json and a queued status, all at once (temp dir + rename)."""
    root_path = runs_root(root)
    run_id = validate_run_id(run_id or new_run_id())
    if why := not_utf8(root_path):
        raise ValueError(f"the runs folder {str(root_path)!r} cannot be used: {why}, and a run saves its tokenizer "
                         "and records under it: rename the folder, or pass root= (or set $DISTILL_NB_RUNS to) "
                         "another one.")
    final = root_path / run_id
    exists = FileExistsError(f"run {run_id!r} already exists in {root_path}: pick another run_id, or (unless it "
                             "completed) continue it with Run.attach(run_id).resume().")
    if os.path.lexists(final):
        raise exists
    try:
        root_path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"the runs folder {str(root_path)!r} is (or is inside) a file, not a folder: pass root= "
                         "a folder (or set $DISTILL_NB_RUNS to one).") from None
    tmp = root_path / f".tmp-{run_id}-{secrets.token_hex(3)}"
    tmp.mkdir()
    try:
        config.to_json(tmp / "config.json")
        now = time.time()
        atomic_write_text(tmp / "status.json", dumps(
            {"state": Status.QUEUED.value, "run_id": run_id, "created_at": now, "updated_at": now, "step": 0,
             "total_steps": None, "phase": "queued", **identity("launcher"), **status}, indent=1))
        try:
            os.rename(tmp, final)
        except OSError as e:  # another launch() of the same id got there first
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            raise exists from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _summary(path: Path) -> tuple[dict[str, Any] | None, bool]:
    """(teacher → student summary, trust_remote_code) from config.json, read without validation side effects."""
    try:
        config = read_json(path / "config.json", max_bytes=MAX_RECORD_BYTES)
    except (FileNotFoundError, CorruptRecord):
        return None, False
    if not isinstance(config, dict):
        return None, False
    keys = ("teacher", "dataset", "student_layers", "objective")
    return {k: config.get(k) for k in keys}, config.get("trust_remote_code") is True


def config_problem(path: Path) -> str | None:
    """Why the run's config.json cannot be a config distill_nb wrote (not a regular file, oversized), or None: the
    listing shows the run unreadable with this reason, and a worker refuses to start on it."""
    try:
        info = os.lstat(path / "config.json")
    except FileNotFoundError:
        return None  # no run folder at all (the caller says so)
    except OSError as e:
        return f"config.json cannot be read ({e.strerror})"
    if not stat.S_ISREG(info.st_mode):
        return f"config.json is not a regular file (it is {kind(info.st_mode)})"
    return too_big("config.json", info.st_size, MAX_RECORD_BYTES)


def list_runs(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One status dict per run (newest first), with ``run_id``, ``last_eval``, ``summary``, ``trust_remote_code``.

    A run whose files are corrupt is listed with ``state="unreadable"`` and the reason in ``error``; it never
    hides the others. Entries that are symbolic links are skipped.
    """
    base = runs_root(root)
    try:
        entries = sorted(base.iterdir())
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        source = "root=" if root is not None else "$DISTILL_NB_RUNS" if os.environ.get("DISTILL_NB_RUNS") else "the default"
        raise NotADirectoryError(f"the runs folder {str(base)!r} ({source}) is (or is inside) a file, not a folder: "
                                 "pass root= a folder (or set $DISTILL_NB_RUNS to one).") from None
    out = []
    for path in entries:
        if path.name.startswith(".") or path.is_symlink() or not path.is_dir() or not _RUN_ID.fullmatch(path.name):
            continue
        if not os.path.lexists(path / "config.json"):
            continue  # not a run directory
        status = read_status(path)
        if problem := config_problem(path):
            status = {"state": Status.UNREADABLE.value, "error": problem}
        status["run_id"] = path.name
        status["last_eval"] = last_eval(path)
        status["summary"], status["trust_remote_code"] = _summary(path)
        out.append(status)
    return sorted(out, key=lambda s: s.get("created_at") or 0, reverse=True)
