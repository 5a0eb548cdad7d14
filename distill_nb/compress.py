"""Compress a trained student further: int8 quantization, magnitude pruning, head pruning, vocabulary trimming.

Each function takes a model (left untouched: it works on a copy) and returns :class:`Compressed`, the new
model plus a plain account of what was done. Sizes are measured by serialising the weights
(:func:`state_size_bytes`), never estimated. Magnitude pruning zeroes weights but keeps dense tensors, so it
does *not* shrink the file or speed up dense kernels on its own; head pruning removes rows and columns, so it
shrinks both; vocabulary trimming removes word-embedding rows (the file shrinks, the speed barely changes) and
comes with its own tokenizer (:attr:`Compressed.tokenizer`).

A head-pruned model records the removed heads in ``config.pruned_heads`` (transformers' own field, in the
original head numbering). transformers 4 rebuilds the pruned shapes from it in ``from_pretrained``;
transformers 5 dropped that, so load a saved head-pruned model with :func:`load_pruned` (it works on both).
"""

from __future__ import annotations

import copy
import io
import math
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import layer_list


@dataclass(frozen=True)
class Compressed:
    model: nn.Module
    method: str  # "int8-dynamic", "magnitude", "heads"
    summary: str  # one line for tables and logs: what was done
    details: dict[str, Any] = field(default_factory=dict)  # numbers behind the summary (JSON-friendly)
    tokenizer: Any = None  # a new tokenizer the model needs (vocabulary trimming), else None: keep the old one


# --- sizes -----------------------------------------------------------------------------------------------------
def state_size_bytes(model: nn.Module) -> tuple[int, str]:
    """Bytes of the model's weights as they would be written to disk, and the format used.

    safetensors for plain tensors (what ``save_pretrained`` writes); ``torch.save`` of the state dict for a
    quantized model, whose packed int8 weights safetensors cannot hold.
    """
    state = model.state_dict()
    plain = all(isinstance(v, torch.Tensor) and not v.is_quantized for v in state.values())
    if plain:
        from safetensors.torch import save

        seen: set[tuple] = set()
        storages: set[int] = set()
        tensors = {}
        for k, v in state.items():
            # a tensor is its storage *and* the window into it: tied weights (same window) are stored once, as
            # save_pretrained does, while distinct views of one storage (a fused q/k/v split in three) each count
            key = (v.data_ptr(), tuple(v.shape), v.stride(), v.dtype) if v.numel() else (id(v),)
            if key in seen:
                continue
            seen.add(key)
            storage = v.untyped_storage().data_ptr() if v.numel() else id(v)
            t = v.detach().cpu()
            # safetensors refuses tensors that share memory: copy a second view of an already-kept storage
            tensors[k] = t.clone() if storage in storages else t.contiguous()
            storages.add(storage)
        return len(save(tensors)), "safetensors"
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getbuffer().nbytes, "torch.save"


def sparsity(model: nn.Module, *, only: Sequence[nn.Module] | None = None) -> float:
    """Fraction of exactly-zero weights among ``only``'s Linear weights (default: every parameter)."""
    tensors = [m.weight for m in only] if only is not None else list(model.parameters())
    total = sum(t.numel() for t in tensors)
    return sum(int((t == 0).sum()) for t in tensors) / max(total, 1)


def is_quantized(model: nn.Module) -> bool:
    """True for a model with quantized modules (e.g. the result of :func:`quantize_int8`)."""
    return any(type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized"))
               for m in model.modules())


def _refuse_quantized(model: nn.Module, verb: str) -> None:
    if is_quantized(model):
        raise ValueError(f"the model is already quantized (int8): {verb} before quantize_int8 (use the float "
                         "model, then quantize_int8 the result).")


def _check_texts(texts: Sequence[str], purpose: str) -> list[str]:
    """``texts`` as a list (a Series, array or generator too), or a TypeError/ValueError saying what to pass."""
    if isinstance(texts, str):
        raise TypeError(f"texts is one string ({texts[:40]!r}): pass a list of example texts, e.g. [{texts[:40]!r}]")
    if isinstance(texts, Mapping):
        raise TypeError(f"texts is a {type(texts).__name__}: pass a list of strings (e.g. list(texts.values()))")
    texts = list(texts)
    if len(texts) == 0:
        raise ValueError(f"texts is empty: {purpose} needs example texts; pass a non-empty list of strings "
                         "(e.g. the training texts)")
    return texts


