"""Token attributions for one model: ``attribute()`` and the frozen ``Attribution`` result.

Every method goes through captum on the model's input-embedding layer (or, for the gradient-free ones,
through batched forward passes), several examples per call, padded to the longest text of a
length-sorted batch. Scores are in units of the target class *logit*.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..evaluation import NO_PREDICTION, predictions
from ..tables import PAIR_SEP, split_pair

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METHODS = ("integrated_gradients", "saliency", "input_x_gradient", "occlusion", "leave_one_out")


@dataclass(frozen=True, eq=False)
class Attribution:
    """Attribution of one text by one model.

    Attributes:
        text: the input text.
        tokens: the model's tokens, specials included, padding excluded; length T.
        token_ids: vocabulary ids, length T.
        word_ids: word index of each token (None for specials), from the fast tokenizer's ``word_ids()``.
        offsets: ``(start, end)`` character span of each token in ``text`` (``(0, 0)`` for specials).
        scores: float array (T,), contribution of each token to the target logit (0 for specials).
        label: the model's predicted class; ``NO_PREDICTION`` (-1) when its logits held a NaN or inf.
        probs: float array (C,), the model's class probabilities (NaN when ``nonfinite``).
        target: the class whose logit was attributed; ``NO_PREDICTION`` (-1) when none was given and the model
            made no prediction (``nonfinite``): there was nothing to explain.
        delta: integrated-gradients convergence delta (sum of scores minus logit difference to the
            baseline); None for other methods.
        method: one of ``METHODS``.
        token_type_ids: segment id of each token (0 first text, 1 second) of a text pair, when the tokenizer
            gives them (the model got them if its forward takes ``token_type_ids``); None for a single text.
        nonfinite: True when the model's logits for this text held a NaN or inf (a broken model, or an overflow
            in bf16/fp16): no prediction, and ``scores``, ``probs`` and ``delta`` are NaN, never numbers that
            look like an explanation.
    """

    text: str
    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    word_ids: tuple[int | None, ...]
    offsets: tuple[tuple[int, int], ...]
    scores: np.ndarray = field(repr=False)
    label: int
    probs: np.ndarray = field(repr=False)
    target: int
    delta: float | None
    method: str
    token_type_ids: tuple[int, ...] | None = None
    nonfinite: bool = False

    @property
    def special(self) -> np.ndarray:
        """Bool array (T,): True for special tokens ([CLS], [SEP], ...)."""
        return np.array([w is None for w in self.word_ids], dtype=bool)

    def word_spans(self) -> list[tuple[int, int]]:
        """Character span ``(start, end)`` of each word, in word order."""
        spans: dict[int, list[int]] = {}
        for w, (s, e) in zip(self.word_ids, self.offsets):
            if w is not None:
                spans.setdefault(w, [s, e])[1] = e
        return [tuple(spans[w]) for w in sorted(spans)]  # type: ignore[misc]

    @property
    def words(self) -> list[str]:
        """The words of ``text`` as the tokenizer split them."""
        return [self.text[s:e] for s, e in self.word_spans()]

    @property
    def word_scores(self) -> np.ndarray:
        """Float array (n_words,): token scores summed per word."""
        w = np.array([-1 if x is None else x for x in self.word_ids])
        keep = w >= 0
        if not keep.any():
            return np.zeros(0)
        _, inverse = np.unique(w[keep], return_inverse=True)
        return np.bincount(inverse, weights=self.scores[keep])

    def plot(self, ax: Any = None) -> Figure:
        """Token heatmap (red = supports the target, blue = against). Returns the Figure."""
        from .render import plot_attribution

        return plot_attribution(self, ax=ax)

    def to_html(self) -> str:
        """Self-contained HTML snippet: tokens coloured by score (no scripts)."""
        from .render import attribution_html

        return attribution_html(self)

    def _repr_html_(self) -> str:
        return self.to_html()


# --------------------------------------------------------------------------- input checks


def is_blank(text: str) -> bool:
    """True when ``text`` has nothing a tokenizer reads: only whitespace, control and format characters
    (zero-width spaces, NULs), which ``str.strip`` keeps but tokenizers drop."""
    import unicodedata

    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Zs", "Zl", "Zp") for c in text)


def check_texts(texts: Sequence[str] | str) -> list[str]:
    """Return ``texts`` as a list of str, or raise a ValueError/TypeError saying what is wrong."""
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, (Mapping, AbstractSet)):  # a dict iterates its keys, a set in no fixed order
        raise TypeError(f"texts is a {type(texts).__name__}: pass a list of strings, e.g. list(texts.values()) "
                        "for a dict")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: pass a non-empty list of strings, e.g. ['a fine movie']")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, expected str: pass strings only")
    empty = [i for i, t in enumerate(texts) if is_blank(t)]
    if empty:
        raise ValueError(f"texts[{empty[0]}]={texts[empty[0]][:40]!r} is blank (only spaces, control or zero-width "
                         "characters): every text needs at least one word; drop or fix it")
    return texts


def check_readable(items: Sequence[Encoded], texts: Sequence[str], who: str = "the tokenizer") -> None:
    """Raise a ValueError for a text of which the tokenizer kept no token besides [CLS]/[SEP]."""
    empty = [i for i, e in enumerate(items) if all(w is None for w in e.word_ids)]
    if empty:
        raise ValueError(f"texts[{empty[0]}]={texts[empty[0]][:40]!r} has no tokens for {who} (it drops every "
                         "character of it): every text needs at least one word; drop or fix it")


def check_gradients(model: Any, method: str, who: str = "the model") -> None:
    """Raise a ValueError when a gradient method meets a dynamically quantized (int8) model: its Linear layers
    have no gradients, so captum would fail with an autograd error about unused tensors."""
    from ..compress import is_quantized

    if method not in ("occlusion", "leave_one_out") and is_quantized(model):
        raise ValueError(f"{who} is quantized (int8 Linear layers have no gradients), so method={method!r} cannot "
                         "attribute it: use method='occlusion' or 'leave_one_out' (forward passes only), or "
                         "attribute the float model it was quantized from.")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def _class_index(value: Any) -> int | None:
    """``value`` as a class index when it is an integer (Python, numpy or a 0-d integer tensor), else None."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]  # a 0-d array -> its numpy scalar
    if isinstance(value, (bool, np.bool_)):
        return None  # bool is an int subclass, but True/False is no class index
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.dtype.is_floating_point \
            and not value.dtype.is_complex and value.dtype != torch.bool:
        return int(value.item())
    return None


