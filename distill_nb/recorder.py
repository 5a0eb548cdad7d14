"""Recorder: what ``train()`` tells the run directory, one method per event. Standard library only.

``train()`` never writes ``status.json`` or ``metrics.jsonl`` by hand: it calls these methods, which know
the phases, throttle heartbeats, and do nothing on processes other than rank 0.

Phases, in order: ``loading`` -> ``preparing_teacher`` (k/N) -> ``caching_logits`` -> ``caching_attributions``
(k/N, with alpha_attr) -> ``training`` (k/N)
-> ``evaluating`` -> ``saving`` -> ``done``.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
import traceback as tb
from pathlib import Path
from typing import Any

from . import rundir
from .families import cache_dir, cache_problem, in_cache
from .rundir import Status
from .safeio import no_room_errno


class Recorder:
    def __init__(self, path: str | Path, rank: int = 0, beat_s: float = 1.0):
        self.path = Path(path)
        self.rank = rank  # the DDP process; only process 0 writes status and metrics
        self.enabled = rank == 0
        self.beat_s = beat_s
        self._last = 0.0
        self.step: int | None = None  # the last step heard of (status writes are throttled; a failure says it)

    def update(self, **fields: Any) -> None:
        self._heard(fields.get("step"))
        if self.enabled:
            rundir.write_status(self.path, **fields)

    def _heard(self, step: Any) -> None:
        if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
            self.step = step

    def started(self, **info: Any) -> None:
        """The worker owns the run now: state running, its identity, no stale error from an earlier try."""
        self.update(state=Status.RUNNING, **rundir.identity(), started_at=time.time(), error=None, traceback=None,
                    stale=None, finished_at=None, phase="loading", phase_step=None, phase_total=None,
                    message="loading data and models", **info)

    def phase(self, name: str, message: str, done: int | None = None, total: int | None = None,
              force: bool = False, **extra: Any) -> None:
        """A phase and its progress (``done`` of ``total``); heartbeats inside a phase are written at most once
        per ``beat_s``, the first and the last always."""
        self._heard(extra.get("step"))
        now = time.time()
        if force or done is None or done == total or now - self._last >= self.beat_s:
            self.update(phase=name, phase_step=done, phase_total=total, message=message, **extra)
            self._last = now

    def metrics(self, record: dict[str, Any]) -> None:
        self._heard(record.get("step"))
        if self.enabled:
            rundir.append_metrics(self.path, record)

    def stop_requested(self) -> bool:
        return rundir.stop_requested(self.path)

    def stopped(self, step: int, message: str) -> None:
        self.update(state=Status.STOPPED, step=step, finished_at=time.time(), message=message)

    def completed(self, step: int, final: dict[str, Any], message: str) -> None:
        self.update(state=Status.COMPLETED, step=step, finished_at=time.time(), final=final, phase="done",
                    phase_step=None, phase_total=None, eta_s=0, message=message)

    def failed(self, error: BaseException, config: Any = None) -> str | None:
        """The real reason, in words, and the last step reached; best effort (the disk may still be full).

        Under torchrun another process's failure reaches process 0 as a broken connection: another process records
        its own error (see ``rundir.write_peer_error``), and process 0 reports that one instead of the connection.
        When status.json cannot be replaced (a temp copy needs room a full disk does not have), the failure is
        written over it in place, without the traceback (log.txt has it), so the run never stays "running".

        Returns:
            on process 0, the other process's error when it was recorded as the run's (for the log), else None.
        """
        reason, trace = explain(error, config, self.path), "".join(tb.format_exception(error))
        if not self.enabled:
            if not lost_connection(error):  # a broken connection only echoes another process's failure
                try:
                    rundir.write_peer_error(self.path, self.rank, reason, trace)
                except OSError:
                    pass
            return None
        peer = rundir.peer_error(self.path) if lost_connection(error) else None
        if peer:
            reason = f"process {peer['rank']} failed: {peer['error']}"
            trace = f"{peer.get('traceback') or reason}\nProcess 0 then lost its connection to it:\n{trace}"
        fields: dict[str, Any] = {"state": Status.FAILED, "error": reason, "finished_at": time.time()}
        if self.step is not None:
            fields["step"] = self.step
        try:
            self.update(**fields, traceback=trace)
        except OSError:
            try:
                rundir.write_status_in_place(self.path, **fields, traceback=None)
            except OSError:
                pass  # nothing can be written at all: readers still see the worker gone (stale, pointing to log.txt)
        return reason if peer else None


def explain(e: BaseException, config: Any = None, run_dir: str | Path | None = None) -> str:
    """One line a notebook user can act on, for any exception a run can end with (``run_dir``: the run's folder,
    to tell a full run disk from a full cache disk)."""
    text = str(e)
    if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
        batch, length = (f" (now {config.batch_size})", f" (now {config.max_length})") if config else ("", "")
        return (f"CUDA out of memory ({(text.splitlines() or [''])[0][:200]}). Run again with half the batch_size"
                f"{batch} or max_length{length}, e.g. run.fork(batch_size=...), or pick a smaller student "
                "(Resume would reuse the same settings).")
    if (code := no_room_errno(e)) is not None:
        return _no_room(e, code, run_dir)
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt); Resume continues from the last checkpoint."
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        return f"KeyError: {e.args[0]}"  # str(KeyError) wraps the message in quotes
    if type(e).__name__ in ("Diverged", "ConfigError"):
        return text
    return f"{type(e).__name__}: {text}"


_LOST = re.compile(r"gloo|nccl|connection (closed|reset) by peer|remote worker", re.IGNORECASE)


def lost_connection(e: BaseException) -> bool:
    """Whether ``e`` is a collective that broke because another process went away (gloo: "Connection closed by
    peer"), not a failure of this process's own: torch's ``DistError`` types, a ``ConnectionError``, or the
    transport's words in a ``RuntimeError``."""
    if any(t.__name__ == "DistError" for t in type(e).__mro__) or isinstance(e, ConnectionError):
        return True
    return isinstance(e, RuntimeError) and bool(_LOST.search(str(e)))


_FIX = {errno.ENOSPC: "free space (old runs or checkpoints)",
        errno.EDQUOT: "free space within your quota (old runs or checkpoints) or ask for a larger quota",
        errno.EFBIG: "raise the file-size limit (ulimit -f) or use a filesystem that takes larger files"}


def _no_room(e: BaseException, code: int, run_dir: str | Path | None) -> str:
    """A write that found no room: which file (or folder), why in words, and what to do."""
    filename = _filename(e)
    if filename and in_cache(filename) or not filename and _cache_is_full(run_dir):
        return cache_problem(filename or "a file", os.strerror(code)) + "."
    where = f": could not write {filename}" if filename else " while writing the run"
    full = "the disk is full" if code == errno.ENOSPC else os.strerror(code).lower()
    return (f"{full}{where} ({os.strerror(code).lower()}); {_FIX[code]}, then Resume: it continues from the last "
            "complete checkpoint.")


def _filename(e: BaseException | None) -> str | None:
    for _ in range(20):
        if e is None:
            return None
        if isinstance(e, OSError) and e.filename:
            return str(e.filename)
        e = e.__cause__ or e.__context__
    return None


def _cache_is_full(run_dir: str | Path | None) -> bool:
    """No path in the error: the cache's disk has (almost) no room left while the run's has."""
    try:
        cache = cache_dir()
        folder = next(p for p in [cache, *cache.parents] if p.is_dir())
        full = shutil.disk_usage(folder).free < 1 << 20
        return full and run_dir is not None and shutil.disk_usage(run_dir).free >= 1 << 20
    except (OSError, ValueError, RuntimeError, StopIteration):
        return False
