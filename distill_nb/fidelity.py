"""Reason fidelity: does the student decide for the teacher's reasons, and a loss that makes it.

Two pieces that ``train()`` plugs in with a few lines:

- ``ReasonTracker``: a fixed, seeded probe set of eval examples (``probe.json`` in the run directory); the
  teacher's attributions on it are computed once (and cached across runs); at every evaluation the student's
  are computed and their agreement (Spearman, top-k overlap, sign agreement) joins the eval record as
  ``reason_spearman``, ``reason_topk``, ``reason_sign`` (and ``reason_s``, the seconds it took).
- ``Aligner``: the teacher's token attributions of the training examples, computed once and cached like the
  teacher logits; each step the student's gradient x input on its input embeddings is computed
  differentiably (``create_graph=True``) and ``losses.attribution_loss`` pulls it towards the teacher's.

The teacher-attribution cache (``<cache>/attributions/<key>.safetensors``) is keyed by the teacher's weights,
the texts, the method, ``n_steps`` and ``max_length``; this module alone reads and writes it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import losses
from .attribution.methods import Attribution, attribute, encode, is_blank
from .attribution.metrics import agreement, align
from .config import atomic_write_text
from .families import cache_dir, save_cache_file
from .safeio import CorruptRecord, loads, read_text

PROBE_FILE = "probe.json"


# --- the teacher-attribution cache --------------------------------------------------------------------------------
def fingerprint(model: nn.Module) -> str:
    """A short hash of a model's weights: the cache key's 'which teacher' (a path alone can be rewritten)."""
    h = hashlib.blake2b(digest_size=12)
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def tokenizer_id(tokenizer: Any) -> str:
    """A short hash of what decides a tokenizer's tokens (its whole fast-tokenizer JSON: vocab, normaliser,
    special tokens), so a re-cased or re-vocabularied tokenizer of the same weights gets its own cache entry."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # without the truncation/padding settings the last call left on it
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        text = json.dumps(spec, sort_keys=True)
    else:
        text = repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=12).hexdigest()


CACHE_FORMAT = 3  # 2: text pairs are encoded as pairs (attribution.methods.encode), as training feeds them;
# 3: and read with their segment ids (token_type_ids) by a model that takes them


def cache_key(teacher_id: str, texts: Sequence[str], method: str, n_steps: int, max_length: int,
              tokenizer: str = "") -> str:
    h = hashlib.sha256(repr((teacher_id, method, n_steps if method == "integrated_gradients" else None,
                             max_length, len(texts), tokenizer, CACHE_FORMAT)).encode())
    for t in texts:
        h.update(t.encode("utf-8", "replace") + b"\0")
    return h.hexdigest()[:20]


