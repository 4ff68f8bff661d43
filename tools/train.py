"""Train a detector: ``python tools/train.py CONFIG [--work-dir DIR] [--auto-resume] ...``.

Bad input ends with one line on stderr and exit code 2; a diverged run with exit code 1; SIGINT or
SIGTERM saves a resumable ``latest.pth`` first and exits with 128 + the signal number.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import platform
import sys
import time

import torch

import mixprec
from mixprec.apis import (check_same_config_on_all_ranks, init_random_seed, set_random_seed, setup_threads,
                          train_detector)
from mixprec.apis.train import config_section
from mixprec.cli import run_cli
from mixprec.config import DictAction, check_train_config, config_name, load_config
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
    parser.add_argument('--seed', type=int, default=None, help='random seed')
    parser.add_argument('--deterministic', action='store_true', help='deterministic cuDNN kernels')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. optimizer.lr=0.01 data.samples_per_gpu=4')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    return parser.parse_args(argv)


def env_info() -> str:
    return '\n'.join([f'sys.platform: {sys.platform}', f'Python: {platform.python_version()}',
                      f'PyTorch: {torch.__version__}', f'CUDA available: {torch.cuda.is_available()}',
                      f'CPU threads: {torch.get_num_threads()}', f'mixprec: {mixprec.__version__}'])


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    check_train_config(cfg, args.config)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join('./work_dirs', config_name(args.config))
    for key, value in (('resume_from', args.resume_from), ('load_from', args.load_from)):
        if value is not None:
            cfg[key] = value
    cfg.auto_resume = args.auto_resume
    cfg.trusted_checkpoint = args.trusted_checkpoint

    setup_threads(cfg)
    distributed = args.launcher != 'none'
    if distributed:
        init_dist(args.launcher, **cfg.get('dist_params', {}))
        check_same_config_on_all_ranks(cfg)
    rank, world_size = get_dist_info()

    os.makedirs(cfg.work_dir, exist_ok=True)
    timestamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
    logger = get_logger(log_file=osp.join(cfg.work_dir, f'{timestamp}.log'), log_level=cfg.get('log_level', 'INFO'))
    logger.info('Environment info:\n%s', env_info())
    logger.info('Distributed training: %s (world size %d)', distributed, world_size)

    seed = init_random_seed(args.seed if args.seed is not None else cfg.get('seed'))
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
    train_detector(model, dataset, cfg, distributed=distributed, validate=not args.no_validate,
                   timestamp=timestamp, meta=meta, config_dump=osp.join(cfg.work_dir, osp.basename(args.config)))


if __name__ == '__main__':
    run_cli(main)