def _pandas_targets(target: Any) -> Any:
    """A pandas Series/Index of targets as a list: its missing values (NaN, <NA>, None) become None.

    pandas stores ``[0, 1, None]`` as floats (0.0, 1.0, NaN); in such a column, whole numbers are the class
    indices it was given. Anything else passes through unchanged.
    """
    if not type(target).__module__.startswith("pandas") or not hasattr(target, "isna"):
        return target
    missing = [bool(m) for m in target.isna()]
    values = list(target)
    if any(missing) and getattr(target.dtype, "kind", "") == "f":
        values = [int(v) if not m and float(v).is_integer() else v for v, m in zip(values, missing)]
    return [None if m else v for v, m in zip(values, missing)]


def check_targets(target: Any, n: int) -> list[int | None]:
    """``target`` as one class index (or None) per text.

    Accepts None (each model's prediction), one integer (Python, numpy or a 0-d integer tensor) for every
    text, or a sequence (list, array, tensor, pandas Series) of ``n`` such integers/None; in a pandas Series,
    NaN and <NA> mean None. Floats, strings and bools are refused (a float was truncated and a string iterated
    by characters before).
    """
    hint = "give one int class index (e.g. target=1), a list with one int (or None) per text, or None"
    if target is None:
        return [None] * n
    target = _pandas_targets(target)
    single = _class_index(target)
    if single is not None:
        return [single] * n
    if isinstance(target, (str, bytes, Mapping, AbstractSet)) or not isinstance(target, Iterable) \
            or getattr(target, "ndim", 1) == 0:  # a 0-d array/tensor that is not an int, e.g. tensor(1.)
        raise ValueError(f"target={target!r} ({type(target).__name__}) is not a class index: {hint}")
    out: list[int | None] = []
    for i, t in enumerate(target):
        index = None if t is None else _class_index(t)
        if t is not None and index is None:
            raise ValueError(f"target[{i}]={t!r} ({type(t).__name__}) is not a class index: {hint}")
        out.append(index)
    if len(out) != n:
        raise ValueError(f"target has {len(out)} entries for {n} texts: give one int, one per text, or None")
    return out


