"""Detect objects in one image: ``python demo/image_demo.py IMG CONFIG CHECKPOINT [--out-file OUT]``.

mmdetection v2.28's demo flags. With ``--out-file`` the drawn image is written there; without it
the image is shown in a window (which needs a display). ``--async-test`` (CUDA streams) is refused.
"""
from __future__ import annotations

import argparse
import os.path as osp

import torch

from mixprec.apis import inference_detector, init_detector, show_result_pyplot
from mixprec.cli import run_cli
from mixprec.registry import ConfigError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Detect objects in an image and draw them')
    parser.add_argument('img', help='image file')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-file', default=None, help='write the drawn image here (else show it)')
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu',
                        help='device used for inference (default cuda:0 when there is a GPU, else cpu)')
    parser.add_argument('--palette', default='coco', choices=['coco', 'voc', 'citys', 'random'],
                        help='colour palette of the boxes and masks')
    parser.add_argument('--score-thr', type=float, default=0.3, help='bbox score threshold')
    parser.add_argument('--async-test', action='store_true', help='async inference (refused: not supported)')
    parser.add_argument('--trusted-checkpoint', action='store_true',
                        help='allow checkpoints that hold arbitrary Python objects (never for untrusted files)')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.async_test:
        raise ConfigError('--async-test: asynchronous inference is not supported; run without it')
    if not osp.isfile(args.img):
        raise ConfigError(f'image file {args.img} does not exist')
    model = init_detector(args.config, args.checkpoint, device=args.device, trusted=args.trusted_checkpoint)
    result = inference_detector(model, args.img)
    show_result_pyplot(model, args.img, result, score_thr=args.score_thr, palette=args.palette,
                       out_file=args.out_file)


if __name__ == '__main__':
    torch.set_grad_enabled(False)
    run_cli(main)
