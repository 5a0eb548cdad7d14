"""The run directory: the only contract between the notebook, the worker process and the server.

A run lives in ``<root>/<run_id>/``::

    config.json        the DistillConfig, verbatim
    status.json        {"state": queued|running|completed|failed|stopped, "step", "total_steps", ...}
    metrics.jsonl      one JSON object per line, flushed per line ({"step", "split", "loss", ...})
    checkpoints/step_N/  student (safetensors) + optimizer state + trainer state, written atomically
    student/           the final student and tokenizer (``transformers.pipeline`` loads it)
    STOP               present when someone asked the run to stop
    log.txt            the worker's stdout/stderr

Standard library only (the server imports it); torch never loads here.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Any

from .config import ConfigError, DistillConfig, atomic_write_text

STALE_AFTER_S = 120.0  # a running status whose heartbeat is older than this (other host) is stale
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class Status(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def active(self) -> bool:
        return self in (Status.QUEUED, Status.RUNNING)


class RunNotFound(LookupError):
    """No run directory with that id."""


def runs_root(root: str | os.PathLike | None = None) -> Path:
    """Where runs live: ``root``, else ``$DISTILL_NB_RUNS``, else ``~/.distill_nb/runs``."""
    if root is None:
        root = os.environ.get("DISTILL_NB_RUNS") or Path.home() / ".distill_nb" / "runs"
    return Path(root).expanduser().resolve()


def validate_run_id(run_id: Any) -> str:
    """Return ``run_id`` if it is a plain name; raise ValueError for anything path-like."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or ".." in run_id:
        raise ValueError(f"invalid run id {run_id!r}: use letters, digits, '-', '_' and '.', "
                         "starting with a letter or digit (no '/', no '..').")
    return run_id


def run_dir(run_id: str, root: str | os.PathLike | None = None) -> Path:
    """The directory of an existing run; RunNotFound when there is none."""
    path = runs_root(root) / validate_run_id(run_id)
    if not (path / "config.json").is_file():
        raise RunNotFound(f"no run {run_id!r} under {runs_root(root)}: use list_runs() to see the existing "
                          "ones, or pass root= (or set $DISTILL_NB_RUNS) if the run lives elsewhere.")
    return path


def new_run_id(prefix: str = "run") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


