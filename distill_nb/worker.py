"""The worker process: how it is started, who may run, the device queue. ``python -m distill_nb.worker RUN_DIR``.

Starting (:func:`start`): always a fresh interpreter (never a fork) that does not trust its working directory:
``-P``/``PYTHONSAFEPATH`` (no script or current directory on ``sys.path``), cwd ``/``, only absolute
``PYTHONPATH`` entries, IPython's ``--ignore-cwd`` for the kernel backend, and the parent's Jupyter variables
(``JPY_PARENT_PID``, ...) scrubbed so that the worker outlives a restarted notebook kernel.

Running (:func:`main`): the run's worker lock is held for the worker's whole life (a second worker exits at once,
touching nothing); a completed run is never trained again; runs wait for their device first come, first served
(a ticket queue) with state ``queued``, and a STOP reaches them there. Standard library only until ``train``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import stat
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from . import rundir
from .config import DistillConfig, env_folders
from .owner import check_worker_lock, open_lock_file
from .rundir import Status
from .safeio import UnsafeEntry, open_folder, open_regular_for_writing

BACKENDS = ("auto", "kernel", "subprocess", "torchrun")
EXIT_BUSY = 3  # another worker holds the run
_SCRUB_PREFIXES = ("JPY_", "JUPYTER_SERVER", "KERNEL_", "IPYKERNEL_", "PYDEVD_", "TORCHELASTIC_")
_SCRUB = {"MPLBACKEND", "CLICOLOR", "FORCE_COLOR", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONINSPECT",
          # a distributed rendezvous left in the caller's environment (a kernel started under torchrun, a copied
          # cell): a worker is one process unless its launcher (torchrun) sets these itself
          "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
          "ROLE_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"}


# --- starting a worker -----------------------------------------------------------------------------------------
def worker_env() -> dict[str, str]:
    """The environment for a worker: the parent's, minus its Jupyter ties, with a safe ``sys.path``, and the
    distill_nb folder variables (``$DISTILL_NB_CACHE``, ...) made absolute: the worker runs in ``/``, and must
    see the folders the caller sees.

    Raises:
        ValueError: a folder variable names a file (the message names it and the fix).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES) and k not in _SCRUB}
    env.update(env_folders())
    pkg_parent = str(Path(__file__).resolve().parent.parent)  # works from a source checkout too
    paths = [p for p in [pkg_parent, *env.get("PYTHONPATH", "").split(os.pathsep)] if os.path.isabs(p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))  # relative entries would resolve against the cwd
    env.update(PYTHONSAFEPATH="1", PYTHONUNBUFFERED="1", PYTHONNOUSERSITE="1")
    return env


def _in_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None  # type: ignore[attr-defined]
    return shell is not None and getattr(shell, "kernel", None) is not None


