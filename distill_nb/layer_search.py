"""Rank candidate layer choices by short proxy runs: successive halving with ``train()`` itself.

:func:`distill_nb.suggest_layers` scores students by the KL at initialisation, which does not predict what
training makes of them (bench/README.md). This module asks training directly: every candidate
(``student_layers_from``) is distilled for a few steps on the task's training texts and scored on a held-out
slice of the *training* split (the eval split is never looked at, so choosing a layer set does not tune on
it); the better half goes on to a run twice as long, until the last two have been compared (Jamieson &
Talwalkar, 2016).

The runs are ordinary ``train()`` runs in a scratch folder (deleted afterwards) with the caller's config, the
same seed for every candidate, and the teacher's logits computed once and shared. Cost: about
``len(candidates) * steps * rounds`` optimiser steps (5 candidates, 25 steps: 5x25 + 3x50 + 2x100 = 475
steps) plus one teacher pass over the proxy training texts. ``should_stop()`` is checked between runs:
a stopped search returns what it has measured so far (``stopped=True``).
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .config import ConfigError, DistillConfig
from .data import TaskData, TextSplit
from .safeio import remove_entry


@dataclass(frozen=True)
class ProxyRanking:
    """What :func:`rank_by_proxy_runs` measured: ``chosen`` and, per round, each candidate's score."""

    chosen: tuple[int, ...] | None  # None: stopped before the first round was complete
    rounds: tuple[tuple[int, tuple[tuple[tuple[int, ...], float, float], ...]], ...]  # (steps, ((layers, acc, kd),))
    holdout: int  # training texts held out to score the candidates
    seconds: float
    stopped: bool = False

    def __str__(self) -> str:
        lines = [f"proxy runs ({self.holdout} held-out training texts, {self.seconds:.0f} s"
                 + (", stopped" if self.stopped else "") + "): chosen "
                 + (str(list(self.chosen)) if self.chosen else "none (no round completed)")]
        for steps, scores in self.rounds:
            lines.append(f"  {steps} steps: " + ", ".join(f"{list(k)} {acc:.3f}" for k, acc, _ in scores))
        return "\n".join(lines)


def proxy_task(task: TaskData, holdout: int, seed: int = 0) -> TaskData:
    """The training split cut in two, seeded: proxy training texts and ``holdout`` texts to score on."""
    n = len(task.train)
    if not 1 <= holdout < n - 1:
        raise ValueError(f"holdout={holdout} is invalid for {n} training texts: hold out at least 1 and leave at "
                         "least 2 to train on.")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    pick = lambda idx: TextSplit([task.train.texts[i] for i in idx], [task.train.labels[i] for i in idx])
    return replace(task, train=pick(sorted(order[holdout:])), eval=pick(sorted(order[:holdout])),
                   note=f"proxy: {holdout} training texts held out")


def survivors(n: int, keep: float) -> int:
    """Candidates that go on from a round of ``n``: the better ``keep`` share, at least one dropped."""
    return min(n - 1, max(1, math.ceil(n * keep)))


def total_steps(n_candidates: int, steps: int, keep: float = 0.5) -> int:
    """Optimiser steps a full search takes (every round's runs; the rounds double ``steps``)."""
    total, n = 0, n_candidates
    while True:
        total += n * steps
        n, steps = survivors(n, keep), steps * 2
        if n <= 1:
            return total


