"""Prepared teachers: fine-tune a bare encoder (+ a new head) on a task to its plateau, and the cache of them.

A bare encoder (e.g. the packaged ``minilm-l6``) has no classifier, so it is fine-tuned on the task first. The
fine-tuning holds out a slice of the *training* split, evaluates on it every ``RECIPE["eval_every"]`` steps,
halves the learning rate when it stops improving and stops after ``RECIPE["patience"]`` evaluations without
improvement (or at the step / time cap), keeping the best weights. Its dev accuracy, steps and time are saved
beside the weights in ``teacher.json``.

The cache lives in ``$DISTILL_NB_CACHE/teachers/`` (default ``~/.cache/distill_nb/teachers/``), one folder per
teacher, named ``<task>-<base>-<key>``. The key is exactly what determines the teacher: the base model, the
training data (a hash of its texts and labels, so of the file contents, columns and split), the label names
and the preparation recipe (its version, seed and settings below) -- not the run's batch size, max length,
caps or train-set subset. List with :func:`teachers`, remove with :func:`remove_teacher`.

One preparer at a time per teacher (a lock file beside its folder, for processes and threads alike): a second run
waits and then finds the first one's teacher. A new teacher is written to a temp folder and swapped in whole;
loading holds the lock shared, so a refresh or a removal never happens under a run that is reading the folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import random
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import atomic_write_text
from .evaluation import accuracy_of, predictions
from .families import cache_dir, cache_problem
from .models import accepts_token_types, load_config, predict_logits
from .owner import RunBusy, open_lock_file
from .precision import adamw
from .safeio import MAX_RECORD_BYTES, CorruptRecord, kind, no_room_errno, number, read_json, remove_entry
from .tables import split_pair

# The preparation recipe. Anything here changes the teacher, so it is part of the cache key; bump the version
# when the code of the loop changes what it produces.
RECIPE = {"version": 2, "seed": 0, "batch_size": 32, "max_length": 128, "learning_rate": 5e-5,
          "head_learning_rate": 1e-3, "weight_decay": 0.01, "warmup_steps": 30, "eval_every": 50, "patience": 3,
          "holdout_fraction": 0.1, "holdout_max": 500}
META = "teacher.json"
_LATEST_DATE = 4102444800.0  # 2100-01-01: a created_at past it is damage, not a date


@dataclass(frozen=True)
class PreparedTeacher:
    """One cached teacher: where it is and what it is, as :func:`teachers` lists it."""

    path: Path
    task: str
    base: str
    dev_accuracy: float | None  # on the task's eval split
    holdout_accuracy: float | None  # on the held-out slice of the training split (what stopped it)
    steps: int
    seconds: float
    stopped_by: str  # "plateau", "max_steps" or "time"
    created_at: float
    meta: dict[str, Any]
    problem: str | None = None  # why its config.json or teacher.json cannot be read (None: both are fine)

    @property
    def label(self) -> str:
        """A readable name: task, base, dev accuracy, steps and date (and why it is unreadable, if it is)."""
        acc = f"dev {self.dev_accuracy:.3f}" if self.dev_accuracy is not None else "dev ?"
        try:
            day = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created_at)) if self.created_at else "?"
        except (OverflowError, OSError, ValueError):
            day = "?"
        stop = "" if self.stopped_by == "plateau" else f", stopped by {self.stopped_by.replace('_', ' ')}"
        why = f" · unreadable: {self.problem}" if self.problem else ""
        return f"{self.task} · {self.base} · {acc} · {self.steps} steps{stop} · {day}{why}"


def teachers_dir() -> Path:
    return cache_dir() / "teachers"


def teachers() -> list[PreparedTeacher]:
    """The prepared teachers in the cache, newest first. A folder whose ``config.json`` or ``teacher.json`` cannot
    be read is listed with what is known and why (``problem``), never skipped silently; a symbolic link is not a
    teacher (never followed, not listed: :func:`remove_teacher` refuses it too)."""
    root = teachers_dir()
    out = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if _is_entry(folder):
            out.append(_read(folder))
    return sorted(out, key=lambda t: -t.created_at)


def _lkind(path: Path) -> str | None:
    """What ``path`` itself is ("a folder", "a symbolic link", ...; links not followed), or None when missing."""
    try:
        return kind(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None
    except OSError as e:  # a name too long, no permission: not a teacher this process can use
        return f"unreachable ({e.strerror})"


def _is_entry(folder: Path) -> bool:
    """Whether ``folder`` is listed as a teacher: a real folder (not a link), not hidden, holding a
    ``config.json`` (of any kind: one that is not a regular file is listed as unreadable, see :func:`_read`)."""
    return (not folder.name.startswith(".") and _lkind(folder) == "a folder"
            and _lkind(folder / "config.json") is not None)


def _is_teacher(folder: Path) -> bool:
    """Whether ``folder`` is a usable prepared teacher: a real folder with a regular ``config.json``, no links."""
    return _lkind(folder) == "a folder" and _lkind(folder / "config.json") == "a regular file"


def config_problem(folder: Path) -> str | None:
    """Why the ``config.json`` of a listed folder cannot be used (a link, a FIFO, a folder, gone), or None."""
    what = _lkind(folder / "config.json")
    if what == "a regular file":
        return None
    if what is None:
        return "config.json is missing"
    return f"config.json is {what}" + (" (not followed)" if what == "a symbolic link" else ", not a regular file")


def remove_teacher(teacher: str | os.PathLike | PreparedTeacher) -> Path:
    """Delete one prepared teacher from the cache (a run that used it keeps its own student).

    Args:
        teacher: a :class:`PreparedTeacher`, its folder, or its folder name.
    Raises:
        FileNotFoundError: no such teacher in the cache (the message lists those there are).
        ValueError: the path is not inside the teachers cache (nothing outside it is ever deleted), the name cannot
            be a folder's (a NUL, too long), or the entry is a symbolic link (never followed: refused, so deleting
            one name never deletes another entry or anything outside; :func:`teachers` does not list links).
        TypeError: ``teacher`` is not a name, a path or a :class:`PreparedTeacher`.
        RunBusy: a run is preparing or loading this teacher right now.
    """
    path = _entry_path(teacher)
    what = _lkind(path)
    if what == "a symbolic link":  # never followed: deleting "alias" must not delete what it points to
        raise ValueError(f"{path.name!r} in {teachers_dir()} is a symbolic link (to {os.readlink(path)!r}), not a "
                         "prepared teacher: distill_nb never follows links in its cache, so it neither lists nor "
                         f"deletes it; remove the link itself if you no longer want it (os.unlink({str(path)!r})).")
    if not _is_entry(path):
        names = [t.path.name for t in teachers()]
        found = "" if what is None or what == "a folder" else f" ({path.name!r} there is {what}, not a teacher folder)"
        raise FileNotFoundError(f"no prepared teacher {path.name!r} in {teachers_dir()}{found}; pass one of "
                                f"the teachers there: {names}")
    try:
        with _key_lock(path, block=False):
            trash = path.with_name(f".removing-{path.name}-{os.getpid()}-{secrets.token_hex(4)}")
            os.replace(path, trash)  # atomic, and renames a link itself: a lister sees the teacher or nothing
            remove_entry(trash)
    except BlockingIOError:
        raise RunBusy(f"the prepared teacher {path.name!r} is being prepared or loaded by a run right now; remove it "
                      "when that run has started training.") from None
    return path


def _entry_path(teacher: str | os.PathLike | PreparedTeacher) -> Path:
    """The cache entry ``teacher`` names (a name, a path in the cache or a listed teacher), not resolved: a link
    stays the link.

    Raises:
        TypeError: not a name, path or PreparedTeacher. ValueError: an impossible name, or a path outside the
            teachers cache (nothing outside it is ever deleted).
    """
    given = teacher.path if isinstance(teacher, PreparedTeacher) else teacher
    if not isinstance(given, (str, os.PathLike)) or isinstance(os.fspath(given), bytes):
        raise TypeError(f"remove_teacher() got {type(given).__name__} {given!r}: pass a teacher's folder name, its "
                        "path or a teachers() entry, e.g. remove_teacher(distill_nb.teachers()[0]).")
    text = os.fspath(given)
    if "\0" in text or len(os.fsencode(Path(text).name)) > 255:
        raise ValueError(f"{text[:80]!r}{'...' if len(text) > 80 else ''} cannot be a prepared teacher's name (it "
                         f"{'holds a NUL character' if chr(0) in text else 'is longer than a file name can be'}): "
                         "pass a name as distill_nb.teachers() or `distill-nb teachers` lists it.")
    root = teachers_dir()
    path = Path(os.path.abspath(root / text))  # ".." is applied to the name as written, never through a link
    if path.name in ("", ".", "..") or path.parent.resolve() != root.resolve():
        raise ValueError(f"{text!r} is not a prepared teacher in {root}: remove_teacher() only deletes folders of "
                         "that cache; pass a name as distill_nb.teachers() lists it.")
    return root / path.name


def teacher_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``teacher.json`` summary of a prepared teacher (dev accuracy, steps, seconds, ...), or None when it is
    missing or unreadable (see :func:`_read_meta` for why); values are as written: check them before use."""
    meta, _ = _read_meta(Path(path))
    keep = ("task", "base", "dev_accuracy", "dev_examples", "holdout_accuracy", "steps", "best_step", "seconds",
            "stopped_by", "created_at", "precision", "max_steps", "max_minutes")
    return {k: meta.get(k) for k in keep} if meta is not None else None


