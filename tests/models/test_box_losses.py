"""Box losses of mmdetection v2.28 (IoU family, smooth / balanced L1) against torchvision, hand
values and gradcheck; ``reg_decoded_bbox`` in the dense and R-CNN heads."""
import math
from types import SimpleNamespace

import pytest
import torch
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from mixprec.models.losses import (BalancedL1Loss, BoundedIoULoss, CIoULoss, DIoULoss, GIoULoss, IoULoss,
                                   SmoothL1Loss)
from mixprec.models.task_modules.bbox_ops import bbox_overlaps
from mixprec.registry import MODELS, ConfigError

pytestmark = pytest.mark.usefixtures('one_thread')


def random_boxes(n: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 50
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 40 + 2
    return torch.cat([xy, xy + wh], dim=1)


def box_pairs(n: int = 64, seed: int = 0, dtype=torch.float32):
    """Targets and predictions near them (a mix of high- and low-IoU pairs)."""
    target = random_boxes(n, seed, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    jitter = (torch.rand(n, 4, generator=g, dtype=dtype) - 0.5) * torch.linspace(1, 40, n, dtype=dtype)[:, None]
    pred = target + jitter
    pred = torch.cat([pred[:, :2], torch.max(pred[:, 2:], pred[:, :2] + 1)], dim=1)
    return pred, target


def test_iou_loss_modes_hand_values():
    pred = torch.tensor([[0., 0., 10., 10.]])
    target = torch.tensor([[5., 0., 15., 10.]])  # IoU 50 / 150 = 1/3
    assert IoULoss().mode == 'log'  # mmdetection v2's default
    for mode, expected in [('log', math.log(3)), ('linear', 2 / 3), ('square', 8 / 9)]:
        torch.testing.assert_close(IoULoss(mode=mode)(pred, target), torch.tensor(expected))
    with pytest.warns(DeprecationWarning, match='linear'):
        torch.testing.assert_close(IoULoss(linear=True)(pred, target), torch.tensor(2 / 3))
    # disjoint boxes: IoU clamped to eps
    far = torch.tensor([[50., 50., 60., 60.]])
    torch.testing.assert_close(IoULoss(eps=1e-6)(pred, far), torch.tensor(-math.log(1e-6)))
    with pytest.raises(ConfigError, match='mode'):
        IoULoss(mode='cube')


def test_giou_diou_ciou_match_torchvision():
    pred, target = box_pairs()
    torch.testing.assert_close(GIoULoss(eps=1e-7, reduction='none')(pred, target),
                               generalized_box_iou_loss(pred, target, eps=1e-7), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(DIoULoss(eps=1e-7, reduction='none')(pred, target),
                               distance_box_iou_loss(pred, target, eps=1e-7), rtol=1e-5, atol=1e-5)
    # CIoU: mmdetection v2 drops the aspect term (alpha = 0) where IoU <= 0.5; torchvision keeps it
    ciou = CIoULoss(eps=1e-7, reduction='none')(pred, target)
    high = bbox_overlaps(pred, target, is_aligned=True) > 0.5
    assert 5 < int(high.sum()) < len(pred) - 5
    torch.testing.assert_close(ciou[high], complete_box_iou_loss(pred, target, eps=1e-7)[high],
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ciou[~high], distance_box_iou_loss(pred, target, eps=1e-7)[~high],
                               rtol=1e-5, atol=1e-5)


def test_giou_mode_of_bbox_overlaps_pairwise_equals_aligned():
    a, b = random_boxes(5, 1), random_boxes(7, 2)
    full = bbox_overlaps(a, b, mode='giou')
    assert full.shape == (5, 7)
    aligned = bbox_overlaps(a[:, None].expand(5, 7, 4).reshape(-1, 4), b.repeat(5, 1), mode='giou', is_aligned=True)
    torch.testing.assert_close(full.reshape(-1), aligned)
    torch.testing.assert_close(1 - full, generalized_box_iou_loss(a[:, None].expand(5, 7, 4), b[None].expand(5, 7, 4)),
                               rtol=1e-5, atol=1e-5)


def test_bounded_iou_loss_hand_values():
    pred = torch.tensor([[0., 0., 10., 10.]])
    target = torch.tensor([[2., 0., 12., 10.]])  # centre 2 px right, same size
    loss = BoundedIoULoss(beta=0.2, eps=1e-3, reduction='none')(pred, target)
    d_x = 1 - (10 - 4) / (10 + 4 + 1e-3)            # linear branch: >= beta
    d_same = 1 - 10 / (10 + 1e-3)                    # quadratic branch: < beta
    expected = torch.tensor([[d_x - 0.1, 0.5 * d_same ** 2 / 0.2, 0.5 * d_same ** 2 / 0.2, 0.5 * d_same ** 2 / 0.2]])
    torch.testing.assert_close(loss, expected)
    # no gradient flows into the target
    target.requires_grad_(True)
    pred.requires_grad_(True)
    BoundedIoULoss()(pred, target).backward()
    assert target.grad is None or torch.all(target.grad == 0)
    assert pred.grad.abs().sum() > 0


def test_balanced_l1_hand_values_and_smooth_join():
    alpha, gamma, beta = 0.5, 1.5, 1.0
    b = math.e ** (gamma / alpha) - 1
    diff = torch.tensor([0.5, 2.0])
    loss = BalancedL1Loss(alpha, gamma, beta, reduction='none')(diff, torch.zeros(2))
    expected = [alpha / b * (b * 0.5 + 1) * math.log(b * 0.5 + 1) - alpha * 0.5, gamma * 2 + gamma / b - alpha * beta]
    torch.testing.assert_close(loss, torch.tensor(expected))
    # value and slope continuous at beta (the design of the loss: gamma = alpha * log(b + 1))
    x = torch.tensor([beta - 1e-4, beta + 1e-4], dtype=torch.float64, requires_grad=True)
    y = BalancedL1Loss(alpha, gamma, beta, reduction='none')(x, torch.zeros(2, dtype=torch.float64))
    assert abs(float(y[0].detach() - y[1].detach())) < 1e-3
    y.sum().backward()
    assert abs(float(x.grad[0] - x.grad[1])) < 1e-3
    with pytest.raises(ConfigError, match='beta'):
        BalancedL1Loss(beta=0)


def test_smooth_l1_hand_values_and_beta_check():
    loss = SmoothL1Loss(beta=1.0 / 9.0, reduction='none')(torch.tensor([0.05, 1.0]), torch.zeros(2))
    torch.testing.assert_close(loss, torch.tensor([0.5 * 0.05 ** 2 * 9, 1.0 - 0.5 / 9]))
    with pytest.raises(ConfigError, match='beta'):
        SmoothL1Loss(beta=0.0)


def test_weight_avg_factor_and_reduction_semantics():
    pred, target = box_pairs(6)
    per_box = GIoULoss(reduction='none')(pred, target)
    weight = torch.tensor([[1., 1., 1., 1.], [0., 0., 0., 0.], [1., 0., 1., 0.]] * 2)
    # a [n, 4] weight is averaged over the last axis, avg_factor divides the weighted sum
    loss = GIoULoss(loss_weight=3.0)(pred, target, weight, avg_factor=4)
    torch.testing.assert_close(loss, 3.0 * (per_box * weight.mean(-1)).sum() / 4)
    torch.testing.assert_close(GIoULoss(reduction='sum')(pred, target), per_box.sum())
    torch.testing.assert_close(GIoULoss()(pred, target, reduction_override='mean'), per_box.mean())
    # all-zero weight: a zero that keeps the graph
    p = pred.clone().requires_grad_(True)
    zero = IoULoss()(p, target, torch.zeros(6, 4))
    assert zero.item() == 0
    zero.backward()
    # BoundedIoU takes a [n, 4] weight element-wise
    el = BoundedIoULoss(reduction='none')(pred, target)
    torch.testing.assert_close(BoundedIoULoss(reduction='sum')(pred, target, weight), (el * weight).sum())
    with pytest.raises(ValueError, match='avg_factor'):
        GIoULoss(reduction='sum')(pred, target, avg_factor=2)


@pytest.mark.parametrize('loss', [IoULoss(), IoULoss(mode='linear'), GIoULoss(), DIoULoss(), CIoULoss(),
                                  BoundedIoULoss(), BalancedL1Loss(), SmoothL1Loss(beta=0.5)],
                         ids=lambda m: type(m).__name__)
def test_gradcheck_float64(loss):
    pred, target = box_pairs(8, seed=3, dtype=torch.float64)
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: loss(p, target, reduction_override='sum'), (pred,))


@pytest.mark.parametrize('half', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('cfg', [dict(type='IoULoss'), dict(type='GIoULoss'), dict(type='CIoULoss'),
                                 dict(type='BoundedIoULoss'), dict(type='BalancedL1Loss')],
                         ids=lambda c: c['type'])
def test_half_inputs_compute_in_fp32(cfg, half):
    loss = MODELS.build(cfg)
    loss.fp16_enabled = True
    pred, target = box_pairs(16)
    pred_h, target_h = pred.to(half), target.to(half)
    out = loss(pred_h, target_h)
    assert out.dtype == torch.float32
    # equal to the fp32 loss of the rounded inputs: no half arithmetic inside
    torch.testing.assert_close(out, MODELS.build(cfg)(pred_h.float(), target_h.float()), rtol=0, atol=0)


def _bbox_head(loss_bbox: dict, reg_decoded_bbox: bool):
    return MODELS.build(dict(type='Shared2FCBBoxHead', in_channels=4, roi_feat_size=2, fc_out_channels=8,
                             num_classes=2, reg_decoded_bbox=reg_decoded_bbox, loss_bbox=loss_bbox))


def test_bbox_head_reg_decoded_bbox_regresses_absolute_boxes():
    head = _bbox_head(dict(type='GIoULoss', loss_weight=10.0), True)
    res = SimpleNamespace(pos_bboxes=torch.tensor([[0., 0., 10., 10.]]), neg_bboxes=torch.tensor([[30., 30., 40., 40.]]),
                          pos_gt_bboxes=torch.tensor([[1., 0., 12., 10.]]), pos_gt_labels=torch.tensor([1]))
    labels, label_weights, bbox_targets, bbox_weights = head.get_targets([res], dict(pos_weight=-1))
    # the target is the gt box itself, not a delta
    torch.testing.assert_close(bbox_targets[0], torch.tensor([1., 0., 12., 10.]))
    rois = torch.tensor([[0., 0., 0., 10., 10.], [0., 30., 30., 40., 40.]])
    bbox_pred = torch.zeros(2, 8)
    bbox_pred[0, 4:] = torch.tensor([0.5, 0., 0., 0.])  # class 1: dx 0.5 * std 0.1 * w 10 = 0.5 px
    losses = head.loss(torch.zeros(2, 3), bbox_pred, labels, label_weights, bbox_targets, bbox_weights, rois=rois)
    decoded = torch.tensor([[0.5, 0., 10.5, 10.]])
    expected = 10.0 * generalized_box_iou_loss(decoded, torch.tensor([[1., 0., 12., 10.]])).sum() / 2
    torch.testing.assert_close(losses['loss_bbox'], expected)
    with pytest.raises(ValueError, match='rois'):
        head.loss(torch.zeros(2, 3), bbox_pred, labels, label_weights, bbox_targets, bbox_weights)


def test_anchor_head_reg_decoded_bbox_regresses_absolute_boxes():
    cfg = dict(type='RetinaHead', num_classes=1, in_channels=4, stacked_convs=0, feat_channels=4,
               anchor_generator=dict(type='AnchorGenerator', octave_base_scale=2, scales_per_octave=1,
                                     ratios=[1.0], strides=[8]),
               loss_bbox=dict(type='IoULoss', mode='linear'), reg_decoded_bbox=True,
               train_cfg=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4,
                                            min_pos_iou=0, ignore_iof_thr=-1), allowed_border=-1, pos_weight=-1))
    head = MODELS.build(cfg)
    meta = dict(img_shape=(32, 32, 3), pad_shape=(32, 32, 3))
    gt = torch.tensor([[0., 0., 10., 12.]])
    # the anchor at (0, 0) is [-8, -8, 8, 8]; with zero deltas it is the prediction
    cls_scores = [torch.zeros(1, 1, 4, 4)]
    bbox_preds = [torch.zeros(1, 4, 4, 4)]
    losses = head.loss(cls_scores, bbox_preds, [gt], [torch.tensor([0])], [meta])
    anchors = head.anchor_generator.grid_priors([(4, 4)], device='cpu')[0]
    ious = bbox_overlaps(anchors, gt)[:, 0]
    pos = (ious >= 0.5) | (ious == ious.max())
    expected = (1 - ious[pos]).sum() / pos.sum()
    torch.testing.assert_close(losses['loss_bbox'][0], expected)
