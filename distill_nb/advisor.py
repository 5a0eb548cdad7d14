"""Which teacher layers should a student copy? Evidence measured on a sample of the task, and a proposal.

:func:`suggest_layers` runs the teacher on a few hundred task texts and measures, per teacher layer:

- **skip KL**: KL(teacher || teacher without this one layer), the output change when the layer is skipped;
- **CKA with its input**: linear CKA (Kornblith et al., 2019) between a layer's input and output token
  representations; near 1 means the layer changes little (a candidate to drop);
- **probe accuracy** (with labels): a logistic-regression probe on the mean-pooled output of the layer,
  fitted on half the sample and scored on the other half.

It then ranks candidate students directly: a student that copies layers ``S`` starts as the teacher with the
other layers removed (embeddings and head copied), so the KL between the teacher and that pruned teacher is
the distance training has to close. Every increasing ``S`` of the chosen depth is scored when there are at
most ``max_candidates`` of them (6 -> 3 layers: 20); otherwise greedy backward elimination drops, one at a time,
the layer whose removal raises the KL least. Every-k and first-k are always scored for reference. By default
only students that copy layer 0 are candidates (``keep_first``): the KL at init is dominated by keeping the
last layer (the head reads it), and the unconstrained winner (the top layers) trained worse than every-k.

Cost: one teacher forward over the sample per candidate (each with fewer layers) plus one per teacher layer;
measured in ``LayerAdvice.seconds`` (MiniLM-L6, 256 short texts, 6 -> 3: see bench/README.md).
"""

from __future__ import annotations

import html
import itertools
import math
import numbers
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .data import collate, encode
from .models import accepts_token_types, copied_layer_map, every_k_layers, layer_list, shape