def teacher_attributions(teacher: nn.Module, tokenizer: Any, texts: Sequence[str], *, method: str, n_steps: int,
                         max_length: int, device: torch.device, teacher_id: str | None = None,
                         save: bool = True, log: Callable[[str], None] = print,
                         progress: Callable[[int, int], None] | None = None,
                         token_counts: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                             torch.Tensor, bool]:
    """The teacher's token attributions of ``texts`` (its predicted class), from the cache or computed once.

    A cache file is used only when it holds what these texts need (a row and the token count of each text, finite
    scores, classes of the teacher); anything else is computed again. ``progress(done, total)`` is called between
    chunks of texts while computing (it may raise to abandon the work; nothing is cached then). ``token_counts``:
    the texts' token counts with ``tokenizer`` when the caller has them (train() does), so they are not tokenized
    again to check the cache.

    Returns:
        (scores (N, S) float32 right-padded with 0, zero at specials; lengths (N,) long; targets (N,) long;
        True when they came from the cache).
    """
    teacher_id = teacher_id or fingerprint(teacher)
    key = cache_key(teacher_id, texts, method, n_steps, max_length, tokenizer_id(tokenizer))
    path = cache_dir() / "attributions" / f"{key}.safetensors"
    from safetensors.torch import load_file, save_file

    if path.is_file():
        try:
            data = load_file(path)
            scores, lengths, targets = data["scores"], data["lengths"], data["targets"]
            expected = (list(token_counts) if token_counts is not None else
                        [len(e.ids) for e in encode(tokenizer, list(texts), max_length)])
            problem = _cache_problem(scores, lengths, targets, expected,
                                     int(getattr(teacher.config, "num_labels", 0) or 0))
            if problem is None:
                return scores.float(), lengths.long(), targets.long(), True
            log(f"attribution cache {path.name} does not fit these texts ({problem}); recomputing")
        except Exception as e:  # noqa: BLE001 — a corrupt cache file is recomputed, never fatal
            log(f"attribution cache {path.name} unreadable ({e}); recomputing")
    t0 = time.time()
    was_training = teacher.training
    # attribute()'s default batch: 16 texts per call for the gradient methods, captum-sized for IG
    attrs: list[Attribution] = []
    chunk = ATTRIBUTION_CHUNK  # the same chunks with or without progress: every DDP process computes the same
    try:
        for start in range(0, len(texts), max(1, chunk)):
            if progress is not None:
                progress(start, len(texts))
            attrs += attribute(teacher, tokenizer, list(texts[start:start + chunk]), method, n_steps=n_steps,
                               max_length=max_length, device=device)
    finally:
        teacher.train(was_training)
    _check_teacher_finite(attrs)
    width = max(len(a.scores) for a in attrs)
    scores = torch.zeros(len(attrs), width)
    for i, a in enumerate(attrs):
        scores[i, :len(a.scores)] = torch.as_tensor(a.scores, dtype=torch.float32)
    lengths = torch.tensor([len(a.scores) for a in attrs])
    targets = torch.tensor([a.target for a in attrs])
    log(f"teacher attributions ({method}) of {len(texts)} texts: {time.time() - t0:.1f} s (cached in {path})")
    if save:  # best effort: a cache that cannot be written (full disk) is a miss next time, not a failed run
        save_cache_file(path, lambda tmp: save_file({"scores": scores.contiguous(), "lengths": lengths,
                                                     "targets": targets}, tmp), log)
    return scores, lengths, targets, False


def _check_teacher_finite(attrs: Sequence[Attribution]) -> None:
    """:class:`~distill_nb.evaluation.BrokenTeacher` when the teacher's logits are NaN/inf on a text: it made no
    prediction there, so it has no reasons to cache, track or align to (nothing is cached)."""
    from .evaluation import check_teacher_outputs

    marks = torch.tensor([[math.nan if a.nonfinite else 0.0] for a in attrs])  # (N, 1): NaN where no prediction
    check_teacher_outputs(marks, "attributed", "fp32")


ATTRIBUTION_CHUNK = 256  # texts between two progress calls (a Stop is heard within one chunk)


def _cache_problem(scores: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, expected: list[int],
                   num_labels: int) -> str | None:
    """Why cached attributions cannot serve texts of ``expected`` token counts (None when they can)."""
    n = len(expected)
    if scores.dim() != 2 or lengths.shape != (n,) or targets.shape != (n,) or scores.shape[0] != n:
        return f"shapes {tuple(scores.shape)}/{tuple(lengths.shape)}/{tuple(targets.shape)} for {n} texts"
    if not scores.is_floating_point() or lengths.is_floating_point() or targets.is_floating_point():
        return "wrong dtypes"
    if lengths.tolist() != expected:
        return "token counts differ from this tokenizer's"
    if n and scores.shape[1] < max(expected):
        return "rows shorter than the texts"
    if not bool(torch.isfinite(scores).all()):
        return "non-finite scores"
    if n and (int(targets.min()) < 0 or (num_labels and int(targets.max()) >= num_labels)):
        return f"classes outside the teacher's {num_labels}"
    return None


