"""Training (or inference) speed and peak memory of our detectors against torchvision's, fp32 and mixed precision.

    python tools/analysis_tools/benchmark_detectors.py [--models faster_rcnn mask_rcnn retinanet]
        [--size H W] [--batch 2] [--iters 5] [--warmup 2] [--threads N] [--impls ours torchvision [mmdet]]
        [--mmdet-python PYTHON]
        [--modes fp32 master autocast] [--dtype bfloat16|float16] [--depth 50] [--width 256]
        [--predict] [--profile N] [--count-syncs] [--json-out FILE]

For each detector and each configuration, in a fresh subprocess (so peak memories do not mix):

* ours: built from ``configs/_base_/models/<model>_r50_fpn.py`` (backbone ``init_cfg=None``), placed
  on the device by ``place_model`` as ``tools/train.py`` and ``tools/test.py`` place it (BatchNorm folding;
  on the CPU channels_last convolution weights and the convolution routes), trained the way the Runner trains it: ``model(**batch)``, ``parse_losses``, then the optimizer hook's
  ``after_train_iter`` on a runner-like object: ``OptimizerHook`` (``fp32``),
  ``Fp16OptimizerHook(dtype, mode='master')`` (``master``) or ``mode='autocast'`` (``autocast``);
* torchvision: ``FasterRCNN`` / ``MaskRCNN`` / ``RetinaNet`` on a ResNet-FPN backbone assembled as
  ``*_resnet50_fpn`` assembles it for a pretrained backbone (FrozenBatchNorm2d, stem and layer1 frozen,
  ``trainable_backbone_layers=3``: without weights torchvision's builders would unfreeze everything and
  use plain BatchNorm), ``zero_init_residual=True`` like ours, the same proposal and RoI sampling
  counts, ``min_size`` / ``max_size`` equal to the input's sides so its transform does not resize;
  trained in fp32 (``fp32``) or under ``torch.autocast(dtype)`` (``autocast``);
* mmdet (only when asked for, not a dependency): mmdetection 3.x's own ``*_r50_fpn_1x_coco.py``
  config from its package, ``init_cfg=None``, run by ``--mmdet-python`` (an environment with mmcv's
  compiled ops, such as the venv ``../shared/reference/`` sets up): ``model.loss`` on the normalised
  images and ``DetDataSample``s, ``parse_losses``, backward, SGD, in fp32 or under ``torch.autocast``
  (``autocast``; mmcv's CPU NMS and RoIAlign take float32 only, so there they run on float32 copies).

Both get the same images (uint8-valued pixels; ours normalised with mmdetection's mean / std, which is
torchvision's ImageNet mean / std times 255, torchvision normalising the [0, 1] image inside its
transform), the same gt boxes and labels (80 classes: ours 0..79; torchvision's R-CNNs
``num_classes=81`` with labels 1..80, 0 being background; its RetinaNet ``num_classes=80`` with labels
0..79, it has no background class) and gt masks. SGD lr 0.02, momentum 0.9, weight decay 1e-4 for all,
with the 1x schedule's linear warm-up from iteration 0 (lr 0.02 * 0.001 at the start: at the full lr a
random detector diverges in a few iterations); no gradient clipping. ``--warmup`` iterations, then
``--iters`` timed ones: s/iter is their median (the mean is in the JSON), next to the CPU time of the
process per iteration (``time.process_time``, all its threads: on a machine shared with other jobs and
with ``--threads 1`` the fairer comparison, as it leaves out the time spent descheduled); peak memory
is the process's peak RSS (VmHWM, reset after the warm-up) on the CPU, ``torch.cuda.max_memory_allocated``
on CUDA. The table ends with, per detector, the ratios against issue 13's targets (``TARGETS``), from
the wall times and from the CPU times: in training our fp32 / the fastest peer's fp32 time (<= 0.8) and
our fp32 / the leanest peer's fp32 peak memory (<= 1.0), our best mixed-precision / the fastest peer's
mixed-precision time (<= 0.3); in inference both times <= 0.8; then our fp32 / our best mixed time,
for information. The load average before and after the run is printed with it.

What still differs between the two implementations (their own designs, left as they are): the RPN
keeps the top 2000 per level before NMS in both (torchvision's ``rpn_pre_nms_top_n_train`` is per level
too) and 1000 per image after it, but torchvision also drops boxes under 1e-3 pixels and uses a
smooth-L1 box loss (beta 1/9) where ours has L1; torchvision's RoIAlign has ``sampling_ratio=2``,
``aligned=False``, ours ``sampling_ratio=0`` (adaptive: up to 4 x 4 samples a bin at 512 x 512),
``aligned=True``; torchvision's RetinaNet makes P6 from P5, ours from C5 (``add_extra_convs='on_input'``);
torchvision's box head regresses 81 classes (background included), ours 80; torchvision resizes and
normalises inside the model (``GeneralizedRCNNTransform``: a bilinear interpolation at scale 1.0 of
every image and mask, counted in its time), ours gets normalised images from the data pipeline.

``--predict`` times inference instead: the same models in eval mode under ``torch.no_grad()``, one
batch of the same images a call (ours: ``model(img=[...], img_metas=[[...]], return_loss=False)`` with
rescaling to the input size, as ``tools/test.py`` runs it; torchvision: ``model(images)``), with the
score threshold at 0 on both sides so that every detector keeps its 100 detections per image (the
table counts them): ``fp32``; ``master``: our model through ``wrap_fp16_model(mode='master')``
(half weights, fp32 norms and heads' post-processing); ``autocast``: ours in autocast mode,
torchvision's under ``torch.autocast``. Untrained detectors score near the prior, so the 100
survivors are what NMS keeps of near-ties: the cost of the post-processing is the real one.

``--profile N`` also runs N iterations under ``torch.profiler`` in every configuration and prints the
ops with the largest self CPU time. ``--count-syncs`` counts the host-device synchronisations of one
more iteration on CUDA (:func:`count_syncs`; in the JSON as ``syncs``). ``--depth`` / ``--width`` shrink both implementations alike
(ResNet depth; FPN and head channels) for quick runs.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from types import SimpleNamespace
from typing import Optional, Sequence

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mixprec.cli import run_cli  # noqa: E402
from mixprec.fp16.precision import describe_device  # noqa: E402
from mixprec.registry import ConfigError  # noqa: E402

RESULT_PREFIX = 'benchmark-detectors-result: '
MODELS = ('faster_rcnn', 'mask_rcnn', 'retinanet')
IMPLS = ('ours', 'torchvision', 'mmdet')
MODES = ('fp32', 'master', 'autocast')
IMPL_MODES = {'ours': ('fp32', 'master', 'autocast'), 'torchvision': ('fp32', 'autocast'),
              'mmdet': ('fp32', 'autocast')}
MMDET_CONFIGS = {'faster_rcnn': 'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
                 'mask_rcnn': 'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
                 'retinanet': 'retinanet/retinanet_r50_fpn_1x_coco.py'}
NUM_CLASSES = 80
# mmdetection's Normalize: mean / std of ImageNet in 0..255 (torchvision's values times 255), RGB
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
LR, MOMENTUM, WEIGHT_DECAY = 0.02, 0.9, 1e-4
# the 1x schedule's linear warm-up (mmdetection v2; torchvision's reference recipe warms up too): a
# randomly initialised detector at the full lr diverges within a few iterations, and a diverged one
# (inf / NaN boxes) no longer costs what training costs
WARMUP_ITERS, WARMUP_RATIO = 500, 0.001


def warmup_lr(it: int) -> float:
    """mmdetection's linear warm-up: lr * (1 - (1 - it / warmup_iters) * (1 - ratio))."""
    return LR * (1 - (1 - min(it, WARMUP_ITERS) / WARMUP_ITERS) * (1 - WARMUP_RATIO))