def _read_meta(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the ``teacher.json`` of ``folder``, None) or (None, why it cannot be used): never through a link, never a
    FIFO or a folder, at most ``MAX_RECORD_BYTES``, nesting bounded (safeio's reader)."""
    try:
        meta = read_json(folder / META, max_bytes=MAX_RECORD_BYTES)
    except FileNotFoundError:
        return None, f"no {META}"
    except CorruptRecord as e:
        return None, str(e)
    except (OSError, ValueError) as e:  # no permission, a name the system refuses
        return None, f"{META} cannot be read ({e})"
    if not isinstance(meta, dict):
        return None, f"{META} is not a JSON object"
    return meta, None


DATA_KEY_FORMAT = 2  # 2: one JSON line per example (1 hashed label, tab, text, newline unescaped: sets collided)


def data_key(task: Any) -> str:
    """A hash of a task's training texts and labels and its label names (its identity, whatever the file).

    Each example is one JSON line, ``[label, text]`` or ``[label, first, second]`` for a text pair: JSON escapes
    newlines, tabs and quotes, so no two different training sets hash the same bytes. Since format 2 every
    cached teacher has a new key once (it is prepared again); the old format let e.g. ``["a\\n1\\tb"]`` and
    ``["a", "b"]`` share a teacher fine-tuned on the other.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"data_key": DATA_KEY_FORMAT, "label_names": [str(n) for n in task.label_names]}).encode())
    for text, label in zip(task.train.texts, task.train.labels, strict=True):
        h.update(b"\n" + _example_json(text, label).encode("ascii"))
    return h.hexdigest()


def _example_json(text: Any, label: Any) -> str:
    """``[label, text]`` (or ``[label, first, second]`` for a text pair) as one line of ASCII JSON."""
    pair = split_pair(text) if isinstance(text, str) else None
    return json.dumps([label, *(pair or (text,))], default=str)


_FILE_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: each file read once


def _file_hash(path: Path) -> str:
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_HASHES[memo] = h.hexdigest()
    return _FILE_HASHES[memo]


def base_key(name: str, trust_remote_code: bool = False) -> str:
    """The base model's identity: its name, or for a local folder a hash of the contents of its config and
    weight files (two encoders of one shape, or one re-saved with other weights, are different bases)."""
    path, _ = load_config(name, trust_remote_code)
    folder = Path(path)
    if not folder.is_dir():
        return str(name)
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(f"{f.name}:{_file_hash(f)}".encode())
    return h.hexdigest()


def task_name(task: Any) -> str:
    """A short name for a task: ``sst2`` for ``"sst2 (/.../sst2)"``, the file stem for a file, ..."""
    source = str(task.source).split(" (")[0]
    stem = Path(source.split(":")[0]).stem or source
    return re.sub(r"[^a-z0-9_]+", "-", stem.lower()).strip("-")[:24] or "task"


def prepare_teacher(name: str, task: Any, *, max_steps: int = 2000, max_minutes: float | None = None,
                    device: str | torch.device = "cpu", autocast: Callable[[], Any] = nullcontext,
                    trust_remote_code: bool = False, log: Callable[[str], None] = print,
                    progress: Callable[[int, int], None] | None = None, refresh: bool = False,
                    recipe: dict[str, Any] | None = None) -> Path:
    """Fine-tune a bare encoder (+ a new classification head) on ``task`` until it stops improving; cached.

    Args:
        name: the base encoder (alias, id or folder).
        task: a :class:`~distill_nb.data.TaskData`; its whole training split is used (a slice is held out).
        max_steps: cap on optimiser steps (not in the cache key; a teacher stopped by a smaller cap is prepared
            again when a larger one is asked for).
        max_minutes: cap on wall-clock minutes (None: no cap).
        autocast: the run's autocast factory (bf16 on a CPU that supports it).
        progress: ``progress(step, max_steps)`` after every step; an exception it raises abandons the
            fine-tuning (nothing is cached) and propagates.
        refresh: prepare again even if a cached teacher exists (it is replaced).
        recipe: overrides of :data:`RECIPE` (part of the key).

    Returns:
        The folder of the prepared teacher (``save_pretrained`` + tokenizer + ``teacher.json``).
    """
    recipe = {**RECIPE, **(recipe or {})}
    out, identity = _cache_entry(name, task, recipe, trust_remote_code)
    key = out.name.rsplit("-", 1)[1]
    # one preparer per teacher (processes and threads): a second one waits, then finds the first one's teacher
    with _key_lock(out, wait=(lambda: progress(0, max_steps)) if progress else None, log=log):
        _sweep(out)
        if not refresh and _is_teacher(out):
            meta = teacher_meta(out) or {}
            if _covers(meta, max_steps, max_minutes):
                log(f"prepared teacher found in the cache: {_read(out).label} ({out})")
                return out
            if not meta:
                log(f"the cached teacher {out.name} has no readable {META}; preparing it again")
            else:
                log(f"the cached teacher {out.name} stopped at a smaller cap ({meta.get('steps')} steps, "
                    f"{meta.get('stopped_by')}) before its plateau; preparing it again with max_steps={max_steps}"
                    + (f", max_minutes={max_minutes:g}" if max_minutes else ""))
        model, tok, meta = _fine_tune(name, task, recipe, max_steps=max_steps, max_minutes=max_minutes,
                                      device=device, autocast=autocast, trust_remote_code=trust_remote_code,
                                      log=log, progress=progress)
        meta.update(task=task_name(task), base=str(name), source=str(task.source), key=key, identity=identity,
                    created_at=time.time(), max_steps=max_steps, max_minutes=max_minutes)
        _save(model, tok, meta, out)
    log(f"prepared teacher: {_read(out).label} -> {out}")
    return out


def _save(model: Any, tok: Any, meta: dict[str, Any], out: Path) -> None:
    """Write the prepared teacher to a temp folder and swap it in whole; on any failure the temp folder is removed
    and a write that found no room is raised naming the cache folder and ``$DISTILL_NB_CACHE`` (not the run)."""
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        model.eval().save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_text(tmp / META, json.dumps(meta, indent=1, allow_nan=False) + "\n")
        if os.path.lexists(out):  # refresh (or a link there): set aside only now that the new one is complete
            old = out.with_name(f".removing-{out.name}-{os.getpid()}-{secrets.token_hex(4)}")
            os.replace(out, old)
            os.replace(tmp, out)
            remove_entry(old)
        else:
            os.replace(tmp, out)
    except BaseException as e:
        remove_entry(tmp)  # a full disk gets its space back; nothing half-made stays
        code = no_room_errno(e)
        if code is not None:
            raise OSError(code, cache_problem(out, os.strerror(code).lower()), str(out)) from e
        raise


@contextmanager
def _key_lock(out: Path, *, shared: bool = False, wait: Callable[[], Any] | None = None,
              log: Callable[[str], None] | None = None, block: bool = True) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside a cache folder: exclusive to prepare or remove it, shared to load it.

    While another process holds it, ``wait()`` is called about every half second (a run's heartbeat, and its Stop)
    and ``log`` says once why this one waits. ``block=False`` raises BlockingIOError instead of waiting.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = open_lock_file(out.with_name(f".{out.name}.lock"))
    except OSError:
        if not shared:
            raise
        yield  # a read-only cache (e.g. a shared workshop folder): nobody can replace what is read there
        return
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if not block:
                raise
            if log:
                log(f"the teacher {out.name} is being prepared by another run; waiting for it")
            while True:
                if wait:
                    wait()
                time.sleep(0.5)
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    continue
        yield
    finally:
        os.close(fd)


def _sweep(out: Path) -> None:
    """Remove what an interrupted prepare or removal of this teacher left (the caller holds its lock)."""
    for junk in out.parent.glob(f".tmp-{out.name}-*"):
        remove_entry(junk)
    for junk in out.parent.glob(f".removing-{out.name}-*"):
        remove_entry(junk)


def load_prepared(folder: str | os.PathLike, **kwargs: Any) -> tuple[Any, Any, dict[str, Any] | None]:
    """(model, tokenizer, teacher.json summary) of a prepared teacher, read while no preparer replaces it.

    Raises:
        FileNotFoundError / ValueError: it is gone or damaged (the message names the cache entry and the fix).
    """
    from .models import load_teacher

    folder = Path(folder)
    with _key_lock(folder, shared=True):
        try:
            model, tok = load_teacher(str(folder), **kwargs)
        except (OSError, ValueError) as e:
            raise type(e)(f"the prepared teacher {folder.name} in the cache cannot be loaded ({e}); remove it with "
                          f"distill_nb.remove_teacher({folder.name!r}) (or the Teacher tab) and it is prepared "
                          "again.") from e
        return model, tok, teacher_meta(folder)


def _cache_entry(name: str, task: Any, recipe: dict[str, Any], trust_remote_code: bool) -> tuple[Path, dict]:
    """(the cache folder, the identity hashed into its name) of ``name`` prepared on ``task`` with ``recipe``."""
    identity = {"base": base_key(name, trust_remote_code), "data": data_key(task), "recipe": recipe}
    if any(split_pair(t) is not None for t in task.train.texts):  # text pairs: fine-tuned with segment ids since
        identity["pair_segments"] = True  # 1 Dec 2026; a teacher cached before that read every pair as segment 0
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(name)).name)[:32]
    return teachers_dir() / f"{task_name(task)}-{base}-{key}", identity


def cached_teacher(name: str, task: Any, *, trust_remote_code: bool = False,
                   recipe: dict[str, Any] | None = None) -> Path | None:
    """The folder :func:`prepare_teacher` made (or would make) for ``name`` on ``task``, if it is in the cache.

    What a run with this teacher and data would use, without fine-tuning anything: None when nothing is cached.
    """
    out, _ = _cache_entry(name, task, {**RECIPE, **(recipe or {})}, trust_remote_code)
    return out if _is_teacher(out) else None


def classifier_teacher(name: str, task: Any, *, trust_remote_code: bool = False) -> tuple[Any, Any, str]:
    """(model, tokenizer, path) of the teacher a run distils from: ``name`` itself when it has a classifier, else
    the teacher prepared from it on ``task`` (the run's whole data set), from the cache; nothing is fine-tuned.

    Raises:
        ValueError: a bare encoder with no prepared teacher in the cache (the message says how to make one).
    """
    from .models import NotAClassifierError, load_teacher

    try:
        return (*load_teacher(name, trust_remote_code=trust_remote_code), name)
    except NotAClassifierError:
        folder = cached_teacher(name, task, trust_remote_code=trust_remote_code)
    if folder is None:
        raise ValueError(f"{name!r} is a bare encoder with no teacher prepared on {task.source} yet: start a run once "
                         "(its first phase fine-tunes a head and caches the teacher), pick a prepared teacher in the "
                         "Teacher tab, or call distill_nb.teacher_cache.prepare_teacher(...).")
    return (*load_teacher(str(folder)), str(folder))


def _covers(meta: dict[str, Any], max_steps: int, max_minutes: float | None) -> bool:
    """Whether a cached teacher is what these caps would give: it plateaued, or stopped at a cap >= these (an odd
    or missing value in its ``teacher.json`` reads as unknown: not covered, so it is prepared again)."""
    stop = meta.get("stopped_by")
    if stop == "plateau":
        return True
    if stop == "max_steps":
        return (number(meta.get("steps")) or 0) >= max_steps
    if stop == "time":
        return max_minutes is not None and (number(meta.get("max_minutes")) or 0) >= max_minutes
    return False


def _fine_tune(name: str, task: Any, recipe: dict[str, Any], *, max_steps: int, max_minutes: float | None,
               device: str | torch.device, autocast: Callable[[], Any], trust_remote_code: bool,
               log: Callable[[str], None], progress: Callable[[int, int], None] | None
               ) -> tuple[Any, Any, dict[str, Any]]:
    """The loop: held-out slice, warm-up, evaluate, halve the LR on no improvement, stop at patience or a cap."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .data import collate, encode, length_batches
    from .fastdrop import use_fast_dropout

    device = torch.device(device)
    path, _ = load_config(name, trust_remote_code)
    torch.manual_seed(recipe["seed"])
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=task.num_labels, id2label=dict(enumerate(task.label_names)),
        label2id={n: i for i, n in enumerate(task.label_names)}, trust_remote_code=trust_remote_code).to(device)
    use_fast_dropout(model, device)  # CPU: dropout masks cut from random words (same p), see fastdrop.py
    # a seeded held-out slice of the training split decides when to stop; the dev split is only reported
    order = list(range(len(task.train)))
    random.Random(recipe["seed"]).shuffle(order)
    n_hold = min(recipe["holdout_max"], max(1, int(len(order) * recipe["holdout_fraction"])))
    hold, fit = (order[:n_hold], order[n_hold:]) if len(order) > 1 else (order, order)
    enc = encode(tok, task.train.texts, recipe["max_length"])
    labels = torch.tensor(task.train.labels)
    fit_enc, fit_labels = [enc[i] for i in fit], labels[fit]
    hold_enc, hold_labels = [enc[i] for i in hold], labels[hold]
    # the new head learns from scratch: a larger learning rate than the pretrained encoder's
    prefix = getattr(model, "base_model_prefix", "")
    groups = [{"params": [p for n, p in model.named_parameters() if n.startswith(prefix + ".")],
               "lr": recipe["learning_rate"]},
              {"params": [p for n, p in model.named_parameters() if not n.startswith(prefix + ".")],
               "lr": recipe["head_learning_rate"]}]
    opt = adamw(groups, torch.device(device), weight_decay=recipe["weight_decay"])  # fused: same update, rounding
    peak = [g["lr"] for g in opt.param_groups]
    scale = 1.0  # halved on each evaluation without improvement

    def set_lr(step: int) -> None:
        warm = min(1.0, (step + 1) / max(1, recipe["warmup_steps"]))
        for g, lr in zip(opt.param_groups, peak):
            g["lr"] = lr * warm * scale

    def holdout_accuracy() -> float:
        logits = predict_logits(model, hold_enc, tok.pad_token_id, device, autocast)
        model.train()
        return accuracy_of(predictions(logits), hold_labels)  # a NaN/inf row counts as wrong

    log(f"preparing teacher: fine-tuning {name!r} + a new head on {len(fit)} examples of {task.source} until "
        f"the accuracy on {len(hold)} held-out training examples stops improving (at most {max_steps} steps"
        + (f" or {max_minutes:g} min" if max_minutes else "") + f"); cached in {teachers_dir()}")
    start = time.time()
    best_acc, best_step, best_state, bad, history = -1.0, 0, None, 0, []
    stopped_by, step, epoch = "max_steps", 0, 0
    token_types = accepts_token_types(model)  # a text pair's segment ids, as predict_logits passes them
    model.train()
    while step < max_steps and stopped_by == "max_steps":
        for idx in length_batches([len(e) for e in fit_enc], recipe["batch_size"], seed=recipe["seed"] + epoch):
            set_lr(step)
            batch = {k: v.to(device) for k, v in collate(fit_enc, idx, tok.pad_token_id,
                                                         token_types=token_types).items()}
            with autocast():
                logits = model(**batch).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), fit_labels[idx].to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if progress is not None:
                progress(step, max_steps)
            out_of_time = max_minutes is not None and time.time() - start > 60 * max_minutes
            if step % recipe["eval_every"] == 0 or step >= max_steps or out_of_time:
                acc = holdout_accuracy()
                history.append({"step": step, "holdout_accuracy": acc, "loss": loss.item(), "lr_scale": scale})
                if acc > best_acc:
                    best_acc, best_step, bad = acc, step, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    bad += 1
                    scale /= 2
                log(f"  teacher step {step}/{max_steps}: held-out accuracy {acc:.4f} (best {best_acc:.4f} at "
                    f"step {best_step}), loss {loss.item():.4f}")
                if bad >= recipe["patience"]:
                    stopped_by = "plateau"
                elif out_of_time:
                    stopped_by = "time"
            if stopped_by != "max_steps" or step >= max_steps:
                break
        epoch += 1
    if best_state is not None:
        model.load_state_dict(best_state)  # the best held-out checkpoint, not the last
    model.eval()
    dev = predict_logits(model, encode(tok, task.eval.texts, recipe["max_length"]), tok.pad_token_id, device,
                         autocast)
    dev_acc = accuracy_of(predictions(dev), torch.tensor(task.eval.labels))
    meta = {"dev_accuracy": dev_acc, "dev_examples": len(task.eval), "holdout_accuracy": best_acc,
            "holdout_examples": len(hold), "train_examples": len(fit), "steps": step, "best_step": best_step,
            "seconds": time.time() - start, "stopped_by": stopped_by, "history": history,
            "precision": _precision_name(autocast)}
    log(f"teacher prepared: dev accuracy {dev_acc:.4f} on {len(task.eval)} texts, best held-out {best_acc:.4f} "
        f"at step {best_step}, {step} steps in {meta['seconds']:.0f} s (stopped by {stopped_by})")
    return model, tok, meta


