"""Checkpoints, the saved student and the teacher-logit cache of a run directory: the one owner of these files.

    checkpoints/step_N/   model.safetensors (+ projections.safetensors), tokenizer, optimizer.pt (tensors only),
                          trainer_state.json, distill_config.json (the run's config: a checkpoint carries its config)
    student/              the final student and tokenizer (``transformers.pipeline`` loads it)
    teacher_logits.safetensors

Every write goes to a temp folder/file that is renamed into place, and is removed if anything fails (a full
disk leaves no half checkpoint taking its space). Nothing non-finite is ever saved: a NaN student raises
:class:`Diverged` instead.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ConfigError, DistillConfig, atomic_write_text
from .rundir import CorruptRecord, read_json
from .safeio import NO_ROOM, no_room_errno
from .safeio import remove_entry as _remove


class Diverged(FloatingPointError):
    """Training produced a non-finite loss, gradient or weight; the message says where and what to change."""


def _step_of(folder: Path) -> int:
    return int(folder.name.split("_")[1])


def checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints, newest first (a half-written one is still a temp dir, so never listed)."""
    folder = Path(run_dir) / "checkpoints"
    if folder.is_symlink() or not folder.is_dir():
        return []
    done = [p for p in folder.glob("step_*") if not p.is_symlink() and p.name[5:].isdigit()
            and (p / "trainer_state.json").is_file()]
    return sorted(done, key=_step_of, reverse=True)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint, or None."""
    return next(iter(checkpoints(run_dir)), None)


def ckpt_step(ckpt: Path | None) -> int:
    return _step_of(ckpt) if ckpt else 0


def non_finite(module: nn.Module) -> list[str]:
    """Names of parameters holding NaN or ±inf (empty when all are finite)."""
    return [name for name, p in module.named_parameters() if not torch.isfinite(p).all()]


def _own_folder(run_dir: Path, name: str) -> Path:
    """``run_dir/name``, refusing a symbolic link (writes never leave the run directory)."""
    path = Path(run_dir) / name
    if path.is_symlink():
        raise CorruptRecord(f"{path} is a symbolic link; distill_nb does not write through links: remove it.")
    return path


def save_checkpoint(run_dir: Path, student: nn.Module, proj: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                    step: int, tokenizer: Any, config: DistillConfig, keep: int) -> Path:
    """Write ``checkpoints/step_N`` atomically (temp dir + rename) and keep the newest ``keep``.

    Raises:
        Diverged: a weight is not finite (the previous checkpoint stays the last good one).
    """
    from safetensors.torch import save_file

    bad = non_finite(student) + non_finite(proj)
    if bad:
        raise Diverged(f"diverged before step {step}: weights {bad[:3]} are not finite; nothing was saved, the last "
                       "good checkpoint is kept. Lower learning_rate and run again (run.fork(learning_rate=...)).")
    folder = _own_folder(run_dir, "checkpoints")
    final = folder / f"step_{step:07d}"
    with _replacing(final, folder=True) as tmp:
        student.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        if len(proj):
            save_file({k: v.contiguous() for k, v in proj.state_dict().items()}, tmp / "projections.safetensors")
        with open(tmp / "optimizer.pt", "wb") as f:  # a file object: a failed write keeps its errno (a path loses it)
            torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "rng": torch.get_rng_state()}, f)
        config.to_json(tmp / "distill_config.json")  # config.json is the student's own (transformers)
        atomic_write_text(tmp / "trainer_state.json", json.dumps({"step": step, "time": time.time()}))
    for old in sorted((p for p in folder.glob("step_*") if p.name[5:].isdigit()), key=_step_of)[:-keep]:
        _remove(old)
    return final


class DamagedCheckpoint(CorruptRecord):
    """A checkpoint folder whose files cannot be used (the message names the folder and the file)."""


def _own_file(ckpt: Path, name: str) -> Path:
    """``ckpt/name``, a regular file and not a link, or DamagedCheckpoint saying which."""
    path = ckpt / name
    if path.is_symlink() or not path.is_file():
        raise DamagedCheckpoint(f"{name} is {'a symbolic link' if path.is_symlink() else 'missing'}")
    return path


def _read_tensors(ckpt: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = _own_file(ckpt, name)
    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001 — safetensors raises its own error types for a damaged file
        raise DamagedCheckpoint(f"{name} cannot be read ({type(e).__name__}: {str(e)[:120]})") from None


def _check_state(module: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Every key ``module`` needs is in ``state`` with its shape (a tied weight may be absent: it is saved once),
    and nothing else is."""
    own = module.state_dict()
    unexpected = sorted(set(state) - set(own))
    ptrs = {own[k].data_ptr() for k in state if k in own}
    missing = sorted(k for k in set(own) - set(state) if own[k].data_ptr() not in ptrs)
    wrong = [f"{k} {tuple(state[k].shape)} (needs {tuple(own[k].shape)})" for k in sorted(set(state) & set(own))
             if state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                 f"wrong shapes {wrong[:3]}" if wrong else ""]
        raise DamagedCheckpoint(f"{name} does not fit this student: " + "; ".join(p for p in parts if p))


