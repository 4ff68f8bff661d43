"""Write the training images after the pipeline, with their gt boxes and masks drawn.

    python tools/misc/browse_dataset.py CONFIG --output-dir DIR [--not-show] [--max-images N]
        [--skip-type DefaultFormatBundle Normalize Collect] [--cfg-options k=v ...]

As mmdetection's tool: the transforms named in ``--skip-type`` are left out of the training
pipeline, so each image is shown as the model sees it (resized, flipped, padded) but not normalised.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
from typing import Optional, Sequence

import mmcv
import numpy as np

from mixprec.cli import run_cli
from mixprec.config import Config, DictAction, load_config
from mixprec.data import build_dataset
from mixprec.registry import ConfigError
from mixprec.visualization import draw_instances

DEFAULT_SKIP = ('DefaultFormatBundle', 'Normalize', 'Collect')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Browse the training data after its pipeline')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--output-dir', required=True, help='folder for the drawn images')
    parser.add_argument('--not-show', action='store_true', help='only write the images, open no window')
    parser.add_argument('--show-interval', type=int, default=0, help='ms per image in the window (0: wait for a key)')
    parser.add_argument('--skip-type', nargs='+', default=list(DEFAULT_SKIP), help='pipeline steps to leave out')
    parser.add_argument('--max-images', type=int, default=None, help='stop after this many images')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys')
    return parser.parse_args(argv)


def skip_pipeline_steps(data_cfg, skip_type: Sequence[str]) -> None:
    """In place: drop the ``skip_type`` transforms from the pipeline of the (wrapped) dataset config(s)."""
    if isinstance(data_cfg, (list, tuple)):
        for cfg in data_cfg:
            skip_pipeline_steps(cfg, skip_type)
        return
    if 'dataset' in data_cfg:
        skip_pipeline_steps(data_cfg['dataset'], skip_type)
        return
    if 'datasets' in data_cfg:
        skip_pipeline_steps(data_cfg['datasets'], skip_type)
        return
    data_cfg['pipeline'] = [t for t in data_cfg.get('pipeline', []) if t['type'] not in skip_type]


def train_data_cfg(cfg: Config, skip_type: Sequence[str]):
    """``cfg.data.train`` with the skipped transforms removed."""
    if 'data' not in cfg or 'train' not in cfg.data:
        raise ConfigError('the config has no data.train to browse')
    data_cfg = cfg.data.train
    skip_pipeline_steps(data_cfg, skip_type)
    return data_cfg


def draw_sample(sample: dict, class_names: Sequence[str]) -> np.ndarray:
    """The pipeline's image (HWC, BGR) with its gt boxes, labels and masks drawn."""
    img = sample['img']
    if not isinstance(img, np.ndarray) or img.ndim != 3:
        raise ConfigError('the pipeline output has no HWC image array; keep the formatting steps in '
                          '--skip-type (DefaultFormatBundle, Normalize, Collect)')
    img = np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))
    masks = sample.get('gt_masks')
    masks = [m.astype(bool) for m in masks] if masks is not None else None
    return draw_instances(img, np.asarray(sample.get('gt_bboxes', np.zeros((0, 4)))),
                          np.asarray(sample.get('gt_labels', np.zeros(0, dtype=np.int64))), class_names,
                          masks=masks)


def output_name(sample: dict, index: int) -> str:
    name = sample.get('ori_filename') or osp.basename(sample.get('filename') or f'{index:06d}.png')
    return osp.basename(name)


def browse(cfg: Config, output_dir: str, skip_type: Sequence[str], max_images: Optional[int] = None,
           show_interval: Optional[int] = None) -> list[str]:
    """Draw the first ``max_images`` training samples into ``output_dir``; return the written paths.

    ``show_interval`` not None also shows each image in a window for that many ms.
    """
    dataset = build_dataset(train_data_cfg(cfg, skip_type))
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for index in range(count):
        sample = dataset[index]
        drawn = draw_sample(sample, dataset.CLASSES)
        path = osp.join(output_dir, output_name(sample, index))
        mmcv.imwrite(drawn, path)
        written.append(path)
        if show_interval is not None:
            mmcv.imshow(drawn, output_name(sample, index), show_interval)
    return written


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f'--max-images must be >= 1, got {args.max_images}')
    if not args.not_show and not os.environ.get('DISPLAY'):
        raise ConfigError('no display to show images on ($DISPLAY is not set); pass --not-show')
    cfg = load_config(args.config, args.cfg_options)
    written = browse(cfg, args.output_dir, args.skip_type, args.max_images,
                     None if args.not_show else args.show_interval)
    print(f'wrote {len(written)} images to {args.output_dir}')


if __name__ == '__main__':
    run_cli(main)