def model_positions(model: Any) -> int | None:
    """Tokens ``model`` can read: ``config.max_position_embeddings`` (2 fewer for families whose position ids
    start after the padding id, e.g. RoBERTa); None when the model has no such config."""
    from ..families import POSITION_OFFSET_FAMILIES

    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, (int, np.integer)) or isinstance(positions, bool):
        return None
    offset = 2 if getattr(config, "model_type", None) in POSITION_OFFSET_FAMILIES else 0
    return int(positions) - offset


def check_max_length(max_length: Any, *models: Any) -> None:
    """Raise a ValueError unless ``max_length`` is an int from ``MIN_MAX_LENGTH`` up to what every model reads.

    Below ``MIN_MAX_LENGTH`` the tokenizer keeps [CLS] and [SEP] and next to no text (or ignores truncation
    altogether when max_length is below the number of special tokens); above the model's positions the
    forward pass fails deep inside the model.
    """
    from ..config import MIN_MAX_LENGTH

    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)):
        raise ValueError(  # noqa: TRY004 - a ValueError like check_positive's for every bad max_length
            f"max_length={max_length!r} ({type(max_length).__name__}) is not a number of tokens: "
            f"give an int >= {MIN_MAX_LENGTH}, e.g. max_length=128")
    if max_length < MIN_MAX_LENGTH:
        raise ValueError(f"max_length={max_length} is too short: [CLS] and [SEP] take 2 of the tokens (and below "
                         f"the special-token count the tokenizer does not truncate at all); use max_length >= "
                         f"{MIN_MAX_LENGTH} (64-128 is usual for sentences)")
    for model in models:
        limit = model_positions(model)
        if limit is not None and max_length > limit:
            raise ValueError(f"max_length={max_length} is longer than {type(model).__name__} can read ({limit} "
                             f"positions in its config): use max_length <= {limit}; longer texts are truncated")


def check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
                                  or value < 1):
            raise ValueError(f"{name}={value!r} ({type(value).__name__}) is invalid: give a positive int, e.g. "
                             f"{name}=8")


# --------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class Encoded:
    """One tokenized text (no padding); ``token_type_ids``: a text pair's segment ids, as ``data.encode`` keeps
    them (None for a single text, or a tokenizer without them)."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]
    token_type_ids: list[int] | None = None


def encode(tokenizer: Any, texts: list[str], max_length: int) -> list[Encoded]:
    """Tokenize ``texts`` with a fast tokenizer, keeping offsets and word ids (specials get None)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: word alignment needs offsets; "
                         "load it with AutoTokenizer.from_pretrained(path, use_fast=True)")
    pairs = [split_pair(t) for t in texts]
    if any(pairs) and not all(pairs):  # each text on its own terms, as data.encode: a single text stays single
        out_of: list[Encoded | None] = [None] * len(texts)
        for idx in ([i for i, p in enumerate(pairs) if p], [i for i, p in enumerate(pairs) if not p]):
            for i, item in zip(idx, encode(tokenizer, [texts[i] for i in idx], max_length)):
                out_of[i] = item
        return out_of
    kwargs = {"truncation": True, "max_length": max_length, "return_offsets_mapping": True,
              "return_special_tokens_mask": True}
    if any(p is not None for p in pairs):  # text_pair data: the tokenizer's pair format, as data.encode feeds it
        first, second = zip(*[p or (t, "") for p, t in zip(pairs, texts)])
        batch = tokenizer(list(first), list(second), **kwargs)
    else:
        batch = tokenizer(texts, **kwargs)
    out = []
    for i in range(len(texts)):
        special = batch["special_tokens_mask"][i]
        offsets = [tuple(o) for o in batch["offset_mapping"][i]]
        words = [None if s else w for w, s in zip(batch.word_ids(i), special)]
        if pairs[i] is not None:  # the second text's offsets and word ids continue after the first text's
            shift = len(pairs[i][0]) + len(PAIR_SEP)
            first_words = 1 + max((w for w, q in zip(words, batch.sequence_ids(i)) if w is not None and q == 0),
                                  default=-1)
            seq = batch.sequence_ids(i)
            offsets = [(a + shift, b + shift) if q == 1 else (a, b) for (a, b), q in zip(offsets, seq)]
            words = [w + first_words if w is not None and q == 1 else w for w, q in zip(words, seq)]
        types = batch["token_type_ids"][i] if pairs[i] is not None and "token_type_ids" in batch else None
        out.append(Encoded(list(batch["input_ids"][i]), offsets, words, None if types is None else list(types)))
    return out


