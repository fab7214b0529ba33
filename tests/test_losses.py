import math

import pytest
import torch
import torch.nn.functional as F

from onedistill.losses import (
    HybridLoss,
    hidden_loss,
    kd_loss,
    mean_pool,
    quant_loss,
    temperature_at,
)


def logits_of(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


def test_kl_direction_matches_hand_values():
    p, q = [0.9, 0.1], [0.5, 0.5]
    # KL(p || q): teacher p is the reference distribution.
    assert kd_loss(logits_of([q]), logits_of([p]), 1.0).item() == pytest.approx(0.3681, abs=1e-4)
    # Swapping the roles gives KL(q || p).
    assert kd_loss(logits_of([p]), logits_of([q]), 1.0).item() == pytest.approx(0.5108, abs=1e-4)


def test_kd_scales_with_t_squared_and_matches_torch():
    torch.manual_seed(0)
    s, t = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    for temp in (1.0, 2.0, 4.0):
        ref = F.kl_div(
            F.log_softmax(s / temp, -1),
            F.log_softmax(t / temp, -1),
            log_target=True,
            reduction="batchmean",
        )
        assert kd_loss(s, t, temp).item() == pytest.approx(temp**2 * ref.item(), rel=1e-10)


def test_kd_sums_classes_and_averages_examples():
    p, q = [0.9, 0.1], [0.5, 0.5]
    one = kd_loss(logits_of([q]), logits_of([p]), 1.0).item()
    # Two copies of the same example: the per-example average is unchanged (not doubled).
    two = kd_loss(logits_of([q, q]), logits_of([p, p]), 1.0).item()
    assert two == pytest.approx(one)
    # A second example with zero divergence halves the mean.
    mixed = kd_loss(logits_of([q, p]), logits_of([p, p]), 1.0).item()
    assert mixed == pytest.approx(one / 2)


def test_kd_is_zero_when_student_equals_teacher():
    x = torch.randn(3, 5)
    assert kd_loss(x, x.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_hidden_loss_hand_value_and_zero_on_equal():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    # cos = 0 for the first row, 1 for the second: mean(1 - cos) = 0.5
    assert hidden_loss(s, t).item() == pytest.approx(0.5)
    assert hidden_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)


def test_hidden_loss_unchanged_by_extra_padding():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    base = hidden_loss(s, t, mask)
    pad_s = torch.cat([s, torch.randn(2, 7, 8)], dim=1)
    pad_t = torch.cat([t, torch.randn(2, 7, 8)], dim=1)
    pad_mask = torch.cat([mask, torch.zeros(2, 7, dtype=mask.dtype)], dim=1)
    assert hidden_loss(pad_s, pad_t, pad_mask).item() == pytest.approx(base.item(), rel=1e-6)
    # Pooled vectors are also unchanged by padding.
    assert torch.allclose(mean_pool(s, mask), mean_pool(pad_s, pad_mask), atol=1e-6)


def test_quant_loss_zero_on_grid_and_positive_off_grid():
    step = 0.01
    on_grid = torch.arange(-127, 128, dtype=torch.float64).reshape(1, -1) * step
    assert quant_loss([on_grid]).item() == pytest.approx(0.0, abs=1e-12)
    off = on_grid.clone()
    off[0, 10] += step / 2 - 1e-6  # half a step away: squared error 0.25 step^2 in one element
    assert quant_loss([off]).item() == pytest.approx(0.25 / off.numel(), rel=1e-3)


def test_quant_loss_gradient_points_to_grid():
    w = torch.tensor([[1.27, 0.004]], dtype=torch.float64, requires_grad=True)  # step = 0.01
    quant_loss([w]).backward()
    # 0.004 lies 0.4 steps above its nearest grid point 0.0, so the gradient pushes it down.
    assert w.grad[0, 1] > 0


def test_temperature_schedule():
    assert temperature_at(2.0, None, 0.7) == 2.0
    assert temperature_at(2.0, 5.0, 0.0) == 2.0
    assert temperature_at(2.0, 5.0, 1.0) == 5.0
    assert temperature_at(2.0, 5.0, 0.5) == pytest.approx(3.5)


def test_hybrid_loss_is_weighted_sum_of_named_terms():
    torch.manual_seed(0)
    loss = HybridLoss(
        w_kd=0.6, w_hidden=0.3, w_quant=0.1, w_ce=0.2, student_dim=4, teacher_dim=6, pairs=1
    )
    s_logits, t_logits = torch.randn(3, 2), torch.randn(3, 2)
    labels = torch.tensor([0, 1, -1])  # the last row is unlabelled transfer text
    sh, th = torch.randn(3, 4), torch.randn(3, 6)
    w = torch.randn(4, 4)
    out = loss(s_logits, t_logits, labels, 2.0, [sh], [th], quant_weights=[w])
    ce = F.cross_entropy(s_logits[:2], labels[:2]) * (2 / 3)
    expected = (
        0.6 * kd_loss(s_logits, t_logits, 2.0)
        + 0.3 * hidden_loss(loss.projections[0](sh), th)
        + 0.1 * quant_loss([w])
        + 0.2 * ce
    )
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(out.terms) >= {"kd", "hidden", "quant", "ce", "total"}
    assert not math.isnan(out.terms["hidden"])


def test_projection_receives_gradient():
    loss = HybridLoss(0.0, 1.0, 0.0, 0.0, student_dim=4, teacher_dim=6, pairs=1)
    out = loss(torch.randn(2, 2), None, None, 1.0, [torch.randn(2, 4)], [torch.randn(2, 6)])
    out.total.backward()
    assert loss.projections[0].weight.grad is not None
    assert loss.projections[0].weight.grad.abs().sum() > 0
