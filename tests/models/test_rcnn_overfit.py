"""Overfit tests: a tiny Faster / Mask R-CNN trained for a few dozen SGD steps on a handful of
synthetic images (red rectangles and green discs) finds its training objects again (AP50 > 0.9)."""
import copy

import pytest
import torch

from helpers.cpu import skip_unless_native_bf16
from helpers.detectors import tiny_cfg, total_loss
from helpers.shapes import box_ap50, make_shapes, mask_ap50, shapes_metas
from mixprec.fp16 import wrap_fp16_model
from mixprec.registry import MODELS

pytestmark = pytest.mark.usefixtures('one_thread')


def train(kind: str, fp16_mode, iters: int, cfg=None):
    """Train ``cfg`` (default: the tiny ``kind`` detector below) on :func:`make_shapes`; test on the same images."""
    torch.manual_seed(0)
    if cfg is None:
        cfg = tiny_cfg(kind, num_classes=2)
        # a trainable backbone with batch statistics and 256-wide box head layers (64-wide ones can
        # all die under these large first steps) learn the shapes in a few dozen steps from scratch
        cfg['backbone'].update(frozen_stages=-1, norm_eval=False)
        cfg['roi_head']['bbox_head']['fc_out_channels'] = 256
    model = MODELS.build(cfg)
    if fp16_mode is not None:
        wrap_fp16_model(model, dtype=torch.bfloat16, mode=fp16_mode)
    img, boxes, labels, masks = make_shapes()
    metas = shapes_metas(img)
    targets = dict(gt_bboxes=boxes, gt_labels=labels)
    if kind == 'mask':
        targets['gt_masks'] = masks
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    model.train()
    for it in range(iters):
        for group in optimizer.param_groups:
            group['lr'] = optimizer.defaults['lr'] * min(1.0, (it + 1) / 10)
        loss = total_loss(model(img, copy.deepcopy(metas), **targets))
        assert torch.isfinite(loss), it
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 35.0)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        results = model(img, copy.deepcopy(metas), return_loss=False)
    return results, boxes, labels, masks


@pytest.mark.slow
@pytest.mark.parametrize('fp16_mode', [None, 'autocast'], ids=['fp32', 'bf16-autocast'])
def test_faster_rcnn_overfits_shapes(fp16_mode):
    if fp16_mode:
        skip_unless_native_bf16('bf16-autocast overfitting')
    results, boxes, labels, _ = train('faster', fp16_mode, iters=60)
    assert box_ap50(results, boxes, labels) > 0.9


@pytest.mark.slow
@pytest.mark.parametrize('fp16_mode', [None, 'autocast'], ids=['fp32', 'bf16-autocast'])
def test_mask_rcnn_overfits_shapes(fp16_mode):
    if fp16_mode:
        skip_unless_native_bf16('bf16-autocast overfitting')
    results, boxes, labels, masks = train('mask', fp16_mode, iters=60)
    bbox_results = [r[0] for r in results]
    assert box_ap50(bbox_results, boxes, labels) > 0.9
    assert mask_ap50(results, masks, labels) > 0.9
