"""Test a checkpoint: ``python tools/test.py CONFIG CHECKPOINT --eval bbox segm [--out results.pkl]``.

The checkpoint must fit the model exactly (no missing, unexpected or mis-shaped keys): results of a
partly random model would be meaningless.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import pickle

import mmcv
import torch

from mixprec.apis import init_detector, setup_threads
from mixprec.checkpoint import load_checkpoint
from mixprec.cli import run_cli
from mixprec.config import DictAction, load_config
from mixprec.data import build_dataloader, build_dataset
from mixprec.engine import get_dist_info, get_logger, init_dist, multi_gpu_test, single_gpu_test
from mixprec.registry import ConfigError
from mixprec.visualization import draw_result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='write the raw results to this pickle file')
    parser.add_argument('--eval', nargs='+', choices=['bbox', 'segm', 'proposal'], help='metrics to evaluate')
    parser.add_argument('--format-only', action='store_true',
                        help='only write COCO result json files (set --eval-options jsonfile_prefix=...)')
    parser.add_argument('--eval-options', nargs='+', action=DictAction, default={},
                        help='arguments of dataset.evaluate / format_results, e.g. classwise=True')
    parser.add_argument('--show-dir', help='write each image with its detections drawn into this folder')
    parser.add_argument('--show-score-thr', type=float, default=0.3, help='score threshold for --show-dir')
    parser.add_argument('--fuse-conv-bn', action='store_true', help='fold BatchNorm into the convolutions')
    parser.add_argument('--trusted-checkpoint', action='store_true',
                        help='allow checkpoints that hold arbitrary Python objects (never for untrusted files)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    return parser.parse_args(argv)


def _show_writer(dataset, out_dir: str, score_thr: float):
    """A per-batch callback that draws each image's detections into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)

    def on_batch(data, results):
        metas = data['img_metas'][0] if isinstance(data['img_metas'][0], list) else data['img_metas']
        for meta, result in zip(metas, results):
            img = mmcv.imread(meta['filename'])
            drawn = draw_result(img, result, dataset.CLASSES, score_thr)
            mmcv.imwrite(drawn, osp.join(out_dir, meta['ori_filename']))

    return on_batch


def main(argv=None) -> None:
    args = parse_args(argv)
    if not (args.out or args.eval or args.format_only or args.show_dir):
        raise ConfigError('nothing to do: give at least one of --out, --eval, --format-only, --show-dir')
    if args.eval and args.format_only:
        raise ConfigError('--eval and --format-only are exclusive')
    if args.out and not args.out.endswith(('.pkl', '.pickle')):
        raise ConfigError(f'--out {args.out}: the output file must end in .pkl or .pickle')
    cfg = load_config(args.config, args.cfg_options)
    setup_threads(cfg)
    distributed = args.launcher != 'none'
    if distributed:
        init_dist(args.launcher, **cfg.get('dist_params', {}))
    rank, _ = get_dist_info()
    logger = get_logger()

    test_cfg = dict(cfg.data.test)
    samples_per_gpu = test_cfg.pop('samples_per_gpu', 1)
    dataset = build_dataset(test_cfg, dict(test_mode=True))
    loader = build_dataloader(dataset, samples_per_gpu, cfg.data.get('workers_per_gpu', 0), dist=distributed,
                              shuffle=False)
    model = init_detector(cfg, None, classes=dataset.CLASSES)
    checkpoint = load_checkpoint(model, args.checkpoint, strict=True, trusted=args.trusted_checkpoint)
    model.CLASSES = tuple(checkpoint.get('meta', {}).get('CLASSES') or dataset.CLASSES)
    if args.fuse_conv_bn:
        from mixprec.apis.fuse import fuse_conv_bn
        model = fuse_conv_bn(model)
    logger.info('testing %s on %d images', args.checkpoint, len(dataset))

    if distributed:
        results = multi_gpu_test(model, loader)
    else:
        on_batch = _show_writer(dataset, args.show_dir, args.show_score_thr) if args.show_dir else None
        results = single_gpu_test(model, loader, on_batch=on_batch)
    if rank != 0:
        return
    if args.out:
        with open(args.out, 'wb') as f:
            pickle.dump(results, f)
        logger.info('results written to %s', args.out)
    if args.format_only:
        dataset.format_results(results, **args.eval_options)
    if args.eval:
        metrics = dataset.evaluate(results, metric=args.eval, logger=logger, **args.eval_options)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()})


if __name__ == '__main__':
    torch.set_grad_enabled(False)
    run_cli(main)
