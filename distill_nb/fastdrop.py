"""Dropout for CPU training, with masks cut from random words instead of one Bernoulli draw per element.

On a CPU, torch draws each dropout mask element with ``bernoulli_`` (about 7 ns an element on one thread), and
``scaled_dot_product_attention`` with dropout leaves its fused kernel for the math path, which computes the whole
attention in fp32. On a bf16 step of a 3-layer MiniLM-sized student over 128-token texts the masks alone were 14 %
of the step. Here a keep mask is cut from 15-bit slices of int64 random words (``random_``: four mask elements
per draw from the same global generator, so ``torch.manual_seed`` and a checkpoint's saved RNG state reproduce
it). Attention with dropout is computed like transformers' eager attention, with the numerics of mixed-precision
eager attention on CUDA (scores in the autocast dtype, softmax in fp32, probabilities back in the autocast dtype);
SDPA's math path, which torch takes on a CPU as soon as there is dropout, computes all of it in fp32.

The drop probability is ``q = round(p * 2**15) / 2**15`` (0.100006 for p = 0.1) and kept values are scaled by
``1 / (1 - q)``, so every output keeps its expectation; a ``p`` that 15 bits cannot represent within 0.1 % (and
any tensor not on the CPU) gets torch's own dropout. Training recipes are unchanged: same p, same places.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.bert.modeling_bert import eager_attention_forward

BITS = 15
RESOLUTION = 1 << BITS
MAX_REL_ERROR = 1e-3  # the drop probability used may differ from the one asked by this fraction of it
SDPA, EAGER = "distill_nb_sdpa", "distill_nb_eager"  # the attention implementations this module registers


def drop_probability(p: float) -> float | None:
    """The probability the fast path drops with for ``p``, or None when 15 bits cannot represent ``p`` closely."""
    if not 0 < p < 1:  # also NaN
        return None
    q = round(p * RESOLUTION) / RESOLUTION
    return q if 0 < q < 1 and abs(q - p) <= MAX_REL_ERROR * p else None


def keep_mask(shape: torch.Size | tuple[int, ...], q: float) -> torch.Tensor:
    """A bool CPU tensor of ``shape``, each element False (dropped) with probability ``q`` (a multiple of 2**-15),
    independently: four elements from each 64-bit word of the global CPU generator."""
    n = 1
    for size in shape:
        n *= size
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_()  # uniform over [0, 2**63): 63 random bits
    slices = words.view(torch.int16)[:n].view(shape)  # the top slice's sign bit is always 0: keep 15 bits
    return (slices & (RESOLUTION - 1)) >= round(q * RESOLUTION)


class _KeepScaled(torch.autograd.Function):
    """``x * mask * scale`` that saves the bool mask (1 byte an element) for backward; the backward is itself
    differentiable (double backward, as attribution alignment needs)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return x * mask * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask * ctx.scale, None, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with the fast mask on CPU tensors (see the module docstring)."""
    if not training or p == 0:
        return x
    q = drop_probability(p)
    if x.device.type != "cpu" or q is None:
        return F.dropout(x, p, training)
    return _KeepScaled.apply(x, keep_mask(x.shape, q), 1.0 / (1.0 - q))


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same state dict: none) whose CPU masks come from :func:`dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def _eager(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           attention_mask: torch.Tensor | None, scaling: float | None, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention (query/key/value: (batch, heads, tokens, head_dim); additive float mask
    broadcastable to (batch, heads, tokens, tokens)) with :func:`dropout` on the probabilities, in the numerics of
    mixed-precision eager attention on CUDA: the score matmul in the autocast dtype, the softmax in fp32, the
    probabilities back in the values' dtype for dropout and the product with the values.
    Returns ((batch, tokens, heads, head_dim), probabilities after dropout)."""
    weights = torch.matmul(query, key.transpose(2, 3)) * (query.size(-1) ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(value.dtype)
    weights = dropout(weights, p, module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _cpu_dropout(query: torch.Tensor, p: float) -> bool:
    return bool(p) and query.device.type == "cpu" and drop_probability(p) is not None


def sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDPA, except CPU attention with dropout, which SDPA would compute in its fp32 math path."""
    if _cpu_dropout(query, dropout):
        return _eager(module, query, key, value, attention_mask, scaling, dropout)
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                  **kwargs)


def eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention (the probabilities are returned, for attention transfer) with the fast CPU dropout."""
    if _cpu_dropout(query, dropout):
        return _eager(module, query, key, value, attention_mask, scaling, dropout)
    return eager_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                   **kwargs)


for _name, _attention in ((SDPA, sdpa_attention), (EAGER, eager_attention)):
    AttentionInterface.register(_name, _attention)
    AttentionMaskInterface.register(_name, eager_mask)  # an additive float mask, as eager attention takes


def use_fast_dropout(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Give a model about to be trained on the CPU the fast dropout, in place: every ``nn.Dropout`` becomes
    :class:`Dropout`, and attention (where the family takes a registered attention function) becomes
    :func:`sdpa_attention` or :func:`eager_attention` after what it was. Anywhere else it is left as it is.

    Returns:
        ``model``. Its weights and state dict are untouched; a saved config does not record the change.
    """
    if torch.device(device).type != "cpu":
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, Dropout(child.p))
    now = getattr(getattr(model, "config", None), "_attn_implementation", None)  # None: not a transformers model
    target = {"sdpa": SDPA, "eager": EAGER}.get(now)
    if target is not None:
        try:
            model.set_attn_implementation(target)
        except (ValueError, ImportError, AttributeError):  # a family without registered attention functions
            pass
    return model