# --- live tracking on a probe set ---------------------------------------------------------------------------------
def probe_candidates(tokenizer: Any, eval_texts: Sequence[str], max_length: int) -> list[int]:
    """Indices of the eval texts a probe can explain: not blank (spaces, control or zero-width characters only,
    which ``attribute`` refuses) and with a word the tokenizer keeps; a ValueError when there is none."""
    texts = [t if isinstance(t, str) else "" for t in eval_texts]
    filled = [i for i, t in enumerate(texts) if not is_blank(t)]  # a blank text has no reasons to compare
    items = encode(tokenizer, [texts[i] for i in filled], max_length) if filled else []
    usable = [i for i, e in zip(filled, items) if any(w is not None for w in e.word_ids)]
    if not usable:
        raise ValueError(f"no eval text can be probed for reasons: all {len(texts)} are blank (only spaces, control "
                         "or zero-width characters) or hold no word the tokenizer keeps. Fix the eval texts (is "
                         "text_column the right column?), or set reason_probe=0 to train without reason tracking.")
    return usable


def probe_indices(n_eval: int, size: int, seed: int) -> list[int]:
    """A seeded, sorted subset of ``size`` eval indices (all of them when the eval set is smaller)."""
    if size >= n_eval:
        return list(range(n_eval))
    return sorted(random.Random(seed).sample(range(n_eval), size))


class ReasonTracker:
    """Teacher-vs-student attribution agreement on a fixed probe set, measured at each evaluation.

    Args:
        run_dir: the run directory; ``probe.json`` (indices, texts, method) is written there, or reused on resume.
        teacher, tokenizer: the teacher and its tokenizer.
        student_tokenizer: the student's (word-level alignment when it differs from the teacher's).
        eval_texts: the run's eval texts; the probe is ``size`` of them, chosen with ``seed``.
        method, n_steps, top_k: attribution method, IG steps, and k of the top-k overlap.
        precision: "fp32" or "bf16" (train() passes bf16 where the run trains in bf16: ~20 % faster on a CPU, the
            mean Spearman moved by 0.0005 on SST-2), for the student's attributions; the teacher's stay fp32.
    """

    def __init__(self, run_dir: Path, teacher: nn.Module, tokenizer: Any, student_tokenizer: Any,
                 eval_texts: Sequence[str], *, size: int, seed: int, method: str, n_steps: int, top_k: int,
                 max_length: int, device: torch.device, precision: str = "fp32",
                 log: Callable[[str], None] = print):
        t0 = time.time()
        path = Path(run_dir) / PROBE_FILE
        if path.is_dir() and not path.is_symlink():  # a rename would fail on it: say what to do
            raise ValueError(f"{path} is a folder, where the run keeps its reason probe: move it away (or delete it), "
                             "then Resume; the probe is rebuilt from the run's eval texts.")
        probe = _read_probe(path, eval_texts)
        if probe is None or probe.get("method") != method or probe.get("n_steps") != n_steps:
            usable = probe_candidates(tokenizer, eval_texts, max_length)
            idx = [usable[j] for j in probe_indices(len(usable), size, seed)]
            probe = {"indices": idx, "texts": [eval_texts[i] for i in idx], "method": method,
                     "n_steps": n_steps, "top_k": top_k, "seed": seed}
            atomic_write_text(path, json.dumps(probe, indent=1) + "\n")
        self.texts: list[str] = probe["texts"]
        self.method, self.n_steps, self.top_k, self.max_length = method, n_steps, top_k, max_length
        self.student_tokenizer, self.device, self.precision = student_tokenizer, device, precision
        scores, lengths, targets, _ = teacher_attributions(teacher, tokenizer, self.texts, method=method,
                                                           n_steps=n_steps, max_length=max_length, device=device,
                                                           log=log)
        self.teacher = _as_attributions(tokenizer, self.texts, scores, lengths, targets, method, max_length)
        self.targets = [int(t) for t in targets]
        self.setup_s = time.time() - t0

    def measure(self, student: nn.Module) -> dict[str, float | None]:
        """``reason_spearman``, ``reason_topk`` (Jaccard of the top-k tokens), ``reason_sign`` (NaN-free: None
        when no example gives a value), and ``reason_s`` (seconds). Leaves the student's train/eval mode as it was."""
        t0 = time.time()
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # tracking on or off: the same training randomness afterwards
            mine = attribute(student, self.student_tokenizer, self.texts, self.method, self.targets,
                             n_steps=self.n_steps, max_length=self.max_length, device=self.device,
                             precision=self.precision)
        rows = [agreement(*align(t, s)[2:], self.top_k) for t, s in zip(self.teacher, mine)]
        out: dict[str, float | None] = {}
        for key, name in [("reason_spearman", "spearman"), ("reason_topk", "topk_jaccard"),
                          ("reason_sign", "sign_agreement")]:
            values = [r[name] for r in rows if not math.isnan(r[name])]
            out[key] = float(np.mean(values)) if values else None
        out["reason_s"] = time.time() - t0
        return out

    def wrap(self, evaluate: Callable[[int], dict[str, Any]], student: nn.Module) -> Callable[[int], dict[str, Any]]:
        """``evaluate(step)`` with the reason agreement added to its record."""

        def evaluate_with_reasons(step: int) -> dict[str, Any]:
            return {**evaluate(step), **self.measure(student)}

        return evaluate_with_reasons


