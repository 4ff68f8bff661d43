"""Anchors, box coder, assigner, samplers and box ops against hand-computed values."""
import math

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms as tv_batched_nms
from torchvision.ops import nms as tv_nms

from mixprec.models.task_modules import (AnchorGenerator, DeltaXYWHBBoxCoder, MaxIoUAssigner,
                                         PseudoSampler, RandomSampler, bbox2result, bbox2roi, bbox_overlaps,
                                         multiclass_nms)
from mixprec.ops import batched_nms
from mixprec.registry import TASK_UTILS


def test_rpn_anchor_sizes_order_and_centres():
    gen = TASK_UTILS.build(dict(type='AnchorGenerator', strides=[16], ratios=[0.5, 1.0, 2.0], scales=[8]))
    assert gen.num_base_anchors == [3] and gen.num_levels == 1
    (anchors,) = gen.grid_priors([(2, 3)])
    assert anchors.shape == (2 * 3 * 3, 4)
    s = math.sqrt(0.5)
    w_half, h_half = 128 / s / 2, 128 * s / 2
    base = torch.tensor([[-w_half, -h_half, w_half, h_half],   # ratio 0.5: wide
                         [-64., -64., 64., 64.],               # ratio 1
                         [-h_half, -w_half, h_half, w_half]])  # ratio 2: tall
    torch.testing.assert_close(anchors[:3], base)
    # row-major locations: index (y * w + x) * A + a, shifted by (x * 16, y * 16)
    for y in range(2):
        for x in range(3):
            loc = (y * 3 + x) * 3
            shift = torch.tensor([x * 16., y * 16., x * 16., y * 16.])
            torch.testing.assert_close(anchors[loc:loc + 3], base + shift)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    torch.testing.assert_close(centres[4 * 3], torch.tensor([16., 16.]))


def test_retina_anchor_octave_scales_are_ratio_major():
    gen = AnchorGenerator(strides=[8, 16], ratios=[0.5, 1.0, 2.0], octave_base_scale=4, scales_per_octave=3)
    assert gen.num_base_anchors == [9, 9]
    base = gen.grid_priors([(1, 1), (1, 1)])[0]
    widths = base[:, 2] - base[:, 0]
    heights = base[:, 3] - base[:, 1]
    scales = [4.0, 4.0 * 2 ** (1 / 3), 4.0 * 2 ** (2 / 3)]
    for r_idx, ratio in enumerate([0.5, 1.0, 2.0]):
        for s_idx, scale in enumerate(scales):
            i = r_idx * 3 + s_idx
            assert widths[i].item() == pytest.approx(8 * scale / math.sqrt(ratio), rel=1e-5)
            assert heights[i].item() == pytest.approx(8 * scale * math.sqrt(ratio), rel=1e-5)
    level1 = gen.grid_priors([(1, 1), (2, 2)])[1]
    torch.testing.assert_close(level1[9 * 3 + 3], torch.tensor([16 - 32., 16 - 32., 16 + 32., 16 + 32.]))


def test_anchor_valid_flags_follow_pad_shape():
    # pad (20, 30) on a 4 x 5 grid of stride 8: ceil(20 / 8) = 3 rows and ceil(30 / 8) = 4 columns are valid
    gen = AnchorGenerator(strides=[8], ratios=[0.5, 1.0], scales=[4])
    (flags,) = gen.valid_flags([(4, 5)], pad_shape=(20, 30, 3))
    assert flags.dtype == torch.bool and flags.shape == (4 * 5 * 2,)
    expected = torch.tensor([[1, 1, 1, 1, 0]] * 3 + [[0, 0, 0, 0, 0]], dtype=torch.bool)
    # row-major locations, then the location's anchors
    assert torch.equal(flags.view(4, 5, 2), expected[:, :, None].expand(4, 5, 2))
    (wider,) = gen.valid_flags([(4, 5)], pad_shape=(64, 64, 3))  # a pad beyond the grid limits nothing
    assert wider.all()


