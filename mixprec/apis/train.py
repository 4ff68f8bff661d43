"""train_detector: data loaders, optimizer, hooks (fp32 or fp16), evaluation and resume around a Runner."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import random
import re
from typing import Optional

import numpy as np
import torch
from torch import nn

from mixprec.config import Config
from mixprec.data import build_dataloader, build_dataset
from mixprec.data.errors import DataError
from mixprec.engine import (DistEvalHook, DistSamplerSeedHook, EvalHook, Runner, all_gather_object,
                            broadcast_object, get_dist_info, get_logger)
from mixprec.engine.optimizer import build_optimizer
from mixprec.registry import ConfigError


def init_random_seed(seed: Optional[int] = None) -> int:
    """``seed``, or a random one chosen on rank 0 and shared with every rank."""
    if seed is not None:
        return seed
    return broadcast_object(int(np.random.randint(2 ** 31)))


def set_random_seed(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; ``deterministic`` also asks cuDNN for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def find_latest_checkpoint(work_dir: str) -> Optional[str]:
    """``latest.pth`` in ``work_dir``, else the highest ``epoch_N.pth`` / ``iter_N.pth``; None if none."""
    latest = os.path.join(work_dir, 'latest.pth')
    if os.path.exists(latest):
        return latest
    numbered = []
    for path in glob.glob(os.path.join(work_dir, '*.pth')):
        match = re.fullmatch(r'(epoch|iter)_(\d+)\.pth', os.path.basename(path))
        if match:
            numbered.append((int(match.group(2)), path))
    return max(numbered)[1] if numbered else None


def remove_partial_checkpoints(work_dir: str, logger) -> None:
    """Delete the temp files (``.NAME.pth.XXXX.tmp``) of saves that a kill interrupted."""
    for path in sorted(glob.glob(os.path.join(work_dir, '.*.pth.*.tmp'))):
        os.remove(path)
        logger.warning('removed %s, the partial file of an interrupted checkpoint save', path)


def check_same_config_on_all_ranks(cfg: Config) -> None:
    """Fail at start when the processes of a distributed run were given different configs."""
    digest = hashlib.sha256(cfg.pretty_text.encode()).hexdigest()[:12]
    digests = all_gather_object(digest)
    if len(set(digests)) > 1:
        differing = [rank for rank, d in enumerate(digests) if d != digests[0]]
        raise ConfigError(f'ranks {differing} were started with a config that differs from rank 0 '
                          f'(digests {digests}); every node must run the same config and --cfg-options')


@contextlib.contextmanager
def config_section(path: str, section: str):
    """Turn a failure while building ``section`` of the config into one ConfigError naming the file and section.

    Building only reads config values, so a TypeError/ValueError/KeyError there comes from a value of
    the wrong type or kind; bad data (DataError) passes through unchanged.
    """
    try:
        yield
    except DataError:
        raise
    except (ConfigError, TypeError, ValueError, KeyError) as exc:
        lines = str(exc).strip().strip('"').splitlines()
        raise ConfigError(f'{path}: {section}: {lines[0] if lines else type(exc).__name__}') from exc


def _max_length(cfg: Config) -> dict:
    runner_cfg = cfg.runner
    if 'max_iters' in runner_cfg:
        return dict(max_iters=runner_cfg['max_iters'])
    return dict(max_epochs=runner_cfg['max_epochs'])


def _optimizer_hook_cfg(cfg: Config, distributed: bool) -> dict:
    """``Fp16OptimizerHook(**optimizer_config, **fp16, distributed)`` when ``fp16`` is set, as mmdet v2."""
    optimizer_config = dict(cfg.get('optimizer_config') or {})
    fp16_cfg = cfg.get('fp16')
    if fp16_cfg is not None:
        optimizer_config.pop('type', None)
        return dict(type='Fp16OptimizerHook', **optimizer_config, **fp16_cfg, distributed=distributed)
    optimizer_config.setdefault('type', 'OptimizerHook')
    return optimizer_config


def train_detector(model: nn.Module, dataset, cfg: Config, distributed: bool = False, validate: bool = False,
                   timestamp: Optional[str] = None, meta: Optional[dict] = None,
                   config_dump: Optional[str] = None) -> Runner:
    """Train ``model`` on ``dataset`` as ``cfg`` says; returns the runner after the run.

    ``config_dump``: where rank 0 writes the config once everything is built (so a config that
    fails to build leaves only the log in the work dir).
    """
    path = cfg.filename or 'config'
    logger = get_logger(log_level=cfg.get('log_level', 'INFO'))
    if isinstance(dataset, (list, tuple)):
        dataset = dataset[0]
    data_cfg = cfg.data
    loader = build_dataloader(dataset, data_cfg.samples_per_gpu, data_cfg.get('workers_per_gpu', 0), dist=distributed,
                              seed=cfg.get('seed'), persistent_workers=data_cfg.get('persistent_workers', False))

    device = torch.device('cuda', torch.cuda.current_device()) if torch.cuda.is_available() else torch.device('cpu')
    model = model.to(device)
    with config_section(path, 'optimizer'):
        optimizer = build_optimizer(model, cfg.optimizer)
    if distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None, broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))

    runner = Runner(model, optimizer, work_dir=cfg.work_dir, logger=logger, meta=meta, timestamp=timestamp,
                    **_max_length(cfg))
    with config_section(path, 'lr_config/optimizer_config/fp16/checkpoint_config/log_config/custom_hooks'):
        runner.register_training_hooks(cfg.get('lr_config'), _optimizer_hook_cfg(cfg, distributed),
                                       cfg.get('checkpoint_config'), cfg.get('log_config'), cfg.get('custom_hooks'),
                                       momentum_config=cfg.get('momentum_config'))
    runner.register_hook(DistSamplerSeedHook())

    if validate:
        val_cfg = dict(cfg.data.val)
        val_samples = val_cfg.pop('samples_per_gpu', 1)
        with config_section(path, 'data.val'):
            val_dataset = build_dataset(val_cfg, dict(test_mode=True))
        val_loader = build_dataloader(val_dataset, val_samples, data_cfg.get('workers_per_gpu', 0),
                                      dist=distributed, shuffle=False)
        eval_cfg = dict(cfg.get('evaluation') or {})
        eval_cfg.setdefault('by_epoch', runner.by_epoch)
        hook_cls = DistEvalHook if distributed else EvalHook
        with config_section(path, 'evaluation'):
            runner.register_hook(hook_cls(val_loader, **eval_cfg), priority='LOW')

    trusted = bool(cfg.get('trusted_checkpoint', False))
    resume_from = cfg.get('resume_from')
    if resume_from is None and cfg.get('auto_resume'):
        if runner.rank == 0:
            remove_partial_checkpoints(cfg.work_dir, logger)
        resume_from = find_latest_checkpoint(cfg.work_dir)
        if resume_from:
            logger.info('auto-resume: found %s', resume_from)
    if resume_from:
        runner.resume(resume_from, trusted=trusted)
    elif cfg.get('load_from'):
        runner.load_checkpoint(cfg.load_from, trusted=trusted)
    if config_dump and runner.rank == 0:
        cfg.dump(config_dump)
    runner.run(loader)
    return runner


def setup_threads(cfg: Config) -> None:
    """Thread counts for a CPU-friendly run (mmdetection's ``opencv_num_threads``, plus ``cpu_threads``).

    OpenCV's own pool is off (``opencv_num_threads=0``) so data workers don't oversubscribe the cores;
    ``cpu_threads`` sets torch's intra-op threads. On a small CPU shared with data workers, more
    intra-op threads than free cores makes OpenMP spin and a step many times slower.
    """
    import cv2
    cv2.setNumThreads(int(cfg.get('opencv_num_threads', 0)))
    threads = cfg.get('cpu_threads')
    if threads is not None:
        torch.set_num_threads(int(threads))
