"""Test a checkpoint: ``python tools/test.py CONFIG CHECKPOINT --eval bbox segm [--out results.pkl]``.

The flags of mmdetection v2.28's tools/test.py. The checkpoint must fit the model exactly (no
missing, unexpected or mis-shaped keys): results of a partly random model would be meaningless.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import pickle
import time
import warnings

import torch

from mixprec.apis import init_detector, setup_threads
from mixprec.cli import run_cli
from mixprec.config import DictAction, load_config
from mixprec.data import build_dataloader, build_dataset
from mixprec.engine import get_dist_info, get_logger, init_dist, multi_gpu_test, single_gpu_test
from mixprec.engine.test import evaluation_kwargs
from mixprec.registry import ConfigError
from mixprec.visualization import has_display


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='write the evaluation metrics (eval_<timestamp>.json) into this folder')
    parser.add_argument('--out', help='write the raw results to this pickle file')
    parser.add_argument('--fuse-conv-bn', action='store_true',
                        help='(mmdetection\'s option; always on) BatchNorm folds into the convolutions at inference')
    parser.add_argument('--gpu-ids', type=int, nargs='+',
                        help='(deprecated, use --gpu-id) the first id is the GPU to test on')
    parser.add_argument('--gpu-id', type=int, help='the GPU to test on (non-distributed testing; default 0)')
    parser.add_argument('--format-only', action='store_true',
                        help='only write COCO result json files (set --eval-options jsonfile_prefix=...)')
    parser.add_argument('--eval', nargs='+', choices=['bbox', 'segm', 'proposal'], help='metrics to evaluate')
    parser.add_argument('--show', action='store_true', help='show each image with its detections in a window')
    parser.add_argument('--show-dir', help='write each image with its detections drawn into this folder')
    parser.add_argument('--show-score-thr', type=float, default=0.3, help='score threshold for --show/--show-dir')
    parser.add_argument('--gpu-collect', action='store_true',
                        help='distributed: gather the results through the process group (the default here)')
    parser.add_argument('--tmpdir', help='distributed: gather the results through files in this shared folder')
    parser.add_argument('--trusted-checkpoint', action='store_true',
                        help='allow checkpoints that hold arbitrary Python objects (never for untrusted files)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys')
    parser.add_argument('--options', nargs='+', action=DictAction, help='(deprecated, use --eval-options)')
    parser.add_argument('--eval-options', nargs='+', action=DictAction,
                        help='arguments of dataset.evaluate / format_results, e.g. classwise=True')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help='set by torch.distributed.launch')
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if args.options and args.eval_options:
        raise ConfigError('--options and --eval-options cannot both be given (--options is the deprecated name)')
    if args.options:
        warnings.warn('--options is deprecated in favour of --eval-options')
        args.eval_options = args.options
    args.eval_options = args.eval_options or {}
    return args


def check_args(args: argparse.Namespace) -> None:
    """One line for each combination of flags that cannot run."""
    if not (args.out or args.eval or args.format_only or args.show or args.show_dir):
        raise ConfigError('nothing to do: give at least one of --out, --eval, --format-only, --show, --show-dir')
    if args.eval and args.format_only:
        raise ConfigError('--eval and --format-only are exclusive')
    if args.out and not args.out.endswith(('.pkl', '.pickle')):
        raise ConfigError(f'--out {args.out}: the output file must end in .pkl or .pickle')
    if args.show and not has_display():
        raise ConfigError('--show: no display to open a window on (DISPLAY is not set); '
                          'use --show-dir DIR to write the drawn images')
    if args.launcher == 'none' and (args.gpu_collect or args.tmpdir):
        raise ConfigError('--gpu-collect and --tmpdir gather the results of a distributed test; '
                          'they need --launcher pytorch (tools/dist_test.sh)')


def test_device(args: argparse.Namespace, distributed: bool, logger) -> torch.device:
    """The GPU of --gpu-id (or --gpu-ids' first) for one process, the local rank's when distributed, else the CPU."""
    gpu_id = args.gpu_id
    if args.gpu_ids is not None:
        warnings.warn('--gpu-ids is deprecated, use --gpu-id: testing uses one GPU, the first of --gpu-ids')
        gpu_id = args.gpu_ids[0]
    if not torch.cuda.is_available():
        if gpu_id is not None:
            logger.warning('no CUDA GPU here: --gpu-id %d has no effect, testing on the CPU', gpu_id)
        return torch.device('cpu')
    if distributed:
        return torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
    gpu_id = gpu_id or 0
    if gpu_id >= torch.cuda.device_count():
        raise ConfigError(f'--gpu-id {gpu_id}: there are {torch.cuda.device_count()} CUDA GPUs here')
    return torch.device('cuda', gpu_id)


def _show_writer(model, show: bool, out_dir, score_thr: float):
    """A per-batch callback that draws each image's detections into ``out_dir`` and/or a window."""
    import mmcv

    def on_batch(data, results):
        metas = data['img_metas'][0] if isinstance(data['img_metas'][0], list) else data['img_metas']
        for meta, result in zip(metas, results):
            out_file = osp.join(out_dir, meta['ori_filename']) if out_dir else None
            model.show_result(mmcv.imread(meta['filename']), result, score_thr=score_thr, bbox_color=None,
                              text_color=None, mask_color=None, show=show, out_file=out_file)

    return on_batch


def _check_classes(checkpoint_classes, dataset_classes, logger) -> None:
    """The model's class names (the checkpoint's meta.CLASSES) must fit the dataset's labels one to one."""
    if len(checkpoint_classes) != len(dataset_classes):
        raise ConfigError(f"the checkpoint's meta.CLASSES has {len(checkpoint_classes)} classes, the test dataset "
                          f'{len(dataset_classes)} ({", ".join(dataset_classes)}): they do not fit')
    if tuple(checkpoint_classes) != tuple(dataset_classes):
        logger.warning("the checkpoint's meta.CLASSES (%s) differ from the test dataset's (%s); results and "
                       "drawings name the checkpoint's", ', '.join(checkpoint_classes), ', '.join(dataset_classes))


def main(argv=None) -> None:
    args = parse_args(argv)
    check_args(args)
    cfg = load_config(args.config, args.cfg_options)
    setup_threads(cfg)
    distributed = args.launcher != 'none'
    if distributed:
        init_dist(args.launcher, **cfg.get('dist_params', {}))
    rank, _ = get_dist_info()
    logger = get_logger()
    device = test_device(args, distributed, logger)
    json_file = None
    if args.work_dir is not None and rank == 0:
        os.makedirs(osp.abspath(args.work_dir), exist_ok=True)
        json_file = osp.join(args.work_dir, f'eval_{time.strftime("%Y%m%d_%H%M%S", time.localtime())}.json')

    test_cfg = dict(cfg.data.test)
    samples_per_gpu = test_cfg.pop('samples_per_gpu', 1)
    dataset = build_dataset(test_cfg, dict(test_mode=True))
    loader = build_dataloader(dataset, samples_per_gpu, cfg.data.get('workers_per_gpu', 0), dist=distributed,
                              shuffle=False)
    model = init_detector(cfg, args.checkpoint, device=device, trusted=args.trusted_checkpoint,
                          classes=dataset.CLASSES, strict=True)
    _check_classes(model.CLASSES, dataset.CLASSES, logger)
    logger.info('testing %s on %d images', args.checkpoint, len(dataset))

    if distributed:
        results = multi_gpu_test(model, loader, args.tmpdir,
                                 args.gpu_collect or bool((cfg.get('evaluation') or {}).get('gpu_collect')))
    else:
        show = args.show or args.show_dir
        on_batch = _show_writer(model, args.show, args.show_dir, args.show_score_thr) if show else None
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
        metrics = dataset.evaluate(results, logger=logger, **evaluation_kwargs(cfg, args.eval, args.eval_options))
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()})
        if json_file is not None:
            with open(json_file, 'w') as f:
                json.dump(dict(config=args.config, metric=metrics), f, indent=4)
            logger.info('metrics written to %s', json_file)


if __name__ == '__main__':
    torch.set_grad_enabled(False)
    run_cli(main)