def _read_probe(path: Path, eval_texts: Sequence[str]) -> dict[str, Any] | None:
    """The run's probe.json when it still describes a probe of ``eval_texts`` (None: build it anew).

    Damaged or edited files (texts that are not the eval texts at their indices, blank or non-string texts,
    indices out of range or repeated) are not trusted: the probe would measure texts the run does not evaluate.
    """
    try:
        probe = loads(read_text(path))  # never through a link
    except (OSError, ValueError, CorruptRecord):
        return None
    if not isinstance(probe, dict):
        return None
    idx, texts = probe.get("indices"), probe.get("texts")
    if not (isinstance(idx, list) and isinstance(texts, list) and texts and len(idx) == len(texts)):
        return None
    if not all(type(i) is int and 0 <= i < len(eval_texts) for i in idx) or len(set(idx)) != len(idx):
        return None
    if any(not isinstance(t, str) or is_blank(t) or t != eval_texts[i] for i, t in zip(idx, texts)):
        return None
    return probe


def _as_attributions(tokenizer: Any, texts: list[str], scores: torch.Tensor, lengths: torch.Tensor,
                     targets: torch.Tensor, method: str, max_length: int) -> list[Attribution]:
    """Cached score rows back into ``Attribution`` objects (tokens and offsets re-encoded: cheap)."""
    items = encode(tokenizer, texts, max_length)
    out = []
    for i, (e, text) in enumerate(zip(items, texts)):
        n = int(lengths[i])
        if n != len(e.ids):
            raise RuntimeError(f"cached attributions of {text[:40]!r} have {n} tokens but it encodes to "
                               f"{len(e.ids)}: delete {cache_dir() / 'attributions'} and run again")
        out.append(Attribution(text=text, tokens=tuple(tokenizer.convert_ids_to_tokens(e.ids)),
                               token_ids=tuple(e.ids), word_ids=tuple(e.word_ids), offsets=tuple(e.offsets),
                               scores=scores[i, :n].numpy().astype(np.float64), label=int(targets[i]),
                               probs=np.zeros(0), target=int(targets[i]), delta=None, method=method,
                               token_type_ids=None if e.token_type_ids is None else tuple(e.token_type_ids)))
    return out