def _precision_name(autocast: Callable[[], Any]) -> str:
    ctx = autocast()
    dtype = getattr(ctx, "fast_dtype", None) if getattr(ctx, "_enabled", True) else None
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def _read(folder: Path) -> PreparedTeacher:
    """An entry as listed: every field of ``teacher.json`` is checked (type and range); a missing, damaged or
    odd value reads as unknown, and a file that cannot be read is said in ``problem``, so one bad file never
    hides the other teachers."""
    meta, problem = _read_meta(folder)
    meta = meta or {}
    problem = config_problem(folder) or problem
    text = lambda key, default: meta[key] if isinstance(meta.get(key), str) and meta[key].strip() else default
    steps, seconds, created = (number(meta.get(k)) for k in ("steps", "seconds", "created_at"))
    try:
        mtime = folder.stat().st_mtime
    except OSError:  # removed while listing
        mtime = 0.0
    accuracy = lambda key: v if (v := number(meta.get(key))) is not None and 0 <= v <= 1 else None
    return PreparedTeacher(path=folder, task=text("task", folder.name.split("-")[0]), base=text("base", "?"),
                           dev_accuracy=accuracy("dev_accuracy"), holdout_accuracy=accuracy("holdout_accuracy"),
                           steps=int(steps) if steps is not None and 0 <= steps < 1e12 else 0,
                           seconds=seconds if seconds is not None and seconds >= 0 else 0.0,
                           stopped_by=text("stopped_by", "unknown"),
                           created_at=created if created is not None and 0 < created < _LATEST_DATE else mtime,
                           meta=meta, problem=problem)


