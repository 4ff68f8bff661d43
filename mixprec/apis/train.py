"""train_detector: data loaders, optimizer, hooks (fp32 or fp16), evaluation and resume around a Runner."""
from __future__ import annotations

import contextlib
import copy
import glob
import hashlib
import multiprocessing as mp
import os
import random
import re
from typing import Optional

import numpy as np
import torch
from torch import nn

from mixprec.config import Config, cpu_winograd
from mixprec.data import build_dataloader, build_dataset
from mixprec.engine import (DistEvalHook, DistSamplerSeedHook, EvalHook, Runner, all_gather_object,
                            broadcast_object, get_dist_info, get_logger)
from mixprec.engine.optimizer import build_optimizer
from mixprec.models import place_model
from mixprec.registry import ConfigError
from mixprec.stop_signals import parse_signal


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
    """A ConfigError raised while building ``section`` of the config, as one line naming the file and section.

    The constructors and the registry check the values they read and raise ConfigError for a bad one;
    any other exception is a bug, not the user's mistake, and passes through with its traceback (as
    does bad data, DataError).
    """
    try:
        yield
    except ConfigError as exc:
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


def auto_scale_lr(cfg: Config, distributed: bool, logger) -> None:
    """mmdet v2.28's linear scaling: with ``auto_scale_lr.enable``, ``optimizer.lr *= batch / base_batch_size``,
    batch = number of GPUs (processes) * samples_per_gpu."""
    settings = cfg.get('auto_scale_lr') or {}
    if not settings.get('enable', False):
        logger.info('Automatic scaling of learning rate (LR) has been disabled.')
        return
    base = settings.get('base_batch_size')
    if base is None:
        raise ConfigError(f'{cfg.filename or "config"}: auto_scale_lr is enabled but has no base_batch_size')
    num_gpus = get_dist_info()[1] if distributed else len(cfg.get('gpu_ids') or [0])
    samples_per_gpu = cfg.data.samples_per_gpu
    batch_size = num_gpus * samples_per_gpu
    logger.info('Training with %d GPU(s) with %d samples per GPU. The total batch size is %d.',
                num_gpus, samples_per_gpu, batch_size)
    if batch_size != base:
        scaled = batch_size / base * cfg.optimizer.lr
        logger.info('LR has been automatically scaled from %s to %s', cfg.optimizer.lr, scaled)
        cfg.optimizer.lr = scaled
    else:
        logger.info('The batch size matches the base batch size %d; the LR (%s) is not scaled.', base, cfg.optimizer.lr)


def _workflow(cfg: Config, by_epoch: bool) -> list:
    """``cfg.workflow`` checked: ``[('train', n), ('val', m), ...]``, at least one train phase, val only by epoch."""
    path = cfg.filename or 'config'
    workflow = cfg.get('workflow') or [('train', 1)]
    ok = isinstance(workflow, (list, tuple)) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and p[0] in ('train', 'val') and isinstance(p[1], int)
        and not isinstance(p[1], bool) and p[1] >= 1 for p in workflow)
    if not ok or not any(p[0] == 'train' for p in workflow):
        raise ConfigError(f"{path}: workflow must be a list such as [('train', 1), ('val', 1)] with at least one "
                          f"train phase and epoch counts >= 1, got {workflow!r}")
    if not by_epoch and any(p[0] == 'val' for p in workflow):
        raise ConfigError(f"{path}: workflow {workflow!r}: val epochs need an epoch-based runner (runner.max_epochs)")
    return [tuple(p) for p in workflow]


def _val_loss_dataset(cfg: Config, path: str):
    """``data.val`` with the training pipeline and annotations (mmdet's tools/train.py for a 'val' workflow)."""
    val_cfg = copy.deepcopy(dict(cfg.data.val))
    val_cfg.pop('samples_per_gpu', None)
    val_cfg['pipeline'] = cfg.data.train.get('pipeline', cfg.data.train.get('dataset', {}).get('pipeline'))
    val_cfg['test_mode'] = False
    with config_section(path, 'data.val (workflow val epochs)'):
        return build_dataset(val_cfg)


def _select_device(cfg: Config, distributed: bool) -> torch.device:
    """CUDA (``gpu_ids[0]`` when not distributed, as mmdet v2.28's single-GPU training) or the CPU."""
    if not torch.cuda.is_available():
        return torch.device('cpu')
    gpu_ids = list(cfg.get('gpu_ids') or [])
    if not distributed and gpu_ids:
        if len(gpu_ids) > 1 or not 0 <= gpu_ids[0] < torch.cuda.device_count():
            raise ConfigError(f'gpu_ids {gpu_ids}: non-distributed training uses one GPU among '
                              f'{torch.cuda.device_count()}; use tools/dist_train.sh for several')
        torch.cuda.set_device(gpu_ids[0])
    return torch.device('cuda', torch.cuda.current_device())