# --- the alignment loss's per-step plumbing --------------------------------------------------------------------------
class Aligner:
    """The teacher's cached attributions of the training set, and the student's differentiable ones per step.

    Use inside the step's autocast: ``parts["attr"] = aligner.loss(student, batch, idx)``. It runs its own
    forward on at most ``examples`` rows of the batch (the double backward costs ~3 forward-backwards per row,
    so a sub-batch keeps the step affordable), takes gradient x input on the word embeddings with
    ``create_graph=True`` and returns ``losses.attribution_loss`` against the teacher's attributions.
    The student needs eager attention (the SDPA kernels have no double backward). Its attributions are taken
    without dropout (``dropout=False``), as the teacher's were and as the probe measures them; the loss still
    trains the student's weights.
    """

    def __init__(self, teacher: nn.Module, tokenizer: Any, train_texts: Sequence[str], encoded: Sequence[Sequence[int]],
                 *, method: str, n_steps: int, top_k: int | None, examples: int | None, max_length: int,
                 device: torch.device, save: bool = True, dropout: bool = False, log: Callable[[str], None] = print,
                 student_tokenizer: Any = None, progress: Callable[[int, int], None] | None = None):
        t0 = time.time()
        self.scores, lengths, self.targets, cached = teacher_attributions(
            teacher, tokenizer, train_texts, method=method, n_steps=n_steps, max_length=max_length, device=device,
            save=save, log=log, progress=progress, token_counts=[len(e) for e in encoded])
        bad = [i for i, e in enumerate(encoded) if len(e) != int(lengths[i])]
        if bad:
            raise RuntimeError(f"teacher attributions do not line up with the training tokens (example {bad[0]}: "
                               f"{int(lengths[bad[0]])} vs {len(encoded[bad[0]])} tokens); the student must split "
                               "every text as the teacher does: use the teacher's tokenizer for the student")
        self.top_k, self.examples, self.dropout = top_k, examples, dropout
        # the batches hold the student's ids: its own special tokens (a trimmed vocabulary renumbers them)
        self.special = torch.tensor(sorted(set((student_tokenizer or tokenizer).all_special_ids)))
        self.setup_s, self.cached = time.time() - t0, cached

    def student_attributions(self, student: nn.Module, batch: dict[str, torch.Tensor], targets: torch.Tensor
                             ) -> torch.Tensor:
        """Gradient x input (B, S) of the ``targets`` (B,) logits on the word embeddings, differentiable."""
        emb = student.get_input_embeddings()(batch["input_ids"])  # (B, S, H); captum's input_x_gradient layer
        rest = {k: v for k, v in batch.items() if k != "input_ids"}
        logits = student(inputs_embeds=emb, **rest).logits  # (B, C)
        chosen = logits.float().gather(1, targets[:, None]).sum()  # rows are independent: one grad gives all
        (grad,) = torch.autograd.grad(chosen, emb, create_graph=True)  # (B, S, H)
        return (grad.float() * emb.float()).sum(-1)  # (B, S)

    def loss(self, student: nn.Module, batch: dict[str, torch.Tensor], idx: Sequence[int]) -> torch.Tensor:
        """The alignment loss of (the first ``examples`` rows of) a training batch.

        Args:
            student: the student (unwrapped; under DDP its gradients are reduced with the rest of the step's).
            batch: the collated batch on the device: ``input_ids``, ``attention_mask`` (B, S).
            idx: the B training-example indices of the batch rows.
        """
        n = len(idx) if self.examples is None else min(self.examples, len(idx))
        rows = list(idx)[:n]
        batch = {k: v[:n] for k, v in batch.items()}
        width = int(batch["attention_mask"].sum(1).max())  # drop columns that are padding in every kept row
        batch = {k: v[:, :width] for k, v in batch.items()}  # (n, S)
        was_training = student.training
        if not self.dropout:  # the explanation as at inference (the teacher's has no dropout either)
            student.eval()
        try:
            s_attr = self.student_attributions(student, batch, self.targets[rows].to(batch["input_ids"].device))
        finally:
            student.train(was_training)
        t_attr = self.scores[rows, :width]  # (n, S'): cached rows are padded to the longest training text
        if t_attr.shape[1] < width:
            t_attr = torch.nn.functional.pad(t_attr, (0, width - t_attr.shape[1]))
        ids = batch["input_ids"]
        counted = batch["attention_mask"].bool() & ~torch.isin(ids, self.special.to(ids.device))  # (n, S)
        return losses.attribution_loss(s_attr, t_attr.to(s_attr.device), counted, self.top_k)