@dataclass(frozen=True)
class LayerAdvice:
    """What :func:`suggest_layers` measured and proposes; ``config_fields()`` feeds a DistillConfig."""

    teacher_layers: int
    student_layers: int
    chosen: tuple[int, ...]  # teacher layers the student should copy (student_layers_from)
    layer_map: tuple[int, ...]  # teacher layer each student layer should imitate (for hidden losses)
    skip_kl: tuple[float, ...]  # per teacher layer: KL(teacher || teacher without that layer)
    cka_with_input: tuple[float, ...]  # per teacher layer: linear CKA between its input and output
    cka: tuple[tuple[float, ...], ...]  # (L+1, L+1): linear CKA between embeddings (0) and layer outputs (1..L)
    probe_accuracy: tuple[float, ...] | None  # per teacher layer: held-out accuracy of a linear probe
    candidates: tuple[tuple[tuple[int, ...], float, float | None], ...]  # (layers, KL, accuracy) best first
    baselines: dict[str, tuple[tuple[int, ...], float]] = field(default_factory=dict)  # name -> (layers, KL)
    search: str = "exhaustive"  # "exhaustive" or "greedy" (+ ", layer 0 kept")
    n_examples: int = 0
    seconds: float = 0.0  # wall time of the whole measurement on this machine
    device: str = "cpu"

    def shortlist(self, n: int) -> list[tuple[int, ...]]:
        """The ``n`` best candidates by KL plus every-k, each once: what proxy runs should rank."""
        every_k = tuple(every_k_layers(self.teacher_layers, self.student_layers))
        return list(dict.fromkeys([tuple(c[0]) for c in self.candidates[:n]] + [every_k]))

    def config_fields(self) -> dict[str, Any]:
        """DistillConfig fields for this proposal (``DistillConfig(**advice.config_fields(), ...)``)."""
        return {"student_layers": self.student_layers, "student_init": "every_k",
                "student_layers_from": list(self.chosen), "layer_map": list(self.layer_map)}

    def __str__(self) -> str:
        lines = [(f"suggest_layers: {self.teacher_layers} -> {self.student_layers} layers, copy "
                  f"{list(self.chosen)} (imitate {list(self.layer_map)}); {self.search} search over "
                  f"{len(self.candidates)} candidates, {self.n_examples} examples, {self.seconds:.1f} s on "
                  f"{self.device}")]
        best_kl = self.candidates[0][1]
        for name, (layers, kl) in self.baselines.items():
            lines.append(f"  {name:<8} {list(layers)}: KL {kl:.4f} (chosen {best_kl:.4f})")
        head = "  layer  skip-KL  CKA(in,out)" + ("  probe-acc" if self.probe_accuracy else "")
        lines.append(head)
        for i in range(self.teacher_layers):
            probe = f"  {self.probe_accuracy[i]:9.3f}" if self.probe_accuracy else ""
            mark = " *" if i in self.chosen else ""
            lines.append(f"  {i:>5}  {self.skip_kl[i]:7.4f}  {self.cka_with_input[i]:11.3f}{probe}{mark}")
        return "\n".join(lines)

    def to_html(self) -> str:
        """The evidence as bars over the teacher's layers (chosen layers in blue), plain HTML for widgets."""
        rows = [("skip KL (higher: the layer matters more)", self.skip_kl),
                ("1 - CKA(input, output) (higher: changes more)", tuple(1 - c for c in self.cka_with_input))]
        if self.probe_accuracy:
            rows.append(("probe accuracy", self.probe_accuracy))
        parts = []
        for title, values in rows:
            top = max(max(values), 1e-9)
            bars = "".join(
                f"<div title='layer {i}: {v:.4f}' style='display:inline-block;vertical-align:bottom;width:26px;"
                f"margin:1px;height:{4 + int(56 * max(v, 0) / top)}px;background:"
                f"{'#4a90d9' if i in self.chosen else '#ccc'}'></div>" for i, v in enumerate(values))
            labels = "".join(f"<div style='display:inline-block;width:26px;margin:1px;text-align:center;"
                             f"font-size:10px'>{i}</div>" for i in range(len(values)))
            parts.append(f"<div style='margin:4px 0'><div style='font-size:0.85em'>{title}</div>"
                         f"<div style='height:62px;display:flex;align-items:flex-end'>{bars}</div>"
                         f"<div>{labels}</div></div>")
        base = html.escape("; ".join(f"{n} {list(l)}: KL {kl:.3f}" for n, (l, kl) in self.baselines.items()))
        return (f"<div><b>suggested: copy teacher layers {list(self.chosen)}</b>, imitate {list(self.layer_map)}"
                f" — KL to the teacher at init {self.candidates[0][1]:.3f} ({base}).<br>"
                f"<span style='font-size:0.85em;color:#555'>{html.escape(str(self.search))} search, "
                f"{len(self.candidates)} candidates, {self.n_examples} examples, {self.seconds:.1f} s on "
                f"{html.escape(str(self.device))}</span>"
                f"{''.join(parts)}</div>")

    def plot(self, ax: Any = None) -> Any:
        """Bars over the teacher's layers: skip KL, 1 - CKA(input, output), probe accuracy; chosen in blue.

        Returns:
            the matplotlib Figure.
        """
        import matplotlib.pyplot as plt

        panels = [("skip KL", self.skip_kl), ("1 - CKA(in, out)", tuple(1 - c for c in self.cka_with_input))]
        if self.probe_accuracy:
            panels.append(("probe accuracy", self.probe_accuracy))
        if ax is None:
            fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.6))
        else:
            axes, fig = list(ax), ax[0].figure
        colours = ["#4a90d9" if i in self.chosen else "#bbbbbb" for i in range(self.teacher_layers)]
        for a, (title, values) in zip(axes, panels):
            a.bar(range(self.teacher_layers), values, color=colours)
            a.set_title(title, fontsize=9)
            a.set_xlabel("teacher layer")
            a.set_xticks(range(self.teacher_layers))
        fig.suptitle(f"copy {list(self.chosen)} (blue); {self.n_examples} examples, {self.seconds:.1f} s",
                     fontsize=9)
        fig.tight_layout()
        return fig