def test_anchor_generator_rejects_bad_args():
    with pytest.raises(ValueError):
        AnchorGenerator(strides=[8], ratios=[1.0])
    with pytest.raises(ValueError):
        AnchorGenerator(strides=[8], ratios=[1.0], scales=[1], octave_base_scale=4, scales_per_octave=3)


def test_coder_round_trip_and_stds():
    coder = DeltaXYWHBBoxCoder(target_stds=(0.1, 0.1, 0.2, 0.2))
    rois = torch.tensor([[0., 0., 10., 20.], [5., 5., 15., 10.]])
    gts = torch.tensor([[1., 2., 11., 18.], [4., 6., 20., 12.]])
    deltas = coder.encode(rois, gts)
    # first row by hand: centre (5, 10) -> (6, 10), size (10, 20) -> (10, 16)
    expected0 = torch.tensor([0.1 / 0.1, 0.0, 0.0, math.log(16 / 20) / 0.2])
    torch.testing.assert_close(deltas[0], expected0)
    torch.testing.assert_close(coder.decode(rois, deltas), gts, rtol=1e-5, atol=1e-4)
    assert coder.encode(rois.half(), gts.half()).dtype == torch.float32


def test_coder_clamps_size_and_clips_to_image():
    coder = DeltaXYWHBBoxCoder()
    rois = torch.tensor([[10., 10., 20., 20.]])
    big = torch.tensor([[0., 0., 10., -10.]])
    out = coder.decode(rois, big)
    ratio = 1000 / 16
    torch.testing.assert_close(out[0, 2] - out[0, 0], torch.tensor(10 * ratio))
    torch.testing.assert_close(out[0, 3] - out[0, 1], torch.tensor(10 / ratio))
    clipped = coder.decode(rois, big, max_shape=(30, 40, 3))
    torch.testing.assert_close(clipped[0], torch.tensor([0., out[0, 1].item(), 40., out[0, 3].item()]))


def test_coder_class_specific_and_batched():
    coder = DeltaXYWHBBoxCoder()
    rois = torch.tensor([[0., 0., 10., 10.], [10., 10., 30., 20.]])
    deltas = torch.zeros(2, 3 * 4)
    deltas[:, 4] = 0.5  # class 1: shift x by half the width
    out = coder.decode(rois, deltas, max_shape=(100, 100))
    assert out.shape == (2, 12)
    torch.testing.assert_close(out[:, 0:4], rois)
    torch.testing.assert_close(out[:, 4:8], rois + torch.tensor([[5., 0., 5., 0.], [10., 0., 10., 0.]]))
    batched = coder.decode(rois[None].expand(2, 2, 4), deltas[None].expand(2, 2, 12),
                           max_shape=[(100, 100), (15, 12)])
    torch.testing.assert_close(batched[0], out)
    assert batched[1, :, 0::2].max() <= 12 and batched[1, :, 1::2].max() <= 15


def _assigner(**kw):
    cfg = dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)
    cfg.update(kw)
    return TASK_UTILS.build(cfg)


GTS = torch.tensor([[0., 0., 10., 10.], [50., 50., 60., 60.]])
LABELS = torch.tensor([3, 7])
ANCHORS = torch.tensor([
    [0., 0., 10., 10.],     # IoU 1 with gt 0 -> positive
    [0., 0., 10., 20.],     # IoU 0.5 with gt 0 -> between thresholds: ignored
    [20., 20., 30., 30.],   # IoU 0 -> negative
    [50., 50., 60., 66.],   # IoU 0.625 with gt 1: only a low-quality match
])


