"""Teacher vs student: ``compare()`` a few texts, ``sweep()`` a data set and rank where they diverge."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..evaluation import NO_PREDICTION
from .methods import (
    Attribution,
    attribute,
    check_gradients,
    check_ids,
    check_max_length,
    check_method,
    check_positive,
    check_readable,
    check_targets,
    check_texts,
    collate,
    encode,
    forward_rows,
    logits_fn,
    pad_id,
    prepared,
)
from .metrics import Faithfulness, agreement, align, faithfulness, unread_units

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


@dataclass(frozen=True, eq=False)
class Comparison:
    """Teacher and student attributions of one text, aligned, with agreement metrics.

    A model whose logits on the text hold a NaN or inf made no prediction there (``nonfinite`` names it): the
    predictions disagree (prediction_agree 0.0), its scores and every attribution metric are NaN.

    Attributes:
        teacher, student: the two attributions (same target class; where the teacher made no prediction and no
            target was given, the student explains its own prediction).
        alignment: "token" (identical tokenisation) or "word" (token scores summed per common word).
        units: the aligned tokens or words, length U.
        teacher_scores, student_scores: float arrays (U,).
        metrics: spearman, kendall, topk_jaccard, sign_agreement, l1_distance, prediction_agree (1.0/0.0; 0.0
            when either model made no prediction), prob_diff (|teacher - student| probability of the target; NaN
            without one) and, when computed,
            {teacher,student}_{comprehensiveness,sufficiency,deletion_auc}.
        top_k: k used for the top-k overlap and faithfulness.
        teacher_faithfulness, student_faithfulness: per-model faithfulness, or None.
        unread_units: word units left out of ``units`` and the metrics because only one model read them (the
            two tokenisers truncated the text at different places); 0 at token level.
    """

    teacher: Attribution
    student: Attribution
    alignment: str
    units: tuple[str, ...]
    teacher_scores: np.ndarray = field(repr=False)
    student_scores: np.ndarray = field(repr=False)
    metrics: dict[str, float]
    top_k: int
    teacher_faithfulness: Faithfulness | None = field(default=None, repr=False)
    student_faithfulness: Faithfulness | None = field(default=None, repr=False)
    unread_units: int = 0

    @property
    def text(self) -> str:
        return self.teacher.text

    @property
    def nonfinite(self) -> tuple[str, ...]:
        """The models ("teacher", "student") whose logits on this text held a NaN or inf; () when both are finite."""
        return tuple(name for name, a in (("teacher", self.teacher), ("student", self.student)) if a.nonfinite)

    def plot(self) -> Figure:
        """Side-by-side heatmaps: teacher row, student row, teacher - student row. Returns the Figure."""
        from .render import plot_comparison

        return plot_comparison(self)

    def scatter(self, ax: Any = None) -> Figure:
        """Teacher vs student normalised attribution per unit. Returns the Figure."""
        from .render import plot_scatter

        return plot_scatter([self], ax=ax)

    def to_html(self) -> str:
        """Self-contained HTML table (teacher, student, diff rows; no scripts) for notebook display."""
        from .render import comparison_html

        return comparison_html(self)

    def _repr_html_(self) -> str:
        return self.to_html()


def _same_vocab(a: Any, b: Any) -> bool:
    return a is b or (type(a) is type(b) and a.get_vocab() == b.get_vocab())


def _check_vocabularies(teacher: Any, student: Any, t_tok: Any, s_tok: Any, texts: list[str], max_length: int,
                        student_tokenizer_given: bool) -> None:
    """Every text has tokens for both tokenizers, and their ids fit each model's word embeddings: a ValueError
    naming the tokenizer and the fix, before any forward pass (a misfit id fails as a bare IndexError in it)."""
    t_items, s_items = encode(t_tok, texts, max_length), encode(s_tok, texts, max_length)
    check_readable(t_items, texts, "the teacher's tokenizer")
    check_readable(s_items, texts, "the student's tokenizer")
    check_ids(teacher, t_items, "teacher_tokenizer", "pass teacher_tokenizer=, the tokenizer saved with the teacher")
    who = ("student_tokenizer" if student_tokenizer_given
           else "the teacher's, used for the student because no student_tokenizer was given")
    check_ids(student, s_items, who, "pass student_tokenizer=, the tokenizer saved with the student")


def _n_classes(model: Any, tokenizer: Any, text: str, max_length: int, device: Any) -> int:
    """Output width of ``model``: one forward pass on one text (a config's num_labels can disagree with its head)."""
    with prepared(model, device) as dev:
        ids, mask, _, _ = collate(encode(tokenizer, [text], max_length), pad_id(tokenizer), dev)
        return int(forward_rows(logits_fn(model), ids, mask, 1).shape[-1])


def _student_tokenizer(student: Any, teacher_tokenizer: Any, student_tokenizer: Any) -> Any:
    """The student's tokenizer: the one given, else the teacher's, or for a vocabulary-trimmed student the
    teacher's trimmed to the student's vocabulary (the tokenizer it was trained with)."""
    from ..vocab import check_tokenizer, trim_of, trim_tokenizer

    trim = trim_of(student)
    if student_tokenizer is None and trim is not None and len(teacher_tokenizer) == trim.source_size:
        return trim_tokenizer(teacher_tokenizer, trim)
    student_tokenizer = teacher_tokenizer if student_tokenizer is None else student_tokenizer
    check_tokenizer(student, student_tokenizer, "the student")
    return student_tokenizer


def _checked_classes(teacher: Any, student: Any, t_tok: Any, s_tok: Any, text: str, max_length: int,
                     device: Any) -> int:
    """Number of classes both models predict; a ValueError naming both counts when they differ."""
    t_n = _n_classes(teacher, t_tok, text, max_length, device)
    s_n = _n_classes(student, s_tok, text, max_length, device)
    if t_n != s_n:
        raise ValueError(f"the teacher has {t_n} classes but the student has {s_n}: they must predict the same "
                         "labels; use a student trained on the teacher's task (same num_labels).")
    return t_n


def _check_target_range(targets: Sequence[int | None], n_classes: int) -> None:
    bad = [t for t in targets if t is not None and not 0 <= t < n_classes]
    if bad:
        raise ValueError(f"target {bad[0]} is out of range: teacher and student have {n_classes} classes "
                         f"(0..{n_classes - 1}); give a class index in that range, or target=None")


def compare(teacher: Any, student: Any, texts: Sequence[str] | str, *, teacher_tokenizer: Any,
            student_tokenizer: Any = None, method: str = "integrated_gradients",
            target: int | Sequence[int] | None = None, top_k: int = 5, n_steps: int = 32,
            internal_batch_size: int | None = None, batch_size: int | None = None,
            faithfulness_steps: int | None = 10,
            device: Any = None, max_length: int = 128, precision: str = "fp32") -> list[Comparison]:
    """Attribute each text with both models for the same class and measure how they agree.

    Args:
        teacher, student: sequence classifiers with the same classes (see ``attribute``).
        texts: N strings.
        teacher_tokenizer: the teacher's fast tokenizer.
        student_tokenizer: the student's; None = the teacher's (for a vocabulary-trimmed student: the teacher's
            trimmed to the student's vocabulary). With a different vocabulary the comparison is at word level.
        method: one of ``METHODS``.
        target: class to explain; None = the teacher's predicted class (used for both models).
        top_k: units for the top-k overlap and tokens for comprehensiveness/sufficiency.
        n_steps, internal_batch_size, batch_size, device, max_length: passed to ``attribute``.
        faithfulness_steps: deletion-curve steps for per-model faithfulness; None skips faithfulness.

    Returns:
        N ``Comparison`` in the order of ``texts``.

    Raises:
        ValueError: empty or blank texts, unknown method, models with different numbers of classes, a target
            out of their range, a tokenizer that does not fit a vocabulary-trimmed student, a gradient method
            on an int8-quantized model. All are checked before anything is attributed.
    """
    from ..vocab import check_tokenizer

    texts = check_texts(texts)
    check_method(method)
    check_positive(top_k=top_k, faithfulness_steps=faithfulness_steps)
    check_max_length(max_length, teacher, student)
    check_gradients(teacher, method, "the teacher")
    check_gradients(student, method, "the student")
    check_tokenizer(teacher, teacher_tokenizer, "the teacher")
    given = student_tokenizer is not None
    student_tokenizer = _student_tokenizer(student, teacher_tokenizer, student_tokenizer)
    targets = check_targets(target, len(texts))
    _check_vocabularies(teacher, student, teacher_tokenizer, student_tokenizer, texts, max_length, given)
    n_classes = _checked_classes(teacher, student, teacher_tokenizer, student_tokenizer, texts[0], max_length,
                                 device)
    _check_target_range(targets, n_classes)
    kw = {"n_steps": n_steps, "internal_batch_size": internal_batch_size, "batch_size": batch_size,
          "device": device, "max_length": max_length, "precision": precision}
    t_attr = attribute(teacher, teacher_tokenizer, texts, method, targets, **kw)
    # the teacher's class for both; where it made no prediction (NaN/inf logits), the student explains its own
    s_targets = [None if a.target == NO_PREDICTION else a.target for a in t_attr]
    s_attr = attribute(student, student_tokenizer, texts, method, s_targets, **kw)
    t_faith: list[Faithfulness | None] = [None] * len(texts)
    s_faith: list[Faithfulness | None] = [None] * len(texts)
    if faithfulness_steps is not None:
        fkw = {"top_k": top_k, "steps": faithfulness_steps, "batch_size": batch_size,
               "internal_batch_size": internal_batch_size, "device": device}
        t_faith = faithfulness(teacher, teacher_tokenizer, t_attr, **fkw)  # type: ignore[assignment]
        s_faith = faithfulness(student, student_tokenizer, s_attr, **fkw)  # type: ignore[assignment]
    token_level_ok = _same_vocab(teacher_tokenizer, student_tokenizer)
    out = []
    for ta, sa, tf, sf in zip(t_attr, s_attr, t_faith, s_faith):
        if not token_level_ok:  # same token ids from different vocabularies mean different tokens: word level
            sa_aligned = _renumbered(sa)
        else:
            sa_aligned = sa
        alignment, units, ts, ss = align(ta, sa_aligned)
        metrics = agreement(ts, ss, top_k)  # NaN throughout when either side's scores are NaN (no prediction)
        metrics["prediction_agree"] = float(ta.label == sa.label != NO_PREDICTION)  # no prediction never agrees
        metrics["prob_diff"] = abs(target_prob(ta, ta.target) - target_prob(sa, ta.target))
        for name, f in (("teacher", tf), ("student", sf)):
            if f is not None:
                metrics.update({f"{name}_comprehensiveness": f.comprehensiveness,
                                f"{name}_sufficiency": f.sufficiency, f"{name}_deletion_auc": f.deletion_auc})
        out.append(Comparison(ta, sa, alignment, tuple(units), ts, ss, metrics, top_k, tf, sf,
                              unread_units(ta, sa_aligned)))
    return out


def target_prob(a: Attribution, target: int) -> float:
    """``a``'s probability of class ``target``; NaN without a target or a prediction (NaN/inf logits)."""
    return float(a.probs[target]) if target != NO_PREDICTION and not a.nonfinite else math.nan


def _renumbered(a: Attribution) -> Attribution:
    """A copy whose token ids can never equal another vocabulary's (forces word alignment)."""
    from dataclasses import replace

    return replace(a, token_ids=tuple(-1 - i for i in a.token_ids))


# --------------------------------------------------------------------------- data-set sweep


@dataclass(frozen=True, eq=False)
class SweepResult:
    """``compare`` over a data set, with examples ranked by divergence.

    Attributes:
        comparisons: one ``Comparison`` per text, in input order.
        labels: gold labels (or None).
        order: input indices, most divergent first: examples where a model gave NaN/inf logits (no prediction)
            first, then prediction disagreements, then the lowest attribution rank correlation (1 - spearman),
            then the largest probability difference.
        method: attribution method used.
    """

    comparisons: tuple[Comparison, ...] = field(repr=False)
    labels: tuple[int, ...] | None = field(repr=False)
    order: tuple[int, ...] = field(repr=False)
    method: str

    def __len__(self) -> int:
        return len(self.comparisons)

    def __getitem__(self, i: int) -> Comparison:
        return self.comparisons[i]

    def __iter__(self) -> Iterator[Comparison]:
        return iter(self.comparisons)

    def most_divergent(self, n: int = 10) -> list[Comparison]:
        """The ``n`` examples where teacher and student differ most."""
        return [self.comparisons[i] for i in self.order[:n]]

    def to_frame(self) -> pd.DataFrame:
        """One row per example (input order): text, label, predictions, probabilities, metrics, rank.

        ``divergence_rank`` is 1 for the most divergent example; sort by it to review. A model that made no
        prediction (NaN/inf logits) has ``*_pred`` ``NO_PREDICTION`` (-1), ``*_prob`` NaN and ``*_nonfinite``
        True.
        """
        import pandas as pd

        rank = np.empty(len(self.order), dtype=int)
        rank[list(self.order)] = np.arange(1, len(self.order) + 1)
        rows = []
        for i, c in enumerate(self.comparisons):
            rows.append({
                "text": c.text, "label": None if self.labels is None else self.labels[i], "target": c.teacher.target,
                "teacher_pred": c.teacher.label, "student_pred": c.student.label,
                "teacher_prob": target_prob(c.teacher, c.teacher.target),
                "student_prob": target_prob(c.student, c.teacher.target), "alignment": c.alignment,
                "teacher_nonfinite": c.teacher.nonfinite, "student_nonfinite": c.student.nonfinite,
                **c.metrics, "divergence_rank": int(rank[i]),
            })
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, float]:
        """Mean of each metric (NaN ignored) plus accuracies when labels are known, and ``teacher_nonfinite`` /
        ``student_nonfinite``: on how many examples each model gave NaN/inf logits. Such an example is no
        prediction: wrong for accuracy, a disagreement for prediction_agree, left out of the attribution means
        (its metrics are NaN) -- so a broken model never reads as a good one."""
        frame = self.to_frame()
        out = {k: float(frame[k].mean()) for k in self.comparisons[0].metrics}
        out["teacher_nonfinite"] = int(frame["teacher_nonfinite"].sum())
        out["student_nonfinite"] = int(frame["student_nonfinite"].sum())
        if self.labels is not None:  # NO_PREDICTION (-1) equals no label: wrong
            out["teacher_accuracy"] = float((frame["teacher_pred"] == frame["label"]).mean())
            out["student_accuracy"] = float((frame["student_pred"] == frame["label"]).mean())
        return out

    def plot(self, metrics: Sequence[str] | str = ("spearman", "topk_jaccard")) -> Figure:
        """Histogram of agreement over the data set, one panel per metric. Returns the Figure."""
        from .render import plot_agreement_hist

        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        known = list(self.comparisons[0].metrics) if self.comparisons else []
        unknown = [m for m in metrics if m not in known]
        if unknown or not metrics:
            raise ValueError(f"metrics={metrics!r}: {unknown[0]!r} is not a metric of this sweep; choose from "
                             f"{', '.join(known)}" if unknown else f"metrics is empty: name at least one of "
                             f"{', '.join(known)}")

        return plot_agreement_hist(self, metrics)

    def scatter(self, ax: Any = None) -> Figure:
        """Teacher vs student normalised attributions pooled over all examples. Returns the Figure."""
        from .render import plot_scatter

        return plot_scatter(self.comparisons, ax=ax)