# --- measurements (pure functions) ------------------------------------------------------------------------------
def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two representations of the same N items: x (N, D1), y (N, D2); in [0, 1].

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred Xc, Yc (Kornblith et al. 2019);
    1 for identical (or isotropically scaled / rotated) representations. Computed in float64.
    """
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    num = (y.T @ x).pow(2).sum()
    den = (x.T @ x).norm() * (y.T @ y).norm()
    if not (torch.isfinite(num) and torch.isfinite(den)):
        return math.nan  # a representation with NaN/inf values has no similarity to report
    return float(num / den) if den > 0 else 0.0


def kl_to(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over rows of KL(softmax(reference) || softmax(logits)); both (N, C). ``inf`` when ``logits`` are not
    finite (such a candidate ranks last, never first); NaN when the reference is not."""
    reference, logits = reference.detach(), logits.detach()
    if not bool(torch.isfinite(reference).all()):
        return math.nan
    p = reference.log_softmax(-1)
    value = float((p.exp() * (p - logits.log_softmax(-1))).sum(-1).mean())
    return max(0.0, value) if math.isfinite(value) else math.inf  # max: no -0.0 from rounding


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, *, seed: int = 0, steps: int = 100) -> float:
    """Held-out accuracy of a logistic-regression probe: fit on a seeded half of (N, D) features, score the rest."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=g)
    fit, held = order[: len(order) // 2], order[len(order) // 2:]
    x = features.double()
    mean, std = x[fit].mean(0), x[fit].std(0).clamp_min(1e-6)
    x = (x - mean) / std
    n_classes = int(labels.max()) + 1
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(x[fit] @ w + b, labels[fit]) + 1e-2 * w.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    with torch.no_grad():
        return float(((x[held] @ w + b).argmax(-1) == labels[held]).double().mean())


@contextmanager
def only_layers(model: nn.Module, keep: Sequence[int]) -> Iterator[None]:
    """Run ``model`` with only the transformer layers ``keep`` (in that order); the others are skipped.

    The layer list is swapped in place and restored on exit; no weights are copied.
    """
    layers = layer_list(model)
    original = layers._modules
    layers._modules = OrderedDict((str(j), original[str(i)]) for j, i in enumerate(keep))
    try:
        yield
    finally:
        layers._modules = original


# --- the advisor --------------------------------------------------------------------------------------------------
@torch.no_grad()
def _teacher_device(teacher: nn.Module, device: str | torch.device | None) -> torch.device:
    """The device the advisor runs on: the teacher's own (``device`` may only name it, to check)."""
    own = next(teacher.parameters()).device
    if device is None:
        return own
    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={device!r} is not a torch device: use 'cpu', 'cuda' or 'cuda:N' (or None: where "
                         "the teacher is).") from None
    if wanted.type != own.type or (wanted.type != "cpu" and wanted.index is not None and wanted.index != own.index):
        raise ValueError(f"device={device!r} but the teacher's weights are on {own}: move the teacher first "
                         f"(teacher.to({str(wanted)!r})), or leave device=None to use where it is.")
    return own