def check_ids(model: Any, items: Sequence[Encoded], who: str = "",
              fix: str = "pass the tokenizer saved with this model") -> None:
    """Raise a ValueError when the tokenizer gives ids past the model's word embeddings (another vocabulary).

    ``who``: e.g. "the student's tokenizer (the teacher's: no student_tokenizer was given)"; ``fix``: what to pass.
    """
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(emb, "num_embeddings", None)
    top = max((max(e.ids) for e in items if e.ids), default=-1)
    if isinstance(rows, int) and top >= rows:
        raise ValueError(f"the tokenizer{' (' + who + ')' if who else ''} gives token id {top}, but "
                         f"{type(model).__name__} has {rows} word embeddings: they have different vocabularies; "
                         f"{fix}.")


def pad_id(tokenizer: Any) -> int:
    """The id used for padding and for the baseline/removed tokens ([PAD], else 0)."""
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0


def collate(items: list[Encoded], pad: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Right-pad a batch.

    Returns:
        input_ids (B, T) long, attention_mask (B, T) long, word_ids (B, T) long with -1 for specials and
        padding, special (B, T) bool (True for specials, not padding).
    """
    width = max(len(e.ids) for e in items)
    ids = np.full((len(items), width), pad, dtype=np.int64)
    words = np.full((len(items), width), -1, dtype=np.int64)
    mask = np.zeros((len(items), width), dtype=np.int64)
    special = np.zeros((len(items), width), dtype=bool)
    for b, e in enumerate(items):
        n = len(e.ids)
        ids[b, :n] = e.ids
        mask[b, :n] = 1
        w = np.array([-1 if x is None else x for x in e.word_ids], dtype=np.int64)
        words[b, :n] = w
        special[b, :n] = w < 0
    to = lambda a: torch.from_numpy(a).to(device)
    return to(ids), to(mask), to(words), to(special)


def segment_ids(model: Any, items: list[Encoded], device: torch.device) -> torch.Tensor | None:
    """token_type_ids (B, T) of a batch (0 at padding) for ``model``; None when no item is a text pair with segment
    ids or the model's forward takes no ``token_type_ids`` (then it is called as before, without them)."""
    from ..models import accepts_token_types

    if all(e.token_type_ids is None for e in items) or not accepts_token_types(model):
        return None
    types = np.zeros((len(items), max(len(e.ids) for e in items)), dtype=np.int64)
    for b, e in enumerate(items):
        if e.token_type_ids is not None:
            types[b, :len(e.token_type_ids)] = e.token_type_ids
    return torch.from_numpy(types).to(device)


# --------------------------------------------------------------------------- model plumbing


def _padding_idx(model: Any) -> int | None:
    """The padding id a model derives its position ids from (RoBERTa-style families), else None."""
    from ..families import POSITION_OFFSET_FAMILIES

    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in POSITION_OFFSET_FAMILIES:
        return None
    embeddings = getattr(getattr(model, "base_model", None), "embeddings", None)
    idx = getattr(embeddings, "padding_idx", None)
    idx = idx if idx is not None else getattr(config, "pad_token_id", None)
    return int(idx) if isinstance(idx, (int, np.integer)) else None


def logits_fn(model: Any, keep_positions: bool = False) -> Callable[..., torch.Tensor]:
    """``f(input_ids (B,T), attention_mask (B,T), token_type_ids (B,T) | None) -> logits (B,C)`` for HF and plain
    modules; ``token_type_ids`` (a text pair's segments, see :func:`segment_ids`) is passed on only when given.

    ``keep_positions``: for inputs whose removed tokens were *replaced* by [PAD] (occlusion, faithfulness) while
    the attention mask still marks the text. RoBERTa-style models number positions by counting non-pad ids, so
    a [PAD] in the text would shift every later token one place left; their position ids are then passed
    explicitly, counted from the attention mask (the text as it was). Other models number by index anyway.
    """
    padding_idx = _padding_idx(model) if keep_positions else None

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        if padding_idx is not None:  # as RoBERTa's create_position_ids_from_input_ids, on the unperturbed text
            real = attention_mask.long()
            kwargs["position_ids"] = real.cumsum(1) * real + padding_idx  # (B, T)
        out = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if hasattr(out, "logits"):
            return out.logits
        return out[0] if isinstance(out, (tuple, list)) else out

    return forward


def model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@contextlib.contextmanager
def prepared(model: Any, device: str | torch.device | None) -> Iterator[torch.device]:
    """Eval mode and frozen parameters while attributing; restores both afterwards.

    Freezing keeps captum's gradients to the embedding activations only: no ``.grad`` is left on
    parameters and the forward saves less for backward.
    """
    if device is not None:
        model.to(device)
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model_device(model)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


GRADIENT_ONLY = ("saliency", "input_x_gradient")  # one forward + backward per text, no expansion


def batch_sizes(device: torch.device, batch_size: int | None, internal_batch_size: int | None,
                method: str | None = None) -> tuple[int, int]:
    """Texts per captum call and sequences per forward pass; None picks a default for the device.

    Big batches pay on a GPU; on a CPU they are slower for the expanding methods (integrated gradients runs
    ``n_steps`` sequences per text: activations fall out of cache, measured in bench/bench_attribution.py), so
    those CPU defaults stay small. A gradient-only method runs one sequence per text: 2 texts per call left
    the CPU mostly waiting on per-call overhead (64 SST-2 texts, 3-layer student: 1.25-2.1 s at 2, 0.85-0.94 s
    at 8-16, 1.4 s at 64), so it takes 16.
    """
    gpu = device.type == "cuda"
    default = 16 if gpu or method in GRADIENT_ONLY else 2
    return batch_size or default, internal_batch_size or (256 if gpu else 64)


@torch.no_grad()
def forward_rows(fn: Callable, ids: torch.Tensor, mask: torch.Tensor, rows: int,
                 types: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (N, C) for N sequences, ``rows`` sequences per forward pass; ``types``: their token_type_ids or None."""
    return torch.cat([fn(*_args(ids[i:i + rows], mask[i:i + rows], None if types is None else types[i:i + rows]))
                      for i in range(0, len(ids), rows)])


def _args(*tensors: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The given tensors without a trailing None: ``fn``'s arguments, and captum's additional forward args (which
    it expands with the inputs), without token_type_ids for a single text."""
    return tensors[:-1] if tensors[-1] is None else tensors


# --------------------------------------------------------------------------- the methods
# Each takes the padded batch (``types``: a text pair's token_type_ids, or None) and returns (scores (B, T) float,
# delta (B,) or None).


def _integrated_gradients(fn, layer, ids, mask, types, words, special, target, pad, n_steps, rows):
    from captum.attr import LayerIntegratedGradients

    baseline = torch.where(special, ids, torch.full_like(ids, pad))  # keep [CLS]/[SEP], rest -> [PAD]
    attr, delta = LayerIntegratedGradients(fn, layer).attribute(
        ids, baselines=baseline, target=target, additional_forward_args=_args(mask, types), n_steps=n_steps,
        internal_batch_size=max(rows, 2 * len(ids)), return_convergence_delta=True)
    return attr.sum(-1), delta  # (B, T, H) -> (B, T)


def _gradient(fn, layer, ids, mask, types, target, times_input: bool):
    from captum.attr import LayerGradientXActivation

    grads = LayerGradientXActivation(fn, layer, multiply_by_inputs=times_input).attribute(
        ids, target=target, additional_forward_args=_args(mask, types))
    return grads.sum(-1) if times_input else grads.norm(dim=-1)  # (B, T, H) -> (B, T)


def _saliency(fn, layer, ids, mask, types, words, special, target, pad, n_steps, rows):
    return _gradient(fn, layer, ids, mask, types, target, times_input=False), None


def _input_x_gradient(fn, layer, ids, mask, types, words, special, target, pad, n_steps, rows):
    return _gradient(fn, layer, ids, mask, types, target, times_input=True), None


def _word_sizes(words: torch.Tensor) -> torch.Tensor:
    """Number of tokens in each token's word (B, T); 1 for specials and padding."""
    idx = words.clamp(min=0)
    counts = torch.zeros(words.shape, device=words.device).scatter_add_(1, idx, (words >= 0).float())
    return counts.gather(1, idx).clamp(min=1)


def _per_token(word_scores: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Spread word scores (B, W) evenly over each word's tokens -> (B, T), so word sums are exact."""
    per = word_scores.gather(1, words.clamp(min=0)) / _word_sizes(words)
    return torch.where(words >= 0, per, torch.zeros_like(per))


def _occlusion(fn, layer, ids, mask, types, words, special, target, pad, n_steps, rows):
    from captum.attr import FeatureAblation

    # Group 0 holds specials and padding (its score is discarded); word w is group w + 1.
    attr = FeatureAblation(fn).attribute(
        ids, baselines=pad, target=target, additional_forward_args=_args(mask, types), feature_mask=words + 1,
        perturbations_per_eval=max(1, rows // len(ids)))
    # captum gives every token of a word the word's score: share it out so word sums are exact.
    return attr.float() / _word_sizes(words), None


def _leave_one_out(fn, layer, ids, mask, types, words, special, target, pad, n_steps, rows):
    # Remove each word from attention (no replacement token at all): (B, W, T) variants.
    n_b, n_t = ids.shape
    n_words = max(int(words.max()) + 1, 1)
    drop = words[:, None, :] == torch.arange(n_words, device=ids.device)[None, :, None]  # (B, W, T)
    var_mask = (mask[:, None, :] * (~drop)).reshape(n_b * n_words, n_t)
    var_ids = ids[:, None, :].expand(n_b, n_words, n_t).reshape(n_b * n_words, n_t)
    var_types = None if types is None else types[:, None, :].expand(n_b, n_words, n_t).reshape(n_b * n_words, n_t)
    full = forward_rows(fn, ids, mask, rows, types).gather(1, target[:, None])  # (B, 1)
    logits = forward_rows(fn, var_ids, var_mask, rows, var_types).reshape(n_b, n_words, -1)
    removed = logits.gather(2, target[:, None, None].expand(n_b, n_words, 1))[..., 0]  # (B, W)
    return _per_token(full - removed, words), None


_IMPL = {"integrated_gradients": _integrated_gradients, "saliency": _saliency,
         "input_x_gradient": _input_x_gradient, "occlusion": _occlusion, "leave_one_out": _leave_one_out}


# --------------------------------------------------------------------------- the verb


def attribute(model: Any, tokenizer: Any, texts: Sequence[str] | str, method: str = "integrated_gradients",
              target: int | Sequence[int] | None = None, *, n_steps: int = 32,
              internal_batch_size: int | None = None, batch_size: int | None = None, device: str | torch.device | None = None,
              max_length: int = 128, precision: str = "fp32") -> list[Attribution]:
    """Attribute each text's target logit to its tokens.

    Texts are sorted by length and attributed ``batch_size`` at a time (one captum call per batch).

    Args:
        model: a sequence classifier, ``model(input_ids=, attention_mask=)`` -> logits (B, C) or an
            output with ``.logits``; needs ``get_input_embeddings()`` for the gradient methods.
        tokenizer: its fast tokenizer.
        texts: N strings (a single str is taken as one text).
        method: one of ``METHODS``: "integrated_gradients" (LayerIntegratedGradients on the input
            embeddings, baseline = [PAD] everywhere except [CLS]/[SEP], attention mask unchanged),
            "saliency" (gradient norm per token embedding), "input_x_gradient", "occlusion" (captum
            FeatureAblation, each word replaced by [PAD], the other tokens keeping their positions), "leave_one_out" (gradient-free: each word
            dropped from the attention mask, batched forward passes).
        target: class to explain: None = the model's prediction, an int, or one int per text.
        n_steps: integration steps (integrated gradients only).
        internal_batch_size: sequences per forward/backward pass inside captum.
        batch_size: texts per captum call.
        device: move the model there first; default: leave it where it is and use its device.
        max_length: tokens kept per text (truncation); from ``MIN_MAX_LENGTH`` (8) up to the model's
            ``config.max_position_embeddings``.
        precision: "fp32" (default: the completeness delta stays small), "bf16", or "auto" (bf16 where
            :mod:`distill_nb.precision` picks it for training on this device); scores are returned in fp32.

    Returns:
        N ``Attribution`` in the order of ``texts``. A text whose logits hold a NaN or inf is no prediction, not
        class 0: it comes back with ``nonfinite=True``, label ``NO_PREDICTION`` and NaN scores.

    Raises:
        ValueError: empty or blank texts (no token the tokenizer keeps), unknown method, bad target (not an int
            class index), max_length too short or beyond the model's positions, unknown precision, non-fast
            tokenizer, a tokenizer of another vocabulary (a vocabulary-trimmed student with the teacher's), a
            gradient method on an int8-quantized model (use "occlusion" or "leave_one_out").
    """
    from ..vocab import check_tokenizer

    texts = check_texts(texts)
    check_method(method)
    check_positive(n_steps=n_steps, internal_batch_size=internal_batch_size, batch_size=batch_size)
    check_max_length(max_length, model)
    check_gradients(model, method)
    check_tokenizer(model, tokenizer)
    targets = check_targets(target, len(texts))
    items = encode(tokenizer, texts, max_length)
    check_readable(items, texts)
    check_ids(model, items)
    pad = pad_id(tokenizer)
    results: list[Attribution | None] = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(items[i].ids))  # length buckets: little padding
    with prepared(model, device) as dev:
        from ..precision import amp_dtype, autocast_for

        autocast = autocast_for(amp_dtype(precision, torch.device(dev)), torch.device(dev))
        batch_size, internal_batch_size = batch_sizes(dev, batch_size, internal_batch_size, method)
        fn = logits_fn(model, keep_positions=method == "occlusion")  # occlusion puts [PAD] in the text
        layer = None
        if method not in ("occlusion", "leave_one_out"):
            if not hasattr(model, "get_input_embeddings"):
                raise ValueError(f"method {method!r} needs model.get_input_embeddings() (the token embedding "
                                 f"layer); {type(model).__name__} has none: use 'occlusion' or 'leave_one_out'")
            layer = model.get_input_embeddings()
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids, mask, words, special = collate([items[i] for i in idx], pad, dev)
            types = segment_ids(model, [items[i] for i in idx], dev)  # a text pair's, where the model takes them
            with autocast():
                logits = forward_rows(fn, ids, mask, internal_batch_size, types).float()  # (B, C)
            pred = predictions(logits).tolist()  # NO_PREDICTION for a row with a NaN/inf logit, never argmax 0
            tgt = _batch_targets([targets[i] for i in idx], pred, logits.shape[1])
            # a row without a prediction has nothing to explain: class 0 only fills the batch, its scores are NaN'd
            tgt_t = torch.tensor([max(t, 0) for t in tgt], device=dev)
            with autocast():
                scores, delta = _IMPL[method](fn, layer, ids, mask, types, words, special, tgt_t, pad, n_steps,
                                              internal_batch_size)
            scores = torch.where(words >= 0, scores, torch.zeros_like(scores)).detach().float().cpu().numpy()
            probs = logits.softmax(-1).cpu().numpy()
            for b, i in enumerate(idx):
                results[i] = _result(texts[i], items[i], tokenizer, scores[b], probs[b], pred[b], tgt[b],
                                     None if delta is None else float(delta[b]), method)
    return results  # type: ignore[return-value]


def _batch_targets(given: list[int | None], pred: list[int], n_classes: int) -> list[int]:
    """The class to explain per row: the given target, else the prediction (``NO_PREDICTION`` for a row whose
    logits hold a NaN/inf); a ValueError for a given target outside the model's classes."""
    bad = [t for t in given if t is not None and not 0 <= t < n_classes]
    if bad:
        raise ValueError(f"target {bad[0]} is out of range: the model has {n_classes} classes")
    return [p if t is None else t for t, p in zip(given, pred)]


def _result(text: str, e: Encoded, tokenizer: Any, scores: np.ndarray, probs: np.ndarray, pred: int, target: int,
            delta: float | None, method: str) -> Attribution:
    """One text's ``Attribution``; a row without a prediction (NaN/inf logits) gets NaN scores, probs and delta."""
    n, broken = len(e.ids), pred == NO_PREDICTION
    nan = lambda a: np.full_like(a, np.nan) if broken else a.copy()  # numbers from NaN/inf mean nothing
    return Attribution(
        text=text, tokens=tuple(tokenizer.convert_ids_to_tokens(e.ids)), token_ids=tuple(e.ids),
        word_ids=tuple(e.word_ids), offsets=tuple(e.offsets), scores=nan(scores[:n]), label=pred,
        probs=nan(probs), target=target, delta=None if delta is None else (float("nan") if broken else delta),
        method=method, token_type_ids=None if e.token_type_ids is None else tuple(e.token_type_ids),
        nonfinite=broken)