def divergence_order(comparisons: Sequence[Comparison]) -> list[int]:
    """Indices sorted most divergent first (NaN/inf outputs, disagreement, then 1 - spearman, then prob_diff)."""
    finite = np.array([not c.nonfinite for c in comparisons])  # False (no prediction) sorts first
    agree = np.array([c.metrics["prediction_agree"] for c in comparisons])
    rho = np.array([c.metrics["spearman"] for c in comparisons])
    rho = np.where(np.isnan(rho), 0.0, rho)  # undefined correlation counts as "no agreement"
    diff = np.array([c.metrics["prob_diff"] for c in comparisons])
    return np.lexsort((-diff, rho, agree, finite)).tolist()  # last key sorts first


def sweep(teacher: Any, student: Any, texts: Sequence[str], labels: Sequence[int] | None = None, *,
          teacher_tokenizer: Any, student_tokenizer: Any = None, method: str = "integrated_gradients",
          target: int | Sequence[int] | None = None, top_k: int = 5, n_steps: int = 32,
          internal_batch_size: int | None = None, batch_size: int | None = None,
          faithfulness_steps: int | None = 10,
          device: Any = None, max_length: int = 128, precision: str = "fp32",
          progress: Callable[[int, int], None] | None = None) -> SweepResult:
    """``compare`` over a data set in batches and rank the examples by divergence.

    Args:
        texts: N strings; labels: N gold labels (integer class ids of the models) or None; checked before
            anything is attributed.
        progress: called as ``progress(done, N)`` after each chunk (e.g. to update a widget).
        Others: as for ``compare``.

    Returns:
        ``SweepResult``; ``.to_frame()`` for a table, ``.plot()`` for the agreement histogram.
    """
    from ..evaluation import check_labels

    texts = check_texts(texts)
    if labels is not None:
        labels = check_labels(labels, len(texts))
    check_positive(batch_size=batch_size)
    targets = check_targets(target, len(texts))
    check_max_length(max_length, teacher, student)
    given = student_tokenizer is not None
    student_tokenizer = _student_tokenizer(student, teacher_tokenizer, student_tokenizer)  # once, not per chunk
    # every text, before the first (long) chunk runs: a misfit in the last chunk would waste the sweep
    _check_vocabularies(teacher, student, teacher_tokenizer, student_tokenizer, texts, max_length, given)
    if labels is not None:  # class ids of the models' head, checked before the (long) sweep starts
        labels = check_labels(labels, len(texts), _n_classes(teacher, teacher_tokenizer, texts[0], max_length,
                                                              device))
    chunk = (batch_size or 16) * 8  # several attribute() batches per compare call: length sorting pays off
    comparisons: list[Comparison] = []
    for start in range(0, len(texts), chunk):
        part = targets[start:start + chunk]
        comparisons += compare(
            teacher, student, texts[start:start + chunk], teacher_tokenizer=teacher_tokenizer,
            student_tokenizer=student_tokenizer, method=method, target=part,
            top_k=top_k, n_steps=n_steps, internal_batch_size=internal_batch_size, batch_size=batch_size,
            faithfulness_steps=faithfulness_steps, device=device, max_length=max_length, precision=precision)
        if progress is not None:
            progress(len(comparisons), len(texts))
    return SweepResult(tuple(comparisons), None if labels is None else tuple(labels),
                       tuple(divergence_order(comparisons)), method)