def _fraction(value: Any, name: str, what: str) -> float:
    """``value`` as a float in [0, 1), or a ValueError naming what was given and what to give."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0 <= value < 1:
        raise ValueError(f"{name}={value!r} ({type(value).__name__}) is invalid: give the fraction of {what} as a "
                         f"number in [0, 1), e.g. {name}=0.3.")
    return float(value)


# --- int8 ------------------------------------------------------------------------------------------------------
def quantize_int8(model: nn.Module) -> Compressed:
    """Dynamic int8 quantization of every ``nn.Linear`` (weights int8, activations quantized per batch).

    CPU only (the quantized kernels are fbgemm/x86/qnnpack). Embeddings and LayerNorms stay fp32, so a model
    whose embeddings are a large share of its weights (MiniLM: about half) shrinks far less than 4x.
    Uses ``torch.ao.quantization.quantize_dynamic``: deprecated in favour of torchao, but still the one API
    with int8 CPU kernels in torch 2.x without an extra package.
    """
    if is_quantized(model):
        raise ValueError("the model is already quantized (int8): pass the float model to quantize_int8 (once; "
                         "quantizing again would find no Linear layers and change nothing).")
    source = copy.deepcopy(model).cpu().eval()
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in source.parameters() if p.is_floating_point()
                     and p.dtype != torch.float32})
    if dtypes:  # the int8 kernels take fp32 activations: a bf16/fp16 model is quantized from an fp32 copy
        source = source.float()
    linear = [n for n, m in source.named_modules() if isinstance(m, nn.Linear)]
    linear_params = sum(m.weight.numel() for m in source.modules() if isinstance(m, nn.Linear))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices, repeated per module
        from torch.ao.quantization import quantize_dynamic

        quantized = quantize_dynamic(source, {nn.Linear}, dtype=torch.qint8)
    total = sum(p.numel() for p in model.parameters())
    converted = f"; converted from {'/'.join(dtypes)} to fp32 first" if dtypes else ""
    return Compressed(quantized, "int8-dynamic",
                      f"int8 dynamic quantization of {len(linear)} Linear layers "
                      f"({100 * linear_params / total:.0f}% of the weights; embeddings stay fp32{converted})",
                      {"linear_layers": len(linear), "quantized_params": linear_params, "total_params": total,
                       "engine": torch.backends.quantized.engine, "converted_from": dtypes})


# --- magnitude pruning -----------------------------------------------------------------------------------------
def encoder_linears(model: nn.Module) -> list[nn.Module]:
    """The Linear layers inside the transformer blocks (not embeddings, pooler or classifier)."""
    layers = layer_list(model)
    return [m for layer in layers for m in layer.modules() if isinstance(m, nn.Linear)]


def magnitude_prune(model: nn.Module, amount: float, *, scope: str = "global") -> Compressed:
    """Zero the ``amount`` fraction of smallest-|w| weights of the encoder's Linear layers, permanently.

    Args:
        amount: fraction in [0, 1) of those weights to zero.
        scope: "global" ranks all encoder Linear weights together (torch's ``global_unstructured``);
            "layer" prunes ``amount`` of each Linear separately.

    The dense tensors keep their shape: the file size and dense-kernel speed are unchanged (a sparse format or
    sparse kernels would be needed to cash in the zeros).
    """
    from torch.nn.utils import prune

    amount = _fraction(amount, "amount", "weights to zero")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope={scope!r} is invalid: use 'global' or 'layer'.")
    _refuse_quantized(model, "prune")
    pruned = copy.deepcopy(model).eval()
    targets = encoder_linears(pruned)
    if scope == "global":
        prune.global_unstructured([(m, "weight") for m in targets], pruning_method=prune.L1Unstructured,
                                  amount=amount)
    else:
        for m in targets:
            prune.l1_unstructured(m, "weight", amount=amount)
    for m in targets:
        prune.remove(m, "weight")  # fold the mask into the weight: a plain model again
    achieved = sparsity(pruned, only=targets)
    overall = sparsity(pruned)
    return Compressed(pruned, "magnitude",
                      f"magnitude pruning ({scope}): {100 * achieved:.1f}% of encoder Linear weights zeroed "
                      f"({100 * overall:.1f}% of all weights); dense storage, so no smaller on disk",
                      {"amount": amount, "scope": scope, "encoder_sparsity": achieved, "overall_sparsity": overall,
                       "pruned_modules": len(targets)})


# --- attention heads -------------------------------------------------------------------------------------------
def _attention_parts(layer: nn.Module) -> tuple[nn.Module, list[nn.Linear], nn.Linear]:
    """(self-attention module, [query, key, value], output projection) of one BERT-style block."""
    attn = getattr(layer, "attention", None)
    self_attn = getattr(attn, "self", None)
    out = getattr(getattr(attn, "output", None), "dense", None)
    qkv = [getattr(self_attn, n, None) for n in ("query", "key", "value")]
    if self_attn is None or out is None or any(not isinstance(m, nn.Linear) for m in qkv):
        raise ValueError(f"head pruning supports BERT-style blocks (attention.self.query/key/value and "
                         f"attention.output.dense); {type(layer).__name__} has another layout: use "
                         "magnitude_prune(model, amount) or quantize_int8(model) to compress this model instead.")
    return self_attn, qkv, out


def _head_size(model: nn.Module) -> int:
    return model.config.hidden_size // model.config.num_attention_heads


def heads_per_layer(model: nn.Module) -> list[int]:
    """Attention heads left in each layer (reads the weights, so it is right after pruning)."""
    d = _head_size(model)
    return [_attention_parts(layer)[1][0].out_features // d for layer in layer_list(model)]


def pruned_heads(model_or_config: Any, source: str = "config.pruned_heads") -> dict[int, list[int]]:
    """``config.pruned_heads`` as ``{layer: [head, ...]}`` in the original head numbering ({} when none).

    JSON turns the layer keys into strings; they come back as ints here. ``source`` names where the value came
    from (e.g. the config.json it was read from) in the error.

    Raises:
        ValueError: a value that is not such a dict, a layer or head that is not a whole number or outside the
            config's layers/heads, or every head of a layer (a layer without attention cannot be rebuilt).
    """
    config = getattr(model_or_config, "config", model_or_config)
    raw = getattr(config, "pruned_heads", None)
    if raw is None:
        return {}
    fix = (f"fix or remove pruned_heads in {source}: it must be {{layer: [head, ...]}} in the original head "
           'numbering, as remove_heads writes it (e.g. {"0": [1, 3]})')
    if not isinstance(raw, Mapping):  # a bad value in a file: a ValueError like every other pruned_heads error
        raise ValueError(f"pruned_heads={raw!r} ({type(raw).__name__}) is not a dict: {fix}.")  # noqa: TRY004
    n_layers = _config_count(config, "num_hidden_layers")
    n_heads = _config_count(config, "num_attention_heads")
    out: dict[int, list[int]] = {}
    for key, value in raw.items():
        layer = _whole(key, strings=True)
        if layer is None or not 0 <= layer < (n_layers if n_layers is not None else layer + 1):
            span = f"the model has {n_layers} layers (0..{n_layers - 1})" if n_layers else "layers are numbered 0.."
            raise ValueError(f"pruned_heads names layer {key!r}, but {span}: {fix}.")
        heads = [_whole(h) for h in value] if isinstance(value, (list, tuple, set, frozenset)) else [None]
        top = n_heads if n_heads is not None else math.inf
        if any(h is None or not 0 <= h < top for h in heads):
            span = f"heads 0..{n_heads - 1}" if n_heads else "whole head numbers"
            raise ValueError(f"pruned_heads[{key!r}]={value!r} is not a list of heads of layer {layer} "
                             f"({span}): {fix}.")
        chosen = sorted(set(out.get(layer, [])) | set(heads))
        if n_heads is not None and len(chosen) >= n_heads:
            raise ValueError(f"pruned_heads[{key!r}]={value!r} removes all {n_heads} heads of layer {layer}: a layer "
                             f"keeps at least one; {fix}.")
        if chosen:
            out[layer] = chosen
    return out


def _whole(value: Any, strings: bool = False) -> int | None:
    """``value`` as an int when it is one (or, with ``strings``, a string of digits, as JSON keys are), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if strings and isinstance(value, str) and value.strip().lstrip("-").isdigit() and value.isascii():
        return int(value)
    return None


def _config_count(config: Any, name: str) -> int | None:
    value = getattr(config, name, None)
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0 else None


def _library_prunes() -> bool:
    """True where transformers still prunes heads itself (4.x: ``prune_heads`` + ``config.pruned_heads``)."""
    from transformers import PreTrainedModel

    return hasattr(PreTrainedModel, "prune_heads")


def texts_batch(tokenizer: Any, texts: Sequence[str], max_length: int, device: torch.device,
                model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (B, S) of ``texts`` as training encodes them (a text pair as a pair, with its
    token_type_ids when ``model`` takes them)."""
    from .data import collate, encode
    from .models import accepts_token_types

    encoded = encode(tokenizer, list(texts), max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    token_types = model is not None and accepts_token_types(model)
    return {k: v.to(device) for k, v in collate(encoded, range(len(encoded)), pad, token_types=token_types).items()}


def head_importance(model: nn.Module, tokenizer: Any, texts: Sequence[str], labels: Sequence[int] | None = None,
                    *, batch_size: int = 32, max_length: int = 128) -> torch.Tensor:
    """Importance of each attention head, (layers, heads): Michel et al. (2019), "Are sixteen heads ...".

    A mask ``xi_h = 1`` multiplies each head's output; the score is the mean over examples of
    ``|d loss / d xi_h|`` (the first-order change in loss when the head is removed), normalised per layer
    by its L2 norm as in the paper. The loss is cross-entropy against ``labels``, or against the model's own
    predictions when no labels are given. Computed in length-sorted batches; a text pair (``tables.PAIR_SEP``)
    is encoded as the tokenizer's pair, as training encodes it.

    Raises:
        ValueError: empty ``texts``, ``labels`` of another length or not class ids of the model, a quantized
            model, a tokenizer that does not fit a vocabulary-trimmed model, a ``batch_size`` that is not a
            positive int, a ``max_length`` outside what the model reads, and importance that is not finite (the
            model's loss is NaN/inf on these texts: nothing was measured).
    """
    from .evaluation import check_labels
    from .vocab import check_tokenizer

    _check_sizes(model, batch_size, max_length)
    texts = _check_texts(texts, "head importance")
    if labels is not None:
        labels = check_labels(labels, len(texts), getattr(model.config, "num_labels", None))
    _refuse_quantized(model, "prune heads")
    check_tokenizer(model, tokenizer)
    layers = layer_list(model)
    device = next(model.parameters()).device
    n_heads = heads_per_layer(model)
    d = _head_size(model)
    masks = [torch.ones(h, device=device, requires_grad=True) for h in n_heads]
    hooks = []
    for layer, mask in zip(layers, masks):
        _, _, out = _attention_parts(layer)

        def scale(module: nn.Module, args: tuple, mask: torch.Tensor = mask) -> tuple:
            (x,) = args  # (B, S, heads * d): the heads' outputs side by side, before the output projection
            b, s, _ = x.shape
            # the mask in the activations' dtype: an fp32 mask would promote a bf16/fp16 model's activations
            return ((x.view(b, s, -1, d) * mask.to(x.dtype).view(1, 1, -1, 1)).view(b, s, -1),)
        hooks.append(out.register_forward_pre_hook(scale))
    was_training = model.training
    model.eval()
    scores = [torch.zeros(h, device=device) for h in n_heads]
    nonfinite = 0  # texts whose logits hold a NaN/inf: their gradients poison every head's score
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = texts_batch(tokenizer, [texts[i] for i in idx], max_length, device, model)
            logits = model(**batch).logits.float()
            nonfinite += int((~torch.isfinite(logits).all(-1)).sum())
            target = (torch.tensor([labels[i] for i in idx], device=device) if labels is not None
                      else logits.argmax(-1).detach())
            loss = nn.functional.cross_entropy(logits, target, reduction="sum")
            grads = torch.autograd.grad(loss, masks)
            for acc, g in zip(scores, grads):
                acc += g.abs()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = torch.zeros(len(n_heads), max(n_heads))
    for i, s in enumerate(scores):
        s = s / len(texts)
        out[i, :len(s)] = (s / s.norm().clamp_min(1e-12)).cpu()
    _check_finite_importance(model, out, nonfinite, len(texts))
    return out


def _check_sizes(model: nn.Module, batch_size: Any, max_length: Any) -> None:
    """``batch_size`` a positive int, ``max_length`` what the model can read: the attribution checks and words
    (a batch_size of 0 or less measured nothing: all-zero scores, or a bare range() error)."""
    from .attribution.methods import check_max_length, check_positive

    if batch_size is None:
        raise ValueError("batch_size=None is invalid: give a positive int, e.g. batch_size=32")
    check_positive(batch_size=batch_size)
    check_max_length(max_length, model)


def _check_finite_importance(model: nn.Module, scores: torch.Tensor, nonfinite: int, n_texts: int) -> None:
    """A ValueError when a head's importance is NaN/inf, or a text's logits were (a -inf logit can leave the loss
    finite, but such a row is no prediction: evaluation.predictions): nothing was measured to rank heads by."""
    bad = int((~torch.isfinite(scores)).sum())
    if not bad and not nonfinite:
        return
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    why = (f"its logits are NaN/inf on {nonfinite} of {n_texts} texts" if nonfinite
           else "its gradients overflow to NaN/inf")
    low = "" if dtype == "float32" else f", or its numbers overflow in {dtype} (prune model.float() instead)"
    raise ValueError(f"head importance is not finite (NaN/inf) for {bad} of {scores.numel()} heads, or not "
                     f"measured, so it cannot rank them: {why}. Its weights may hold NaN/inf{low}; check the model (one forward pass on a "
                     "few texts) or prune another one. No head was removed.")


def _heads_plan(model: nn.Module, heads: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
    """Check every layer's request before anything is cut: ``{layer: sorted head indices}`` (current numbering).

    Raises:
        ValueError: a missing layer, a head index outside the layer, or every head of a layer.
    """
    if not isinstance(heads, Mapping):
        raise TypeError(f"heads={heads!r} ({type(heads).__name__}) is not a dict: give {{layer: [head, ...]}}, "
                        "e.g. {0: [1, 3]}.")
    layers = layer_list(model)
    d = _head_size(model)
    plan: dict[int, list[int]] = {}
    for li, drop in heads.items():
        if not drop:
            continue
        if isinstance(li, bool) or not hasattr(li, "__index__") or not 0 <= li < len(layers):
            raise ValueError(f"layer {li!r} does not exist (layers 0..{len(layers) - 1}): use layer indices in that "
                             f"range as the keys of heads.")
        n = _attention_parts(layers[int(li)])[1][0].out_features // d
        bad = sorted((h for h in drop if isinstance(h, bool) or not hasattr(h, "__index__") or not 0 <= h < n),
                     key=repr)
        if bad:
            raise ValueError(f"layer {li} has heads 0..{n - 1}; cannot remove {bad}: use head indices in that range "
                             "(heads_per_layer(model) gives each layer's count).")
        chosen = sorted(set(plan.get(int(li), [])) | {int(h) for h in drop})
        if len(chosen) >= n:
            raise ValueError(f"removing all {n} heads of layer {li} would cut the layer's attention: keep one "
                             f"(remove at most {n - 1} heads of that layer).")
        plan[int(li)] = chosen
    return plan


def _slice_heads(layer: nn.Module, drop: Sequence[int], d: int) -> None:
    """Cut heads ``drop`` (current numbering) out of one block's q/k/v rows and output-projection columns."""
    self_attn, qkv, out = _attention_parts(layer)
    n = qkv[0].out_features // d
    keep_heads = [h for h in range(n) if h not in set(drop)]
    keep = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep_heads]).to(out.weight.device)
    with torch.no_grad():
        for lin in qkv:
            lin.weight = nn.Parameter(lin.weight[keep].clone())
            lin.bias = nn.Parameter(lin.bias[keep].clone()) if lin.bias is not None else None
            lin.out_features = len(keep)
        out.weight = nn.Parameter(out.weight[:, keep].clone())
        out.in_features = len(keep)
    self_attn.num_attention_heads = len(keep_heads)
    self_attn.all_head_size = len(keep)


def _original_numbering(model: nn.Module, plan: dict[int, list[int]]) -> dict[int, list[int]]:
    """``plan`` (heads numbered as they are now) in the numbering of the unpruned model, as config.pruned_heads
    keeps it: after heads 0 and 1 are gone, head 0 of the layer is the original head 2."""
    done = pruned_heads(model)
    n = model.config.num_attention_heads
    out = {}
    for li, drop in plan.items():
        left = [h for h in range(n) if h not in set(done.get(li, []))]
        out[li] = [left[h] for h in drop]
    return out


def remove_heads(model: nn.Module, heads: dict[int, Sequence[int]]) -> nn.Module:
    """Remove attention heads in place: ``{layer: [head, ...]}``; at least one head stays in every layer.

    Heads are numbered as the model has them now (:func:`heads_per_layer`). Every layer's request is checked
    before anything is cut, so a refused call leaves the model as it was. Slices the query/key/value rows and
    the output projection's columns of the chosen heads, so the weights (and the work) really shrink, and
    records them in ``config.pruned_heads`` (original numbering, transformers' own field) so the saved model
    can be rebuilt: ``from_pretrained`` in transformers 4, :func:`load_pruned` in any version (transformers 5
    dropped ``prune_heads``; its BERT attention infers the head count from the projection width, so the sliced
    model runs unchanged). A model that still has ``prune_heads`` (transformers 4) is pruned with it instead.
    """
    _refuse_quantized(model, "prune heads")
    plan = _heads_plan(model, heads)
    if not plan:
        return model
    original = _original_numbering(model, plan)
    if hasattr(model, "prune_heads"):  # transformers 4: it records config.pruned_heads itself
        model.prune_heads(original)
        return model
    layers = layer_list(model)
    d = _head_size(model)
    for li, drop in plan.items():
        _slice_heads(layers[li], drop, d)
    done = pruned_heads(model)
    for li, drop in original.items():
        done[li] = sorted(set(done.get(li, [])) | set(drop))
    model.config.pruned_heads = done
    return model


def load_pruned(folder: str | os.PathLike, model_class: Any = None) -> nn.Module:
    """Load a head-pruned model saved with ``save_pretrained`` (any transformers version), in eval mode.

    transformers 5 builds every layer with ``config.num_attention_heads`` heads and cannot read the pruned
    weights back; this builds the model from its config, cuts the heads ``config.pruned_heads`` names, then
    loads the weights (strictly: every weight must fit). A model without pruned heads, or transformers 4
    (which rebuilds them itself), goes through ``from_pretrained``.

    Args:
        folder: the saved model (config.json + *.safetensors).
        model_class: e.g. ``AutoModelForMaskedLM``; default ``AutoModelForSequenceClassification``.

    Raises:
        ValueError: a ``pruned_heads`` in config.json that is not ``{layer: [head, ...]}`` of the model's layers
            and heads (see :func:`pruned_heads`), or weights that do not fit the pruned model.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cls = model_class or AutoModelForSequenceClassification
    config = AutoConfig.from_pretrained(folder)
    plan = pruned_heads(config, str(Path(folder) / "config.json"))  # checked before anything is built
    if not plan or _library_prunes():
        return cls.from_pretrained(folder).eval()
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} has no *.safetensors weights: save the model with "
                                "model.save_pretrained(folder) (safetensors is the default).")
    model = cls.from_config(config)
    layers = layer_list(model)
    d = _head_size(model)
    for li, drop in plan.items():
        _slice_heads(layers[li], drop, d)  # a fresh model: the original numbering is the current one
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    params = model.state_dict(keep_vars=True)
    result = model.load_state_dict(state, strict=False)
    loaded = {id(params[k]) for k in state if k in params}
    missing = [k for k in result.missing_keys if id(params[k]) not in loaded]  # tied weights come with their twin
    if missing or result.unexpected_keys:
        raise ValueError(f"{folder} does not fit {cls.__name__} with the heads config.pruned_heads removes: "
                         f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}. Pass the model_class "
                         "it was saved from (e.g. model_class=AutoModelForMaskedLM).")
    model.config.pruned_heads = plan  # int layer keys again (JSON made them strings)
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())  # the dtype it was saved in (from_config builds fp32)
    return model.eval()


def prune_heads(model: nn.Module, tokenizer: Any, texts: Sequence[str], labels: Sequence[int] | None = None, *,
                fraction: float = 0.25, batch_size: int = 32, max_length: int = 128) -> Compressed:
    """Remove the ``fraction`` of heads with the lowest :func:`head_importance`, ranked over all layers.

    Every layer keeps at least its most important head. Returns a copy; ``model`` is not changed. The copy
    saves with ``save_pretrained`` and loads back with :func:`load_pruned` (``config.pruned_heads`` records the
    removed heads).

    Raises:
        ValueError: as :func:`head_importance` (importance that is NaN/inf was not measured: nothing is pruned
            on it), and importance that is 0 for every head (nothing to rank them by).
    """
    fraction = _fraction(fraction, "fraction", "heads to remove")
    _check_sizes(model, batch_size, max_length)
    texts = _check_texts(texts, "head importance")
    _refuse_quantized(model, "prune heads")
    pruned = copy.deepcopy(model).eval()
    before = heads_per_layer(pruned)
    scores = head_importance(pruned, tokenizer, texts, labels, batch_size=batch_size, max_length=max_length)
    if not scores.any():  # ties everywhere: the "ranking" would be the heads' order
        raise ValueError(f"every head's importance is 0 on these {len(texts)} texts: the loss does not change with "
                         "any head, so they cannot be ranked (the model may be saturated on them). Pass more or "
                         "other texts, or their labels; no head was removed.")
    total = sum(before)
    target = round(fraction * total)
    ranked = sorted(((scores[li, h].item(), li, h) for li, n in enumerate(before) for h in range(n)))
    drop: dict[int, list[int]] = {li: [] for li in range(len(before))}
    for _, li, h in ranked:
        if sum(len(v) for v in drop.values()) >= target:
            break
        if len(drop[li]) < before[li] - 1:  # never the last head of a layer
            drop[li].append(h)
    params_before = sum(p.numel() for p in pruned.parameters())
    remove_heads(pruned, drop)
    after = heads_per_layer(pruned)
    params_after = sum(p.numel() for p in pruned.parameters())
    removed = total - sum(after)
    return Compressed(pruned, "heads",
                      f"removed {removed}/{total} attention heads by importance (Michel et al.) over "
                      f"{len(texts)} examples; heads per layer {before} -> {after} (after save_pretrained, load it "
                      "back with distill_nb.compress.load_pruned(folder): transformers 5 no longer rebuilds pruned "
                      "heads in from_pretrained)",
                      {"fraction": fraction, "removed": removed, "total": total, "heads_before": before,
                       "heads_after": after, "dropped": {str(k): v for k, v in drop.items()},
                       "params_before": params_before, "params_after": params_after,
                       "scores": scores.tolist(), "importance_examples": len(texts),
                       "pruned_heads": {str(k): v for k, v in pruned_heads(pruned).items()},
                       "reload": "distill_nb.compress.load_pruned(folder) after save_pretrained(folder)"})


# --- vocabulary ------------------------------------------------------------------------------------------------
def trim_vocabulary(model: nn.Module, tokenizer: Any, texts: Sequence[str], size: str | int = "task", *,
                    eval_texts: Sequence[str] | None = None, max_length: int | None = 128) -> Compressed:
    """Keep only the word embeddings of the tokens ``texts`` use (see :mod:`distill_nb.vocab`); a copy.

    Args:
        texts: the training texts (the vocabulary is chosen from them, never from the eval split).
        size: "task" or an integer number of tokens (the most frequent, then topped up).
        eval_texts: when given, ``details["eval_outside"]`` counts their tokens outside the kept vocabulary
            (they read as [UNK]); the summary says how many.

    Returns:
        :class:`Compressed` whose ``tokenizer`` must be used with the model (``save_pretrained`` both).
    """
    from .vocab import outside_vocab, trim_student

    texts = _check_texts(texts, "vocabulary trimming")
    source = copy.deepcopy(model).cpu().eval()
    before = sum(p.numel() for p in source.parameters())
    trimmed, new_tok, trim = trim_student(source, tokenizer, texts, size, max_length=max_length)
    after = sum(p.numel() for p in trimmed.parameters())
    details: dict[str, Any] = {"size": trim.size, "source_size": trim.source_size, "mode": size,
                               "task_tokens": trim.task_tokens, "texts": len(texts), "params_before": before,
                               "params_after": after}
    summary = (f"vocabulary trimmed to {trim.size:,} of {trim.source_size:,} tokens ({size}: from {len(texts):,} "
               f"texts); params {before:,} -> {after:,} ({100 * after / before:.0f}%)")
    if eval_texts is not None:
        out = outside_vocab(tokenizer, trim, eval_texts, max_length=max_length)
        details["eval_outside"] = out
        summary += (f"; {out['outside']:,} of {out['tokens']:,} eval tokens ({100 * out['outside_fraction']:.1f}%) "
                    f"fall outside and read as [UNK]")
    return Compressed(trimmed, "vocab", summary, details, tokenizer=new_tok)
