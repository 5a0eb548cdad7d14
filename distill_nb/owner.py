"""Who owns a run: process identity (pid + start time, since a pid alone gets reused) and the worker lock.

Exclusive ownership is an OS lock, not a status field: the worker holds ``<run>/.worker.lock`` (``flock``) for
its whole life and the OS releases it when the process dies, however it dies. Standard library only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Any

from .safeio import open_regular_for_writing


class RunBusy(RuntimeError):
    """Another worker (or launcher) owns the run right now."""


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None where /proc is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def same_process(pid: int, start: int | None) -> bool:
    """True only if ``pid`` is alive *and* provably the process that was recorded (its start time matches):
    what a signal needs. A record without a start time proves nothing, so it is never signalled."""
    return start is not None and alive(pid, start) and process_start(pid) == start


def identity(prefix: str = "") -> dict[str, Any]:
    """This process as status fields: ``pid``, ``pid_start``, ``host`` (or ``launcher_*``)."""
    pid = os.getpid()
    if prefix:
        return {f"{prefix}_pid": pid, f"{prefix}_start": process_start(pid), f"{prefix}_host": socket.gethostname()}
    return {"pid": pid, "pid_start": process_start(pid), "host": socket.gethostname()}


def alive(pid: int, start: int | None = None) -> bool:
    """True if ``pid`` runs and, when ``start`` is given, is the same process (not a reused pid)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:  # 0 / -1 address process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (OverflowError, ValueError):
        return False
    try:  # an exited child that nobody reaped yet is a zombie: dead for our purposes
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    return start is None or process_start(pid) in (None, start)


_HELD: dict[str, int] = {}  # run dir -> fd of the worker lock this process holds (flock is per open file)


def open_lock_file(path: Path, dir_fd: int | None = None) -> int:
    """Open (create) a lock file, never through a symbolic link and never blocking on a FIFO; with ``dir_fd``,
    ``path.name`` inside that folder (``path`` then only names it in messages).

    Raises:
        UnsafeEntry (an OSError): ``path`` is a link, a folder, a FIFO or a device; the message names it and says to
        remove it (a lock file holds nothing: distill_nb makes it again). OSError: anything else.
    """
    return open_regular_for_writing(Path(path), os.O_RDWR | os.O_CREAT, dir_fd=dir_fd)


def check_worker_lock(path: Path) -> None:
    """Make sure the run's worker lock can be opened (created); a worker could not start otherwise.

    Raises:
        UnsafeEntry: ``<run>/.worker.lock`` is a link, a folder or a FIFO (the message names it and the fix).
    """
    os.close(open_lock_file(Path(path) / ".worker.lock"))


def acquire_worker_lock(path: Path) -> bool:
    """Take the run's worker lock for this process (held until released or the process dies).

    Returns:
        True if taken now, False if this process already held it (the caller then must not release it).
    Raises:
        RunBusy: another process holds it (the message says which: the holder writes its pid into the file).
    """
    key = str(Path(path).resolve())
    if key in _HELD:
        return False
    fd = open_lock_file(Path(path) / ".worker.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunBusy(f"run {Path(path).name!r} is already running ({holder}); a run has exactly one "
                      "worker: wait for it or stop it first.") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())  # who holds it, for the message above
    _HELD[key] = fd
    return True


def _holder(fd: int) -> str:
    """Who holds the lock open as ``fd``, as its holder wrote it (read from that same file: never a path again)."""
    try:
        return os.pread(fd, 200, 0).decode("utf-8", errors="replace") or "another process"
    except OSError:
        return "another process"


def release_worker_lock(path: Path) -> None:
    fd = _HELD.pop(str(Path(path).resolve()), None)
    if fd is not None:
        os.close(fd)


def worker_lock_free(path: Path) -> bool:
    """True if no process holds the run's worker lock right now (this process's own hold counts as held)."""
    if str(Path(path).resolve()) in _HELD:
        return False
    try:
        fd = os.open(Path(path) / ".worker.lock", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return True
    except OSError as e:  # a link or a directory there can never be locked, so nobody holds it
        return e.errno in (errno.ELOOP, errno.EISDIR, errno.ENOTDIR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
