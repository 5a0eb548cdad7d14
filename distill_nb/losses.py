"""Distillation losses as pure functions. Shapes: B batch, C classes, S tokens, H width, A heads, V vocab.

Every loss returns a scalar tensor; a batch where everything is masked gives 0 (not NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Soft-label KL(teacher ‖ student) at temperature T, times T² (Hinton et al.) so gradients keep scale.

    Args:
        student_logits: (B, C) or (N, C) rows to distil.
        teacher_logits: same shape as ``student_logits``.
        temperature: finite T > 0; higher T softens both distributions.
        mask: optional (B,) bool/0-1, rows that count.

    Returns:
        scalar: mean over counted rows of sum_c p_t log(p_t / p_s) · T². Classes the teacher gives
        probability exactly 0 (a -inf logit, or underflow) contribute 0 (the limit of p log p), not NaN.
    """
    if not 0 < temperature < math.inf:  # NaN fails every comparison
        raise ValueError(f"temperature={temperature} is invalid: use a finite temperature > 0 (1-4 is usual).")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, C)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (B, C)
    # A class with teacher probability exactly 0 (a -inf logit) must add 0 (p log p -> 0), but kl_div computes
    # exp(-inf) * (-inf - log_s) = 0 * -inf = NaN. With log p_t floored at the lowest finite float it is 0 times a
    # finite number (gradients 0 too). A no-op for finite logits: log_softmax stays far above that floor. In
    # place when no gradient needs log_t: masked-LM KD has (B*S, V) rows, no extra copy of them.
    floor = torch.finfo(log_t.dtype).min
    log_t = log_t.clamp_min(floor) if log_t.requires_grad else log_t.clamp_min_(floor)
    per_row = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)  # (B,)
    return _masked_mean(per_row, mask) * temperature**2


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Hard-label cross-entropy. logits (B, C), labels (B,) with ``ignore_index`` rows skipped."""
    if (labels != ignore_index).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)


def hidden_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor,
                kind: str = "cosine", projection: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> torch.Tensor:
    """Match one student layer's token states to one teacher layer's.

    Args:
        student_hidden: (B, S, Hs).
        teacher_hidden: (B, S, Ht); Ht may differ from Hs only with a ``projection`` mapping Hs -> Ht.
        attention_mask: (B, S), 1 for real tokens.
        kind: "cosine" (1 - cosine similarity per token, as DistilBERT) or "mse".

    Returns:
        scalar: mean over real tokens.
    """
    if projection is not None:
        student_hidden = projection(student_hidden)
    if student_hidden.shape[-1] != teacher_hidden.shape[-1]:
        raise ValueError(f"hidden widths differ (student {student_hidden.shape[-1]}, teacher "
                         f"{teacher_hidden.shape[-1]}): pass a projection (train() adds a learned one).")
    s, t = student_hidden.float(), teacher_hidden.float()
    if kind == "cosine":
        per_token = 1 - F.cosine_similarity(s, t, dim=-1)  # (B, S)
    elif kind == "mse":
        per_token = (s - t).pow(2).mean(-1)  # (B, S)
    else:
        raise ValueError(f"kind={kind!r}: use 'cosine' or 'mse'.")
    return _masked_mean(per_token, attention_mask)


def hidden_states_loss(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
                       layer_map: Sequence[int], attention_mask: torch.Tensor, kind: str = "cosine",
                       projections: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None
                       ) -> torch.Tensor:
    """Average :func:`hidden_loss` over student layers j ↔ teacher layers ``layer_map[j]``.

    Args:
        student_states: per-layer outputs, L_s tensors (B, S, Hs) (embeddings excluded).
        teacher_states: per-layer outputs, L_t tensors (B, S, Ht).
        layer_map: L_s teacher indices in [0, L_t).
        projections: one callable per student layer when widths differ.
    """
    if len(layer_map) != len(student_states):
        raise ValueError(f"layer_map has {len(layer_map)} entries for {len(student_states)} student layers.")
    bad = [i for i in layer_map if not 0 <= i < len(teacher_states)]
    if bad:
        raise ValueError(f"layer_map {list(layer_map)} points at teacher layers {bad}, but the teacher has "
                         f"layers 0..{len(teacher_states) - 1}.")
    losses = [hidden_loss(s, teacher_states[i], attention_mask, kind, projections[j] if projections else None)
              for j, (s, i) in enumerate(zip(student_states, layer_map))]
    return torch.stack(losses).mean()


def attention_loss(student_attn: torch.Tensor, teacher_attn: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) between attention distributions of real query tokens (MiniLM/TinyBERT style).

    Args:
        student_attn: (B, As, S, S) softmax attention of one student layer.
        teacher_attn: (B, At, S, S); when As != At both are averaged over heads first.
        attention_mask: (B, S).

    Returns:
        scalar: mean over heads and real query tokens of the KL over keys.
    """
    if student_attn.shape[1] != teacher_attn.shape[1]:
        student_attn, teacher_attn = student_attn.mean(1, keepdim=True), teacher_attn.mean(1, keepdim=True)
    eps = 1e-8
    s, t = student_attn.float().clamp_min(eps), teacher_attn.float().clamp_min(eps)
    per_query = (t * (t.log() - s.log())).sum(-1).mean(1)  # (B, S): KL over keys, mean over heads
    return _masked_mean(per_query, attention_mask)


