"""Analytic checks of the distillation losses."""

from __future__ import annotations

import math

import pytest
import torch

from distill_nb import losses


def test_kd_identical_logits_is_zero_and_matches_manual_kl():
    torch.manual_seed(0)
    t = torch.randn(5, 3)
    assert losses.kd_loss(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(5, 3)
    T = 3.0
    p_t, p_s = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
    manual = (p_t * (p_t.log() - p_s.log())).sum(-1).mean() * T**2
    assert losses.kd_loss(s, t, T).item() == pytest.approx(manual.item(), rel=1e-5)


def test_kd_gradient_flows_to_student_only_and_scales_with_t_squared():
    t = torch.tensor([[2.0, -1.0]])
    s = torch.zeros(1, 2, requires_grad=True)
    losses.kd_loss(s, t, 1.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    # KL shrinks like 1/T^2 for large T; the T^2 factor keeps the loss (and gradients) on one scale
    at_10, at_20 = (losses.kd_loss(torch.zeros(1, 2), t, T).item() for T in (10.0, 20.0))
    assert at_20 / at_10 == pytest.approx(1.0, abs=0.02)


def test_all_masked_gives_zero_not_nan():
    x = torch.randn(4, 3)
    assert losses.kd_loss(x, x + 1, 2.0, mask=torch.zeros(4)).item() == 0.0
    h = torch.randn(2, 5, 8)
    assert losses.hidden_loss(h, -h, torch.zeros(2, 5)).item() == 0.0
    a = torch.softmax(torch.randn(2, 2, 5, 5), -1)
    assert losses.attention_loss(a, a.flip(-1), torch.zeros(2, 5)).item() == 0.0
    assert losses.ce_loss(x, torch.full((4,), -100)).item() == 0.0


def test_hidden_loss_cosine_mse_and_padding_ignored():
    h = torch.randn(2, 4, 6)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert losses.hidden_loss(h, h, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.hidden_loss(h, 3 * h, mask).item() == pytest.approx(0.0, abs=1e-6)  # cosine ignores scale
    assert losses.hidden_loss(h, -h, mask).item() == pytest.approx(2.0, abs=1e-5)
    garbage = h.clone()
    garbage[0, 2:] = 100.0  # padding positions must not count
    assert losses.hidden_loss(garbage, h, mask, kind="mse").item() == pytest.approx(0.0, abs=1e-6)


def test_hidden_projection_when_widths_differ():
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="projection"):
        losses.hidden_loss(s, t, torch.ones(2, 3))
    proj = torch.nn.Linear(4, 8)
    loss = losses.hidden_loss(s, t, torch.ones(2, 3), kind="mse", projection=proj)
    loss.backward()
    assert proj.weight.grad is not None and math.isfinite(loss.item())


def test_layer_map_out_of_range_is_a_clear_error():
    states = [torch.randn(1, 2, 4)] * 2
    with pytest.raises(ValueError, match=r"layer_map .* teacher layers \[5\]"):
        losses.hidden_states_loss(states, states, [0, 5], torch.ones(1, 2))


def test_attention_loss_zero_for_same_maps_and_positive_otherwise():
    a = torch.softmax(torch.randn(2, 4, 5, 5), -1)
    b = torch.softmax(torch.randn(2, 4, 5, 5), -1)
    mask = torch.ones(2, 5)
    assert losses.attention_loss(a, a, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert losses.attention_loss(b, a, mask).item() > 0
    # different head counts: compared after averaging heads
    assert losses.attention_loss(a[:, :2], a, mask).item() >= 0


def test_mlm_kd_only_counts_masked_positions():
    t = torch.randn(2, 4, 10)
    s = t.clone()
    s[:, 0, 0] += 5.0  # differs only at position 0
    masked = torch.zeros(2, 4, dtype=torch.bool)
    masked[:, 1:] = True
    assert losses.mlm_kd_loss(s, t, masked).item() == pytest.approx(0.0, abs=1e-6)
    masked[:, 0] = True
    assert losses.mlm_kd_loss(s, t, masked).item() > 0
    ids = torch.arange(8).reshape(1, 8)
    special = torch.zeros(1, 8, dtype=torch.bool)
    special[0, 0] = True
    new, where = losses.mask_tokens(ids, torch.ones(1, 8), 99, special, prob=1.0)
    assert not where[0, 0] and (new[where] == 99).all()


def test_attribution_loss_zero_for_same_attributions_and_scale_free():
    t = torch.randn(3, 6)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False  # padding
    assert losses.attribution_loss(t, t, mask).item() == pytest.approx(0.0, abs=1e-7)
    # per-example L2 normalisation: only the shape of the explanation counts, not its scale
    assert losses.attribution_loss(5.0 * t, t, mask).item() == pytest.approx(0.0, abs=1e-6)
    # opposite explanation: |s_hat - t_hat|^2 = 4
    assert losses.attribution_loss(-t, t, mask).item() == pytest.approx(4.0, abs=1e-5)
    # padded positions do not count, whatever they hold
    s = t.clone()
    s[0, 4:] = 100.0
    assert losses.attribution_loss(s, t, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_attribution_loss_all_masked_is_zero_with_finite_gradient():
    s = torch.randn(2, 5, requires_grad=True)
    loss = losses.attribution_loss(s, torch.randn(2, 5), torch.zeros(2, 5, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(s.grad).all()
    # an all-zero student row (e.g. a dead student) gives a finite loss and gradient too
    z = torch.zeros(1, 4, requires_grad=True)
    out = losses.attribution_loss(z, torch.randn(1, 4), torch.ones(1, 4))
    out.backward()
    assert out.item() == pytest.approx(1.0) and torch.isfinite(z.grad).all()


def test_attribution_loss_top_k_counts_only_the_teachers_largest_tokens():
    t = torch.tensor([[5.0, -4.0, 0.1, 0.2]])
    s = torch.tensor([[5.0, -4.0, 3.0, -3.0]])  # agrees on the teacher's top 2 (by magnitude), not elsewhere
    mask = torch.ones(1, 4)
    assert losses.attribution_loss(s, t, mask, top_k=2).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.attribution_loss(s, t, mask).item() > 0.1
    assert losses.attribution_loss(s, t, mask, top_k=10).item() == pytest.approx(
        losses.attribution_loss(s, t, mask).item())
    with pytest.raises(ValueError, match="top_k"):
        losses.attribution_loss(s, t, mask, top_k=0)


def test_attribution_loss_under_bf16_autocast_is_float_and_finite():
    s = torch.randn(2, 7, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = losses.attribution_loss(s.to(torch.bfloat16), torch.randn(2, 7), torch.ones(2, 7))
    loss.backward()
    assert loss.dtype == torch.float32 and math.isfinite(loss.item()) and torch.isfinite(s.grad).all()


def _kd_old_formula(s: torch.Tensor, t: torch.Tensor, T: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """kd_loss as it was before -inf teacher logits were handled (F.kl_div with a log target)."""
    log_s, log_t = torch.log_softmax(s.float() / T, -1), torch.log_softmax(t.float() / T, -1)
    per_row = torch.nn.functional.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)
    if mask is None:
        return per_row.mean() * T**2
    return (per_row * mask).sum() / mask.sum().clamp_min(1.0) * T**2


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 7.0])
@pytest.mark.parametrize("masked", [False, True])
def test_kd_matches_the_kl_div_formula_on_finite_logits(T, masked):
    gen = torch.Generator().manual_seed(int(T * 10))
    s = (torch.randn(6, 5, generator=gen) * 4).requires_grad_(True)
    t = torch.randn(6, 5, generator=gen) * 4
    t[0, 0] = 300.0  # the other classes of this row underflow to probability 0: the old formula gave 0 there too
    mask = torch.tensor([1, 0, 1, 1, 0, 1]) if masked else None
    new = losses.kd_loss(s, t, T, mask)
    (g_new,) = torch.autograd.grad(new, s)
    old = _kd_old_formula(s, t, T, mask)
    (g_old,) = torch.autograd.grad(old, s)
    assert new.item() == pytest.approx(old.item(), abs=1e-6, rel=1e-6)
    assert torch.allclose(g_new, g_old, atol=1e-6) and torch.isfinite(g_new).all()


@pytest.mark.parametrize("teacher_row", [[0.0, 0.0, -math.inf], [-math.inf, 3.0, -math.inf], [5.0, -math.inf, 1.0]])
def test_kd_teacher_probability_zero_contributes_zero_not_nan(teacher_row):
    s = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    t = torch.tensor([teacher_row], requires_grad=True)  # gradients to the teacher must stay finite too
    loss = losses.kd_loss(s, t, 2.0)
    loss.backward()
    assert math.isfinite(loss.item())
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()
    # the limit: a very negative finite logit gives the same loss
    finite = torch.tensor([teacher_row]).nan_to_num(neginf=-1e4)
    assert loss.item() == pytest.approx(losses.kd_loss(s.detach(), finite, 2.0).item(), abs=1e-6)
    # and the masked-LM loss, which goes through kd_loss, is finite as well
    mlm = losses.mlm_kd_loss(s.detach()[None], torch.tensor([teacher_row])[None], torch.ones(1, 1, dtype=torch.bool))
    assert math.isfinite(mlm.item())


@pytest.mark.parametrize("T", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_kd_rejects_a_temperature_that_is_not_finite_and_positive(T):
    s = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=rf"temperature={T}.*finite temperature > 0"):
        losses.kd_loss(s, s, T)
