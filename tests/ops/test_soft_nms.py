"""Soft-NMS with mmcv 1.x's semantics: a hand-computed example, a literal transcription of mmcv's
CPU kernel as brute-force reference, and its use at test time by the R-CNN and RetinaNet heads."""
import math

import numpy as np
import pytest
import torch

from mixprec.models.task_modules.bbox_ops import multiclass_nms
from mixprec.ops import batched_nms, soft_nms
from mixprec.registry import MODELS

pytestmark = pytest.mark.usefixtures('one_thread')

METHOD_IDS = {'naive': 0, 'linear': 1, 'gaussian': 2}


def kernel_reference(boxes, scores, iou_threshold, sigma, min_score, method):
    """mmcv's softnms_cpu step by step on Python lists (swap-with-last included)."""
    x1, y1, x2, y2 = (list(map(float, boxes[:, k])) for k in range(4))
    sc = list(map(float, scores))
    areas = [(x2[k] - x1[k]) * (y2[k] - y1[k]) for k in range(len(sc))]
    inds = list(range(len(sc)))
    arrays = [x1, y1, x2, y2, sc, areas, inds]
    n = len(sc)
    dets = []
    i = 0
    while i < n:
        max_pos = i
        for pos in range(i + 1, n):
            if sc[max_pos] < sc[pos]:
                max_pos = pos
        for a in arrays:
            a[i], a[max_pos] = a[max_pos], a[i]
        dets.append([x1[i], y1[i], x2[i], y2[i], sc[i], inds[i]])
        pos = i + 1
        while pos < n:
            w = max(0.0, min(x2[i], x2[pos]) - max(x1[i], x1[pos]))
            h = max(0.0, min(y2[i], y2[pos]) - max(y1[i], y1[pos]))
            ovr = w * h / (areas[i] + areas[pos] - w * h)
            weight = 1.0
            if METHOD_IDS[method] == 0 and ovr >= iou_threshold:
                weight = 0.0
            elif METHOD_IDS[method] == 1 and ovr >= iou_threshold:
                weight = 1 - ovr
            elif METHOD_IDS[method] == 2:
                weight = math.exp(-(ovr * ovr) / sigma)
            sc[pos] *= weight
            if sc[pos] < min_score:
                for a in arrays:
                    a[pos] = a[n - 1]
                n -= 1
                pos -= 1
            pos += 1
        i += 1
    return np.array(dets).reshape(-1, 6)


BOXES = torch.tensor([[0., 0., 10., 10.], [5., 0., 15., 10.], [0., 0., 10., 9.], [20., 20., 30., 30.]])
SCORES = torch.tensor([0.9, 0.8, 0.7, 0.6])


def test_soft_nms_hand_computed_linear_and_gaussian():
    # IoU(A, B) = 1/3, IoU(A, C) = 0.9, IoU(B, C) = 45 / 145, D overlaps nothing
    iou_bc = 45 / 145
    dets, inds = soft_nms(BOXES, SCORES, iou_threshold=0.3, min_score=0.05, method='linear')
    # A; B -> 0.8 * 2/3, C -> 0.7 * 0.1; then D; then B, which takes C to 0.07 * (1 - iou_bc) < 0.05
    assert inds.tolist() == [0, 3, 1]
    torch.testing.assert_close(dets[:, 4], torch.tensor([0.9, 0.6, 0.8 * 2 / 3]))
    torch.testing.assert_close(dets[:, :4], BOXES[[0, 3, 1]])
    dets, inds = soft_nms(BOXES, SCORES, sigma=0.5, min_score=0.05, method='gaussian')
    b = 0.8 * math.exp(-(1 / 9) / 0.5)
    c = 0.7 * math.exp(-0.81 / 0.5) * math.exp(-iou_bc ** 2 / 0.5)
    assert inds.tolist() == [0, 1, 3, 2]
    torch.testing.assert_close(dets[:, 4], torch.tensor([0.9, b, 0.6, c]))
    dets, inds = soft_nms(BOXES, SCORES, iou_threshold=0.3, method='naive')
    assert inds.tolist() == [0, 3]  # hard suppression at IoU >= 0.3


