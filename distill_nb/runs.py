"""Runs from the caller's side: ``launch()`` a run and a :class:`Run` handle (status, metrics, stop, resume, fork).

The files themselves belong to :mod:`rundir` (status, metrics, listing) and :mod:`checkpoint`; starting the
worker process belongs to :mod:`worker`. Standard library only (the server imports it); torch never loads here.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

from . import rundir, worker
from .config import ConfigError, DistillConfig, env_folders
from .owner import same_process
from .rundir import (  # re-exported for callers of runs (see __all__)
    STALE_AFTER_S,
    RunBusy,
    RunNotFound,
    Status,
    append_metrics,
    create_run,
    list_runs,
    new_run_id,
    read_metrics,
    read_status,
    run_dir,
    runs_root,
    validate_run_id,
    write_status,
)
from .safeio import kind, remove_entry

RESUMABLE = {Status.STOPPED, Status.FAILED}


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
    worker.check_backend(backend, nproc)
    if run_id is not None:
        validate_run_id(run_id)
    from .preflight import absolute_paths, preflight  # reads configs and data files; torch never loads

    env_folders()  # $DISTILL_NB_CACHE/_DATA/_RUNS naming a file: said now, not by a failed worker
    config = absolute_paths(config)  # the worker never runs in the caller's directory
    if check:
        preflight(config)
    path = create_run(config, root, run_id)
    try:
        worker.start(path, backend, nproc)
    except BaseException:
        remove_entry(path)  # no worker ever ran: leave no run behind
        raise
    return Run(path)


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
        rundir.request_stop(self.path)
        if status.get("pid") is None:  # created, no worker started yet: nobody else will write the state
            try:
                return rundir.transition(self.path, {Status.QUEUED}, state=Status.STOPPED, finished_at=time.time(),
                                         message="stopped before its worker started")
            except (RunBusy, ValueError):
                pass
        if wait:
            self.wait(wait)
        return self.status()

    def resume(self, backend: str = "auto", nproc: int = 2) -> Run:
        """Continue a stopped or failed run from its last checkpoint, in the background, with its own config.

        Raises:
            RunBusy: the run is queued or running (a second Resume never starts a second worker).
            RunNotFound: the run was deleted (also while this call ran).
            ValueError: the run is completed (use :meth:`fork`) or unreadable.
        """
        try:
            return self._resume(backend, nproc)
        except (FileNotFoundError, ValueError):  # ValueError: ConfigError of a config.json that went away
            if not self.path.is_dir():  # deleted under our feet: say so, not which file went missing
                raise RunNotFound(f"run {self.id!r} no longer exists (deleted?)") from None
            raise

    def _resume(self, backend: str, nproc: int) -> Run:
        """:meth:`resume` itself."""
        worker.check_backend(backend, nproc)
        if self.state is Status.COMPLETED:
            raise ValueError(f"run {self.id!r} already completed; it is never trained again. Use run.fork(max_steps="
                             "...) to start a new run with changed settings.")
        status = self.status()
        if Status(status["state"]).active:  # answered at once; only a dead worker's lock is worth waiting for
            raise RunBusy(f"run {self.id!r} is already {status['state']} ({rundir.owner_of(status)}); wait for "
                          "it or stop it first.")
        deadline = time.time() + 10.0  # a worker that was just killed may take a moment to release its lock
        while not rundir.worker_lock_free(self.path):
            if time.time() > deadline:
                raise RunBusy(f"run {self.id!r} still has a live worker; stop it and wait until it has stopped.")
            time.sleep(0.2)
        self.config  # noqa: B018 — a config.json that cannot be read fails here, not in a worker
        before = self.status()
        # a STOP left from before is cleared *before* the run is queued: a Stop that arrives after the
        # transition below stays (the worker then finds the run stopped, or sees STOP at its first step)
        rundir.clear_stop(self.path)
        # compare-and-set under the run's lock: of two concurrent Resumes exactly one gets here
        rundir.transition(self.path, RESUMABLE, state=Status.QUEUED, error=None, traceback=None, stale=None,
                          pid=None, pid_start=None, finished_at=None, phase="queued", message="queued (resume)",
                          claimed=None, **rundir.identity("launcher"))
        if before.get("backend") == "kernel" and not before.get("claimed"):
            Run._kill(before)  # a kernel that was started but never handed the run would idle forever
        try:
            worker.start(self.path, backend, nproc)
        except BaseException as e:  # no worker: say so instead of staying queued forever
            write_status(self.path, state=Status.FAILED, error=f"could not start the worker: {e}")
            raise
        return self

    def fork(self, run_id: str | None = None, backend: str = "auto", **changes: Any) -> Run:
        """Run again with some settings changed, as a new run (this one stays as it is)."""
        return launch(self.config.replace(**changes), backend=backend, root=self.path.parent, run_id=run_id)

    def delete(self) -> None:
        """Remove the run directory; refused while the run is queued or running."""
        if self.state.active or not rundir.worker_lock_free(self.path):
            raise RunBusy(f"run {self.id!r} is still active; stop it before deleting it.")
        if self.path.is_symlink():
            raise ValueError(f"{self.path} is a symbolic link; remove the link yourself.")
        if self.path.exists() and not self.path.is_dir():  # never opened: a FIFO's open blocks
            raise ValueError(f"{self.path} is {kind(os.lstat(self.path).st_mode)}, not a run folder: distill_nb deletes "
                             "only run folders; remove it yourself.")
        trash = self.path.with_name(f".deleting-{self.id}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(self.path, trash)  # atomic: listings never see half a run
        except FileNotFoundError:  # deleted meanwhile (a second click)
            raise RunNotFound(f"run {self.id!r} does not exist (already deleted?)") from None
        remove_entry(trash)  # never opened: a FIFO swapped in for the run would block rmtree for good

    def kill(self) -> None:
        """SIGKILL the worker (for tests and emergencies); the run becomes failed and resumable.

        Only the recorded process itself is signalled: a pid reused by another process is left alone.
        """
        Run._kill(self.status())

    @staticmethod
    def _kill(status: dict[str, Any]) -> None:
        pid = status.get("pid")
        if not pid or not same_process(int(pid), status.get("pid_start")):  # never a process we cannot identify
            return
        try:  # a worker started by launch() leads its own session: take its children (torchrun ranks) too
            if os.getpgid(pid) == pid and pid != os.getpgrp():
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
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


__all__ = ["STALE_AFTER_S", "ConfigError", "Run", "RunBusy", "RunNotFound", "Status", "append_metrics", "create_run", "launch",
           "list_runs", "new_run_id", "read_metrics", "read_status", "run_dir", "runs_root", "validate_run_id",
           "write_status"]
