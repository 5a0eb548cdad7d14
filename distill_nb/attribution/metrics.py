"""Aligning two attributions, agreement metrics between them, and faithfulness of one model.

Alignment: token level when both models tokenised the text identically; otherwise word level, where
words are the common character segments of both tokenisers' words and token scores are summed per word.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .methods import (
    Attribution,
    Encoded,
    batch_sizes,
    check_positive,
    collate,
    forward_rows,
    logits_fn,
    pad_id,
    prepared,
    segment_ids,
)

# --------------------------------------------------------------------------- alignment


def common_segments(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The finest character segments that are unions of words on both sides.

    Args:
        a, b: word character spans ``(start, end)`` from two tokenisers of the same text.

    Returns:
        Sorted, disjoint spans; overlapping words from either side are merged into one segment
        (e.g. ``it's`` as one word on one side and ``it ' s`` on the other gives one segment).
    """
    merged: list[list[int]] = []
    for start, end in sorted(list(a) + list(b)):
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def segment_scores(attr: Attribution, segments: Sequence[tuple[int, int]]) -> np.ndarray:
    """Token scores (T,) summed into ``segments`` by each token's start offset -> (n_segments,); a token that
    starts in no segment (past the text both models read) is left out."""
    if not segments:
        return np.zeros(0)
    starts = np.array([s for s, _ in segments])
    ends = np.array([e for _, e in segments])
    keep = ~attr.special
    tok_start = np.array([s for s, _ in attr.offsets])[keep]
    seg = np.clip(np.searchsorted(starts, tok_start, side="right") - 1, 0, None)
    inside = (tok_start >= starts[seg]) & (tok_start < ends[seg])  # tokens past the segments (unread) drop out
    return np.bincount(seg[inside], weights=attr.scores[keep][inside], minlength=len(segments))


def _read_end(attr: Attribution) -> int:
    """Character where the text ``attr``'s model read ends (the end of its last word; 0 with no words)."""
    return max((e for _, e in attr.word_spans()), default=0)


def word_segments(teacher: Attribution, student: Attribution) -> tuple[list[tuple[int, int]], int]:
    """The common word segments both models read, and how many segments only one of them read.

    When the two tokenisers truncate at different places (``max_length`` tokens of different lengths), the
    words past the shorter one's end, and a word it cut in half, were read by one model only: comparing them
    would score the other model 0 there. Those segments are left out and counted instead.
    """
    segments = common_segments(teacher.word_spans(), student.word_spans())
    t_end, s_end = _read_end(teacher), _read_end(student)
    if t_end == s_end:
        return segments, 0
    end = min(t_end, s_end)
    kept = [(s, e) for s, e in segments if e <= end]  # a segment crossing ``end`` was read in part by one side
    return kept, len(segments) - len(kept)


def unread_units(teacher: Attribution, student: Attribution) -> int:
    """Word units :func:`align` leaves out because only one model read them (different truncation)."""
    return 0 if teacher.token_ids == student.token_ids else word_segments(teacher, student)[1]


def align(teacher: Attribution, student: Attribution) -> tuple[str, list[str], np.ndarray, np.ndarray]:
    """Put two attributions of the same text on common units.

    Returns:
        (alignment, units, teacher_scores (U,), student_scores (U,)) with alignment "token" when the
        token ids are identical (specials dropped) and "word" otherwise; word units cover only the text both
        models read (see :func:`word_segments`).
    """
    if teacher.token_ids == student.token_ids:
        keep = ~teacher.special
        return "token", [t for t, k in zip(teacher.tokens, keep) if k], teacher.scores[keep], student.scores[keep]
    segments, _ = word_segments(teacher, student)
    units = [teacher.text[s:e] for s, e in segments]
    return "word", units, segment_scores(teacher, segments), segment_scores(student, segments)


# --------------------------------------------------------------------------- agreement


def _l1_normalised(x: np.ndarray) -> np.ndarray:
    norm = np.abs(x).sum()
    return x / norm if norm > 0 else np.zeros_like(x)


def top_indices(scores: np.ndarray, k: int) -> set[int]:
    """Indices of the ``k`` largest (most target-supporting) scores.

    Ties are broken by position, so for a constant vector (all-zero, a single unit) this is only the first
    ``k`` units: :func:`agreement` gives NaN for such a vector instead of comparing tie orders.
    """
    return set(np.argsort(-np.asarray(scores), kind="stable")[:k].tolist())


