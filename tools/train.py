"""Train a detector: ``python tools/train.py CONFIG [--work-dir DIR] [--auto-resume] ...``.

Bad input ends with one line on stderr and exit code 2; a diverged run with exit code 1; SIGINT,
SIGTERM or the advance-warning signal (config key ``requeue_signal``, SIGUSR1 by default; under SLURM
it also requeues the job) saves a resumable ``latest.pth`` first and exits with 128 + the signal number.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import platform
import sys
import time
import warnings

import torch

import mixprec
from mixprec.apis import (check_same_config_on_all_ranks, init_random_seed, set_random_seed, setup_threads,
                          train_detector)
from mixprec.apis.train import config_section
from mixprec.cli import run_cli
from mixprec.config import DictAction, check_top_level_keys, check_train_config, compat_cfg, config_name, load_config
from mixprec.registry import ConfigError
from mixprec.data import build_dataset
from mixprec.engine import get_dist_info, get_logger, init_dist
from mixprec.models import build_detector


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='where to save logs and checkpoints (default work_dirs/<config>)')
    parser.add_argument('--resume-from', help='checkpoint to resume from (model, optimizer, counters, RNG)')
    parser.add_argument('--auto-resume', action='store_true', help='resume from the latest checkpoint in the work dir')
    parser.add_argument('--load-from', help='checkpoint whose weights initialise the model')
    parser.add_argument('--trusted-checkpoint', action='store_true',
                        help='allow checkpoints that hold arbitrary Python objects (never for untrusted files)')
    parser.add_argument('--no-validate', action='store_true', help='skip evaluation during training')
    gpus = parser.add_mutually_exclusive_group()
    gpus.add_argument('--gpus', type=int, help='(deprecated, use --gpu-id) number of GPUs; one is used')
    gpus.add_argument('--gpu-ids', type=int, nargs='+', help='(deprecated, use --gpu-id) the first one is used')
    gpus.add_argument('--gpu-id', type=int, default=0, help='the GPU of a non-distributed run')
    parser.add_argument('--seed', type=int, default=None, help='random seed')
    parser.add_argument('--diff-seed', action='store_true', help='seed + rank on each rank of a distributed run')
    parser.add_argument('--deterministic', action='store_true', help='deterministic cuDNN kernels')
    parser.add_argument('--options', nargs='+', action=DictAction, help='(deprecated) same as --cfg-options')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. optimizer.lr=0.01 data.samples_per_gpu=4')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help='set by torch.distributed.launch')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale optimizer.lr by (GPUs * samples_per_gpu) / auto_scale_lr.base_batch_size')
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if args.options and args.cfg_options:
        raise ConfigError('--options and --cfg-options cannot be both given; --options is deprecated in favour of '
                          '--cfg-options')
    if args.options:
        warnings.warn('--options is deprecated in favor of --cfg-options')
        args.cfg_options = args.options
    return args


def gpu_ids_from(args: argparse.Namespace) -> list:
    """mmdet v2.28: one GPU for non-distributed training; --gpus and --gpu-ids are deprecated spellings."""
    if args.gpus is not None:
        warnings.warn('`--gpus` is deprecated because we only support single GPU mode in non-distributed '
                      'training. Use `gpus=1` now.')
        return [0]
    if args.gpu_ids is not None:
        warnings.warn('`--gpu-ids` is deprecated, please use `--gpu-id`. Because we only support single GPU mode '
                      'in non-distributed training. Use the first GPU in `gpu_ids` now.')
        return args.gpu_ids[:1]
    return [args.gpu_id]


def enable_auto_scale_lr(cfg) -> None:
    """``--auto-scale-lr``: needs ``auto_scale_lr = dict(base_batch_size=...)`` in the config (mmdet >= 2.24.1)."""
    if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
        raise ConfigError(f'{cfg.filename}: --auto-scale-lr needs auto_scale_lr = dict(enable=False, '
                          'base_batch_size=16) in the config (the batch size its lr was set for)')
    cfg.auto_scale_lr.enable = True


def env_info() -> str:
    return '\n'.join([f'sys.platform: {sys.platform}', f'Python: {platform.python_version()}',
                      f'PyTorch: {torch.__version__}', f'CUDA available: {torch.cuda.is_available()}',
                      f'CPU threads: {torch.get_num_threads()}', f'mixprec: {mixprec.__version__}'])


def main(argv=None):
    """Parse ``argv``, train, and return the Runner after the run (for in-process callers)."""
    args = parse_args(argv)
    check_top_level_keys(compat_cfg(load_config(args.config), args.config), args.config, args.cfg_options)
    cfg = load_config(args.config, args.cfg_options)
    compat_cfg(cfg, args.config)
    check_train_config(cfg, args.config)
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg)
    if cfg.get('cudnn_benchmark', False):
        torch.backends.cudnn.benchmark = True
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join('./work_dirs', config_name(args.config))
    for key, value in (('resume_from', args.resume_from), ('load_from', args.load_from)):
        if value is not None:
            cfg[key] = value
    cfg.auto_resume = args.auto_resume or bool(cfg.get('auto_resume', False))
    cfg.gpu_ids = gpu_ids_from(args)
    cfg.trusted_checkpoint = args.trusted_checkpoint

    setup_threads(cfg)
    distributed = args.launcher != 'none'
    if distributed:
        init_dist(args.launcher, **cfg.get('dist_params', {}))
        check_same_config_on_all_ranks(cfg)
    rank, world_size = get_dist_info()
    if distributed:
        cfg.gpu_ids = list(range(world_size))

    os.makedirs(cfg.work_dir, exist_ok=True)
    timestamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
    logger = get_logger(log_file=osp.join(cfg.work_dir, f'{timestamp}.log'), log_level=cfg.get('log_level', 'INFO'))
    logger.info('Environment info:\n%s', env_info())
    logger.info('Distributed training: %s (world size %d)', distributed, world_size)

    seed = init_random_seed(args.seed if args.seed is not None else cfg.get('seed'))
    seed = seed + rank if args.diff_seed else seed
    set_random_seed(seed, deterministic=args.deterministic)
    cfg.seed = seed
    logger.info('Set random seed to %d, deterministic: %s', seed, args.deterministic)

    with config_section(args.config, 'model'):
        model = build_detector(cfg.model)
    with config_section(args.config, 'data.train'):
        dataset = build_dataset(cfg.data.train)
    model.CLASSES = dataset.CLASSES
    config_text = cfg.pretty_text  # formatted by yapf: seconds for a large config, so once
    logger.info('Config:\n%s', config_text)
    meta = dict(env_info=env_info(), config=config_text, seed=seed, exp_name=osp.basename(args.config),
                CLASSES=list(dataset.CLASSES))
    return train_detector(model, dataset, cfg, distributed=distributed, validate=not args.no_validate,
                   timestamp=timestamp, meta=meta, config_dump=osp.join(cfg.work_dir, osp.basename(args.config)))


if __name__ == '__main__':
    run_cli(main)