def _logits(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([model(**b).logits.float() for b in batches])


def suggest_layers(teacher: nn.Module, tokenizer: Any, texts: Sequence[str], labels: Sequence[int] | None = None,
                   *, n_layers: int, max_examples: int = 256, batch_size: int = 32, max_length: int = 128,
                   max_candidates: int = 64, probe: bool = True, max_tokens: int = 4096, seed: int = 0,
                   keep_first: bool = True, device: str | torch.device | None = None) -> LayerAdvice:
    """Measure per-layer evidence on a sample of the task and propose which teacher layers a student copies.

    Args:
        teacher: a sequence-classification teacher of a BERT-like family (its layers in one ModuleList).
        tokenizer: the teacher's tokenizer.
        texts, labels: task texts (training split) and, optionally, their labels (for the probes and the
            candidates' accuracy).
        n_layers: the student's depth.
        max_examples: a seeded sample of this many texts is used (the cost grows linearly with it).
        max_candidates: score every increasing layer subset when there are at most this many, else search
            greedily (backward elimination).
        probe: fit a logistic probe per layer (needs labels).
        max_tokens: token representations (seeded sample) used for CKA.
        keep_first: only consider students that copy teacher layer 0, the one layer trained on the raw
            embeddings the student keeps. Without it, the lowest KL at init went to the top layers (3, 4, 5 of
            MiniLM-L6 on SST-2 and TREC-6), which trained 1-6 points worse than every-k in bench_student_shape.

    Returns:
        a frozen :class:`LayerAdvice` (``print`` it, ``.plot()`` it, ``.config_fields()`` for DistillConfig).

    Raises:
        ValueError: n_layers outside 1..teacher layers, or no texts.
    """
    import random

    start = time.perf_counter()
    n_teacher = shape(teacher.config)["layers"]
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= n_teacher:
        raise ValueError(f"n_layers={n_layers!r} is invalid for a {n_teacher}-layer teacher: use an integer "
                         f"1..{n_teacher}.")
    for name, value, low in (("max_examples", max_examples, 1), ("batch_size", batch_size, 1),
                             ("max_length", max_length, 8), ("max_tokens", max_tokens, 1),
                             ("max_candidates", max_candidates, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} is invalid: use an integer >= {low}.")
    positions = getattr(teacher.config, "max_position_embeddings", None)
    if isinstance(positions, int) and max_length > positions:
        raise ValueError(f"max_length={max_length} is longer than the teacher can read ({positions} positions): use "
                         f"max_length <= {positions}.")
    if isinstance(texts, str) or not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a list of strings (e.g. task.train.texts), got {type(texts).__name__}.")
    texts = [str(t) if isinstance(t, str) else t for t in texts]
    if not texts:
        raise ValueError("suggest_layers needs some task texts (e.g. task.train.texts).")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts[{bad}] is {type(texts[bad]).__name__}, expected str.")
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels: give one label per text, or labels=None.")
        n_out = getattr(teacher.config, "num_labels", None)
        wrong = next((i for i, y in enumerate(labels) if isinstance(y, bool) or not isinstance(y, numbers.Integral)
                      or y < 0 or (isinstance(n_out, int) and y >= n_out)), None)
        if wrong is not None:
            raise ValueError(f"labels[{wrong}]={labels[wrong]!r} is invalid: labels are class ids 0.."
                             f"{(n_out or 2) - 1} (the teacher's outputs); map names to ids first (task.train.labels "
                             "already are), or pass labels=None.")
    rng = random.Random(seed)
    idx = sorted(rng.sample(range(len(texts)), min(max_examples, len(texts))))
    sample = [texts[i] for i in idx]
    y = torch.tensor([int(labels[i]) for i in idx]) if labels is not None else None
    device = _teacher_device(teacher, device)
    was_training = teacher.training
    try:
        teacher.eval()
        enc = encode(tokenizer, sample, max_length)  # as training encodes them: a text pair as the tokenizer's pair
        order = sorted(range(len(sample)), key=lambda i: len(enc[i]))  # length-sorted batches: little padding
        types = accepts_token_types(teacher)  # ... with its segment ids where the teacher takes them
        batches = [{k: v.to(device) for k, v in collate(enc, order[s:s + batch_size], tokenizer.pad_token_id,
                                                         token_types=types).items()}
                   for s in range(0, len(order), batch_size)]
        y = y[order] if y is not None else None
        # --- the full teacher: logits, hidden states (CKA, probes) ------------------------------------------------
        full_logits, pooled, tokens = [], [[] for _ in range(n_teacher + 1)], [[] for _ in range(n_teacher + 1)]
        with torch.no_grad():
            for b in batches:
                out = teacher(**b, output_hidden_states=True)
                full_logits.append(out.logits.float())
                mask = b["attention_mask"].bool()  # (B, S)
                for k, h in enumerate(out.hidden_states):  # (B, S, H) each; 0 = embeddings
                    h = h.float()
                    pooled[k].append((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))  # (B, H)
                    tokens[k].append(h[mask])  # (T, H): real tokens only
        full = torch.cat(full_logits)
        reps = [torch.cat(t) for t in tokens]
        broken = next((k for k, r in enumerate(reps) if not bool(torch.isfinite(r).all())), None)
        if broken is not None or not bool(torch.isfinite(full).all()):
            where = "its logits" if broken is None else ("its embeddings" if broken == 0 else f"layer {broken - 1}")
            raise ValueError(f"the teacher computes NaN/inf values on these texts ({where}): its weights are damaged "
                             "or overflow in this precision; load it again in float32 (or fix the weights) before "
                             "asking which layers to keep.")
        pick = torch.randperm(len(reps[0]), generator=torch.Generator().manual_seed(seed))[:max_tokens]
        reps = [r[pick].cpu() for r in reps]
        cka = tuple(tuple(linear_cka(reps[a], reps[b]) for b in range(n_teacher + 1)) for a in range(n_teacher + 1))
        probes = None
        if probe and y is not None and len(set(y.tolist())) > 1:
            probes = tuple(probe_accuracy(torch.cat(pooled[k + 1]).cpu(), y, seed=seed) for k in range(n_teacher))
        # --- skip one layer at a time -----------------------------------------------------------------------------
        skip_kl = []
        for i in range(n_teacher):
            with only_layers(teacher, [j for j in range(n_teacher) if j != i]):
                skip_kl.append(kl_to(full, _logits(teacher, batches)))
        # --- candidate students: the teacher with only the copied layers -------------------------------------------
        scored: dict[tuple[int, ...], tuple[float, float | None]] = {}

        def score(keep: tuple[int, ...]) -> float:
            if keep not in scored:
                with only_layers(teacher, keep):
                    logits = _logits(teacher, batches)
                acc = float((logits.argmax(-1).cpu() == y).double().mean()) if y is not None else None
                scored[keep] = (kl_to(full, logits), acc)
            return scored[keep][0]

        n_subsets = math.comb(n_teacher, n_layers)
        if n_subsets <= max_candidates:
            search = "exhaustive"
            for keep in itertools.combinations(range(n_teacher), n_layers):
                if not keep_first or keep[0] == 0:
                    score(keep)
        else:
            search = "greedy"
            keep = tuple(range(n_teacher))
            while len(keep) > n_layers:
                options = [tuple(j for j in keep if j != i) for i in keep if not (keep_first and i == 0)]
                keep = min(options, key=score)
        baselines_layers = {"every_k": tuple(every_k_layers(n_teacher, n_layers)), "first_k": tuple(range(n_layers))}
        baselines = {name: (layers, score(layers)) for name, layers in baselines_layers.items()}
    finally:
        teacher.train(was_training)
    ranked = sorted(((k, v) for k, v in scored.items() if len(k) == n_layers and (not keep_first or k[0] == 0)),
                    key=lambda kv: (kv[1][0], kv[0]))
    chosen = ranked[0][0]
    return LayerAdvice(
        teacher_layers=n_teacher, student_layers=n_layers, chosen=chosen,
        layer_map=tuple(copied_layer_map(chosen, n_teacher)), skip_kl=tuple(skip_kl),
        cka_with_input=tuple(cka[i][i + 1] for i in range(n_teacher)), cka=cka, probe_accuracy=probes,
        candidates=tuple((k, kl, acc) for k, (kl, acc) in ranked), baselines=baselines,
        search=search + (", layer 0 kept" if keep_first else ""),
        n_examples=len(sample), seconds=time.perf_counter() - start, device=str(device))