def load_checkpoint(ckpt: Path, student: nn.Module, proj: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                    config: DistillConfig) -> int:
    """Restore a checkpoint written with the same config; return its step.

    Every file is read and checked before anything is restored (links refused, keys and shapes matched, the
    step recorded equal to the folder's), so a damaged checkpoint changes nothing.

    Raises:
        ConfigError: the checkpoint was written with another config (resuming never changes a run's config).
        DamagedCheckpoint: a file is missing, a link, unreadable or does not match (the message names it).
    """
    try:
        saved = DistillConfig.from_dict(read_json(ckpt / "distill_config.json"))
    except FileNotFoundError:
        saved = None  # checkpoints from before configs were stored in them
    except (CorruptRecord, ConfigError) as e:
        raise ConfigError(f"checkpoint {ckpt} has an unusable distill_config.json ({e}); delete that checkpoint folder "
                          "to resume from an earlier one.") from None
    if saved is not None and saved.to_dict() != config.to_dict():
        diff = saved.diff(config)
        raise ConfigError(f"checkpoint {ckpt.name} was written with another config (saved -> now: {diff}); resuming "
                          "never changes a run's config: start a new run for the new settings (run.fork(...)).")
    try:
        state = read_json(ckpt / "trainer_state.json")
        step = state.get("step") if isinstance(state, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step != _step_of(ckpt):
            raise DamagedCheckpoint(f"trainer_state.json records step {step!r}, the folder is step {_step_of(ckpt)}")
        weights = _read_tensors(ckpt, "model.safetensors")
        _check_state(student, weights, "model.safetensors")
        projections = _read_tensors(ckpt, "projections.safetensors") if len(proj) else {}
        if len(proj):
            _check_state(proj, projections, "projections.safetensors")
        opt_path = _own_file(ckpt, "optimizer.pt")
        try:
            extra = torch.load(opt_path, weights_only=True)  # never unpickle arbitrary objects
            if not isinstance(extra, dict) or not {"optimizer", "scheduler", "rng"} <= set(extra):
                raise ValueError("not a distill_nb optimizer state")
            opt_before = opt.state_dict()
            opt.load_state_dict(extra["optimizer"])
            for param, st in opt.state.items():  # load_state_dict checks counts, not shapes
                if any(torch.is_tensor(v) and v.dim() and v.shape != param.shape for v in st.values()):
                    opt.load_state_dict(opt_before)
                    raise ValueError(f"a state of shape {[tuple(v.shape) for v in st.values() if torch.is_tensor(v)]}"
                                     f" for a parameter of shape {tuple(param.shape)}")
        except DamagedCheckpoint:
            raise
        except Exception as e:  # noqa: BLE001
            raise DamagedCheckpoint(f"optimizer.pt cannot be used ({type(e).__name__}: {str(e)[:120]})") from None
        try:
            sched.load_state_dict(extra["scheduler"])
            torch.set_rng_state(extra["rng"])
        except Exception as e:  # noqa: BLE001
            opt.load_state_dict(opt_before)
            raise DamagedCheckpoint(f"optimizer.pt's scheduler or random state cannot be used ({type(e).__name__})"
                                    ) from None
    except (CorruptRecord, FileNotFoundError) as e:  # DamagedCheckpoint is a CorruptRecord
        what = str(e) if isinstance(e, CorruptRecord) else f"{Path(str(e)).name} is missing"
        raise DamagedCheckpoint(f"checkpoint {ckpt} is damaged: {what}. Delete that folder to resume from an earlier "
                                "checkpoint (or from the start).") from None
    student.load_state_dict(weights, strict=False)  # checked above: only tied copies are absent
    if len(proj):
        proj.load_state_dict(projections)
    return step


def save_student(run_dir: Path, student: nn.Module, tokenizer: Any) -> Path:
    """Write ``student/`` (``transformers.pipeline`` loads it) atomically; never a non-finite student."""
    bad = non_finite(student)
    if bad:
        raise Diverged(f"the final student has non-finite weights ({bad[:3]}); it was not saved. Lower "
                       "learning_rate and run again (run.fork(learning_rate=...)).")
    target = _own_folder(run_dir, "student")
    with _replacing(target, folder=True) as tmp:
        student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def cached_tensor(path: Path, write: bool, compute: Callable[[], torch.Tensor], shape: tuple[int, ...] | None = None,
                  log: Callable[[str], None] = print) -> torch.Tensor:
    """``compute()`` once and keep it in ``path`` (safetensors); later calls read the file.

    A kept file that cannot be read, or holds another shape than ``shape`` or a non-finite number, is a cache
    miss: it is computed again (and replaced), and ``log`` says so.
    """
    from safetensors.torch import load_file, save_file

    if path.is_symlink():
        raise CorruptRecord(f"{path} is a symbolic link; remove it (distill_nb does not read through links).")
    if path.exists():
        problem = None
        try:
            value = load_file(path).get("logits") if path.is_file() else None
            if value is None:
                problem = "no 'logits' tensor in it"
            elif shape is not None and tuple(value.shape) != tuple(shape):
                problem = f"shape {tuple(value.shape)}, this run needs {tuple(shape)}"
            elif not value.is_floating_point() or not torch.isfinite(value).all():
                problem = "non-finite or non-float values"
            else:
                return value
        except Exception as e:  # noqa: BLE001 — safetensors raises its own types for a damaged file
            problem = f"{type(e).__name__}: {str(e)[:120]}"
        log(f"{path.name} cannot be used ({problem}); computing it again.")
        if write:
            _remove(path)
    value = compute()
    if write:
        with _replacing(path, folder=False) as tmp:
            save_file({"logits": value.contiguous()}, tmp)
    return value


@contextmanager
def _replacing(target: Path, *, folder: bool) -> Iterator[Path]:
    """Yield a temp path (``.tmp-<name>`` beside ``target``; a fresh folder with ``folder``) to write into; when the
    block ends without error, one rename puts it in ``target``'s place.

    On any failure the temp is removed (a full disk gets its space back), ``target`` stays as it was, and a
    write that found no room (disk full, quota, file-size limit) is re-raised as an OSError with that errno,
    naming the file.
    """
    tmp = target.with_name(f".tmp-{target.name}")
    _remove(tmp)
    try:
        if folder:
            tmp.mkdir(parents=True)
        yield tmp
        if folder:
            _remove(target)  # whatever stands there: a folder, a file, a link, a FIFO
        os.replace(tmp, target)
    except BaseException as e:
        _raise_no_room(tmp, target, e)
        raise
    finally:
        _remove(tmp)


def _raise_no_room(tmp: Path, target: Path, error: BaseException) -> None:
    """Re-raise a write that found no room as ``OSError(ENOSPC | EDQUOT | EFBIG, ..., file)``, whatever words the
    library used.

    safetensors says "os error 28", torch.save keeps the OSError only as its RuntimeError's context. With no
    errno at all: (almost) no space left on the run's filesystem means a full disk, and a file in the temp that
    reached the process's file-size limit (``ulimit -f``) means EFBIG.
    """
    if isinstance(error, OSError) and error.errno in NO_ROOM and error.filename:
        return
    code = no_room_errno(error)
    if code is None and not isinstance(error, (KeyboardInterrupt, SystemExit)):
        code = _no_room_left(tmp, target.parent)
    if code is not None:  # the file cut at the size limit (when it is still there); else the folder
        cut = _at_size_limit(tmp) if code == errno.EFBIG else None
        file = target / cut.relative_to(tmp) if cut and cut != tmp else target
        raise OSError(code, f"{os.strerror(code)} ({type(error).__name__}: {str(error)[:200]})", str(file)) from error


def _no_room_left(tmp: Path, folder: Path) -> int | None:
    """ENOSPC or EFBIG when the filesystem or the file-size limit is what stopped a write, else None."""
    try:
        if shutil.disk_usage(folder).free < 1 << 20:
            return errno.ENOSPC
    except OSError:
        return None
    return errno.EFBIG if _at_size_limit(tmp) is not None else None


def _at_size_limit(tmp: Path) -> Path | None:
    """The largest file written into ``tmp`` when it reached the process's file-size limit (``ulimit -f``): the
    file a write was cut on. None without a limit, or when no file reached it (never a smaller, unrelated file)."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    try:
        files = [p for p in ([tmp] if tmp.is_file() else tmp.rglob("*")) if p.is_file() and not p.is_symlink()]
        biggest = max(files, key=lambda p: p.stat().st_size, default=None)
        return biggest if biggest is not None and biggest.stat().st_size >= limit else None
    except OSError:
        return None
