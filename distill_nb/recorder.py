"""Recorder: what ``train()`` tells the run directory, one method per event. Standard library only.

``train()`` never writes ``status.json`` or ``metrics.jsonl`` by hand: it calls these methods, which know
the phases, throttle heartbeats, and do nothing on processes other than rank 0.

Phases, in order: ``loading`` -> ``preparing_teacher`` (k/N) -> ``caching_logits`` -> ``caching_attributions``
(k/N, with alpha_attr) -> ``training`` (k/N)
-> ``evaluating`` -> ``saving`` -> ``done``.
"""

from __future__ import annotations

import errno
import time
import traceback as tb
from pathlib import Path
from typing import Any

from . import rundir
from .rundir import Status


class Recorder:
    def __init__(self, path: str | Path, enabled: bool = True, beat_s: float = 1.0):
        self.path = Path(path)
        self.enabled = enabled  # False on DDP ranks other than 0
        self.beat_s = beat_s
        self._last = 0.0

    def update(self, **fields: Any) -> None:
        if self.enabled:
            rundir.write_status(self.path, **fields)

    def started(self, **info: Any) -> None:
        """The worker owns the run now: state running, its identity, no stale error from an earlier try."""
        self.update(state=Status.RUNNING, **rundir.identity(), started_at=time.time(), error=None, traceback=None,
                    stale=None, finished_at=None, phase="loading", phase_step=None, phase_total=None,
                    message="loading data and models", **info)

    def phase(self, name: str, message: str, done: int | None = None, total: int | None = None,
              force: bool = False, **extra: Any) -> None:
        """A phase and its progress (``done`` of ``total``); heartbeats inside a phase are written at most once
        per ``beat_s``, the first and the last always."""
        now = time.time()
        if force or done is None or done == total or now - self._last >= self.beat_s:
            self.update(phase=name, phase_step=done, phase_total=total, message=message, **extra)
            self._last = now

    def metrics(self, record: dict[str, Any]) -> None:
        if self.enabled:
            rundir.append_metrics(self.path, record)

    def stop_requested(self) -> bool:
        return rundir.stop_requested(self.path)

    def stopped(self, step: int, message: str) -> None:
        self.update(state=Status.STOPPED, step=step, finished_at=time.time(), message=message)

    def completed(self, step: int, final: dict[str, Any], message: str) -> None:
        self.update(state=Status.COMPLETED, step=step, finished_at=time.time(), final=final, phase="done",
                    phase_step=None, phase_total=None, eta_s=0, message=message)

    def failed(self, error: BaseException, config: Any = None) -> None:
        """The real reason, in words; best effort (the disk may still be full)."""
        if not self.enabled:
            return
        try:
            self.update(state=Status.FAILED, error=explain(error, config),
                        traceback="".join(tb.format_exception(error)), finished_at=time.time())
        except OSError:
            pass


def explain(e: BaseException, config: Any = None) -> str:
    """One line a notebook user can act on, for any exception a run can end with."""
    text = str(e)
    if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
        batch, length = (f" (now {config.batch_size})", f" (now {config.max_length})") if config else ("", "")
        return (f"CUDA out of memory ({(text.splitlines() or [''])[0][:200]}). Run again with half the batch_size"
                f"{batch} or max_length{length}, e.g. run.fork(batch_size=...), or pick a smaller student "
                "(Resume would reuse the same settings).")
    if _disk_full(e):
        return ("the disk is full while writing the run (no space left on device); free space (old runs or "
                "checkpoints), then Resume: it continues from the last complete checkpoint.")
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt); Resume continues from the last checkpoint."
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        return f"KeyError: {e.args[0]}"  # str(KeyError) wraps the message in quotes
    if type(e).__name__ in ("Diverged", "ConfigError"):
        return text
    return f"{type(e).__name__}: {text}"


def _disk_full(e: BaseException) -> bool:
    """ENOSPC however it arrives: an OSError, or a library's message (safetensors: "os error 28")."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "os error 28" in text or "StorageFull" in text:
            return True
        e = e.__cause__ or e.__context__
    return False
