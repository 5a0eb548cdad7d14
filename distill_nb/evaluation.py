"""Evaluation inside a run: the classifier's eval record, masked-LM batches and their eval record.

Each record is what ``metrics.jsonl`` holds for ``split="eval"``: student and teacher accuracy, retention,
prediction agreement, eval loss and the student-teacher KL (T=1).

A prediction from a logit row with a NaN or infinite value is no prediction: it counts as *wrong* for accuracy
and as a *disagreement* for agreement (never as class 0, which ``argmax`` over NaN would pick), and the record
says how many rows that was (``nonfinite``).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from . import losses
from .models import accepts_token_types, predict_logits
from .safeio import number

NO_PREDICTION = -1  # the class of a non-finite logit row: equal to no label and no other prediction


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """Predicted class per row of ``logits`` (..., C) -> (...); ``NO_PREDICTION`` where the row has a NaN/inf."""
    pred = logits.argmax(-1)
    return pred.masked_fill(~torch.isfinite(logits).all(-1), NO_PREDICTION)


def accuracy_of(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``pred`` equal to ``labels``; a ``NO_PREDICTION`` counts as wrong (NaN for no rows)."""
    return ((pred == labels) & (pred != NO_PREDICTION)).float().mean().item()


def agreement_of(pred: torch.Tensor, other: torch.Tensor) -> float:
    """Fraction of equal predictions; two ``NO_PREDICTION`` rows do not agree (NaN for no rows)."""
    return ((pred == other) & (pred != NO_PREDICTION)).float().mean().item()


def nonfinite_rows(logits: torch.Tensor) -> int:
    """Rows of ``logits`` (N, C) holding a NaN or infinite value."""
    return int((~torch.isfinite(logits).all(-1)).sum())


class BrokenTeacher(ValueError):
    """The teacher's own outputs are NaN/inf: no student can learn from it, and no metric against it means
    anything (a run never completes on one)."""


def check_teacher_outputs(values: torch.Tensor, where: str, precision: str) -> torch.Tensor:
    """``values`` (N, ...) as given, or :class:`BrokenTeacher` naming how many rows hold a NaN/inf and the fix.

    ``where``: which texts, e.g. "eval"; ``precision``: the precision the teacher ran in (fp32, bf16, fp16).
    """
    bad = ~torch.isfinite(values.reshape(len(values), -1)).all(-1) if len(values) else torch.zeros(0, dtype=bool)
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise BrokenTeacher(
            f"the teacher's outputs are not finite (NaN or inf) on {len(rows)} of {len(values)} {where} texts "
            f"(the first: text {rows[0]}), in {precision}: the teacher itself is broken, not the student's "
            "training. Its weights may hold NaN/inf, or its numbers overflow in this precision. Check the teacher "
            "(distill_nb.load_teacher(path) and one forward pass), prepare or pick another one"
            + (", or run with precision='fp32'" if precision != "fp32" else "") + "; nothing was trained on it.")
    return values


def _class_id(value: Any) -> int | None:
    """``value`` as a class id when it is a whole number (an int, or a float like 1.0: Python, numpy, a 0-d
    tensor), else None (also for bools, strings, fractions, NaN and infinities)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.dtype.is_complex \
            and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)  # pandas and numpy store ids as floats (1.0) once a column had a NaN
    return None


def check_labels(labels: Any, n: int, n_classes: int | None = None) -> list[int]:
    """``labels`` as a list of ``n`` class ids, or a ValueError/TypeError saying what is wrong and what to pass.

    Accepts a list, tuple, numpy array, tensor or pandas Series of whole numbers (ints, or floats such as 1.0).
    Refuses another length (a single label used to broadcast to every text), strings (also '1': ids are numbers,
    names are mapped to ids first), floats with a fraction (1.7 used to be truncated to 1), NaN, infinities,
    bools and, when ``n_classes`` is known, ids outside ``0..n_classes - 1``.
    """
    hint = "pass one integer class id per text, e.g. labels=[0, 1, ...] (map names to ids first)"
    if isinstance(labels, (str, bytes, Mapping)) or not hasattr(labels, "__iter__"):
        raise TypeError(f"labels={labels!r} ({type(labels).__name__}) is not a list of class ids: {hint}")
    values = list(labels.tolist() if isinstance(labels, torch.Tensor) else labels)
    if len(values) != n:
        raise ValueError(f"labels has {len(values)} entries for {n} texts: {hint}")
    out = []
    for i, v in enumerate(values):
        index = _class_id(v)
        if index is None:
            raise ValueError(f"labels[{i}]={v!r} ({type(v).__name__}) is not a class id: {hint}")
        if n_classes is not None and not 0 <= index < n_classes:
            raise ValueError(f"labels[{i}]={index} is out of range: the model has {n_classes} classes "
                             f"(0..{n_classes - 1}); {hint}")
        out.append(index)
    return out


def _ratio(acc: float, teacher_acc: float | None) -> float | None:
    """Retention: None when the teacher's accuracy is 0, missing or not a number."""
    return acc / teacher_acc if number(acc) is not None and (number(teacher_acc) or 0) > 0 else None


