"""Evaluation inside a run: the classifier's eval record, masked-LM batches and their eval record.

Each record is what ``metrics.jsonl`` holds for ``split="eval"``: student and teacher accuracy, retention,
prediction agreement, eval loss and the student-teacher KL (T=1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import losses
from .models import predict_logits
from .safeio import number


def _ratio(acc: float, teacher_acc: float | None) -> float | None:
    """Retention: None when the teacher's accuracy is 0, missing or not a number."""
    return acc / teacher_acc if number(acc) is not None and (number(teacher_acc) or 0) > 0 else None


def evaluate_classifier(student: nn.Module, encoded: list[list[int]], pad_id: int, labels: torch.Tensor,
              teacher_logits: torch.Tensor, teacher_acc: float, device: torch.device, autocast: Callable,
              step: int) -> dict[str, Any]:
    logits = predict_logits(student, encoded, pad_id, device, autocast)
    pred = logits.argmax(-1)
    acc = (pred == labels).float().mean().item()
    return {"step": step, "split": "eval", "accuracy": acc, "teacher_accuracy": teacher_acc,
            "retention": _ratio(acc, teacher_acc),
            "agreement": (pred == teacher_logits.argmax(-1)).float().mean().item(),
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
                  autocast: Callable, step: int) -> dict[str, Any]:
    """Masked-token accuracy of student and teacher, their agreement and KL (T=1) at the masked positions.

    The teacher runs again at each evaluation: its vocabulary logits are too large to keep between them.
    """
    student.eval()
    total = dict.fromkeys(("correct", "teacher_correct", "agreement", "kd", "ce"), 0.0)
    n = 0
    for batch, labels in batches:
        batch, labels = {k: v.to(device) for k, v in batch.items()}, labels.to(device)
        masked = labels != -100  # (B, S)
        with autocast():
            s_logits = student(**batch).logits[masked].float()  # (M, V)
            t_logits = teacher(**batch).logits[masked].float()
        y, s_pred, t_pred, m = labels[masked], s_logits.argmax(-1), t_logits.argmax(-1), int(masked.sum())
        total["correct"] += (s_pred == y).sum().item()
        total["teacher_correct"] += (t_pred == y).sum().item()
        total["agreement"] += (s_pred == t_pred).sum().item()
        total["kd"] += losses.kd_loss(s_logits, t_logits, 1.0).item() * m
        total["ce"] += losses.ce_loss(s_logits, y).item() * m
        n += m
    mean = {k: v / n if n else float("nan") for k, v in total.items()}
    acc, teacher_acc = mean["correct"], mean["teacher_correct"]
    return {"step": step, "split": "eval", "accuracy": acc, "teacher_accuracy": teacher_acc,
            "retention": _ratio(acc, teacher_acc),
            "agreement": mean["agreement"], "eval_loss": mean["ce"], "kd_to_teacher": mean["kd"],
            "masked_tokens": n, "time": time.time()}