def set_lr(optimizer: torch.optim.Optimizer, it: int) -> None:
    for group in optimizer.param_groups:
        group['lr'] = warmup_lr(it)
# torchvision training counts set to mmdetection v2's
RPN_PRE_NMS_TOP_N = 2000    # per level in both (torchvision: rpn_pre_nms_top_n_train; ours: nms_pre)
RPN_POST_NMS_TOP_N = 1000   # per image (torchvision's default is 2000 for training)
ROI_SAMPLES, ROI_POS_FRACTION = 512, 0.25


# ---------------------------------------------------------------- arguments
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=MODELS)
    parser.add_argument('--impls', nargs='+', default=['ours', 'torchvision'], choices=IMPLS,
                        help='mmdet: mmdetection 3.x, run by --mmdet-python (not a dependency)')
    parser.add_argument('--mmdet-python', default=sys.executable, metavar='PYTHON',
                        help="the Python of an environment with mmdetection 3.x and mmcv's compiled ops, "
                             'e.g. the venv of ../shared/reference/ (default: this one)')
    parser.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES,
                        help='fp32; master: our Fp16OptimizerHook mode=master; autocast: our hook in '
                             'autocast mode, torch.autocast for torchvision')
    parser.add_argument('--dtype', choices=('bfloat16', 'float16'),
                        help='mixed-precision dtype (default: bfloat16 on the CPU, float16 on CUDA)')
    parser.add_argument('--size', type=int, nargs=2, default=(512, 512), metavar=('H', 'W'),
                        help='input height and width (default 512 512; e.g. 800 1216)')
    parser.add_argument('--batch', type=int, default=2, help='images per iteration')
    parser.add_argument('--num-gt', type=int, default=8, help='gt objects per image')
    parser.add_argument('--iters', type=int, default=5, help='timed iterations')
    parser.add_argument('--warmup', type=int, default=2, help='untimed iterations before them')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (default: all cores)')
    parser.add_argument('--depth', type=int, default=50, choices=(18, 34, 50, 101), help='ResNet depth')
    parser.add_argument('--width', type=int, default=256, help='FPN and head channels')
    parser.add_argument('--predict', action='store_true',
                        help='time inference (eval, no_grad, score_thr=0: 100 detections an image) instead')
    parser.add_argument('--profile', type=int, default=0, metavar='N',
                        help='profile N more iterations per configuration and print the top ops')
    parser.add_argument('--profile-rows', type=int, default=30, help='rows of the profile tables')
    parser.add_argument('--count-syncs', action='store_true',
                        help='count the host-device synchronisations of one more iteration (CUDA)')
    parser.add_argument('--json-out', help='write every result (one JSON object a line) to this file')
    parser.add_argument('--run', help=argparse.SUPPRESS)  # MODEL:IMPL:MODE, one configuration, in-process
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    if args.iters < 1 or args.warmup < 0 or args.batch < 1 or args.num_gt < 1 or args.profile < 0:
        raise ConfigError('--iters, --batch and --num-gt must be >= 1, --warmup and --profile >= 0')
    if min(args.size) < 32:
        raise ConfigError(f'--size must be at least 32 x 32, got {args.size}')
    if args.width < 8 or args.width % 8:
        raise ConfigError(f'--width must be a positive multiple of 8, got {args.width}')
    if args.threads < 0:
        raise ConfigError(f'--threads must be >= 0, got {args.threads}')
    if 'mmdet' in args.impls and not args.run:
        try:
            probe = subprocess.run([args.mmdet_python, '-c', 'import mmdet, mmcv.ops'], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
            reason = (probe.stderr.strip().splitlines() or ['(no output)'])[-1] if probe.returncode else None
        except OSError as error:
            reason = error.strerror
        if reason:
            raise ConfigError(f"--impls mmdet: {args.mmdet_python} cannot import mmdetection with mmcv's "
                              f'compiled ops ({reason}); pass --mmdet-python of such an environment')


def default_device() -> torch.device:
    return torch.device('cuda', torch.cuda.current_device()) if torch.cuda.is_available() else torch.device('cpu')


def all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def mixed_dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype:
    name = args.dtype or ('float16' if device.type == 'cuda' else 'bfloat16')
    return getattr(torch, name)


def configurations(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    return [(model, impl, mode) for model in args.models for impl in IMPLS if impl in args.impls
            for mode in IMPL_MODES[impl] if mode in args.modes]


# ---------------------------------------------------------------- the shared input
def make_batch(args: argparse.Namespace, device: torch.device, with_masks: bool) -> dict:
    """Seeded images (pixel values 0..255, RGB) and per image ``--num-gt`` boxes, labels 0..79 and
    elliptic masks filling their boxes, in one [B, 3, H, W] tensor (every image at the full size)."""
    g = torch.Generator().manual_seed(0)
    h, w = args.size
    # low-frequency noise: a few blobs rather than white noise, upsampled to the size
    coarse = torch.rand(args.batch, 3, max(h // 32, 2), max(w // 32, 2), generator=g)
    images = torch.nn.functional.interpolate(coarse, size=(h, w), mode='bilinear', align_corners=False)
    images = (images * 255).round()
    boxes, labels, masks = [], [], []
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    for _ in range(args.batch):
        bw = torch.empty(args.num_gt).uniform_(0.08, 0.5, generator=g) * w
        bh = torch.empty(args.num_gt).uniform_(0.08, 0.5, generator=g) * h
        x1 = torch.rand(args.num_gt, generator=g) * (w - bw)
        y1 = torch.rand(args.num_gt, generator=g) * (h - bh)
        b = torch.stack([x1, y1, x1 + bw, y1 + bh], 1).round()
        boxes.append(b)
        labels.append(torch.randint(0, NUM_CLASSES, (args.num_gt,), generator=g))
        if with_masks:
            cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            rx, ry = (b[:, 2] - b[:, 0]) / 2, (b[:, 3] - b[:, 1]) / 2
            inside = (((xs[None] - cx[:, None, None]) / rx[:, None, None]) ** 2
                      + ((ys[None] - cy[:, None, None]) / ry[:, None, None]) ** 2) <= 1
            masks.append(inside.to(torch.uint8))
    batch = dict(images=images.to(device), boxes=[b.to(device) for b in boxes],
                 labels=[lb.to(device) for lb in labels])
    if with_masks:
        batch['masks'] = [m.to(device) for m in masks]
    return batch


def ours_inputs(batch: dict) -> dict:
    """The batch as the collate function gives it to our detectors (contracts.md)."""
    images = batch['images']
    b, _, h, w = images.shape
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    meta = dict(filename='synthetic.png', ori_filename='synthetic.png', ori_shape=(h, w, 3),
                img_shape=(h, w, 3), pad_shape=(h, w, 3), scale_factor=np.ones(4, dtype=np.float32),
                flip=False, flip_direction=None, batch_input_shape=(h, w),
                img_norm_cfg=dict(mean=list(MEAN), std=list(STD), to_rgb=True))
    data = dict(img=(images - mean) / std, img_metas=[copy.deepcopy(meta) for _ in range(b)],
                gt_bboxes=batch['boxes'], gt_labels=batch['labels'])
    if 'masks' in batch:
        data['gt_masks'] = batch['masks']
    return data


def torchvision_inputs(batch: dict, model_name: str) -> tuple[list, list]:
    """Images in [0, 1] (torchvision normalises inside its transform) and per image target dicts."""
    offset = 0 if model_name == 'retinanet' else 1  # R-CNNs: label 0 is the background
    images = [img / 255. for img in batch['images']]
    targets = []
    for i, (boxes, labels) in enumerate(zip(batch['boxes'], batch['labels'])):
        target = dict(boxes=boxes, labels=labels + offset)
        if 'masks' in batch:
            target['masks'] = batch['masks'][i]
        targets.append(target)
    return images, targets


# ---------------------------------------------------------------- our detectors
def build_ours(args: argparse.Namespace, model_name: str) -> torch.nn.Module:
    from mixprec.config import load_config
    from mixprec.models import build_detector
    cfg = load_config(os.path.join(ROOT, 'configs', '_base_', 'models', f'{model_name}_r50_fpn.py'))
    model_cfg = copy.deepcopy(cfg.model.to_dict() if hasattr(cfg.model, 'to_dict') else dict(cfg.model))
    model_cfg['backbone']['init_cfg'] = None
    model_cfg.pop('pretrained', None)
    model_cfg['backbone']['depth'] = args.depth
    expansion = 4 if args.depth >= 50 else 1
    model_cfg['neck']['in_channels'] = [64 * expansion * 2 ** i for i in range(4)]
    set_width(model_cfg, args.width)
    if args.predict:  # keep every detector's 100 best boxes, whatever their scores
        test_cfg = model_cfg['test_cfg'].get('rcnn', model_cfg['test_cfg'])
        test_cfg.update(score_thr=0.0, max_per_img=100)
    return build_detector(model_cfg)


def set_width(model_cfg: dict, width: int) -> None:
    """FPN outputs and every head's channels at ``width`` (256 leaves the config as it is)."""
    model_cfg['neck']['out_channels'] = width
    for key in ('rpn_head', 'bbox_head'):
        if key in model_cfg:
            model_cfg[key]['in_channels'] = width
            model_cfg[key]['feat_channels'] = width
    roi = model_cfg.get('roi_head')
    if roi:
        roi['bbox_roi_extractor']['out_channels'] = width
        roi['bbox_head']['in_channels'] = width
        if 'mask_head' in roi:
            roi['mask_roi_extractor']['out_channels'] = width
            roi['mask_head']['in_channels'] = width
            roi['mask_head']['conv_out_channels'] = width


class _LogBuffer:
    def __init__(self) -> None:
        self.last: dict = {}

    def update(self, values: dict, count: int = 1) -> None:
        self.last.update(values)


def ours_step_fn(args: argparse.Namespace, model_name: str, mode: str, device: torch.device, batch: dict):
    """A closure running one training iteration of our detector as the Runner runs it."""
    import logging

    from mixprec.engine.hooks import OptimizerHook
    from mixprec.engine.runner import parse_losses
    from mixprec.fp16 import Fp16OptimizerHook
    from mixprec.models import place_model

    model = place_model(build_ours(args, model_name), device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    runner = SimpleNamespace(model=model, optimizer=optimizer, outputs={}, log_buffer=_LogBuffer(), iter=0,
                             meta={}, max_iters=None, logger=logging.getLogger('mixprec.benchmark'))
    if mode == 'fp32':
        hook = OptimizerHook()
    else:
        hook = Fp16OptimizerHook(dtype=mixed_dtype(args, device), mode=mode, distributed=False)
        hook.before_run(runner)
    data = ours_inputs(batch)

    def step() -> float:
        """One iteration; returns the loss (``step.runner.log_buffer.last``: every logged term, and
        ``step.hook``: the optimizer hook, for checks of its state)."""
        set_lr(optimizer, runner.iter)
        hook.before_train_iter(runner)  # the Runner's order: before_train_iter hooks, forward, after_train_iter
        inputs = dict(data, img_metas=[dict(m) for m in data['img_metas']])
        losses = runner.model(**inputs)
        loss, terms = parse_losses(losses)
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()]).tolist()
        log_vars = dict(zip(terms.keys(), values))
        runner.outputs = dict(loss=loss, log_vars=log_vars, num_samples=len(inputs['img_metas']))
        runner.log_buffer.update(log_vars, len(inputs['img_metas']))
        hook.after_train_iter(runner)
        runner.iter += 1
        return log_vars['loss']

    step.runner, step.hook = runner, hook
    return step, model


def ours_predict_fn(args: argparse.Namespace, model_name: str, mode: str, device: torch.device, batch: dict):
    """A closure running inference on the batch as ``tools/test.py`` does; returns detections per image."""
    from mixprec.fp16 import wrap_fp16_model
    from mixprec.models import place_model

    model = place_model(build_ours(args, model_name), device)
    if mode != 'fp32':
        wrap_fp16_model(model, dtype=mixed_dtype(args, device), mode=mode)
    model.eval()
    data = ours_inputs(batch)

    def step() -> float:
        with torch.no_grad():
            results = model(img=[data['img']], img_metas=[[dict(m) for m in data['img_metas']]], return_loss=False)
        boxes = [r[0] if isinstance(r, tuple) else r for r in results]
        return sum(sum(len(per_class) for per_class in r) for r in boxes) / len(boxes)

    return step, model


# ---------------------------------------------------------------- torchvision's detectors
def build_torchvision(args: argparse.Namespace, model_name: str, size: tuple[int, int]) -> torch.nn.Module:
    """torchvision's detector as its ``*_resnet50_fpn`` builder makes it for a pretrained backbone
    (with ``--predict``: score threshold 0, 100 detections per image)."""
    from torchvision.models import resnet
    from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    body = getattr(resnet, f'resnet{args.depth}')(weights=None, norm_layer=FrozenBatchNorm2d,
                                                  zero_init_residual=True)
    # trainable_backbone_layers=3: layer2..4 train; the stem (conv1, bn1) and layer1 are frozen
    for name, param in body.named_parameters():
        if not name.startswith(('layer2', 'layer3', 'layer4')):
            param.requires_grad_(False)
    c2 = body.inplanes // 8  # layer1's output channels
    width = args.width
    sizes = dict(min_size=min(size), max_size=max(size))
    if model_name == 'retinanet':
        levels = [2, 3, 4]
        extra = LastLevelP6P7(width, width)  # torchvision: P6 from P5 (ours: from C5, 'on_input')
    else:
        levels = [1, 2, 3, 4]
        extra = LastLevelMaxPool()
    backbone = BackboneWithFPN(body, {f'layer{k}': str(i) for i, k in enumerate(levels)},
                               [c2 * 2 ** (k - 1) for k in levels], width, extra_blocks=extra)
    if model_name == 'retinanet':
        test = dict(score_thresh=0.0, detections_per_img=100) if args.predict else {}
        return RetinaNet(backbone, num_classes=NUM_CLASSES, **test, **sizes)
    if args.predict:
        sizes.update(box_score_thresh=0.0, box_detections_per_img=100)
    rcnn = dict(rpn_pre_nms_top_n_train=RPN_PRE_NMS_TOP_N, rpn_post_nms_top_n_train=RPN_POST_NMS_TOP_N,
                rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,
                box_batch_size_per_image=ROI_SAMPLES, box_positive_fraction=ROI_POS_FRACTION, **sizes)
    if model_name == 'faster_rcnn':
        return FasterRCNN(backbone, num_classes=NUM_CLASSES + 1, **rcnn)
    # the mask head's channels follow --width (torchvision fixes them at 256, the default width)
    return MaskRCNN(backbone, box_predictor=FastRCNNPredictor(1024, NUM_CLASSES + 1),
                    mask_head=MaskRCNNHeads(width, [width] * 4, 1),
                    mask_predictor=MaskRCNNPredictor(width, width, NUM_CLASSES + 1), **rcnn)


def peer_step(model: torch.nn.Module, mode: str, dtype: torch.dtype, device: torch.device, loss_of):
    """A closure for one training iteration of a peer's detector as its own loop runs it: warm-up lr,
    ``zero_grad``, ``loss_of()`` (under ``torch.autocast`` in ``autocast`` mode, with a GradScaler for
    float16), backward, SGD step; returns the loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scaler = torch.amp.GradScaler(device.type) if mode == 'autocast' and dtype == torch.float16 else None
    iteration = [0]

    def step() -> float:
        set_lr(optimizer, iteration[0])
        iteration[0] += 1
        optimizer.zero_grad(set_to_none=True)
        context = torch.autocast(device.type, dtype=dtype) if mode == 'autocast' else nullcontext()
        with context:
            loss = loss_of()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return float(loss.detach())

    return step


def torchvision_step_fn(args: argparse.Namespace, model_name: str, mode: str, device: torch.device, batch: dict):
    model = build_torchvision(args, model_name, tuple(args.size)).to(device)
    model.train()
    images, targets = torchvision_inputs(batch, model_name)
    step = peer_step(model, mode, mixed_dtype(args, device), device,
                     lambda: sum(model(images, [dict(t) for t in targets]).values()))
    return step, model


def torchvision_predict_fn(args: argparse.Namespace, model_name: str, mode: str, device: torch.device,
                           batch: dict):
    model = build_torchvision(args, model_name, tuple(args.size)).to(device)
    model.eval()
    images, _ = torchvision_inputs(batch, model_name)
    dtype = mixed_dtype(args, device)

    def step() -> float:
        context = torch.autocast(device.type, dtype=dtype) if mode == 'autocast' else nullcontext()
        with torch.no_grad(), context:
            outputs = model(images)
        return sum(len(o['boxes']) for o in outputs) / len(outputs)

    return step, model


# ---------------------------------------------------------------- mmdetection 3.x (optional)
def build_mmdet(args: argparse.Namespace, model_name: str) -> torch.nn.Module:
    """mmdetection's own ``*_r50_fpn_1x_coco.py`` model, its defaults being ours (2000/1000 proposals,
    512 RoIs at 0.25), at ``--depth`` / ``--width``, no pretrained weights (with ``--predict``: score
    threshold 0, 100 detections per image)."""
    import mmdet
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg = Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs', MMDET_CONFIGS[model_name]))
    model_cfg = cfg.model
    model_cfg.backbone.init_cfg = None
    model_cfg.backbone.depth = args.depth
    expansion = 4 if args.depth >= 50 else 1
    model_cfg.neck.in_channels = [64 * expansion * 2 ** i for i in range(4)]
    set_width(model_cfg, args.width)
    if args.predict:
        test_cfg = model_cfg.test_cfg.get('rcnn', model_cfg.test_cfg)
        test_cfg.update(score_thr=0.0, max_per_img=100)
    model = MMDET_MODELS.build(model_cfg)
    model.init_weights()
    return model


def float32_mmcv_ops() -> None:
    """mmcv's CPU NMS and RoIAlign take float32 only: under bf16 autocast run them on float32 copies
    (RoIAlign's output cast back), as a user of mmdetection on the CPU would have to."""
    import importlib
    nms_module = importlib.import_module('mmcv.ops.nms')
    roi_align_module = importlib.import_module('mmcv.ops.roi_align')
    nms_apply, roi_align = nms_module.NMSop.apply, roi_align_module.roi_align

    class Float32NMS:
        @staticmethod
        def apply(boxes, scores, *rest):
            return nms_apply(boxes.float(), scores.float(), *rest)

    def float32_roi_align(features, rois, *rest, **kwargs):
        return roi_align(features.float(), rois.float(), *rest, **kwargs).to(features.dtype)

    nms_module.NMSop = Float32NMS
    roi_align_module.roi_align = float32_roi_align


def mmdet_inputs(batch: dict) -> tuple[torch.Tensor, list]:
    """Normalised images (as ours get them) and ``DetDataSample``s with the gt instances."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    data = ours_inputs(batch)
    _, _, h, w = data['img'].shape
    samples = []
    for i in range(len(data['img_metas'])):
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                             batch_input_shape=(h, w), scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=batch['boxes'][i], labels=batch['labels'][i])
        if 'masks' in batch:
            sample.gt_instances.masks = BitmapMasks(batch['masks'][i].cpu().numpy(), h, w)
        samples.append(sample)
    return data['img'], samples


def mmdet_step_fn(args: argparse.Namespace, model_name: str, mode: str, device: torch.device, batch: dict):
    """One training iteration of mmdetection's detector: ``model.loss`` (under ``torch.autocast`` in
    ``autocast``, as its AmpOptimWrapper runs it), ``parse_losses``, backward, SGD."""
    model = build_mmdet(args, model_name).to(device)
    model.train()
    if mode == 'autocast':
        float32_mmcv_ops()
    images, samples = mmdet_inputs(batch)
    step = peer_step(model, mode, mixed_dtype(args, device), device,
                     lambda: model.parse_losses(model.loss(images, copy.deepcopy(samples)))[0])
    return step, model


def mmdet_predict_fn(args: argparse.Namespace, model_name: str, mode: str, device: torch.device, batch: dict):
    model = build_mmdet(args, model_name).to(device)
    model.eval()
    if mode == 'autocast':
        float32_mmcv_ops()
    images, samples = mmdet_inputs(batch)
    dtype = mixed_dtype(args, device)

    def step() -> float:
        context = torch.autocast(device.type, dtype=dtype) if mode == 'autocast' else nullcontext()
        with torch.no_grad(), context:
            results = model.predict(images, copy.deepcopy(samples), rescale=True)
        return sum(len(r.pred_instances) for r in results) / len(results)

    return step, model


# ---------------------------------------------------------------- one configuration (child process)
def reset_peak_memory(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # restart the kernel's VmHWM counter of this process
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def run_configuration(args: argparse.Namespace, model_name: str, impl: str, mode: str) -> dict:
    """Build, warm up, time ``--iters`` iterations (and profile ``--profile`` more) in this process."""
    device = default_device()
    torch.manual_seed(0)
    batch = make_batch(args, device, with_masks=model_name == 'mask_rcnn')
    make_step = {('ours', False): ours_step_fn, ('ours', True): ours_predict_fn,
                 ('torchvision', False): torchvision_step_fn, ('torchvision', True): torchvision_predict_fn,
                 ('mmdet', False): mmdet_step_fn, ('mmdet', True): mmdet_predict_fn}[impl, args.predict]
    step, model = make_step(args, model_name, mode, device, batch)
    losses = []
    for _ in range(args.warmup):
        losses.append(step())
    synchronize(device)
    reset_peak_memory(device)
    times, cpu_times = [], []
    for _ in range(args.iters):
        start, cpu_start = time.perf_counter(), time.process_time()
        losses.append(step())
        synchronize(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    memory = peak_memory_mb(device)
    result = dict(model=model_name, impl=impl, mode=mode, label=mode_label(mode, mixed_dtype(args, device)),
                  device=device.type, threads=torch.get_num_threads(), size=list(args.size), batch=args.batch,
                  depth=args.depth, width=args.width, s_per_iter=statistics.median(times),
                  s_per_iter_mean=sum(times) / len(times), times=times,
                  cpu_s_per_iter=statistics.median(cpu_times), cpu_times=cpu_times, peak_mb=memory,
                  trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
                  predict=args.predict, finite=all(math.isfinite(v) for v in losses))
    result['detections_per_image' if args.predict else 'losses'] = losses
    if args.profile:
        result['profile'] = profile_steps(step, args.profile, args.profile_rows, device)
    if args.count_syncs:
        try:  # an add-on: its failure leaves the timings
            result['syncs'] = count_syncs(step, device)
        except Exception as error:
            result['syncs'] = dict(error=f'{type(error).__name__}: {error}'.splitlines()[0])
    return result


def profile_steps(step, iters: int, rows: int, device: torch.device) -> str:
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        for _ in range(iters):
            step()
        synchronize(device)
    sort = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    return prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60)


SYNC_CALLS = ('cudaStreamSynchronize', 'cudaDeviceSynchronize', 'cudaEventSynchronize')


def source_name(path: str) -> str:
    """``path`` relative to this repository, or to its ``site-packages`` folder (``torch/...``)."""
    path = os.path.abspath(path)
    if path.startswith(ROOT + os.sep):
        return os.path.relpath(path, ROOT)
    return path.split('site-packages' + os.sep)[-1]


def count_syncs(step, device: torch.device, sites: int = 8) -> dict:
    """The host-device synchronisations of one ``step()``: ``waits``, the CUDA runtime calls in which
    the host waits for the device (profiler), ``dtoh_copies``, the device-to-host copies, and
    ``sites``, the source lines of another ``step()`` that ``torch.cuda.set_sync_debug_mode`` flags,
    most frequent first (``flagged``: their count). Each one stalls the host until the device has
    caught up, which half precision cannot shorten. On the CPU (no device to wait for) all are zero."""
    from collections import Counter
    from torch.profiler import ProfilerActivity, profile, record_function
    cuda = device.type == 'cuda'
    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        with record_function('count_syncs.step'):
            step()
    events = prof.events()
    window = next(e.time_range for e in events if e.name == 'count_syncs.step')
    inside = [e for e in events if window.start <= e.time_range.start <= window.end]
    result = dict(waits=sum(e.name in SYNC_CALLS for e in inside),
                  dtoh_copies=sum('Memcpy DtoH' in e.name for e in events), flagged=0, sites=[])
    if not cuda:
        return result
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    flagged = Counter(f'{source_name(w.filename)}:{w.lineno}' for w in caught if 'synchroniz' in str(w.message))
    result.update(flagged=sum(flagged.values()), sites=flagged.most_common(sites))
    return result


def mode_label(mode: str, dtype: torch.dtype) -> str:
    name = {torch.bfloat16: 'bf16', torch.float16: 'fp16'}[dtype]
    return 'fp32' if mode == 'fp32' else f'{name}-{mode}'


# ---------------------------------------------------------------- the driver
def child_command(args: argparse.Namespace, config: tuple[str, str, str], threads: int) -> list[str]:
    """This tool with the measurement options of ``args``, for the one configuration ``config``."""
    python = args.mmdet_python if config[1] == 'mmdet' else sys.executable
    command = [python, os.path.abspath(__file__), '--run', ':'.join(config),
               '--size', *map(str, args.size), '--batch', str(args.batch), '--num-gt', str(args.num_gt),
               '--iters', str(args.iters), '--warmup', str(args.warmup), '--threads', str(threads),
               '--depth', str(args.depth), '--width', str(args.width), '--profile', str(args.profile),
               '--profile-rows', str(args.profile_rows)] + (['--count-syncs'] if args.count_syncs else [])
    return command + (['--dtype', args.dtype] if args.dtype else []) + (['--predict'] if args.predict else [])


def run_subprocess(args: argparse.Namespace, config: tuple[str, str, str], threads: int) -> dict:
    """This tool again in a fresh process for one configuration; its JSON result (or the failure)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env['PYTHONPATH'] = ROOT + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    command = child_command(args, config, threads)
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    results = [line[len(RESULT_PREFIX):] for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    tag = '/'.join(config)
    if proc.returncode != 0 or not results:
        tail = (proc.stderr.strip().splitlines() or ['(no output)'])[-1]
        print(f'[{tag}] failed (exit code {proc.returncode}): {tail}', file=sys.stderr, flush=True)
        return dict(model=config[0], impl=config[1], mode=config[2], label=config[2], error=tail)
    result = json.loads(results[-1])
    print(f'[{tag}] {result["s_per_iter"]:.3f} s/iter ({result["cpu_s_per_iter"]:.3f} s CPU), '
          f'peak {result["peak_mb"]:.0f} MB'
          + ('' if result['finite'] else ', NON-FINITE losses'), flush=True)
    if 'profile' in result:
        print(f'--- profile {tag} ({result["label"]}) ---\n{result["profile"]}', flush=True)
    return result


def format_table(results: list[dict], load: Optional[tuple] = None) -> str:
    """The results, one row a configuration, and per detector its ratios against the targets."""
    first = next((r for r in results if 'error' not in r), {})
    device = first.get('device', default_device().type)
    memory_kind = 'max_memory_allocated' if device == 'cuda' else 'peak RSS'
    task = 'inference, 100 detections per image' if first.get('predict') else 'training'
    header = (f'{task}, batch {first.get("batch", "?")} of {"x".join(map(str, first.get("size", ("?",))))} '
              f'(H x W), {device}, {first.get("threads", "?")} threads, ResNet-{first.get("depth", "?")} '
              f'FPN {first.get("width", "?")}; s/iter: median wall time of the timed iterations, cpu s/iter: '
              f'process CPU time; peak MB: {memory_kind}')
    if load:
        header += f'\nload average (1 min) before / after the run: {load[0]:.1f} / {load[1]:.1f}'
    cols = (f'{"model":<12} | {"impl":<11} | {"mode":<14} | {"s/iter":>8} | {"peak MB":>8} | '
            f'{"speedup vs our fp32":>19} | {"cpu s/iter":>10} | {"cpu speedup":>11}')
    lines = [header, cols, '-' * len(cols)]
    base = {r['model']: r for r in results if r.get('impl') == 'ours' and r.get('mode') == 'fp32' and 'error' not in r}
    for r in results:
        if 'error' in r:
            lines.append(f'{r["model"]:<12} | {r["impl"]:<11} | {r["label"]:<14} | {"failed":>8} | {"":>8} | '
                         f'{"":>19} | {"":>10} | {"":>11}')
            continue
        ref = base.get(r['model'])
        speedup = f'{ref["s_per_iter"] / r["s_per_iter"]:.2f}x' if ref else '-'
        cpu_speedup = f'{ref["cpu_s_per_iter"] / r["cpu_s_per_iter"]:.2f}x' if ref else '-'
        note = '' if r['finite'] else '  (non-finite losses)'
        if r.get('predict'):
            note += f'  ({statistics.mean(r["detections_per_image"]):.0f} detections per image)'
        lines.append(f'{r["model"]:<12} | {r["impl"]:<11} | {r["label"]:<14} | {r["s_per_iter"]:>8.3f} | '
                     f'{r["peak_mb"]:>8.0f} | {speedup:>19} | {r["cpu_s_per_iter"]:>10.3f} | {cpu_speedup:>11}{note}')
    lines.append('')
    for model in dict.fromkeys(r['model'] for r in results):
        rows = [r for r in results if r['model'] == model and 'error' not in r]
        for kind, parts in target_ratios(rows).items():
            if parts:
                lines.append(f'{model} ({kind}): ' + '; '.join(parts))
    return '\n'.join(lines)


# Per task (inference?): (ours, peer, what, target). Training: our fp32 time against the fastest peer
# fp32 row's and our fp32 peak memory against the leanest one's, our best mixed-precision time against
# the fastest peer mixed row's.
TARGETS = {
    False: (('fp32', 'fp32', 'time', 0.8), ('fp32', 'fp32', 'peak memory', 1.0), ('mixed', 'mixed', 'time', 0.3)),
    True: (('fp32', 'fp32', 'time', 0.8), ('mixed', 'mixed', 'time', 0.8)),
}


def target_ratios(rows: list[dict]) -> dict[str, list[str]]:
    """One detector's ratios against ``TARGETS``, from the wall times and from the CPU times (peak
    memory with the wall ones), each with met / NOT met, and our fp32 / our best mixed time."""
    def best(side: str, mode: str, field: str) -> Optional[dict]:
        candidates = [r for r in rows if (r['impl'] == 'ours') == (side == 'ours')
                      and (r['mode'] == 'fp32') == (mode == 'fp32')]
        return min(candidates, key=lambda r: r[field]) if candidates else None

    out = {}
    for key, clock in (('s_per_iter', 'wall'), ('cpu_s_per_iter', 'cpu')):
        parts = []
        for ours_mode, peer_mode, what, target in TARGETS[any(r.get('predict') for r in rows)]:
            if what == 'peak memory' and clock == 'cpu':
                continue
            field = 'peak_mb' if what == 'peak memory' else key
            ours, peer = best('ours', ours_mode, key), best('peer', peer_mode, field)
            if ours is None or peer is None:
                continue
            ratio = ours[field] / peer[field]
            parts.append(f'ours {ours["label"]} / {peer["impl"]} {peer["label"]} {what} = {ratio:.2f} '
                         f'(target <= {target}: {"met" if ratio <= target else "NOT met"})')
        fp32, mixed = best('ours', 'fp32', key), best('ours', 'mixed', key)
        if fp32 and mixed:
            parts.append(f'our fp32 / our best mixed ({mixed["label"]}) time = {fp32[key] / mixed[key]:.2f}x')
        out[clock] = parts
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    check_args(args)
    threads = args.threads or all_cores()
    if args.run:
        torch.set_num_threads(threads)
        model_name, impl, mode = args.run.split(':')
        print(RESULT_PREFIX + json.dumps(run_configuration(args, model_name, impl, mode)), flush=True)
        return
    configs = configurations(args)
    if not configs:
        raise ConfigError('no configuration to run: torchvision has no master mode; choose other --modes')
    print(f'device: {describe_device("cuda" if torch.cuda.is_available() else "cpu")}', flush=True)
    load_before = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
    results = [run_subprocess(args, config, threads) for config in configs]
    load = (load_before, os.getloadavg()[0]) if load_before is not None else None
    if args.json_out:
        with open(args.json_out, 'w') as f:
            for r in results:
                f.write(json.dumps({k: v for k, v in r.items() if k != 'profile'}) + '\n')
    print(format_table(results, load), flush=True)
    if any('error' in r for r in results):
        sys.exit(1)


if __name__ == '__main__':
    run_cli(main)
