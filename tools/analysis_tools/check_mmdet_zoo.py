"""Train every mmdetection v2 config of a folder for one iteration and print OK or its one-line error.

    python tools/analysis_tools/check_mmdet_zoo.py /tmp/mmdet228/mmdet/.mim/configs [--fp16-dir DIR]
        [--only NAME ...] [--work DIR]

DIR is an mmdetection ``configs/`` folder (``_base_/``, ``common/``, ``faster_rcnn/``, ...); its
``faster_rcnn/``, ``mask_rcnn/`` and ``retinanet/`` files (the NPU-only ``ascend_*`` excepted), and
the ``fp16/`` files of ``--fp16-dir`` (mmdet v2.18's ``configs/fp16``), are copied unchanged into a
work folder. There it writes a tiny COCO-format set (``data/coco``, the synthetic shapes under COCO's
80 category names: circles are persons, squares bicycles, triangles cars) and, under a temporary
``TORCH_HOME``, a fake cached file for every pretrained name and ``load_from`` the configs use (random
weights of the configured backbone or detector, with its key names). Each config then goes through
``tools/train.py`` in this process with ``--cfg-options`` that only shrink it: image scales scaled by
``--scale`` (long side 1333 -> 107 px), one image per batch, one epoch (or iteration), evaluation at
the end. Exit code 0 when every config trained.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import math
import os
import os.path as osp
import re
import shutil
import sys
import tempfile
import time
import traceback
from typing import Optional

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
FAMILIES = ('faster_rcnn', 'mask_rcnn', 'retinanet')
EXCLUDED_PREFIXES = ('ascend_',)
DEFAULT_SCALE = 0.08
# COCO's category ids (1..90 with ten gaps), in the order of COCO_CLASSES.
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
# Shapes category id -> COCO category id: circle -> person, square -> bicycle, triangle -> car.
SHAPE_TO_COCO = {1: 1, 3: 2, 5: 3}


def _load_module(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def list_configs(configs_dir: str, fp16_dir: Optional[str] = None) -> list[str]:
    """``family/name.py`` of every config to check (relative to the work folder's ``configs``)."""
    names = []
    for family in FAMILIES:
        folder = osp.join(configs_dir, family)
        names += [f'{family}/{n}' for n in sorted(os.listdir(folder))
                  if n.endswith('.py') and not n.startswith(EXCLUDED_PREFIXES)]
    if fp16_dir:
        names += [f'fp16/{n}' for n in sorted(os.listdir(fp16_dir)) if n.endswith('.py') and 'dconv' not in n]
    return names


def copy_configs(configs_dir: str, dest: str, fp16_dir: Optional[str] = None) -> str:
    """Copy ``_base_``, ``common`` and the three families (and fp16) unchanged to ``dest/configs``."""
    out = osp.join(dest, 'configs')
    for folder in ('_base_', 'common') + FAMILIES:
        if osp.isdir(osp.join(configs_dir, folder)):
            shutil.copytree(osp.join(configs_dir, folder), osp.join(out, folder), dirs_exist_ok=True)
    if fp16_dir:
        shutil.copytree(fp16_dir, osp.join(out, 'fp16'), dirs_exist_ok=True)
    return out


# -- the tiny COCO set --------------------------------------------------------------------------------------
def _outer_polygons(segm, h: int, w: int) -> list:
    """Polygons of the outer contours of an RLE mask (COCO's non-crowd objects are polygons)."""
    from mixprec.data.masks import segm_to_rle
    mask = mask_utils.decode(segm_to_rle(segm, h, w))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def _categories(path: str) -> set:
    with open(path) as f:
        return {a['category_id'] for a in json.load(f)['annotations'] if not a['iscrowd']}


def make_coco_data(work: str, num_train: int = 1, num_val: int = 1, img_size: int = 64, seed: int = 0) -> str:
    """``work/data/coco/{train2017,val2017}/*.png`` and ``annotations/instances_{train,val}2017.json``.

    The shapes generator's images, with COCO's 80 categories (ids with gaps) and non-crowd masks as
    polygons, as in COCO; each split has persons, bicycles and cars. Returns the ``data/coco`` folder.
    """
    from mixprec.data.coco import COCO_CLASSES
    from mixprec.data.shapes import make_shapes_dataset
    root = osp.join(work, 'data', 'coco')
    shapes = osp.join(work, 'data', 'shapes_src')
    while True:  # the first seed from ``seed`` whose every split shows all three shapes (class subsets)
        paths = make_shapes_dataset(shapes, num_train=num_train, num_val=num_val, img_size=img_size, seed=seed,
                                    min_shapes=3, max_shapes=5)
        if all(_categories(path) == set(SHAPE_TO_COCO) for path in paths.values()):
            break
        seed += 1
    categories = [{'id': i, 'name': n, 'supercategory': 'coco'} for i, n in zip(COCO_IDS, COCO_CLASSES)]
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    for split, path in paths.items():
        with open(path) as f:
            coco = json.load(f)
        sizes = {im['id']: (im['height'], im['width']) for im in coco['images']}
        for ann in coco['annotations']:
            ann['category_id'] = SHAPE_TO_COCO[ann['category_id']]
            if not ann['iscrowd'] and isinstance(ann['segmentation'], dict):
                ann['segmentation'] = _outer_polygons(ann['segmentation'], *sizes[ann['image_id']])
        coco['categories'] = categories
        shutil.copytree(osp.join(shapes, split), osp.join(root, f'{split}2017'), dirs_exist_ok=True)
        with open(osp.join(root, 'annotations', f'instances_{split}2017.json'), 'w') as f:
            json.dump(coco, f)
    shutil.rmtree(shapes)
    return root


# -- fake cached pretrained files ---------------------------------------------------------------------------
def _openmmlab_urls() -> dict:
    """mmcv 1.x's ``open-mmlab://`` table (mmengine ships the same ``openmmlab.json``)."""
    import mmengine
    with open(osp.join(osp.dirname(mmengine.__file__), 'hub', 'openmmlab.json')) as f:
        return json.load(f)


def cache_path(name: str) -> str:
    """Where mmcv 1.x looked for ``name`` in the torch hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    checkpoints = osp.join(torch.hub.get_dir(), 'checkpoints')
    if name.startswith('torchvision://'):
        from mixprec.checkpoint import torchvision_cache_path
        return torchvision_cache_path(name[len('torchvision://'):])
    if name.startswith('open-mmlab://'):
        url = _openmmlab_urls()[name[len('open-mmlab://'):]]
        return osp.join(checkpoints, osp.basename(url))
    if name.startswith(('http://', 'https://')):
        return osp.join(checkpoints, osp.basename(name))
    return name


def pretrained_names(cfg) -> dict[str, str]:
    """``{name: 'backbone' | 'detector'}`` of the cached files a config reads."""
    names = {}
    backbone = cfg.model.get('backbone', {})
    init_cfg = backbone.get('init_cfg') or {}
    for name in (cfg.model.get('pretrained'), backbone.get('pretrained'),
                 init_cfg.get('checkpoint') if isinstance(init_cfg, dict) else None):
        if isinstance(name, str) and '://' in name:
            names[name] = 'backbone'
    if isinstance(cfg.get('load_from'), str) and '://' in cfg.load_from:
        names[cfg.load_from] = 'detector'
    return names


def _state_dict_without_counters(module: torch.nn.Module) -> dict:
    return {k: v for k, v in module.state_dict().items() if not k.endswith('num_batches_tracked')}


def _source_config(basename: str, configs: str) -> Optional[str]:
    """The zoo config a released detector checkpoint was trained with (longest name prefix)."""
    best = None
    for family in FAMILIES:
        for name in os.listdir(osp.join(configs, family)):
            stem = name[:-3]
            if name.endswith('.py') and basename.startswith(stem + '_') and (best is None or len(stem) > len(best[1])):
                best = (osp.join(configs, family, name), stem)
    return best[0] if best else None


def make_fake_file(name: str, kind: str, cfg, configs: str) -> str:
    """Write random weights with the right keys at ``cache_path(name)`` (once): the backbone's state
    dict as the ImageNet files hold it, or a detector checkpoint ``{'meta', 'state_dict'}``."""
    from mixprec.config import load_config
    from mixprec.models import build_backbone, build_detector
    path = cache_path(name)
    if osp.exists(path):
        return path
    torch.manual_seed(0)
    if kind == 'backbone':
        # the ImageNet file holds the whole network: all four stages (a C4 head reads res5 from it)
        backbone_cfg = {k: v for k, v in cfg.model.backbone.items()
                        if k not in ('pretrained', 'num_stages', 'strides', 'dilations', 'out_indices')}
        backbone_cfg['init_cfg'] = None
        state = _state_dict_without_counters(build_backbone(backbone_cfg))
    else:
        source = _source_config(osp.basename(path), configs)
        model_cfg = load_config(source).model if source else cfg.model
        model_cfg.pop('pretrained', None)
        model_cfg.backbone.init_cfg = None
        state = {'meta': {'source': source}, 'state_dict': _state_dict_without_counters(build_detector(model_cfg))}
    os.makedirs(osp.dirname(path), exist_ok=True)
    torch.save(state, path + '.tmp')
    os.replace(path + '.tmp', path)
    return path


# -- shrinking options --------------------------------------------------------------------------------------
def _scaled(scale, factor: float):
    if isinstance(scale, (list, tuple)) and scale and isinstance(scale[0], (list, tuple)):
        return [_scaled(s, factor) for s in scale]
    return tuple(max(32, int(round(v * factor))) for v in scale)


def _literal(value) -> str:
    return repr(value).replace(' ', '')


def _pipeline_options(prefix: str, pipeline: list, factor: float) -> list[str]:
    options = []
    for index, step in enumerate(pipeline):
        if step.get('img_scale') is not None:
            options.append(f'{prefix}.{index}.img_scale={_literal(_scaled(step["img_scale"], factor))}')
        if step.get('type') == 'MultiScaleFlipAug':
            options += _pipeline_options(f'{prefix}.{index}.transforms', step.get('transforms', []), factor)
    return options


def _dataset_options(prefix: str, dataset, factor: float) -> list[str]:
    if not isinstance(dataset, dict):
        return []
    if 'dataset' in dataset:
        return _dataset_options(f'{prefix}.dataset', dataset['dataset'], factor)
    return _pipeline_options(f'{prefix}.pipeline', dataset.get('pipeline', []), factor)


def shrink_options(cfg, factor: float = DEFAULT_SCALE) -> list[str]:
    """``--cfg-options`` for one short run: smaller image scales, batch 1, 1 epoch or 1 iteration,
    evaluation, a checkpoint and a log record at its end."""
    options = ['data.samples_per_gpu=1', 'data.workers_per_gpu=0']
    for split in ('train', 'val', 'test'):
        options += _dataset_options(f'data.{split}', cfg.data.get(split), factor)
    runner = cfg.get('runner') or {}
    options.append('runner.max_iters=1' if 'max_iters' in runner else 'runner.max_epochs=1')
    options += ['evaluation.interval=1', 'checkpoint_config.interval=1', 'log_config.interval=1']
    return options


# -- running ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _in_folder(folder: str):
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _close_file_handlers() -> None:
    logger = logging.getLogger('mixprec')
    for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(handler)
        handler.close()


def one_line(exc: BaseException) -> str:
    """The line tools/train.py prints for a known failure; type and first line otherwise."""
    from mixprec.cli import _input_errors, _one_line, _runtime_errors
    if isinstance(exc, _input_errors() + _runtime_errors()):
        return _one_line(exc)
    lines = str(exc).strip().splitlines()
    return f'{type(exc).__name__}: {lines[0] if lines else ""} (no one-line error: a crash)'


_LOSS = re.compile(r'(?:Epoch \[\d+\]\[\d+/\d+\]|Iter \[\d+/\d+\]).*?\bloss: (\S+?)(?:,|$)', re.M)


def trained(work_dir: str) -> Optional[str]:
    """None when ``work_dir`` holds a checkpoint and a text log with a finite training loss, else why
    not; the checkpoints are removed (hundreds of MB each)."""
    checkpoints = [n for n in os.listdir(work_dir) if n.endswith('.pth')]
    for name in checkpoints:
        os.remove(osp.join(work_dir, name))
    if not checkpoints:
        return 'no checkpoint written'
    losses = []
    for name in os.listdir(work_dir):
        if name.endswith('.log'):
            with open(osp.join(work_dir, name)) as f:
                losses += [float(v) for v in _LOSS.findall(f.read())]
    if not losses:
        return 'no training loss logged'
    if not all(math.isfinite(v) for v in losses):
        return f'non-finite training loss {losses}'
    return None


class Zoo:
    """A work folder with the configs, the tiny COCO set and a fake torch hub cache.

    ``run(config)`` trains one config and returns ``'OK'`` or its one-line error.
    """

    def __init__(self, configs_dir: str, work: str, fp16_dir: Optional[str] = None,
                 factor: float = DEFAULT_SCALE, torch_home: Optional[str] = None) -> None:
        self.work = work
        self.configs = copy_configs(configs_dir, work, fp16_dir)
        self.names = list_configs(self.configs, osp.join(self.configs, 'fp16') if fp16_dir else None)
        self.factor = factor
        self.torch_home = torch_home or osp.join(work, 'torch_home')
        make_coco_data(work)
        self.train = _load_module('mixprec_tools_train', osp.join(ROOT, 'tools', 'train.py'))

    @contextlib.contextmanager
    def _torch_home(self, torch_home: str):
        previous = os.environ.get('TORCH_HOME')
        os.environ['TORCH_HOME'] = torch_home
        try:
            yield
        finally:
            if previous is None:
                del os.environ['TORCH_HOME']
            else:
                os.environ['TORCH_HOME'] = previous

    def prepare(self, name: str):
        """The config, read; the fake cached files it needs written where its model builds (where it
        does not, tools/train.py reports why)."""
        from mixprec.config import load_config
        cfg = load_config(osp.join(self.configs, name))
        with self._torch_home(self.torch_home):
            for pretrained, kind in pretrained_names(cfg).items():
                with contextlib.suppress(Exception):
                    make_fake_file(pretrained, kind, cfg, self.configs)
        return cfg

    def argv(self, name: str, cfg, work_dir: str) -> list[str]:
        """tools/train.py's arguments for one short run of ``name`` (run from ``self.work``)."""
        return [osp.join('configs', name), '--work-dir', work_dir, '--seed', '0',
                '--cfg-options', *shrink_options(cfg, self.factor)]

    def run(self, name: str) -> str:
        """Train ``name`` once with the fake cache: ``'OK'`` or the one-line reason it did not train."""
        work_dir = osp.join(self.work, 'work_dirs', name.replace('/', '__')[:-3])
        try:
            cfg = self.prepare(name)
            with _in_folder(self.work), self._torch_home(self.torch_home):
                self.train.main(self.argv(name, cfg, work_dir))
        except Exception as exc:  # noqa: BLE001 - every failure becomes one reported line
            if os.environ.get('MIXPREC_DEBUG') == '1':
                traceback.print_exc()
            return one_line(exc)
        finally:
            _close_file_handlers()
        return trained(work_dir) or 'OK'


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('configs_dir', help="an mmdetection configs/ folder (with _base_/, faster_rcnn/, ...)")
    parser.add_argument('--fp16-dir', help="mmdet v2.18's configs/fp16 folder (its three fp16 files)")
    parser.add_argument('--only', nargs='+', default=None, help='config names (family/name.py or name) to run')
    parser.add_argument('--work', help='work folder (default: a temporary one, removed at the end)')
    parser.add_argument('--scale', type=float, default=DEFAULT_SCALE, help='factor on every img_scale')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = [f for f in ('_base_',) + FAMILIES if not osp.isdir(osp.join(args.configs_dir, f))]
    if missing or (args.fp16_dir and not osp.isdir(args.fp16_dir)):
        print(f'error: {args.configs_dir} is not an mmdetection configs/ folder (no {missing[0]}/)' if missing
              else f'error: --fp16-dir {args.fp16_dir} is not a folder', file=sys.stderr)
        return 2
    os.environ.setdefault('TQDM_DISABLE', '1')  # one line per config
    os.environ.setdefault('WANDB_MODE', 'offline')  # the wandb config logs the fake run locally, never to a server
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    work = args.work or tempfile.mkdtemp(prefix='mmdet_zoo_')
    from mixprec.engine import get_logger
    for handler in get_logger().handlers:
        handler.setLevel(logging.ERROR)
    try:
        zoo = Zoo(args.configs_dir, work, args.fp16_dir, args.scale)
        names = zoo.names
        if args.only:
            names = [n for n in names if n in args.only or osp.basename(n) in args.only
                     or osp.basename(n)[:-3] in args.only]
            if not names:
                print(f'error: none of {args.only} is among the {len(zoo.names)} configs', file=sys.stderr)
                return 2
        failed = 0
        for name in names:
            start = time.time()
            status = zoo.run(name)
            failed += status != 'OK'
            print(f'{name}: {status} ({time.time() - start:.1f} s)', flush=True)
        print(f'{len(names) - failed}/{len(names)} OK')
        return 1 if failed else 0
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