def test_assigner_thresholds_and_low_quality_matches():
    result = _assigner().assign(ANCHORS, GTS, gt_labels=LABELS)
    assert result.num_gts == 2
    assert result.gt_inds.tolist() == [1, -1, 0, 2]
    assert result.labels.tolist() == [3, -1, -1, 7]
    torch.testing.assert_close(result.max_overlaps, torch.tensor([1.0, 0.5, 0.0, 0.625]))
    strict = _assigner(match_low_quality=False).assign(ANCHORS, GTS, gt_labels=LABELS)
    assert strict.gt_inds.tolist() == [1, -1, 0, -1]
    too_low = _assigner(min_pos_iou=0.7).assign(ANCHORS, GTS)
    assert too_low.gt_inds.tolist() == [1, -1, 0, -1] and too_low.labels is None


def test_assigner_ties_later_gt_wins_and_assign_all():
    gts = torch.tensor([[0., 0., 10., 10.], [0., 0., 10., 10.]])
    anchors = torch.tensor([[0., 0., 10., 20.], [0., 0., 20., 10.], [30., 30., 40., 40.]])
    result = _assigner().assign(anchors, gts)
    assert result.gt_inds.tolist() == [2, 2, 0]
    first_only = _assigner(gt_max_assign_all=False).assign(anchors, gts)
    assert first_only.gt_inds.tolist() == [2, -1, 0]


def test_assigner_ignore_boxes_and_empty_inputs():
    ignore = torch.tensor([[18., 18., 32., 32.]])
    result = _assigner(ignore_iof_thr=0.5).assign(ANCHORS, GTS, gt_bboxes_ignore=ignore)
    assert result.gt_inds.tolist() == [1, -1, -1, 2]
    no_gt = _assigner().assign(ANCHORS, torch.zeros(0, 4), gt_labels=torch.zeros(0, dtype=torch.long))
    assert no_gt.gt_inds.tolist() == [0, 0, 0, 0] and no_gt.labels.tolist() == [-1] * 4
    no_boxes = _assigner().assign(torch.zeros(0, 4), GTS)
    assert no_boxes.gt_inds.numel() == 0


def test_retina_assigner_min_pos_iou_zero():
    assigner = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0)
    result = assigner.assign(ANCHORS, GTS[:1])
    assert result.gt_inds.tolist() == [1, 1, 0, 0]
    # mmdetection v2 quirk kept on purpose: a gt that overlaps no anchor has best IoU 0 >= 0,
    # so it claims every anchor at IoU 0 with it.
    far = torch.tensor([[0., 0., 10., 10.], [200., 200., 210., 210.]])
    assert assigner.assign(ANCHORS, far).gt_inds.tolist() == [2, 2, 2, 2]


def test_add_gt_prepends_self_matches():
    result = _assigner().assign(ANCHORS, GTS, gt_labels=LABELS)
    result.add_gt_(LABELS)
    assert result.gt_inds.tolist() == [1, 2, 1, -1, 0, 2]
    assert result.labels.tolist() == [3, 7, 3, -1, -1, 7]
    assert result.max_overlaps[:2].tolist() == [1.0, 1.0]


def _crafted_assignment(num_pos, num_neg, num_ignored=5):
    gts = torch.tensor([[0., 0., 10., 10.]])
    pos = gts.repeat(num_pos, 1)
    neg = torch.tensor([[100., 100., 110., 110.]]).repeat(num_neg, 1)
    mid = torch.tensor([[0., 0., 10., 20.]]).repeat(num_ignored, 1)
    boxes = torch.cat([pos, neg, mid])
    result = _assigner().assign(boxes, gts, gt_labels=torch.tensor([2]))
    return boxes, gts, result


