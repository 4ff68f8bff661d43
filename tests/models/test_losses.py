"""Losses against closed forms."""
import math

import pytest
import torch

from mixprec.models.losses import accuracy
from mixprec.registry import MODELS


def test_focal_loss_at_prior_matches_closed_form():
    num_classes, n = 80, 10
    prior = 0.01
    logits = torch.full((n, num_classes), -math.log((1 - prior) / prior))
    labels = torch.full((n,), num_classes)
    labels[:2] = torch.tensor([5, 17])
    loss_fn = MODELS.build(dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0))
    neg_term = 0.75 * prior ** 2 * -math.log(1 - prior)
    pos_term = 0.25 * (1 - prior) ** 2 * -math.log(prior)
    expected_sum = 2 * pos_term + (n * num_classes - 2) * neg_term
    loss = loss_fn(logits, labels, torch.ones(n), avg_factor=2)
    assert loss.item() == pytest.approx(expected_sum / 2, rel=1e-5)
    mean = loss_fn(logits, labels)
    assert mean.item() == pytest.approx(expected_sum / (n * num_classes), rel=1e-5)
    weighted = loss_fn(logits, labels, torch.tensor([1.] * 2 + [0.] * 8), reduction_override='sum')
    assert weighted.item() == pytest.approx(2 * pos_term + 2 * (num_classes - 1) * neg_term, rel=1e-5)


def test_focal_loss_is_fp32_and_differentiable():
    logits = torch.randn(6, 3, dtype=torch.bfloat16, requires_grad=True)
    loss = MODELS.build(dict(type='FocalLoss'))(logits, torch.tensor([0, 1, 2, 3, 3, 1]))
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()


def test_softmax_cross_entropy_and_class_weight():
    pred = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    loss = MODELS.build(dict(type='CrossEntropyLoss', loss_weight=2.0))(pred, labels)
    lse = math.log(math.exp(2) + 2)
    expected = ((lse - 2) + math.log(3)) / 2 * 2.0
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    avg = MODELS.build(dict(type='CrossEntropyLoss'))(pred, labels, torch.tensor([1., 0.]), avg_factor=4)
    assert avg.item() == pytest.approx((lse - 2) / 4, rel=1e-5)


def test_sigmoid_cross_entropy_background_is_all_zeros():
    loss_fn = MODELS.build(dict(type='CrossEntropyLoss', use_sigmoid=True))
    zero_logits = torch.zeros(4, 1)
    labels = torch.tensor([0, 1, 1, 0])
    assert loss_fn(zero_logits, labels).item() == pytest.approx(math.log(2), rel=1e-6)
    logits = torch.tensor([[3.0, -1.0]])
    bg = loss_fn(logits, torch.tensor([2]), reduction_override='sum')
    expected = math.log(1 + math.exp(3)) + math.log(1 + math.exp(-1))
    assert bg.item() == pytest.approx(expected, rel=1e-5)
    fg = loss_fn(logits, torch.tensor([0]), reduction_override='sum')
    assert fg.item() == pytest.approx(math.log(1 + math.exp(-3)) + math.log(1 + math.exp(-1)), rel=1e-5)


def test_mask_cross_entropy_uses_label_channel():
    loss_fn = MODELS.build(dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))
    pred = torch.zeros(2, 3, 4, 4)
    pred[0, 1] = 10.0   # confident and right on the label channel of RoI 0
    pred[1, 0] = -10.0  # a channel that is not RoI 1's label: must be ignored
    targets = torch.ones(2, 4, 4)
    loss = loss_fn(pred, targets, torch.tensor([1, 2]))
    expected = (math.log(1 + math.exp(-10)) + math.log(2)) / 2
    assert loss.dim() == 0 and loss.item() == pytest.approx(expected, rel=1e-5)


def test_l1_and_smooth_l1():
    pred = torch.tensor([[0., 0.5, 2., -3.]])
    target = torch.zeros(1, 4)
    l1 = MODELS.build(dict(type='L1Loss'))
    assert l1(pred, target).item() == pytest.approx(5.5 / 4)
    assert l1(pred, target, torch.tensor([[1., 1., 0., 0.]]), avg_factor=1).item() == pytest.approx(0.5, rel=1e-6)
    smooth = MODELS.build(dict(type='SmoothL1Loss', beta=1.0, loss_weight=2.0))
    expected = (0 + 0.5 * 0.25 + 1.5 + 2.5) / 4 * 2.0
    assert smooth(pred, target).item() == pytest.approx(expected)
    empty = torch.zeros(0, 4, requires_grad=True)
    assert l1(empty, torch.zeros(0, 4)).item() == 0.0


def test_accuracy_percent():
    pred = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.5, 0.2, 0.3], [0.0, 0.0, 1.0]])
    assert accuracy(pred, torch.tensor([0, 1, 2, 2])).item() == pytest.approx(75.0)
    assert accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).item() == 0.0


def test_unknown_loss_argument_is_a_config_error():
    from mixprec.registry import ConfigError
    with pytest.raises(ConfigError):
        MODELS.build(dict(type='FocalLoss', gama=2.0))


def test_focal_loss_and_gradient_match_torchvision():
    from torchvision.ops import sigmoid_focal_loss as reference
    torch.manual_seed(0)
    logits = torch.randn(50, 7) * 3
    labels = torch.randint(0, 8, (50,))
    onehot = torch.zeros(50, 7)
    fg = labels < 7
    onehot[fg.nonzero()[:, 0], labels[fg]] = 1
    ours_in = logits.clone().requires_grad_()
    ref_in = logits.clone().requires_grad_()
    ours = MODELS.build(dict(type='FocalLoss'))(ours_in, labels, reduction_override='sum')
    ref = reference(ref_in, onehot, alpha=0.25, gamma=2.0, reduction='sum')
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-4, atol=1e-6)