# --- status ----------------------------------------------------------------------------------------------------
def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def write_status(path: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``path/status.json`` atomically and stamp ``updated_at``."""
    status = read_json(path / "status.json", {}) or {}
    status.update(fields)
    if isinstance(status.get("state"), Status):
        status["state"] = status["state"].value
    status["updated_at"] = time.time()
    atomic_write_text(path / "status.json", json.dumps(status, indent=1))
    return status


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child that nobody reaped yet is a zombie: dead for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_status(path: Path) -> dict[str, Any]:
    """The run's status, with a dead or silent worker reported as failed (``stale: true``)."""
    status = read_json(path / "status.json", None)
    if status is None:
        return {"state": Status.FAILED.value, "error": "status.json is missing or unreadable", "stale": True}
    if Status(status.get("state", "failed")).active:
        pid, host = status.get("pid"), status.get("host")
        same_host = host == socket.gethostname()
        dead = (same_host and pid is not None and not _pid_alive(int(pid))) or (
            not same_host and time.time() - status.get("updated_at", 0) > STALE_AFTER_S)
        launcher = status.get("launcher_pid")  # no worker yet: the process starting one must be alive
        orphan = (pid is None and launcher is not None and status.get("launcher_host") == socket.gethostname()
                  and not _pid_alive(int(launcher)))
        if dead:
            status = {**status, "state": Status.FAILED.value, "stale": True,
                      "error": status.get("error") or "the worker process died without finishing "
                      f"(last step {status.get('step', 0)}); resume() continues from the last checkpoint."}
        elif orphan:
            status = {**status, "state": Status.FAILED.value, "stale": True,
                      "error": status.get("error") or f"the process that launched this run (pid {launcher}) "
                      "ended before it started a worker; resume() starts one."}
    return status


# --- metrics ---------------------------------------------------------------------------------------------------
def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one record to ``metrics.jsonl`` and flush it, so readers see whole lines as they come."""
    with open(path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def read_metrics(path: Path, since: int | None = None) -> list[dict[str, Any]]:
    """Records with ``step > since``; a half-written or corrupt line is skipped, never fatal."""
    try:
        lines = (path / "metrics.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and (since is None or rec.get("step", 0) > since):
            out.append(rec)
    return out


def truncate_metrics(path: Path, max_step: int) -> None:
    """Keep only records with ``step <= max_step`` (used on resume so no step appears twice)."""
    keep = read_metrics(path)
    kept = [r for r in keep if r.get("step", 0) <= max_step]
    atomic_write_text(path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))


# --- creating and launching ------------------------------------------------------------------------------------
def create_run(config: DistillConfig, root: str | os.PathLike | None = None,
               run_id: str | None = None) -> Path:
    """Make a run directory with config.json and a queued status, all at once (temp dir + rename)."""
    root_path = runs_root(root)
    run_id = validate_run_id(run_id or new_run_id())
    final = root_path / run_id
    if final.exists():
        raise FileExistsError(f"run {run_id!r} already exists in {root_path}: pick another run_id or "
                              "resume it with Run.attach(run_id).resume().")
    root_path.mkdir(parents=True, exist_ok=True)
    tmp = root_path / f".tmp-{run_id}-{secrets.token_hex(3)}"
    tmp.mkdir()
    try:
        config.to_json(tmp / "config.json")
        now = time.time()
        atomic_write_text(tmp / "status.json", json.dumps(
            {"state": Status.QUEUED.value, "run_id": run_id, "created_at": now, "updated_at": now,
             "step": 0, "total_steps": None, **_launcher()}, indent=1))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _launcher() -> dict[str, Any]:
    """Who is about to start the worker: a queued run without a worker whose launcher died is stale."""
    return {"launcher_pid": os.getpid(), "launcher_host": socket.gethostname()}


def _in_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None  # type: ignore[attr-defined]
    return shell is not None and getattr(shell, "kernel", None) is not None


def _start_worker(path: Path, backend: str, nproc: int = 2) -> None:
    """Start the worker for ``path`` in a fresh interpreter (never a fork) and return at once."""
    if backend == "auto":
        backend = "kernel" if _in_kernel() else "subprocess"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    pkg_parent = str(Path(__file__).resolve().parent.parent)  # works from a source checkout too
    env["PYTHONPATH"] = os.pathsep.join(p for p in [pkg_parent, env.get("PYTHONPATH")] if p)
    write_status(path, backend=backend)
    if backend == "kernel":
        _start_kernel_worker(path, env)
        return
    if backend == "subprocess":
        cmd = [sys.executable, "-m", "distill_nb.train", str(path)]
    elif backend == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "distill_nb.train", str(path)]
    else:
        raise ValueError(f"backend={backend!r} is unknown: use 'auto', 'subprocess', 'kernel' or 'torchrun'.")
    with open(path / "log.txt", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=str(path), start_new_session=True)
    # the worker overwrites this with its own pid; until then a crash at start-up is still detected
    write_status(path, pid=proc.pid, host=socket.gethostname())


BACKENDS = ("auto", "kernel", "subprocess", "torchrun")


def _start_kernel_worker(path: Path, env: dict[str, str]) -> None:
    """Run the worker in a new, independent Jupyter kernel; the hand-shake happens off the caller's thread."""
    import threading

    from jupyter_client.manager import KernelManager  # only this backend needs it

    km = KernelManager(kernel_name="python3", connection_file=str(path / "kernel.json"))
    with open(path / "log.txt", "ab") as log:
        km.start_kernel(env=env, cwd=str(path), independent=True, stdout=log, stderr=subprocess.STDOUT)
    write_status(path, pid=getattr(km.provisioner, "pid", None), host=socket.gethostname())
    code = (f"from distill_nb.train import main as _m\n_m({str(path)!r})\n"
            "import os; os._exit(0)  # the kernel exists for this run only\n")

    def hand_over() -> None:
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=120)
            msg_id = kc.execute(code, store_history=False)
            deadline = time.time() + 60
            while time.time() < deadline:  # closing before the kernel took the request would drop it
                msg = kc.get_iopub_msg(timeout=60)
                if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_input":
                    break
        except Exception as e:  # surfaces as a failed run instead of a silent thread death
            write_status(path, state=Status.FAILED, error=f"the background kernel did not start the run: {e}")
        finally:
            kc.stop_channels()

    threading.Thread(target=hand_over, name=f"distill_nb-{path.name}", daemon=True).start()