def random_cluster_boxes(n, seed):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 80, size=(4, 2))
    c = centres[rng.integers(0, 4, n)] + rng.normal(0, 4, size=(n, 2))
    wh = rng.uniform(8, 30, size=(n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)
    scores = rng.uniform(0.05, 1.0, n).astype(np.float32)
    scores[:6] = scores[6]  # ties, broken by the kernel's order
    return torch.from_numpy(boxes), torch.from_numpy(scores)


@pytest.mark.parametrize('method', ['naive', 'linear', 'gaussian'])
@pytest.mark.parametrize('seed', [0, 1])
def test_soft_nms_matches_kernel_transcription(method, seed):
    boxes, scores = random_cluster_boxes(80, seed)
    args = dict(iou_threshold=0.4, sigma=0.5, min_score=0.1, method=method)
    dets, inds = soft_nms(boxes, scores, **args)
    ref = kernel_reference(boxes.numpy(), scores.numpy(), **args)
    assert inds.tolist() == ref[:, 5].astype(int).tolist()
    np.testing.assert_allclose(dets.numpy(), ref[:, :5], rtol=1e-5, atol=1e-6)
    assert len(ref) < 80 - 5  # boxes were dropped, so the swap-with-last order mattered


def test_soft_nms_tie_order_and_min_score_bound_follow_the_kernel():
    # disjoint boxes, so every weight is 1: the order of equal scores comes only from the kernel's
    # swaps (best into the first slot, the last box into each dropped slot); a score equal to
    # min_score stays
    scores = torch.tensor([0.5, 0.01, 0.5, 0.5, 0.02, 0.25, 0.5, 0.03, 0.9, 0.5, 0.1, 0.5])
    boxes = torch.tensor([[20. * k, 0., 20. * k + 10., 10.] for k in range(len(scores))])
    dets, inds = soft_nms(boxes, scores, min_score=0.25)
    ref = kernel_reference(boxes.numpy(), scores.numpy(), 0.3, 0.5, 0.25, 'linear')
    assert inds.tolist() == ref[:, 5].astype(int).tolist()
    assert 5 in inds.tolist() and len(inds) == 8


def test_batched_soft_nms_runs_each_class_alone():
    boxes, scores = random_cluster_boxes(60, 3)
    labels = torch.arange(60) % 3
    cfg = dict(type='soft_nms', iou_threshold=0.5, min_score=0.05)
    dets, keep = batched_nms(boxes, scores, labels, cfg)
    assert torch.all(dets[:-1, 4] >= dets[1:, 4])
    for c in range(3):
        idx = torch.nonzero(labels == c).squeeze(1)
        ref_dets, ref_inds = soft_nms(boxes[idx], scores[idx], iou_threshold=0.5, min_score=0.05)
        mine = keep[labels[keep] == c]
        assert sorted(mine.tolist()) == sorted(idx[ref_inds].tolist())
        torch.testing.assert_close(dets[labels[keep] == c][:, :4], boxes[mine])
        torch.testing.assert_close(dets[labels[keep] == c][:, 4].sort().values, ref_dets[:, 4].sort().values)
    with pytest.raises(ValueError, match='unknown keys'):
        batched_nms(boxes, scores, labels, dict(type='soft_nms', iou_thr=0.5))
    with pytest.raises(ValueError, match='method'):
        batched_nms(boxes, scores, labels, dict(type='soft_nms', method='cubic'))


def test_multiclass_soft_nms_keeps_decayed_overlaps():
    # two near-duplicates of one class: hard NMS drops the second, soft-NMS keeps it decayed
    bboxes = torch.tensor([[0., 0., 10., 10.], [1., 0., 11., 10.]])
    scores = torch.tensor([[0.9, 0.0], [0.8, 0.0]])
    hard, _ = multiclass_nms(bboxes, scores, 0.05, dict(type='nms', iou_threshold=0.5), 100)
    soft, labels = multiclass_nms(bboxes, scores, 0.05, dict(type='soft_nms', iou_threshold=0.5), 100)
    assert len(hard) == 1 and len(soft) == 2
    iou = 90 / 110
    torch.testing.assert_close(soft[:, 4], torch.tensor([0.9, 0.8 * (1 - iou)]))
    assert labels.tolist() == [0, 0]


def test_rcnn_and_retinanet_test_paths_use_soft_nms():
    soft = dict(type='soft_nms', iou_threshold=0.5, min_score=0.05)
    head = MODELS.build(dict(type='Shared2FCBBoxHead', in_channels=4, roi_feat_size=2, fc_out_channels=8,
                             num_classes=1))
    rois = torch.tensor([[0., 0., 0., 10., 10.], [0., 1., 0., 11., 10.]])
    cls_score = torch.tensor([[3.0, 0.0], [2.5, 0.0]])
    dets, _ = head.get_bboxes(rois, cls_score, torch.zeros(2, 4), (32, 32, 3), None,
                              cfg=dict(score_thr=0.05, nms=soft, max_per_img=100))
    assert len(dets) == 2 and dets[1, 4] < torch.softmax(cls_score[1], 0)[0] * 0.5

    retina = MODELS.build(dict(type='RetinaHead', num_classes=1, in_channels=4, stacked_convs=0, feat_channels=4,
                               anchor_generator=dict(type='AnchorGenerator', octave_base_scale=2,
                                                     scales_per_octave=1, ratios=[1.0], strides=[8]),
                               test_cfg=dict(nms_pre=100, score_thr=0.05, nms=dict(soft, iou_threshold=0.3),
                                             max_per_img=100)))
    meta = dict(img_shape=(32, 32, 3), scale_factor=np.ones(4, dtype=np.float32))
    cls = torch.full((1, 1, 4, 4), -10.0)
    cls[0, 0, 1, 1], cls[0, 0, 1, 2] = 2.0, 1.0  # neighbouring anchors overlap (IoU 1/3) with 16 px boxes at stride 8
    dets, _ = retina.get_bboxes([cls], [torch.zeros(1, 4, 4, 4)], [meta])[0]
    assert len(dets) == 2
    torch.testing.assert_close(dets[1, 4], torch.sigmoid(torch.tensor(1.0)) * (1 - 1 / 3))