# --- two students side by side --------------------------------------------------------------------------------------
def compare_students(runs: dict[str, Any] | Sequence[Any], *, max_eval: int | None = 200,
                     method: str = "input_x_gradient", n_steps: int = 16, top_k: int = 5) -> Any:
    """Students of finished runs (e.g. KD with and without ``alpha_attr``) on the same eval texts.

    For each run: its student's accuracy, the teacher's, the reason agreement with its teacher (mean Spearman,
    top-k Jaccard and sign agreement of token attributions, teacher's predicted class) and the faithfulness of
    its own attributions (comprehensiveness: higher is better; sufficiency: lower is better).

    Args:
        runs: run folders / ids / ``Run`` objects, or ``{name: run}``; each run's own eval split is used (the
            first ``max_eval`` texts, None: all).
        method, n_steps: attribution method (``distill_nb.attribution.METHODS``) and IG steps.

    Returns:
        a pandas DataFrame, one row per run.
    """
    import pandas as pd

    from .attribution import attribute, faithfulness
    from .config import DistillConfig
    from .report import accuracy, load_run_models
    from .rundata import run_task
    from .runs import run_dir

    named = dict(runs) if isinstance(runs, dict) else {Path(_path(r, run_dir)).name: r for r in runs}
    rows = []
    for name, run in named.items():
        folder = Path(_path(run, run_dir))
        config = DistillConfig.from_json(folder / "config.json")
        # the run's own eval split and label ids (its seed decides a single file's hold-out; the teacher's
        # label order decides the ids), exactly as train() measured it
        task = run_task(folder, max_train=1, max_eval=max_eval or config.max_eval_examples)
        teacher, t_tok, student, s_tok = load_run_models(folder)
        texts, labels = task.eval.texts, task.eval.labels
        t_attr = attribute(teacher, t_tok, texts, method, n_steps=n_steps, max_length=config.max_length)
        s_targets = [None if a.nonfinite else a.target for a in t_attr]  # a NaN/inf teacher row: the student's own
        s_attr = attribute(student, s_tok, texts, method, s_targets, n_steps=n_steps, max_length=config.max_length)
        agree = [agreement(*align(t, s)[2:], top_k) for t, s in zip(t_attr, s_attr)]
        faith = faithfulness(student, s_tok, s_attr, top_k=top_k)
        rows.append({"run": name, "alpha_attr": config.alpha_attr,
                     "accuracy": accuracy(student, s_tok, texts, labels, max_length=config.max_length),
                     "teacher_accuracy": accuracy(teacher, t_tok, texts, labels, max_length=config.max_length),
                     "reason_spearman": _nanmean(agree, "spearman"), "reason_topk": _nanmean(agree, "topk_jaccard"),
                     "reason_sign": _nanmean(agree, "sign_agreement"),
                     "comprehensiveness": float(np.mean([f.comprehensiveness for f in faith])),
                     "sufficiency": float(np.mean([f.sufficiency for f in faith])), "examples": len(texts),
                     "method": method})
    return pd.DataFrame(rows).set_index("run")


def _nanmean(rows: list[dict[str, float]], key: str) -> float:
    values = [r[key] for r in rows if not math.isnan(r[key])]
    return float(np.mean(values)) if values else math.nan


def _path(run: Any, run_dir: Callable[[str], Path]) -> Path:
    if hasattr(run, "path"):
        return Path(run.path)
    if isinstance(run, (str, os.PathLike)) and Path(run).is_dir():
        return Path(run)
    return run_dir(str(run))