def launch(config: DistillConfig, *, backend: str = "auto", root: str | os.PathLike | None = None,
           run_id: str | None = None, nproc: int = 2, check: bool = True) -> Run:
    """Start a distillation run in the background and return at once.

    Args:
        config: what to run.
        backend: "auto" (a background kernel inside Jupyter, else a subprocess), "kernel", "subprocess",
            or "torchrun" (``nproc`` processes with DDP).
        root: the runs folder (default ``runs_root()``).
        run_id: a name for the run (default: time + random suffix).
        check: run :func:`distill_nb.preflight.preflight` first (reads the teacher's config.json and the data
            files, no weights), so a wrong path, shape, layer map, column or label set raises here and no
            run directory is made. ``check=False`` leaves every check to the worker (status ``failed``).

    Raises:
        FileNotFoundError, ConfigError, ValueError: from the checks, before anything is written.
    """
    if not isinstance(config, DistillConfig):
        raise TypeError(f"launch() takes a DistillConfig, got {type(config).__name__}; build one with "
                        "DistillConfig(...) or DistillConfig.from_json(path).")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown: use one of {', '.join(map(repr, BACKENDS))}.")
    if run_id is not None:
        validate_run_id(run_id)
    from .preflight import absolute_paths, preflight  # reads configs and data files; torch never loads

    config = absolute_paths(config)  # the worker runs in the run directory, not in the caller's
    if check:
        preflight(config)
    path = create_run(config, root, run_id)
    try:
        _start_worker(path, backend, nproc)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # no worker ever ran: leave no run behind
        raise
    return Run(path)


def list_runs(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One status dict per run (newest first), each with ``run_id`` and a ``last_eval`` record."""
    base = runs_root(root)
    if not base.is_dir():
        return []
    out = []
    for path in base.iterdir():
        if path.name.startswith(".") or not (path / "config.json").is_file():
            continue
        status = read_status(path)
        status["run_id"] = path.name
        evals = [m for m in read_metrics(path) if m.get("split") == "eval"]
        status["last_eval"] = evals[-1] if evals else None
        out.append(status)
    return sorted(out, key=lambda s: s.get("created_at", 0), reverse=True)


class Run:
    """A handle on a run directory; every method reads the directory afresh (safe across kernel restarts)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.id = self.path.name

    @classmethod
    def attach(cls, run_id: str, root: str | os.PathLike | None = None) -> Run:
        """Re-attach to an existing run by id (e.g. after restarting the kernel)."""
        return cls(run_dir(run_id, root))

    @property
    def config(self) -> DistillConfig:
        return DistillConfig.from_json(self.path / "config.json")

    def status(self) -> dict[str, Any]:
        return read_status(self.path)

    @property
    def state(self) -> Status:
        return Status(self.status()["state"])

    def metrics(self, since: int | None = None) -> list[dict[str, Any]]:
        return read_metrics(self.path, since)

    def stop(self, wait: float | None = 60.0) -> dict[str, Any]:
        """Ask the worker to checkpoint and stop; wait up to ``wait`` seconds for it."""
        status = self.status()
        if not Status(status["state"]).active:
            return status
        atomic_write_text(self.path / "STOP", str(time.time()))
        if status.get("state") == Status.QUEUED.value and status.get("pid") is None:
            return write_status(self.path, state=Status.STOPPED, finished_at=time.time())
        if wait:
            self.wait(wait)
        return self.status()

    def resume(self, backend: str = "auto", nproc: int = 2) -> Run:
        """Continue a stopped or failed run from its last checkpoint, in the background."""
        state = self.state
        if state == Status.COMPLETED:
            raise ValueError(f"run {self.id!r} already completed; launch a new run instead of resuming it, "
                             "e.g. use launch(run.config.replace(max_steps=...)).")
        if state.active:
            raise ValueError(f"run {self.id!r} is still {state.value}; stop() it before resuming.")
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is unknown: use one of {', '.join(map(repr, BACKENDS))}.")
        (self.path / "STOP").unlink(missing_ok=True)
        write_status(self.path, state=Status.QUEUED, error=None, traceback=None, stale=False, pid=None,
                     **_launcher())
        try:
            _start_worker(self.path, backend, nproc)
        except BaseException as e:  # no worker: say so instead of staying queued forever
            write_status(self.path, state=Status.FAILED, error=f"could not start the worker: {e}")
            raise
        return self

    def kill(self) -> None:
        """SIGKILL the worker (for tests and emergencies); the run becomes failed and resumable."""
        pid = self.status().get("pid")
        if pid:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None, poll: float = 0.2) -> Status:
        """Block until the run is no longer queued/running (or ``timeout`` passes); return its state."""
        deadline = None if timeout is None else time.time() + timeout
        while self.state.active and (deadline is None or time.time() < deadline):
            time.sleep(poll)
        return self.state

    def __repr__(self) -> str:
        s = self.status()
        return f"Run({self.id!r}, state={s.get('state')}, step={s.get('step')}/{s.get('total_steps')})"


__all__ = ["ConfigError", "Run", "RunNotFound", "Status", "create_run", "launch", "list_runs", "read_metrics",
           "read_status", "run_dir", "runs_root", "validate_run_id", "write_status", "append_metrics"]
