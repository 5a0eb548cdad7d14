"""The CPU dropout: same probability and expectation as torch's, reproducible, differentiable twice, and a
drop-in for every family's attention (padding still masked, eval untouched, state dict unchanged)."""

import copy
import math

import pytest
import torch
from torch import nn

from distill_nb import fastdrop
from distill_nb.fastdrop import Dropout, drop_probability, dropout, keep_mask, use_fast_dropout


@pytest.mark.parametrize("p, expected", [
    (0.1, 3277 / 32768), (0.5, 0.5), (0.25, 0.25), (0.9, 29491 / 32768), (2 ** -15, 2 ** -15),
    (0.001, None),  # 33/32768 is 0.7 % off: torch's own dropout
    (1e-6, None), (0.0, None), (1.0, None), (1 - 1e-6, None), (-0.1, None), (1.5, None),
    (float("nan"), None), (float("inf"), None),
])
def test_drop_probability_is_the_asked_one_or_none(p, expected):
    assert drop_probability(p) == expected
    if expected is not None:
        assert abs(expected - p) <= 1e-3 * p


@pytest.mark.parametrize("q", [3277 / 32768, 0.5, 29491 / 32768])
def test_keep_mask_drops_at_the_rate_in_every_slice_of_a_word_independently(q):
    torch.manual_seed(0)
    n = 1 << 20
    dropped = ~keep_mask((n,), q)
    sigma = math.sqrt(q * (1 - q) / (n // 4))
    for lane in range(4):  # the four 16-bit slices of each word, the top one with its sign bit forced to 0
        assert abs(dropped[lane::4].float().mean().item() - q) < 5 * sigma, lane
    a, b = dropped[:-1].float(), dropped[1:].float()  # neighbours (same word and across words) uncorrelated
    assert abs(((a - q) * (b - q)).mean().item()) < 5 * q * (1 - q) / math.sqrt(n)


def test_odd_shapes_and_sizes_not_a_multiple_of_four():
    for shape in [(1,), (3,), (2, 3, 5), (7, 1, 1, 9), (0, 4)]:
        assert keep_mask(shape, 0.5).shape == torch.Size(shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_keeps_dtype_shape_and_expectation(dtype):
    torch.manual_seed(0)
    x = torch.ones(256, 1024, dtype=dtype)
    y = dropout(x, 0.1)
    q = drop_probability(0.1)
    assert y.dtype == dtype and y.shape == x.shape
    values = set(torch.unique(y.float()).tolist())
    assert values <= {0.0, torch.tensor(1 / (1 - q), dtype=dtype).item()}
    assert abs(y.float().mean().item() - 1.0) < 0.01  # E[y] = x: kept values scaled by 1 / (1 - q)


def test_dropout_is_reproducible_from_the_seed_and_differs_between_calls():
    x = torch.randn(64, 64)
    torch.manual_seed(3)
    a, b = dropout(x, 0.3), dropout(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.3), a) and not torch.equal(a, b)
    state = torch.get_rng_state()  # a checkpoint's saved state replays the same masks
    c = dropout(x, 0.3)
    torch.set_rng_state(state)
    assert torch.equal(dropout(x, 0.3), c)


def test_identity_when_not_training_or_p_zero_and_torch_dropout_where_the_fast_path_does_not_apply():
    x = torch.randn(4, 8)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0) is x
    torch.manual_seed(0)
    ours = dropout(x, 0.001)  # 15 bits cannot say 0.001: torch's own dropout, drawn by torch
    torch.manual_seed(0)
    assert torch.equal(ours, torch.nn.functional.dropout(x, 0.001))
    meta = torch.empty(4, 8, device="meta")
    assert dropout(meta, 0.1).device.type == "meta"  # not a CPU tensor: torch's dropout (CUDA alike)


def test_gradient_is_mask_times_scale_and_double_backward_works():
    torch.manual_seed(0)
    x = torch.randn(32, 32, requires_grad=True)
    y = dropout(x, 0.5)
    (g,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    kept = y.detach() != 0
    assert torch.allclose(g, torch.where(kept, 2 * y.detach() * 2.0, torch.zeros_like(g)))
    (gg,) = torch.autograd.grad(g.sum(), x)  # d/dx sum(2 * (2x)^2 mask) = 8 * mask: the attribution loss needs it
    assert torch.allclose(gg, kept.float() * 8.0)


def test_module_matches_nn_dropout_state_and_train_eval():
    m = Dropout(0.2)
    assert isinstance(m, nn.Dropout) and m.p == 0.2 and m.state_dict() == {}
    x = torch.randn(10, 10)
    assert m.eval()(x) is x
    assert (m.train()(x) == 0).any()


def tiny(family: str, p: float, attn: str | None = None) -> nn.Module:
    from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                              DistilBertForSequenceClassification, MPNetConfig, MPNetForSequenceClassification)

    torch.manual_seed(0)
    kw = {"attn_implementation": attn} if attn else {}
    if family == "bert":
        cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, hidden_dropout_prob=p, attention_probs_dropout_prob=p, **kw)
        return BertForSequenceClassification(cfg)
    if family == "distilbert":
        cfg = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, dropout=p,
                               attention_dropout=p, seq_classif_dropout=p, **kw)
        return DistilBertForSequenceClassification(cfg)
    cfg = MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, hidden_dropout_prob=p, attention_probs_dropout_prob=p)
    return MPNetForSequenceClassification(cfg)


