"""Each new loss / sampler / mask-format variant trains a tiny detector on synthetic shapes under
the Fp16OptimizerHook (bf16, master and autocast): finite fp32 losses, and the loss falls."""
import copy

import numpy as np
import pytest
import torch

from mixprec.data import PolygonMasks
from mixprec.data.masks import mask_to_polygons
from mixprec.fp16 import Fp16OptimizerHook
from mixprec.registry import MODELS

from test_fp16_helpers import make_runner
from test_models_b_detectors import tiny_cfg, total_loss
from test_models_b_overfit import make_shapes
from test_models_fp16_hook import tiny_retinanet_cfg

pytestmark = [pytest.mark.usefixtures('one_thread'), pytest.mark.slow]


def rcnn_variant(loss_bbox=None, reg_decoded_bbox=False, sampler=None, rpn_loss_bbox=None) -> dict:
    cfg = tiny_cfg('faster', num_classes=2)
    head = cfg['roi_head']['bbox_head']
    if loss_bbox is not None:
        head.update(loss_bbox=loss_bbox, reg_decoded_bbox=reg_decoded_bbox)
    if sampler is not None:
        cfg['train_cfg']['rcnn']['sampler'] = sampler
    if rpn_loss_bbox is not None:
        cfg['rpn_head']['loss_bbox'] = rpn_loss_bbox
    return cfg


def retina_variant() -> dict:
    cfg = tiny_retinanet_cfg()
    cfg['bbox_head'].update(num_classes=2, reg_decoded_bbox=True, loss_bbox=dict(type='GIoULoss', loss_weight=2.0))
    return cfg


def mask_poly_variant() -> dict:
    return tiny_cfg('mask', num_classes=2)


VARIANTS = {
    'mask_polygons': mask_poly_variant,
    'giou': lambda: rcnn_variant(dict(type='GIoULoss', loss_weight=10.0), True),
    'ciou': lambda: rcnn_variant(dict(type='CIoULoss', loss_weight=12.0), True),
    'bounded_iou': lambda: rcnn_variant(dict(type='BoundedIoULoss', loss_weight=10.0), True),
    'iou': lambda: rcnn_variant(dict(type='IoULoss', loss_weight=10.0), True),
    'balanced_l1_smooth_l1': lambda: rcnn_variant(dict(type='BalancedL1Loss', alpha=0.5, gamma=1.5, beta=1.0),
                                                  rpn_loss_bbox=dict(type='SmoothL1Loss', beta=1.0 / 9.0)),
    'ohem': lambda: rcnn_variant(sampler=dict(type='OHEMSampler', num=64, pos_fraction=0.25, neg_pos_ub=-1,
                                              add_gt_as_proposals=True)),
    'retina_giou': retina_variant,
}


# every variant in master mode; one per code path (decoded R-CNN boxes, OHEM, decoded dense boxes)
# also under autocast
CASES = [(v, 'master') for v in sorted(VARIANTS)] + [(v, 'autocast') for v in ('giou', 'ohem', 'retina_giou',
                                                                                'mask_polygons')]


@pytest.mark.parametrize('variant,mode', CASES)
def test_variant_trains_under_bf16(variant, mode):
    torch.manual_seed(0)
    cfg = VARIANTS[variant]()
    cfg['backbone'].update(frozen_stages=-1, norm_eval=False)
    model = MODELS.build(cfg)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    hook = Fp16OptimizerHook(dtype='bfloat16', mode=mode, grad_clip=dict(max_norm=35, norm_type=2))
    runner = make_runner(model, optimizer)
    hook.before_run(runner)
    img, boxes, labels, masks = make_shapes(num_images=1, size=128, seed=0)
    targets = dict(gt_bboxes=boxes, gt_labels=labels)
    if variant == 'mask_polygons':
        targets['gt_masks'] = [PolygonMasks.from_coco([mask_to_polygons(m) for m in masks[0].numpy()], 128, 128)]
    metas = [dict(img_shape=(128, 128, 3), ori_shape=(128, 128, 3), pad_shape=(128, 128, 3),
                  scale_factor=np.ones(4, dtype=np.float32), flip=False)]
    history = []
    for step in range(8):
        losses = runner.model(img, copy.deepcopy(metas), **targets)
        for key, value in losses.items():
            for v in value if isinstance(value, list) else [value]:
                assert v.dtype is torch.float32 and torch.isfinite(v), (step, key, v)
        loss = total_loss(losses)
        history.append(float(loss.detach()))
        runner.outputs = dict(loss=loss)
        runner.iter = step
        hook.after_train_iter(runner)
    assert runner.log_buffer.last('skipped_steps') == 0
    assert np.mean(history[-3:]) < 0.9 * np.mean(history[:2]), history