AGREEMENT_METRICS = ("spearman", "kendall", "topk_jaccard", "sign_agreement", "l1_distance")


def agreement(t: np.ndarray, s: np.ndarray, top_k: int) -> dict[str, float]:
    """Agreement between two aligned score vectors (U,).

    A metric is NaN where it would not measure agreement (so means over examples, which skip NaN, are not
    inflated by it); identical vectors count as perfect agreement (1.0, l1_distance 0.0) wherever the metric
    is defined. Every metric is NaN when either vector holds a NaN or inf (a model with non-finite outputs):
    two NaN vectors are not "identical", and NaN is no sign.

    Returns:
        spearman, kendall and topk_jaccard (of the ``top_k`` highest scores): NaN with fewer than 2 units or
        when either vector is constant, e.g. an all-zero (collapsed) student, whose "top k" would be its
        tie order; topk_jaccard is also NaN with ``top_k`` or fewer units, where both top-k sets are every
        unit and the overlap is 1.0 whatever the scores; sign_agreement (fraction of units with the same sign): NaN with no units or when either
        vector is all zero (it has no signs); l1_distance (between L1-normalised vectors, in [0, 2]): NaN
        with no units.
    """
    from scipy import stats

    t, s = np.asarray(t, dtype=float), np.asarray(s, dtype=float)
    if not (np.isfinite(t).all() and np.isfinite(s).all()):
        return dict.fromkeys(AGREEMENT_METRICS, math.nan)
    n = len(t)
    same = n >= 1 and np.array_equal(t, s)
    ranked = n >= 2 and np.ptp(t) > 0 and np.ptp(s) > 0
    rho = tau = jaccard = sign = l1 = math.nan
    if ranked:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = float(stats.spearmanr(t, s).statistic)
            tau = float(stats.kendalltau(t, s).statistic)
        if n > top_k:
            a, b = top_indices(t, top_k), top_indices(s, top_k)
            jaccard = len(a & b) / len(a | b)
    elif same:
        rho = tau = 1.0
        jaccard = 1.0 if n > top_k else math.nan
    if same:
        sign, l1 = 1.0, 0.0
    elif n:
        if np.any(t != 0) and np.any(s != 0):
            sign = float(np.mean(np.sign(t) == np.sign(s)))
        l1 = float(np.abs(_l1_normalised(t) - _l1_normalised(s)).sum())
    return {"spearman": rho, "kendall": tau, "topk_jaccard": jaccard, "sign_agreement": sign, "l1_distance": l1}


# --------------------------------------------------------------------------- faithfulness


@dataclass(frozen=True, eq=False)
class Faithfulness:
    """How much one model's prediction depends on the tokens its attribution ranks highest.

    Attributes:
        comprehensiveness: p(target | x) - p(target | x with the top-k tokens replaced by [PAD]);
            high = the top tokens were needed.
        sufficiency: p(target | x) - p(target | only the top-k tokens kept, others [PAD]);
            low = the top tokens alone are enough.
        fractions: float array (S + 1,), fraction of tokens removed at each deletion step (0 ... 1).
        deletion: float array (S + 1,), p(target) after removing that fraction of top tokens.
        top_k: tokens removed/kept for the two scores.
    """

    comprehensiveness: float
    sufficiency: float
    fractions: np.ndarray = field(repr=False)
    deletion: np.ndarray = field(repr=False)
    top_k: int

    @property
    def deletion_auc(self) -> float:
        """Area under the deletion curve (lower = more faithful ranking)."""
        return float(np.trapezoid(self.deletion, self.fractions))