# --- is the teacher the bottleneck? ---------------------------------------------------------------------------
MIN_NOISE_TEXTS = 30  # fewer eval texts than this: no claim that one model beats the other


def accuracy_noise(student: float, teacher: float, n: int) -> float:
    """Two standard errors of the difference of two accuracies measured on the same ``n`` texts.

    Agresti-Caffo: each accuracy as if measured with one more right and one more wrong answer, so the error does
    not collapse to 0 at accuracies of 0 or 1 (on 3 texts, 1.0 vs 0.67 was "beyond noise (±0.0)").
    """
    n = max(n, 1)

    def var(p: float) -> float:
        q = (p * n + 1) / (n + 2)
        return q * (1 - q)

    return 2 * math.sqrt((var(student) + var(teacher)) / (n + 2))


def student_beats_teacher(student: float | None, teacher: float | None, n: int) -> str | None:
    """A warning when the student beats its teacher by more than noise on ``n`` eval texts, else None (also when
    fewer than ``MIN_NOISE_TEXTS`` texts cannot tell)."""
    if number(student) is None or number(teacher) is None or n < MIN_NOISE_TEXTS:
        return None  # nothing measured (None, NaN), or too few texts: no claim either way
    noise = accuracy_noise(student, teacher, n)
    if student - teacher <= noise:
        return None
    return (f"the student ({student:.3f}) beats its teacher ({teacher:.3f}) by {100 * (student - teacher):.1f} "
            f"points on {n} eval texts, beyond noise (±{100 * noise:.1f}): the teacher looks undertrained, so "
            "retention and agreement understate the student's distance to a good teacher. Prepare the teacher "
            "to its plateau (raise teacher_prep_steps / teacher_prep_minutes; remove a capped teacher with "
            "distill_nb.remove_teacher(...)) or use a stronger teacher, then distil again.")


__all__ = ["RECIPE", "PreparedTeacher", "accuracy_noise", "data_key", "prepare_teacher", "remove_teacher",
           "student_beats_teacher", "teacher_meta", "teachers", "teachers_dir"]