def train_detector(model: nn.Module, dataset, cfg: Config, distributed: bool = False, validate: bool = False,
                   timestamp: Optional[str] = None, meta: Optional[dict] = None,
                   config_dump: Optional[str] = None) -> Runner:
    """Train ``model`` on ``dataset`` as ``cfg`` says; returns the runner after the run.

    ``config_dump``: where rank 0 writes the config once everything is built (so a config that
    fails to build leaves only the log in the work dir).
    """
    path = cfg.filename or 'config'
    logger = get_logger(log_level=cfg.get('log_level', 'INFO'))
    datasets = list(dataset) if isinstance(dataset, (list, tuple)) else [dataset]
    workflow = _workflow(cfg, 'max_epochs' in cfg.runner)
    wants_val = any(mode == 'val' for mode, _ in workflow)
    if len(datasets) > 2 or (len(datasets) == 2 and not wants_val):
        raise ConfigError(f'{path}: train_detector got {len(datasets)} datasets for workflow {workflow}; '
                          'pass the training dataset (and a val-loss dataset for a val phase)')
    dataset = datasets[0]
    data_cfg = cfg.data
    loader = build_dataloader(dataset, data_cfg.samples_per_gpu, data_cfg.get('workers_per_gpu', 0), dist=distributed,
                              seed=cfg.get('seed'), persistent_workers=data_cfg.get('persistent_workers', False))

    val_loss_loader = None
    if wants_val:
        val_dataset = datasets[1] if len(datasets) == 2 else _val_loss_dataset(cfg, path)
        val_loss_loader = build_dataloader(val_dataset, data_cfg.samples_per_gpu, data_cfg.get('workers_per_gpu', 0),
                                           dist=distributed, shuffle=False)

    device = _select_device(cfg, distributed)
    model = place_model(model, device, winograd=cpu_winograd(cfg, path))
    auto_scale_lr(cfg, distributed, logger)
    with config_section(path, 'optimizer'):
        optimizer = build_optimizer(model, cfg.optimizer)
    if distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None, broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))

    requeue_signal = parse_signal(cfg.get('requeue_signal', 'SIGUSR1'), f'{path}: requeue_signal')
    runner = Runner(model, optimizer, work_dir=cfg.work_dir, logger=logger, meta=meta, timestamp=timestamp,
                    requeue_signal=requeue_signal, **_max_length(cfg))
    # the runner owns the model from here: the fp16 hook may replace a DDP wrapper (rebuild_ddp), and
    # a reference kept here would hold the first wrapper's gradient buckets for the whole run
    del model
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
    resume_from = cfg.get('resume_from') or next(
        (h.resume_from for h in runner.hooks if getattr(h, 'resume_from', None)), None)
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
    runner.run(loader, workflow, val_loss_loader)
    return runner


def setup_threads(cfg: Config) -> None:
    """Threads and processes for a CPU-friendly run: mmdetection's ``opencv_num_threads`` and
    ``mp_start_method`` (set only when the config has it; mmdet's default runtime says 'fork'), plus
    ``cpu_threads``.

    OpenCV's own pool is off (``opencv_num_threads=0``) so data workers don't oversubscribe the cores;
    ``cpu_threads`` sets torch's intra-op threads. On a small CPU shared with data workers, more
    intra-op threads than free cores makes OpenMP spin and a step many times slower.
    """
    import cv2
    cv2.setNumThreads(int(cfg.get('opencv_num_threads', 0)))
    threads = cfg.get('cpu_threads')
    if threads is not None:
        torch.set_num_threads(int(threads))
    start_method = cfg.get('mp_start_method')
    if start_method is None:
        return
    if start_method not in mp.get_all_start_methods():
        raise ConfigError(f'{cfg.filename or "config"}: mp_start_method must be one of '
                          f'{mp.get_all_start_methods()}, got {start_method!r}')
    if mp.get_start_method(allow_none=True) not in (None, start_method):
        get_logger().warning('multiprocessing start method was %s; setting it to %s (mp_start_method)',
                             mp.get_start_method(allow_none=True), start_method)
    mp.set_start_method(start_method, force=True)
