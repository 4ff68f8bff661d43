"""Our detectors against mmdetection 3.x itself, for the same weights and input.

    python tools/analysis_tools/compare_mmdet.py --mmdet-python ~/.venvs/mmdet-ref/bin/python
        [--models faster_rcnn mask_rcnn retinanet] [--size 384 448] [--no-winograd]

For each detector, mmdetection's own ``*_r50_fpn_1x_coco.py`` model is built in the environment of
``--mmdet-python`` (mmdetection 3.x with mmcv's compiled ops, such as the venv ``../shared/reference/``
sets up; not a dependency of mixprec), seeded, with the last BatchNorm of every residual branch at a random
gamma in [0.1, 0.3] (``zero_init_residual`` leaves those branches without gradient), its classifier weights x30
so that detections clear the score threshold (RetinaNet's bias also at -2), and the samplers' ``num``
raised so that no random sampling happens. That process writes its state dict, its detections on a batch of two
``benchmark_detectors`` images (eval, ``predict``) and its losses and gradients (train, ``loss``).
Ours is then built from ``configs/_base_/models/<model>_r50_fpn.py``, loads that state dict strictly,
is placed as ``tools/train.py`` places it, and runs the same. One line per detector: detections matched
(same label, IoU > 0.99) and the largest box / score difference, mask pixels that differ, the largest
relative loss difference, and the median and worst relative L2 difference of the parameters'
gradients. ``--no-winograd`` compares the direct convolutions instead (``cpu_winograd=False``).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

import torch

import benchmark_detectors as bench  # this folder is on sys.path when the tool runs as a script

MODELS = ('faster_rcnn', 'mask_rcnn', 'retinanet')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=MODELS)
    parser.add_argument('--mmdet-python', default=sys.executable, metavar='PYTHON',
                        help="the Python of an environment with mmdetection 3.x and mmcv's compiled ops")
    parser.add_argument('--size', type=int, nargs=2, default=(384, 448), metavar=('H', 'W'))
    parser.add_argument('--no-winograd', action='store_true',
                        help='3x3 convolutions on PyTorch\'s kernel, not Winograd (cpu_winograd=False)')
    parser.add_argument('--mmdet-side', nargs=2, metavar=('MODEL', 'FILE'), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------- mmdetection's side (its own Python)
def run_mmdet_side(model_name: str, path: str) -> None:
    """Build mmdetection's detector, run it on the batch in ``path`` and add its results there."""
    import mmdet
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    torch.set_num_threads(1)
    cfg = Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs',
                                       bench.MMDET_CONFIGS[model_name]))
    cfg.model.backbone.init_cfg = None
    if 'rpn' in cfg.model.train_cfg:
        cfg.model.train_cfg.rpn.sampler.num = 10 ** 6
        cfg.model.train_cfg.rcnn.sampler.num = 10 ** 6
    torch.manual_seed(0)
    model = MMDET_MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():
        for name, module in model.backbone.named_modules():  # zero_init_residual's gammas: no gradient at all
            if name.endswith('bn3'):
                module.weight.uniform_(0.1, 0.3)
        classifier = model.bbox_head.retina_cls if model_name == 'retinanet' else model.roi_head.bbox_head.fc_cls
        classifier.weight.mul_(30)
        if model_name == 'retinanet':
            classifier.bias.fill_(-2.0)
    data = torch.load(path, weights_only=True)
    inputs, samples = bench.mmdet_inputs(data['batch'])
    model.eval()
    with torch.no_grad():
        predictions = model.predict(inputs, copy.deepcopy(samples), rescale=True)
    detections = []
    for prediction in predictions:
        found = prediction.pred_instances
        detections.append(dict(boxes=found.bboxes, scores=found.scores, labels=found.labels,
                               **({'masks': found.masks} if 'masks' in found else {})))
    model.train()
    losses = model.loss(inputs, copy.deepcopy(samples))
    total, _ = model.parse_losses(losses)
    total.backward()
    data.update(state=model.state_dict(), detections=detections,
                losses={k: float(sum(v) if isinstance(v, (list, tuple)) else v) for k, v in losses.items()},
                grads={n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    torch.save(data, path)


# ---------------------------------------------------------------- our side
def make_batch(args: argparse.Namespace, model_name: str) -> dict:
    """Two ``benchmark_detectors`` images at ``--size`` with their gt boxes over 8 px (and masks)."""
    batch = bench.make_batch(bench.parse_args(['--size', *map(str, args.size)]), torch.device('cpu'),
                             with_masks=model_name == 'mask_rcnn')
    keep = [((b[:, 2] - b[:, 0]) > 8) & ((b[:, 3] - b[:, 1]) > 8) for b in batch['boxes']]
    for key in ('boxes', 'labels', 'masks'):
        if key in batch:
            batch[key] = [value[k] for value, k in zip(batch[key], keep)]
    return batch


def build_ours(model_name: str, state: dict, winograd: bool = True) -> torch.nn.Module:
    from mixprec.config import load_config
    from mixprec.models import build_detector, place_model
    cfg = load_config(os.path.join(bench.ROOT, 'configs', '_base_', 'models', f'{model_name}_r50_fpn.py'))
    model_cfg = copy.deepcopy(cfg.model.to_dict() if hasattr(cfg.model, 'to_dict') else dict(cfg.model))
    model_cfg['backbone']['init_cfg'] = None
    if 'rpn' in model_cfg['train_cfg']:
        model_cfg['train_cfg']['rpn']['sampler']['num'] = 10 ** 6
        model_cfg['train_cfg']['rcnn']['sampler']['num'] = 10 ** 6
    model = build_detector(model_cfg)
    model.load_state_dict(state, strict=True)
    return place_model(model, torch.device('cpu'), winograd=winograd)


def our_detections(model: torch.nn.Module, inputs: torch.Tensor, metas: list) -> list[dict]:
    """Per image boxes [n, 4], scores, labels (and masks) from our v2-style results."""
    import numpy as np
    model.eval()
    with torch.no_grad():
        results = model(img=[inputs], img_metas=[copy.deepcopy(metas)], return_loss=False, rescale=True)
    detections = []
    for result in results:
        per_class, masks = result if isinstance(result, tuple) else (result, None)
        boxes = torch.from_numpy(np.concatenate(per_class))
        found = dict(boxes=boxes[:, :4], scores=boxes[:, 4],
                     labels=torch.cat([torch.full((len(b),), c) for c, b in enumerate(per_class)]))
        if masks is not None:
            found['masks'] = torch.from_numpy(np.stack([np.asarray(m) for per in masks for m in per])).bool()
        detections.append(found)
    return detections


def compare_detections(theirs: list[dict], ours: list[dict]) -> dict:
    """Match each of their detections to ours (same label, IoU > 0.99): counts and largest differences."""
    from torchvision.ops import box_iou
    out = dict(matched=0, total=0, extra=0, box=0.0, score=0.0, mask_pixels=0)
    for their, our in zip(theirs, ours):
        iou = box_iou(their['boxes'].float(), our['boxes'].float())
        iou[their['labels'][:, None] != our['labels'][None, :]] = -1
        best, index = iou.max(1) if iou.numel() else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
        ok = best > 0.99
        out['total'] += len(their['scores'])
        out['matched'] += int(ok.sum())
        out['extra'] += len(our['scores']) - int(ok.sum())
        if ok.any():
            out['box'] = max(out['box'], float((their['boxes'][ok] - our['boxes'][index[ok]]).abs().max()))
            out['score'] = max(out['score'], float((their['scores'][ok] - our['scores'][index[ok]]).abs().max()))
        if 'masks' in their:
            out['mask_pixels'] += int((their['masks'][ok].bool() != our['masks'][index[ok]]).sum())
    return out


def compare_model(args: argparse.Namespace, model_name: str, workdir: str) -> tuple[bool, str]:
    """Run both sides for one detector; whether the mmdetection side ran, and the report line."""
    from mixprec.engine.runner import parse_losses
    path = os.path.join(workdir, f'{model_name}.pt')
    torch.save(dict(batch=make_batch(args, model_name)), path)
    try:
        side = subprocess.run([args.mmdet_python, os.path.abspath(__file__), '--mmdet-side', model_name, path],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reason = (side.stderr.strip().splitlines() or ['(no output)'])[-1] if side.returncode else None
    except OSError as error:
        reason = error.strerror
    if reason:
        return False, f'{model_name}: mmdetection side failed in {args.mmdet_python} ({reason})'
    ref = torch.load(path, weights_only=True)
    model = build_ours(model_name, ref['state'], winograd=not args.no_winograd)
    data = bench.ours_inputs(ref['batch'])
    data['img'] = data['img'].contiguous(memory_format=torch.channels_last)
    det = compare_detections(ref['detections'], our_detections(model, data['img'], data['img_metas']))
    model.train()
    loss, terms = parse_losses(model(**data))
    loss.backward()
    loss_diff = max(abs(float(terms[k].detach()) - v) / max(abs(v), 1e-12) for k, v in ref['losses'].items())
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ref['grads'].keys(), sorted(set(grads) ^ set(ref['grads']))
    errors = {name: float((grads[name] - g).norm() / g.norm()) for name, g in ref['grads'].items() if g.norm() > 0}
    worst = max(errors, key=errors.get)
    masks = f', mask pixels differing {det["mask_pixels"]}' if model_name == 'mask_rcnn' else ''
    return True, (f'{model_name}: detections {det["matched"]} / {det["total"]} matched ({det["extra"]} of ours '
                  f'unmatched), box diff <= {det["box"]:.3g} px, score diff <= {det["score"]:.3g}{masks}; losses '
                  f'<= {loss_diff:.2g} relative; gradients of {len(errors)} parameters (relative L2): median '
                  f'{statistics.median(errors.values()):.2g}, worst {errors[worst]:.2g} ({worst})')


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.mmdet_side:
        run_mmdet_side(*args.mmdet_side)
        return
    torch.set_num_threads(1)
    failed = False
    with tempfile.TemporaryDirectory() as workdir:
        for model_name in args.models:
            ran, line = compare_model(args, model_name, workdir)
            print(line, flush=True)
            failed = failed or not ran
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