def test_random_sampler_counts():
    torch.manual_seed(0)
    boxes, gts, result = _crafted_assignment(100, 1000)
    sampler = TASK_UTILS.build(dict(type='RandomSampler', num=256, pos_fraction=0.25, add_gt_as_proposals=False))
    res = sampler.sample(result, boxes, gts, torch.tensor([2]))
    assert res.pos_inds.numel() == 64 and res.neg_inds.numel() == 192
    assert (res.pos_inds < 100).all() and ((res.neg_inds >= 100) & (res.neg_inds < 1100)).all()
    assert res.bboxes.shape == (256, 4) and res.pos_gt_labels.eq(2).all()
    assert res.pos_assigned_gt_inds.eq(0).all() and not res.pos_is_gt.any()

    boxes, gts, result = _crafted_assignment(10, 1000)
    res = sampler.sample(result, boxes, gts, torch.tensor([2]))
    assert res.pos_inds.numel() == 10 and res.neg_inds.numel() == 246
    bounded = RandomSampler(256, 0.25, neg_pos_ub=3, add_gt_as_proposals=False)
    boxes, gts, result = _crafted_assignment(10, 1000)
    assert bounded.sample(result, boxes, gts).neg_inds.numel() == 30


def test_random_sampler_adds_gts_and_is_seeded():
    boxes, gts, result = _crafted_assignment(0, 50, num_ignored=0)
    scored = torch.cat([boxes, torch.rand(len(boxes), 1)], dim=1)
    sampler = RandomSampler(16, 0.25)
    torch.manual_seed(3)
    res = sampler.sample(result, scored, gts, torch.tensor([2]))
    assert res.pos_inds.tolist() == [0] and res.pos_is_gt.tolist() == [1]
    assert res.neg_inds.numel() == 15 and res.pos_bboxes.shape == (1, 4)
    torch.manual_seed(3)
    boxes, gts, result = _crafted_assignment(0, 50, num_ignored=0)
    again = sampler.sample(result, scored, gts, torch.tensor([2]))
    assert torch.equal(res.neg_inds, again.neg_inds)


def test_pseudo_sampler_takes_everything():
    boxes, gts, result = _crafted_assignment(3, 7)
    res = PseudoSampler().sample(result, boxes, gts)
    assert res.pos_inds.tolist() == [0, 1, 2] and res.neg_inds.tolist() == list(range(3, 10))
    torch.testing.assert_close(res.pos_gt_bboxes, gts.repeat(3, 1))


def test_bbox_overlaps_iou_iof_aligned():
    a = torch.tensor([[0., 0., 10., 10.], [0., 0., 4., 4.]])
    b = torch.tensor([[5., 0., 15., 10.], [0., 0., 2., 2.], [20., 20., 30., 30.]])
    iou = bbox_overlaps(a, b)
    torch.testing.assert_close(iou, torch.tensor([[50 / 150, 4 / 100, 0.], [0., 4 / 16, 0.]]))
    iof = bbox_overlaps(a, b, mode='iof')
    torch.testing.assert_close(iof[0, :2], torch.tensor([0.5, 0.04]))
    torch.testing.assert_close(bbox_overlaps(a, b[:2], is_aligned=True), torch.tensor([50 / 150, 4 / 16]))


def test_bbox2roi_and_bbox2result():
    rois = bbox2roi([torch.ones(2, 4), torch.zeros(0, 4), torch.ones(1, 5) * 2])
    assert rois.shape == (3, 5) and rois[:, 0].tolist() == [0., 0., 2.]
    dets = torch.tensor([[0., 0., 1., 1., .9], [0., 0., 2., 2., .8], [1., 1., 3., 3., .7]])
    res = bbox2result(dets, torch.tensor([2, 0, 2]), 3)
    assert [r.shape for r in res] == [(1, 5), (0, 5), (2, 5)] and res[0].dtype == np.float32
    assert all(r.shape == (0, 5) for r in bbox2result(torch.zeros(0, 5), torch.zeros(0), 3))