def _open_log(path: Path) -> int:
    """``<run>/log.txt`` for appending; UnsafeEntry (naming it and the fix) if it is a link, a folder or a FIFO."""
    return open_regular_for_writing(path / "log.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def check_backend(backend: Any, nproc: Any) -> None:
    """A backend and process count a worker can start with, or a ValueError saying what to give."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown: use one of {', '.join(map(repr, BACKENDS))}.")
    if isinstance(nproc, bool) or not isinstance(nproc, int) or not 1 <= nproc <= 1024:
        raise ValueError(f"nproc={nproc!r} is invalid: use the number of processes torchrun starts, an integer >= 1 "
                         "(e.g. the number of GPUs).")


def start(path: Path, backend: str = "auto", nproc: int = 2) -> str:
    """Start the worker for the (already queued) run ``path`` in a fresh interpreter and return at once.

    Returns:
        the backend used ("kernel", "subprocess" or "torchrun").
    Raises:
        UnsafeEntry (an OSError): the run's worker lock or log.txt is a link, a folder or a FIFO: no worker could
        use it (the run is marked failed with the same message, which names the path and the fix).
    """
    check_backend(backend, nproc)
    _check_run_files(path)
    if backend == "auto":
        backend = "kernel" if _in_kernel() else "subprocess"
    rundir.update_unclaimed(path, backend=backend)
    if backend == "kernel":
        _start_kernel(path)
        return backend
    cmd = [sys.executable, "-P", "-m", "distill_nb.worker", str(path)]
    if backend == "torchrun":
        cmd = [sys.executable, "-P", "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "distill_nb.worker", str(path)]
    log = _open_log(path)
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=worker_env(), cwd="/", start_new_session=True)
    finally:
        os.close(log)
    # until the worker writes its own identity, a crash at start-up is still detected through this one; never
    # over the identity of a process that already claimed the run (it, not this one, owns it now)
    rundir.update_unclaimed(path, pid=proc.pid, pid_start=rundir.process_start(proc.pid), host=socket.gethostname())
    return backend


def _check_run_files(path: Path) -> None:
    """Raise (and record in status.json) what would stop a worker at once: a worker lock or log.txt it cannot open."""
    try:
        check_worker_lock(path)
        os.close(_open_log(path))
    except UnsafeEntry as e:
        try:
            rundir.update_unclaimed(path, state=Status.FAILED, error=str(e), finished_at=time.time())
        except (OSError, ValueError):
            pass  # status.json cannot be written either (its lock is as odd): the caller gets the reason
        raise


def _start_kernel(path: Path) -> None:
    """Run the worker in a new, independent Jupyter kernel; the hand-shake happens off the caller's thread."""
    import secrets
    import threading

    from jupyter_client.manager import KernelManager  # only this backend needs it
    from jupyter_core.paths import jupyter_runtime_dir

    runtime = Path(jupyter_runtime_dir())
    runtime.mkdir(parents=True, exist_ok=True)
    # the connection file holds a key: keep it out of the run directory (readable by the server's users)
    km = KernelManager(kernel_name="python3",
                       connection_file=str(runtime / f"distill-nb-{path.name}-{secrets.token_hex(4)}.json"))
    log = os.fdopen(_open_log(path), "ab")
    with log:
        km.start_kernel(env=worker_env(), cwd="/", independent=True, stdout=log, stderr=subprocess.STDOUT,
                        extra_arguments=["--ignore-cwd"])
    pid = getattr(km.provisioner, "pid", None)
    rundir.update_unclaimed(path, pid=pid, pid_start=rundir.process_start(pid) if pid else None,
                            host=socket.gethostname())
    code = (f"from distill_nb.worker import main as _m\n_code = _m({str(path)!r})\n"
            "import os; os._exit(_code)  # the kernel exists for this run only\n")

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
                    return
            raise TimeoutError("the kernel did not take the run within 60 s")
        except Exception as e:  # noqa: BLE001 — a failed run with the reason, and no idle kernel left behind
            try:
                rundir.transition(path, {Status.QUEUED}, state=Status.FAILED,
                                  error=f"the background kernel did not start the run ({e}); Resume tries again.")
            except (rundir.RunBusy, ValueError):
                pass  # the worker did start after all, or someone else changed the state
            else:
                km.shutdown_kernel(now=True)
        finally:
            kc.stop_channels()

    threading.Thread(target=hand_over, name=f"distill_nb-{path.name}", daemon=True).start()


# --- the device queue: first come, first served ----------------------------------------------------------------
# <root>/.queue/<device>/<ticket> and <root>/.queue/<device>.lock. Everything is reached through descriptors of the
# two folders, opened without following links: a link (or a file) where a folder belongs is refused with a message
# naming it, never followed nor replaced (someone put it there, maybe to share a queue between runs folders: only
# they know whether removing it is right), and only regular files named like tickets are ever deleted.
_TICKET = re.compile(r"[0-9]{20}-[0-9]+-(?:[0-9]+|x)-.+", re.DOTALL)  # any run folder's name (a worker may be
# started on a folder whose name is no valid run id: its ticket must still count, or it would wait forever)


def _ticket_alive(folder: int, name: str) -> bool:
    """A waiter holds its ticket file locked while it waits (the OS drops the lock when it dies, however it
    dies): a ticket nobody holds is a dead waiter's, whatever process has its pid now."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=folder)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _tickets(folder: int) -> list[str]:
    """The tickets in the queue folder, oldest first: regular files named like tickets (anything else is not one)."""
    names = []
    for name in sorted(os.listdir(folder)):
        if not _TICKET.fullmatch(name):
            continue
        try:
            mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
        except FileNotFoundError:  # its waiter just left
            continue
        if stat.S_ISREG(mode):
            names.append(name)
    return names


def _take_ticket(folder: int, name: str) -> int:
    """Make ticket ``name`` and return its fd, locked: it is made under a name that is no ticket, locked, then
    renamed, so that no other waiter ever sees it unlocked (and deletes it as a dead waiter's)."""
    draft = f".draft-{name}"
    held = open_lock_file(Path(draft), dir_fd=folder)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        os.rename(draft, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        os.close(held)
        with contextlib.suppress(OSError):
            os.unlink(draft, dir_fd=folder)
        raise
    return held


def _first_in_line(folder: int, ticket: str) -> str | None:
    """The oldest living ticket (``ticket`` is this waiter's own); the dead ones before it are deleted (a waiter that
    died gives up its place)."""
    waiting = _tickets(folder)
    first = next((n for n in waiting if n == ticket or _ticket_alive(folder, n)), None)
    for dead in waiting[:waiting.index(first)] if first in waiting else []:
        try:
            os.unlink(dead, dir_fd=folder)  # a regular file, named as a ticket, in our own queue folder
        except FileNotFoundError:
            pass
    return first


def wait_for_device(device: str, path: Path, poll: float = 0.2, beat: float = 30.0) -> Any:
    """Wait in line for ``device``; return the held lock file, or None if STOP came first.

    Each waiting worker holds a ticket named by its arrival time; only the oldest living ticket may take the
    device lock (the OS releases it when its holder dies), so runs start in the order they were queued.

    Raises:
        UnsafeEntry (an OSError): ``.queue``, ``.queue/<device>`` or ``.queue/<device>.lock`` in the runs folder is
        a link or the wrong kind of file (the message names it and says to remove it).
    """
    queue = open_folder(path.parent / ".queue", create=True)
    folder = held = lock = None
    try:
        folder = open_folder(path.parent / ".queue" / device, create=True, dir_fd=queue)
        me = rundir.identity()
        ticket = f"{time.time_ns():020d}-{me['pid']}-{me['pid_start'] or 'x'}-{path.name}"
        held = _take_ticket(folder, ticket)  # locked while this worker waits: how the others know it is alive
        lock = os.fdopen(open_lock_file(path.parent / ".queue" / f"{device}.lock", dir_fd=queue), "rb")
        return _wait_in_line(path, folder, ticket, lock, poll, beat)
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    finally:
        if held is not None:
            try:
                os.unlink(ticket, dir_fd=folder)
            except FileNotFoundError:
                pass
            os.close(held)
        for fd in (folder, queue):
            if fd is not None:
                os.close(fd)


def _wait_in_line(path: Path, folder: int, ticket: str, lock: Any, poll: float, beat: float) -> Any:
    """:func:`wait_for_device`'s loop: ``lock`` (taken) once ``ticket`` is first, or None (``lock`` closed) on STOP."""
    last_beat = time.time()
    while True:
        if rundir.stop_requested(path):
            lock.close()
            return None
        if _first_in_line(folder, ticket) == ticket:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return lock
            except BlockingIOError:
                pass
        if time.time() - last_beat > beat:
            rundir.write_status(path)  # a heartbeat, so readers on other hosts do not call it dead
            last_beat = time.time()
        time.sleep(poll)


def _device_name(config: DistillConfig) -> str:
    if config.device != "auto":
        return config.device.replace(":", "")
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --- the entry point -------------------------------------------------------------------------------------------
def main(run_dir: str | os.PathLike) -> int:
    """Be the run's one worker: take its lock, wait for the device, train; ``status.json`` tells the outcome.

    Returns:
        0 when the run ended (completed, stopped or failed: status.json says which), 1 on an error before
        training, ``EXIT_BUSY`` when another worker owns the run (nothing was written).
    """
    path = Path(run_dir).resolve()
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # DDP ranks > 0 follow rank 0, which owns the run directory: they train only on its word
        return _train(path, None) if _agree_to_train(True) else 0
    try:
        rundir.acquire_worker_lock(path)
    except rundir.RunBusy as e:
        print(f"distill_nb.worker: {e} This worker exits without touching the run.", file=sys.stderr)
        return _no_go(EXIT_BUSY)
    except OSError as e:  # a link, a folder or a FIFO at .worker.lock: no worker can own the run until it goes
        return _ended_early(path, f"the run's worker lock cannot be taken: {e}", claimed=False)
    try:
        done = rundir.never_train_again(path)
        if done:
            print(f"distill_nb.worker: {done}; it is never trained again (use Run.fork(...) for a new run).",
                  file=sys.stderr)
            return _no_go(EXIT_BUSY)
        before = rundir.read_status(path)
        if before["state"] == Status.STOPPED.value and rundir.stop_requested(path):
            # a Stop answered between Resume queueing the run and this worker starting: it stands
            print(f"distill_nb.worker: run {path.name!r} was stopped before this worker started; Resume (the "
                  f"sidebar, or Run.attach({path.name!r}).resume()) starts it again.", file=sys.stderr)
            return _no_go(0)
        config = _read_config(path)
        if isinstance(config, str):
            return _ended_early(path, f"config.json cannot be used: {config}")
        device = _device_name(config)
        rundir.clear_peer_errors(path)  # an earlier attempt's; the other processes join only after this one
        # launch() and Resume queue the run unclaimed, with the backend that sends this worker's output to log.txt;
        # a worker started by hand (torchrun, accelerate launch) prints to its terminal: no backend, no log.txt
        launched = before["state"] == Status.QUEUED.value and not before.get("claimed")
        rundir.write_status(path, state=Status.QUEUED, **rundir.identity(), claimed=True, phase="queued",
                            error=None, stale=None, message=f"waiting for device {device}",
                            backend=before.get("backend") if launched else None)
        try:
            lock = wait_for_device(device, path)
        except UnsafeEntry as e:
            return _ended_early(path, f"the device queue cannot be used: {e}")
        if lock is None:
            rundir.write_status(path, state=Status.STOPPED, finished_at=time.time(), message="stopped while queued")
            return _no_go(0)
        with lock:
            _agree_to_train(True)
            return _train(path, config)
    finally:
        rundir.release_worker_lock(path)


def _read_config(path: Path) -> DistillConfig | str:
    """The run's config, or why it cannot be used; one the run list calls unreadable (not a regular file, too big
    to be one distill_nb wrote) is refused unread."""
    problem = rundir.config_problem(path)
    if problem:
        return problem
    try:
        return DistillConfig.from_json(path / "config.json")
    except Exception as e:  # noqa: BLE001 — whatever it is, status.json must say why the worker stopped
        return str(e)


def _ended_early(path: Path, why: str, claimed: bool = True) -> int:
    """Record why this worker ends before training (status.json and stderr); returns main()'s exit code 1.

    ``claimed``: this worker holds the run's lock and writes as its owner; otherwise the status is written only
    while no worker has claimed the run (another one may own it).
    """
    print(f"distill_nb.worker: {why}", file=sys.stderr)
    fields = {"state": Status.FAILED, "error": why, "finished_at": time.time()}
    try:
        if claimed:
            rundir.write_status(path, **fields, **rundir.identity())
        else:
            rundir.update_unclaimed(path, **fields)
    except (OSError, ValueError):  # status.json (or its lock) cannot be written either: the reason is in the log
        pass
    return _no_go(1)


def _no_go(code: int) -> int:
    """Rank 0 ends without training: under torchrun/accelerate its other ranks are told so, and end too (they would
    otherwise wait for a rendezvous that never comes, 30 minutes for gloo)."""
    _agree_to_train(False)
    return code


def _agree_to_train(go: bool) -> bool:
    """One process: ``go``. Several (``WORLD_SIZE`` > 1): join the process group and take rank 0's word (rank 0
    gives ``go``). The group stays up for train(); on a no-go it is taken down."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return go
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():  # rank 0 may wait in the device queue first: the others wait for it, long
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(days=1))
    word = torch.tensor([int(go)])
    dist.broadcast(word, src=0, group=dist.new_group(backend="gloo"))  # a CPU tensor, also beside NCCL
    if not word.item():
        dist.destroy_process_group()
    return bool(word.item())


def _train(path: Path, config: DistillConfig | None) -> int:
    from .train import train  # torch loads here, after the cheap checks

    try:
        train(config or DistillConfig.from_json(path / "config.json"), path)
        return 0
    except BaseException as e:  # noqa: BLE001 — train() wrote the reason into status.json; the traceback goes to log.txt
        traceback.print_exc()
        if config is not None:
            _last_word(path, e)
        else:  # a process other than 0 (it reads config.json here): its error, for process 0 to report
            from .recorder import Recorder

            Recorder(path, rank=int(os.environ.get("RANK", "1"))).failed(e)
        return 1


def _last_word(path: Path, error: BaseException) -> None:
    """A failure before train() could record one (its first status write found the disk full): write it, in
    place if need be, while the status still says this worker has the run."""
    from .recorder import Recorder

    status = rundir.read_status(path)
    if status.get("state") in (Status.QUEUED.value, Status.RUNNING.value) and status.get("pid") == os.getpid():
        Recorder(path).failed(error)


def accelerate_processes() -> int:
    """N when ``accelerate launch --num_processes N`` (N > 1) started this one process, else 0.

    Without ``--multi_gpu`` accelerate's launcher starts a single process (no WORLD_SIZE) on a CPU-only host,
    whatever ``--num_processes`` says; its command line (the parent process) still says how many were wanted.
    """
    if "WORLD_SIZE" in os.environ or "ACCELERATE_MIXED_PRECISION" not in os.environ:
        return 0
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except OSError:
        return 0
    for i, arg in enumerate(args):
        if arg.startswith("--num_processes="):
            value = arg.split("=", 1)[1]
        elif arg == "--num_processes" and i + 1 < len(args):
            value = args[i + 1]
        else:
            continue
        return int(value) if value.isdigit() and int(value) > 1 else 0
    return 0


def cli(argv: list[str], module: str = "distill_nb.worker") -> int:
    """``python -m distill_nb.worker RUN_DIR`` (also under torchrun/accelerate launch)."""
    if len(argv) != 2:
        print(f"usage: python -m {module} RUN_DIR", file=sys.stderr)
        return 2
    if n := accelerate_processes():  # accelerate's single-process launcher: start the N processes it meant
        print(f"{module}: accelerate launch asked for {n} processes but started one (add --multi_gpu to let "
              f"accelerate do it); starting {n} with torch.distributed.run", file=sys.stderr)
        return subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                f"--nproc_per_node={n}", "-m", module, argv[1]])
    return main(argv[1])


if __name__ == "__main__":
    sys.exit(cli(sys.argv))
