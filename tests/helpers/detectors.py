"""Tiny detectors for the model tests: the reference Faster / Mask R-CNN and RetinaNet configs shrunk to a
ResNet-18 with 16 base channels, a hand-made two-image batch, the summed loss, and a training loop through
the Fp16OptimizerHook on the same images it is tested on."""
import copy

import numpy as np
import torch
from mmengine import Config

import mixprec.models  # noqa: F401  (registers every model part)
from mixprec.fp16 import Fp16OptimizerHook
from mixprec.registry import MODELS

from helpers.fp16 import make_runner


CONFIGS = {'faster': 'configs/_base_/models/faster_rcnn_r50_fpn.py',
           'mask': 'configs/_base_/models/mask_rcnn_r50_fpn.py'}


def model_cfg(kind: str) -> dict:
    cfg = Config.fromfile(CONFIGS[kind]).model.to_dict()
    cfg['backbone']['init_cfg'] = None  # no network here; random init
    return cfg


def tiny_cfg(kind: str, num_classes: int = 3) -> dict:
    """The reference config shrunk: ResNet-18 with 16 base channels, 32-channel FPN and heads."""
    cfg = model_cfg(kind)
    cfg['backbone'].update(depth=18, base_channels=16)
    cfg['neck'].update(in_channels=[16, 32, 64, 128], out_channels=32)
    cfg['rpn_head'].update(in_channels=32, feat_channels=32)
    roi_head = cfg['roi_head']
    roi_head['bbox_roi_extractor']['out_channels'] = 32
    roi_head['bbox_head'].update(in_channels=32, fc_out_channels=64, num_classes=num_classes)
    if kind == 'mask':
        roi_head['mask_roi_extractor']['out_channels'] = 32
        roi_head['mask_head'].update(in_channels=32, conv_out_channels=32, num_classes=num_classes)
    return cfg


def tiny_retinanet_cfg() -> dict:
    cfg = Config.fromfile('configs/_base_/models/retinanet_r50_fpn.py').model.to_dict()
    cfg['backbone'].update(depth=18, base_channels=16, init_cfg=None)
    cfg['neck'].update(in_channels=[16, 32, 64, 128], out_channels=32)
    cfg['bbox_head'].update(num_classes=3, in_channels=32, feat_channels=32, stacked_convs=1)
    return cfg


def tiny_batch(with_masks: bool):
    """Two 96 x 128 images (the second padded from 96 x 112), resized 2x from their originals."""
    torch.manual_seed(1)
    img = torch.randn(2, 3, 96, 128)
    metas = [dict(img_shape=(96, 128, 3), ori_shape=(48, 64, 3), pad_shape=(96, 128, 3),
                  scale_factor=np.full(4, 2.0, dtype=np.float32), flip=False),
             dict(img_shape=(96, 112, 3), ori_shape=(48, 56, 3), pad_shape=(96, 128, 3),
                  scale_factor=np.full(4, 2.0, dtype=np.float32), flip=False)]
    batch = dict(img=img, img_metas=metas,
                 gt_bboxes=[torch.tensor([[10., 10., 50., 60.]]),
                            torch.tensor([[20., 5., 100., 90.], [0., 0., 30., 30.]])],
                 gt_labels=[torch.tensor([0]), torch.tensor([1, 2])])
    if with_masks:
        masks = [torch.zeros(1, 96, 128, dtype=torch.uint8), torch.zeros(2, 96, 128, dtype=torch.uint8)]
        for m, boxes in zip(masks, batch['gt_bboxes']):
            for j, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
                m[j, y1:y2, x1:x2] = 1
        batch['gt_masks'] = masks
    return batch


def total_loss(losses: dict) -> torch.Tensor:
    total = 0
    for key, value in losses.items():
        if 'loss' in key:
            total = total + (sum(value) if isinstance(value, list) else value)
    return total


ITERS = 40


def train_with_hook(cfg: dict, mode: str, targets: dict, img: torch.Tensor, metas: list, lr: float = 0.02,
                    dtype: str = 'bfloat16', iters: int = ITERS, unfreeze: bool = True):
    """``iters`` SGD steps (10 of linear warm-up) through the hook; per-step loss terms and the test results.

    ``unfreeze``: train the whole backbone with batch statistics (the loss variants' tiny ResNet-18)."""
    torch.manual_seed(0)
    if unfreeze:
        cfg['backbone'].update(frozen_stages=-1, norm_eval=False)
    model = MODELS.build(cfg)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                                weight_decay=1e-4)
    hook = Fp16OptimizerHook(dtype=dtype, mode=mode, loss_scale=512. if dtype == 'float16' else None,
                             grad_clip=dict(max_norm=35, norm_type=2))
    runner = make_runner(model, optimizer)
    hook.before_run(runner)
    history = []  # per step, each loss term summed over levels
    for step in range(iters):
        for group in optimizer.param_groups:
            group['lr'] = lr * min(1.0, (step + 1) / 10)
        losses = runner.model(img, copy.deepcopy(metas), **targets)
        for key, value in losses.items():
            for v in value if isinstance(value, list) else [value]:
                assert v.dtype is torch.float32 and torch.isfinite(v), (step, key, v)
        history.append({key: float(sum(value).detach() if isinstance(value, list) else value.detach())
                        for key, value in losses.items() if 'loss' in key})
        loss = total_loss(losses)
        runner.outputs = dict(loss=loss)
        runner.iter = step
        hook.after_train_iter(runner)
    assert runner.log_buffer.last('skipped_steps') == 0
    runner.model.eval()
    with torch.no_grad():
        results = runner.model(img, copy.deepcopy(metas), return_loss=False)
    return history, results