def test_batched_nms_groups():
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [0., 0., 10., 10.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = batched_nms(boxes, scores, torch.tensor([0, 0, 1]), dict(type='nms', iou_threshold=0.5))
    assert keep.tolist() == [0, 2] and dets.shape == (2, 5)
    _, keep = batched_nms(boxes, scores, torch.tensor([0, 0, 1]), dict(type='nms', iou_threshold=0.5),
                          class_agnostic=True)
    assert keep.tolist() == [0]


@pytest.mark.parametrize('max_num', [1, 7, 100, 1000, 5000])
@pytest.mark.parametrize('class_agnostic', [False, True])
def test_batched_nms_with_max_num_keeps_what_full_nms_keeps_first(max_num, class_agnostic):
    """max_num lets NMS run on score prefixes; the result is the full NMS's first max_num, ties at the
    prefix edge (scores rounded to 2 digits) included. Boxes jitter around 40 centres in 8 classes, so
    most are suppressed and the prefixes must grow."""
    gen = torch.Generator().manual_seed(max_num)
    n = 4000
    xy = (torch.rand(40, 2, generator=gen) * 300)[torch.randint(0, 40, (n,), generator=gen)]
    xy = xy + torch.randn(n, 2, generator=gen) * 4
    boxes = torch.cat([xy, xy + 30 + torch.rand(n, 2, generator=gen) * 20], dim=1)
    scores = (torch.rand(n, generator=gen) * 100).round() / 100
    idxs = torch.randint(0, 8, (n,), generator=gen)
    cfg = dict(type='nms', iou_threshold=0.5)
    full = tv_nms(boxes, scores, 0.5) if class_agnostic else tv_batched_nms(boxes, scores, idxs, 0.5)
    dets, keep = batched_nms(boxes, scores, idxs, cfg, class_agnostic=class_agnostic, max_num=max_num)
    assert 0 < len(keep) <= max_num and (len(keep) == max_num or len(full) < max_num)
    # the same scores in the same order; the same boxes above the last score (among equal scores
    # at the cut, which ones make it depends on the sort's tie order)
    assert torch.equal(dets[:, 4], scores[full[:max_num]])
    last = scores[keep[-1]]
    assert set(keep[scores[keep] > last].tolist()) == set(full[:max_num][scores[full[:max_num]] > last].tolist())
    _, keep_cfg = batched_nms(boxes, scores, idxs, dict(cfg, max_num=max_num), class_agnostic=class_agnostic)
    assert torch.equal(keep_cfg, keep)


def test_multiclass_nms_threshold_limits_and_class_specific():
    torch.manual_seed(0)
    n, num_classes = 200, 4
    xy = torch.rand(n, 2) * 500
    boxes = torch.cat([xy, xy + 20], dim=1)
    scores = torch.rand(n, num_classes + 1)
    nms_cfg = dict(type='nms', iou_threshold=0.5)
    dets, labels, inds = multiclass_nms(boxes, scores, 0.05, nms_cfg, max_num=100, return_inds=True)
    assert dets.shape == (100, 5) and labels.shape == (100,)
    assert (dets[:, 4] > 0.05).all() and (dets[1:, 4] <= dets[:-1, 4]).all()
    torch.testing.assert_close(dets[:, 4], scores[:, :-1].reshape(-1)[inds])
    torch.testing.assert_close(labels, inds % num_classes)
    dets_all, _ = multiclass_nms(boxes, scores, 0.99, nms_cfg)
    assert (dets_all[:, 4] > 0.99).all()
    # class-specific boxes: class c of box i comes from columns 4c..4c+4
    specific = torch.cat([boxes + 1000 * c for c in range(num_classes)], dim=1)
    one = torch.zeros(1, num_classes + 1)
    one[0, 2] = 0.9
    dets, labels = multiclass_nms(specific[:1], one, 0.05, nms_cfg)
    assert labels.tolist() == [2]
    torch.testing.assert_close(dets[0, :4], boxes[0] + 2000)
    empty, empty_labels = multiclass_nms(boxes, torch.zeros(n, num_classes + 1), 0.05, nms_cfg)
    assert empty.shape == (0, 5) and empty_labels.shape == (0,)