def _finite_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax of (N, C) logits; NaN for a row holding a NaN or inf (softmax would turn a -inf into a clean 0)."""
    return logits.softmax(-1).masked_fill(~torch.isfinite(logits).all(-1, keepdim=True), math.nan)


def faithfulness(model: Any, tokenizer: Any, attributions: Sequence[Attribution], *, top_k: int = 5,
                 steps: int = 10, batch_size: int | None = None, internal_batch_size: int | None = None,
                 device: Any = None) -> list[Faithfulness]:
    """Comprehensiveness, sufficiency and deletion curve of each attribution, batched.

    All perturbations of ``batch_size`` texts (2 + steps + 1 per text) go through the model together,
    ``internal_batch_size`` sequences per forward pass. Removed tokens become [PAD] (the integrated
    gradients baseline); [CLS]/[SEP], the attention mask and every token's position are kept (RoBERTa-style
    models get explicit position ids, see ``logits_fn``).

    Args:
        model, tokenizer: the model that produced ``attributions`` (their token ids are reused).
        attributions: N results of ``attribute`` for this model.
        top_k: tokens removed (comprehensiveness) or kept (sufficiency); capped at each text's length.
        steps: deletion-curve steps; fractions ``0, 1/steps, ..., 1`` of the tokens removed, best first.

    Returns:
        N ``Faithfulness`` in the order of ``attributions``; NaN scores and curve for an attribution of a text
        the model made no prediction on (``nonfinite``), or whose perturbed texts give NaN/inf logits.
    """
    check_positive(top_k=top_k, steps=steps, batch_size=batch_size, internal_batch_size=internal_batch_size)
    if not attributions:
        raise ValueError("attributions is empty: pass the results of attribute()")
    pad = pad_id(tokenizer)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    out: list[Faithfulness] = []
    with prepared(model, device) as dev:
        batch_size, internal_batch_size = batch_sizes(dev, batch_size, internal_batch_size)
        fn = logits_fn(model, keep_positions=True)  # removed tokens become [PAD]; the rest keep their positions
        for start in range(0, len(attributions), batch_size):
            chunk = attributions[start:start + batch_size]
            items = [Encoded(list(a.token_ids), list(a.offsets), list(a.word_ids),
                             None if a.token_type_ids is None else list(a.token_type_ids)) for a in chunk]
            ids, mask, words, _ = collate(items, pad, dev)
            types = segment_ids(model, items, dev)  # a text pair is read with its segments, as attribute() read it
            n_b, n_t = ids.shape
            real = words >= 0  # (B, T)
            scores = torch.full((n_b, n_t), -math.inf, device=dev)
            for b, a in enumerate(chunk):
                scores[b, :len(a.scores)] = torch.as_tensor(a.scores, dtype=torch.float32)
            scores = torch.where(real, scores, torch.full_like(scores, -math.inf))
            rank = scores.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # (B, T), 0 = best
            n_real = real.sum(1)  # (B,)
            k = n_real.clamp(max=top_k)
            # Number of top tokens removed in each variant: (B, V) with V = 2 + steps + 1.
            n_del = torch.round(torch.as_tensor(fractions, device=dev)[None, :] * n_real[:, None]).long()
            remove = torch.cat([
                (rank < k[:, None])[:, None, :],                       # comprehensiveness
                ((rank >= k[:, None]) & real)[:, None, :],              # sufficiency
                rank[:, None, :] < n_del[:, :, None],                   # deletion steps
            ], dim=1) & real[:, None, :]  # (B, V, T)
            n_v = remove.shape[1]
            var_ids = torch.where(remove, torch.full_like(remove, pad, dtype=ids.dtype), ids[:, None, :])
            var_mask = mask[:, None, :].expand(n_b, n_v, n_t)
            var_types = None if types is None else types[:, None, :].expand(n_b, n_v, n_t).reshape(-1, n_t)
            logits = forward_rows(fn, var_ids.reshape(-1, n_t), var_mask.reshape(-1, n_t), internal_batch_size,
                                  var_types).float()  # (B * V, C)
            probs = _finite_softmax(logits).reshape(n_b, n_v, -1)
            target = torch.tensor([max(a.target, 0) for a in chunk], device=dev)  # no target: NaN'd below
            p = probs.gather(2, target[:, None, None].expand(n_b, n_v, 1))[..., 0].cpu().numpy()  # (B, V)
            for b, a in enumerate(chunk):
                if a.nonfinite or a.target < 0:  # no prediction to remove tokens from: no faithfulness either
                    p[b] = np.nan
                full = p[b, 2]  # deletion step 0 = the unchanged text
                out.append(Faithfulness(comprehensiveness=float(full - p[b, 0]),
                                        sufficiency=float(full - p[b, 1]), fractions=fractions,
                                        deletion=p[b, 2:].copy(), top_k=int(k[b])))
    return out