def rank_by_proxy_runs(config: DistillConfig, candidates: Sequence[Sequence[int]], *, data: TaskData | None = None,
                       steps: int = 25, holdout: int = 256, keep: float = 0.5,
                       should_stop: Callable[[], bool] | None = None, workdir: str | Path | None = None,
                       log: Callable[[str], None] = print) -> ProxyRanking:
    """Successive halving over ``candidates`` (teacher layers to copy), scored by held-out accuracy.

    Args:
        config: the run's config (teacher, student shape, losses, batch size, seed); each proxy run changes only
            ``student_layers_from``, ``max_steps`` and what it evaluates or saves.
        candidates: layer sets of ``config.student_layers`` teacher layers each (e.g. the advisor's best few
            by KL, plus every-k).
        data: the task (default: the config's, with its ``max_train_examples`` cap).
        steps: optimiser steps of the first round; each round doubles them.
        holdout: training texts held out (seeded) to score the candidates; the eval split is never used.
        keep: share of candidates that goes on to the next round (at least one is dropped each round).
        should_stop: polled between runs; when it returns True the search ends and returns the last full round.
        workdir: where the proxy runs go (default: a temporary folder, removed at the end).

    Returns:
        a :class:`ProxyRanking`; ``chosen`` is the winner (ties go to the lower KD to the teacher, then to the
        earlier candidate), or the leader of the last complete round when stopped (None before the first).

    Raises:
        ValueError: no candidates, a candidate of the wrong length, not increasing or past the teacher's layers,
            a bad ``holdout``, ``steps`` or ``keep``, or a bare-encoder teacher not prepared yet.
    """
    from .checkpoint import Diverged
    from .models import shape
    from .rundata import full_task_for, task_for
    from .teacher_cache import classifier_teacher
    from .train import train

    if not isinstance(config, DistillConfig):
        raise TypeError(f"rank_by_proxy_runs() takes a DistillConfig, got {type(config).__name__}: build one with "
                        "DistillConfig(...) or DistillConfig.from_dict(...).")
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
        raise TypeError(f"candidates must be a list of layer lists, e.g. [[0, 2, 4], [0, 3, 5]]; got {candidates!r}.")
    for c in candidates:
        if isinstance(c, (str, bytes)) or not isinstance(c, Sequence) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in c):
            raise ValueError(f"candidate {c!r} is invalid: each candidate is a list of integer teacher layers, "
                             "e.g. [0, 2, 4].")
    try:  # the proxy runs train without the attribution loss (~3 forward-backwards per row): something else must
        config.replace(alpha_attr=0.0)
    except ConfigError:
        raise ConfigError(f"the proxy runs train without the attribution loss, and alpha_attr={config.alpha_attr} is "
                          "this config's only loss: give the search a config with alpha_kd or alpha_ce > 0, e.g. "
                          "config.replace(alpha_kd=1.0).") from None
    cands = [tuple(int(i) for i in c) for c in candidates]
    cands = list(dict.fromkeys(cands))  # duplicates once, in order
    if not cands:
        raise ValueError("rank_by_proxy_runs needs at least one candidate layer set, e.g. [[0, 2, 4], [0, 3, 5]].")
    for c in cands:
        if len(c) != config.student_layers or list(c) != sorted(set(c)) or c[0] < 0:
            raise ValueError(f"candidate {list(c)} is invalid for a {config.student_layers}-layer student: give "
                             f"{config.student_layers} strictly increasing teacher layer indices.")
    if steps < 1 or not 0 < keep < 1:
        raise ValueError(f"steps={steps}, keep={keep} are invalid: steps >= 1 and 0 < keep < 1 (e.g. 25, 0.5).")
    start = time.perf_counter()
    # the run's teacher (a bare encoder's prepared one, from the cache: a proxy run must not fine-tune one on its
    # own slice of the data)
    model, _, teacher = classifier_teacher(config.teacher, full_task_for(config),
                                           trust_remote_code=config.trust_remote_code)
    n_teacher = shape(model.config)["layers"]
    del model
    outside = [list(c) for c in cands if c[-1] >= n_teacher]
    if outside:  # before any run: a late candidate must not fail the search after minutes of training
        raise ValueError(f"candidate {outside[0]} copies a layer the {n_teacher}-layer teacher does not have: use "
                         f"layers 0..{n_teacher - 1}.")
    task = proxy_task(data or task_for(config), holdout, config.seed)
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="distill_nb-proxy-"))
    rounds: list[tuple[int, tuple[tuple[tuple[int, ...], float, float], ...]]] = []
    alive, stopped, logits = cands, False, None
    try:
        for r in range(64):
            n_steps = steps * 2 ** r
            scores = []
            for c in alive:
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                run = root / (f"r{r}-" + "-".join(map(str, c)))
                run.mkdir(parents=True, exist_ok=True)
                if logits is not None:  # the teacher's logits on the proxy texts: computed by the first run only
                    shutil.copy(logits, run / "teacher_logits.safetensors")
                cfg = config.replace(teacher=teacher, teacher_prep_steps=0, student_layers_from=list(c),
                                     layer_map=None, max_steps=n_steps, eval_every=n_steps,
                                     checkpoint_every=n_steps, reason_probe=0, alpha_attr=0.0, student_vocab="full")
                try:
                    final = train(cfg, run, data=task, log=lambda *_: None)
                    scores.append((c, float(final["accuracy"]), float(final.get("kd_to_teacher") or 0.0)))
                except Diverged as exc:  # a candidate that diverges ranks last; the search goes on
                    log(f"proxy run {list(c)} diverged ({exc}); it ranks last")
                    scores.append((c, -math.inf, math.inf))
                if logits is None and (run / "teacher_logits.safetensors").is_file():
                    logits = root / "teacher_logits.safetensors"
                    shutil.copy(run / "teacher_logits.safetensors", logits)
                remove_entry(run / "student")
            if stopped:
                break
            ranked = sorted(scores, key=lambda s: (-s[1], s[2], cands.index(s[0])))
            rounds.append((n_steps, tuple(ranked)))
            log(f"proxy round {r + 1}: {n_steps} steps: "
                + ", ".join(f"{list(c)} {acc:.3f}" for c, acc, _ in ranked))
            alive = [c for c, _, _ in ranked[:survivors(len(ranked), keep)]]
            if len(alive) <= 1:  # the round's leader is the winner: no run of a lone survivor
                break
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    chosen = rounds[-1][1][0][0] if rounds else None
    return ProxyRanking(chosen, tuple(rounds), holdout, time.perf_counter() - start, stopped)