def evaluate_classifier(student: nn.Module, encoded: list[list[int]], pad_id: int, labels: torch.Tensor,
              teacher_logits: torch.Tensor, teacher_acc: float, device: torch.device, autocast: Callable,
              step: int) -> dict[str, Any]:
    """The student's eval record; a non-finite logit row counts as wrong and as a disagreement (``nonfinite``)."""
    logits = predict_logits(student, encoded, pad_id, device, autocast)
    pred = predictions(logits)
    acc = accuracy_of(pred, labels)
    return {"step": step, "split": "eval", "accuracy": acc, "teacher_accuracy": teacher_acc,
            "retention": _ratio(acc, teacher_acc),
            "agreement": agreement_of(pred, predictions(teacher_logits)), "nonfinite": nonfinite_rows(logits),
            "eval_loss": losses.ce_loss(logits, labels).item(),
            "kd_to_teacher": losses.kd_loss(logits, teacher_logits, 1.0).item(), "time": time.time()}


def mlm_batch(batch: dict[str, torch.Tensor], tokenizer: Any, prob: float, seed: int, at_least_one: bool = False
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Mask a collated batch for masked-LM distillation; the same ``seed`` gives the same mask.

    ``seed`` is e.g. ``hash((config.seed, step, rank))``: a tuple of ints hashes alike in every process
    (PYTHONHASHSEED salts only str/bytes). ``at_least_one`` (evaluation): a row where the draw masked nothing
    gets one of its maskable tokens masked, so short texts and a small ``prob`` still measure something.

    Returns:
        (the batch with [MASK] at the chosen real, non-special tokens; labels (B, S): the original ids there,
        -100 elsewhere).
    """
    ids = batch["input_ids"]  # (B, S)
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))  # (B, S): [CLS], [SEP], ... never masked
    generator = torch.Generator().manual_seed(seed % 2**63)
    masked_ids, masked = losses.mask_tokens(ids, batch["attention_mask"], tokenizer.mask_token_id, special,
                                            prob, generator)
    if at_least_one:
        eligible = batch["attention_mask"].bool() & ~special  # (B, S)
        empty = ~masked.any(-1) & eligible.any(-1)  # (B,) rows with something to mask but nothing masked
        if empty.any():
            scores = torch.rand(ids.shape, generator=generator).masked_fill(~eligible, -1.0)
            pick = torch.zeros_like(masked).scatter_(1, scores.argmax(-1, keepdim=True), True) & empty[:, None]
            masked = masked | pick
            masked_ids = ids.masked_fill(masked, tokenizer.mask_token_id)
    return {**batch, "input_ids": masked_ids}, ids.masked_fill(~masked, -100)


@torch.no_grad()
def evaluate_mlm(student: nn.Module, teacher: nn.Module,
                  batches: list[tuple[dict[str, torch.Tensor], torch.Tensor]], device: torch.device,
                  autocast: Callable, step: int, precision: str = "fp32") -> dict[str, Any]:
    """Masked-token accuracy of student and teacher, their agreement and KL (T=1) at the masked positions.

    The teacher runs again at each evaluation: its vocabulary logits are too large to keep between them. A
    non-finite teacher logit is :class:`BrokenTeacher` (``precision``: what the teacher ran in, for its message).
    """
    student.eval()
    total = dict.fromkeys(("correct", "teacher_correct", "agreement", "kd", "ce", "nonfinite"), 0.0)
    n = 0
    t_types = accepts_token_types(teacher)
    for batch, labels in batches:
        batch, labels = {k: v.to(device) for k, v in batch.items()}, labels.to(device)
        masked = labels != -100  # (B, S)
        with autocast():
            s_logits = student(**batch).logits[masked].float()  # (M, V)
            t_logits = teacher(**{k: v for k, v in batch.items()  # segment ids only for a teacher that takes them
                                  if t_types or k != "token_type_ids"}).logits[masked].float()
        check_teacher_outputs(t_logits, "masked eval", precision)
        y, s_pred, t_pred, m = labels[masked], predictions(s_logits), predictions(t_logits), int(masked.sum())
        total["correct"] += ((s_pred == y) & (s_pred != NO_PREDICTION)).sum().item()
        total["teacher_correct"] += ((t_pred == y) & (t_pred != NO_PREDICTION)).sum().item()
        total["agreement"] += ((s_pred == t_pred) & (s_pred != NO_PREDICTION)).sum().item()
        total["nonfinite"] += nonfinite_rows(s_logits)
        total["kd"] += losses.kd_loss(s_logits, t_logits, 1.0).item() * m
        total["ce"] += losses.ce_loss(s_logits, y).item() * m
        n += m
    nonfinite = int(total.pop("nonfinite"))
    mean = {k: v / n if n else float("nan") for k, v in total.items()}
    acc, teacher_acc = mean["correct"], mean["teacher_correct"]
    return {"step": step, "split": "eval", "accuracy": acc, "teacher_accuracy": teacher_acc,
            "retention": _ratio(acc, teacher_acc),
            "agreement": mean["agreement"], "eval_loss": mean["ce"], "kd_to_teacher": mean["kd"],
            "masked_tokens": n, "nonfinite": nonfinite, "time": time.time()}