BATCH = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [5, 6, 7, 8, 9, 0, 0, 0]]),
         "attention_mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3])}


@pytest.mark.parametrize("family, attn", [("bert", None), ("bert", "eager"), ("distilbert", None),
                                          ("distilbert", "eager"), ("mpnet", None)])
def test_every_family_keeps_its_weights_eval_outputs_and_padding(family, attn):
    plain = tiny(family, 2 ** -15, attn)
    fast = use_fast_dropout(copy.deepcopy(plain), "cpu")
    assert not any(type(m) is nn.Dropout for m in fast.modules())
    assert any(isinstance(m, Dropout) for m in fast.modules())
    if family != "mpnet":  # MPNet's attention takes no registered function: its modules alone change
        expected = fastdrop.EAGER if attn == "eager" else fastdrop.SDPA
        assert fast.config._attn_implementation == expected
    assert fast.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), plain.state_dict().values()))
    with torch.no_grad():
        assert torch.allclose(fast.eval()(**BATCH).logits, plain.eval()(**BATCH).logits, atol=1e-6)
        # training mode on the fast path: p = 2**-15 drops nothing here (seeded), so the padded row must give
        # what that text gives alone; a mask lost on the way to the attention would show up here
        fast.train()
        torch.manual_seed(0)
        both = fast(**BATCH).logits
        torch.manual_seed(0)
        alone = fast(input_ids=BATCH["input_ids"][1:, :5], attention_mask=BATCH["attention_mask"][1:, :5]).logits
        assert torch.allclose(both[1], alone[0], atol=1e-5)
        assert torch.allclose(both, fast.eval()(**BATCH).logits, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "distilbert", "mpnet"])
def test_training_with_dropout_runs_under_bf16_autocast_and_drops(family):
    fast = use_fast_dropout(tiny(family, 0.5), "cpu").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(0)
        a = fast(**BATCH).logits
        b = fast(**BATCH).logits
    a.float().sum().backward()
    assert not torch.equal(a, b)  # dropout is on
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in fast.parameters())


def test_eager_attention_returns_probabilities_with_padded_keys_at_zero():
    fast = use_fast_dropout(tiny("bert", 0.25, "eager"), "cpu").train()
    torch.manual_seed(0)
    out = fast(**BATCH, output_attentions=True)
    for probs in out.attentions:
        assert probs.shape == (2, 4, 8, 8)
        assert torch.all(probs[1, :, :, 5:] == 0)  # padding is masked before dropout
        assert (probs[0] == 0).any()  # and dropout dropped some of the rest


def test_not_on_the_cpu_nothing_changes():
    model = tiny("bert", 0.1)
    before = model.config._attn_implementation
    use_fast_dropout(model, "cuda")  # only the device type is read
    assert model.config._attn_implementation == before
    assert not any(isinstance(m, Dropout) for m in model.modules())


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_bf16_training_attention_is_as_close_to_fp32_as_sdpa_is(family):
    """Mixed-precision eager attention (bf16 scores, fp32 softmax, bf16 probabilities): under bf16 autocast the
    fast path (training, p = 2**-15: nothing dropped here) stays about as close to the fp32 logits as SDPA
    without dropout does."""
    plain = tiny(family, 2 ** -15)
    fast = use_fast_dropout(copy.deepcopy(plain), "cpu")
    with torch.no_grad():
        exact = plain.eval()(**BATCH).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reference = plain.eval()(**BATCH).logits.float()  # SDPA, no dropout, bf16
            torch.manual_seed(0)
            ours = fast.train()(**BATCH).logits.float()
    assert (ours - exact).abs().max() <= 2 * (reference - exact).abs().max() + 1e-3


def test_applying_twice_changes_nothing_more_and_a_saved_model_loads_without_this_module(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = use_fast_dropout(tiny("bert", 0.1), "cpu")
    modules = list(model.modules())
    use_fast_dropout(model, "cpu")
    assert list(model.modules()) == modules and model.config._attn_implementation == fastdrop.SDPA
    model.save_pretrained(tmp_path)
    assert "distill_nb" not in (tmp_path / "config.json").read_text()  # the swap is not saved with the model
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert again.config._attn_implementation == "sdpa" and type(again.bert.encoder.layer[0].output.dropout) is nn.Dropout
    with torch.no_grad():
        assert torch.allclose(again.eval()(**BATCH).logits, model.eval()(**BATCH).logits, atol=1e-6)


def test_a_plain_torch_module_gets_the_dropout_and_nothing_else():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Sequential(nn.Dropout(0.25)))
    use_fast_dropout(model, "cpu")
    assert [type(m) for m in model.modules()].count(Dropout) == 2 and model[1].p == 0.5 and model[2][0].p == 0.25