def attribution_loss(student_attr: torch.Tensor, teacher_attr: torch.Tensor, mask: torch.Tensor,
                     top_k: int | None = None) -> torch.Tensor:
    """Pull the student's token attributions towards the teacher's (AD-KD style): MSE of L2-normalised vectors.

    Each example's attributions over its counted tokens are divided by their L2 norm, so only the *shape* of
    the explanation is matched, not its scale (the two models' logits differ in scale).

    Args:
        student_attr: (B, S) token attributions of the student (differentiable, e.g. gradient x input).
        teacher_attr: (B, S) the teacher's attributions of the same tokens (a constant).
        mask: (B, S) bool/0-1, tokens that count: real, non-special tokens.
        top_k: if set, only each example's ``top_k`` tokens with the largest ``|teacher_attr|`` count.

    Returns:
        scalar: mean over examples with a counted token of ``sum_s (s/|s| - t/|t|)^2`` (in [0, 4]; 0 when the
        normalised vectors are equal); 0 when nothing is counted.
    """
    keep = mask.bool()
    t, s = teacher_attr.float().detach(), student_attr.float()
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k={top_k} must be >= 1 (or None for every token).")
        magnitude = t.abs().masked_fill(~keep, -1.0)  # (B, S): uncounted tokens never make the top k
        top = magnitude.topk(min(top_k, t.shape[1]), dim=1).indices  # (B, k)
        keep = keep & torch.zeros_like(keep).scatter_(1, top, True)
    s, t = s * keep, t * keep
    s = s / s.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (B, S); an all-zero row stays zero
    t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    per_example = (s - t).pow(2).sum(1)  # (B,)
    return _masked_mean(per_example, keep.any(1))


def mlm_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, masked: torch.Tensor,
                temperature: float = 2.0) -> torch.Tensor:
    """Task-agnostic distillation: KD on the vocabulary distribution at masked positions.

    Args:
        student_logits: (B, S, V) masked-LM logits.
        teacher_logits: (B, S, V).
        masked: (B, S) bool, the positions that were masked.
    """
    b, s, v = student_logits.shape
    return kd_loss(student_logits.reshape(b * s, v), teacher_logits.reshape(b * s, v), temperature,
                   masked.reshape(b * s))  # (B*S, V) rows, masked positions only


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_id: int, special: torch.Tensor,
                prob: float = 0.15, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking of real, non-special tokens. Returns (masked ids (B, S), masked positions (B, S))."""
    chosen = (torch.rand(input_ids.shape, generator=generator) < prob) & attention_mask.bool() & ~special
    return input_ids.masked_fill(chosen, mask_id), chosen


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean() if values.numel() else values.sum() * 0.0
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)
