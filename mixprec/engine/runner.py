"""Runner: the training loop, its hooks, checkpoints and resume.

One iteration reads in one place (``_run_iter``): data -> model forward returning a dict of losses
-> total loss and log vars (averaged across ranks for logging) -> hooks. The optimizer hook does
backward and the step in ``after_train_iter``, so the fp16 hook can replace the fp32 one.

Counters follow mmcv 1.x: inside a hook, ``epoch``, ``iter`` and ``inner_iter`` are the 0-based
indices of the current epoch / iteration; checkpoints store completed counts.

Stopping: SIGINT, SIGTERM and the advance-warning signal (``requeue_signal``, SIGUSR1 by default) set
a flag; the ranks agree on it in the loss all-reduce of each iteration, and after each epoch's hooks
(evaluation, checkpoints). The iteration in flight completes, or the epoch's hooks when it was the
epoch's last, then ``latest.pth`` is written and :class:`TrainingInterrupted` raised. DataLoader
workers start shielded from these signals (:mod:`mixprec.stop_signals`).
"""
from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections import OrderedDict
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

import mixprec
from mixprec.checkpoint import (CheckpointError, link_or_copy, load_checkpoint as load_weights, load_file,
                                load_state_dict, save_file, unwrap_model)
from mixprec.fp16.hook_base import HookBase
from mixprec.registry import HOOKS
from mixprec.stop_signals import handled, requeue_slurm_job, starting_workers
from .dist_utils import all_gather_object, barrier, get_dist_info, is_dist
from .hooks import Hook, build_lr_hook, build_momentum_hook, get_priority
from .log_buffer import LogBuffer
from .rng import get_rng_state, set_rng_state

class TrainingInterrupted(Exception):
    """Raised after a stop signal once a resumable checkpoint is written."""

    def __init__(self, signum: int, checkpoint: str) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        super().__init__(f'{signal.Signals(signum).name} received; saved {checkpoint}; '
                         f'continue with --resume-from {checkpoint} or --auto-resume')


def move_to_device(data: Any, device: torch.device) -> Any:
    """Tensors inside nested dicts/lists/tuples moved to ``device`` (no copy when already there)."""
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=True)
    if isinstance(data, dict):
        return {k: move_to_device(v, device) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(move_to_device(v, device) for v in data)
    return data


def parse_losses(losses: dict) -> tuple[torch.Tensor, OrderedDict]:
    """Total loss (sum of keys containing 'loss') and the per-term tensors, lists summed."""
    terms = OrderedDict()
    for name, value in losses.items():
        if isinstance(value, torch.Tensor):
            terms[name] = value.mean()
        elif isinstance(value, (list, tuple)):
            terms[name] = sum(v.mean() for v in value)
        else:
            raise TypeError(f'loss {name!r} is a {type(value).__name__}; expected a Tensor or a list of Tensors')
    loss = sum(v for k, v in terms.items() if 'loss' in k)
    terms['loss'] = loss
    return loss, terms


class _SkipBatchSampler:
    """The batches of ``batch_sampler`` after the first ``skip`` (a mid-epoch resume)."""

    def __init__(self, batch_sampler, skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self):
        for index, batch in enumerate(self.batch_sampler):
            if index >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.skip, 0)


def _skip_batches(loader: DataLoader, skip: int) -> DataLoader:
    """A loader over the rest of the epoch; its own generator keeps the global RNG untouched.

    The samples keep their positions in the epoch, so a loader from ``build_dataloader`` (per-sample
    seeds) gives them the augmentation of the uninterrupted run, with or without workers.
    """
    return DataLoader(loader.dataset, batch_sampler=_SkipBatchSampler(loader.batch_sampler, skip),
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, worker_init_fn=loader.worker_init_fn,
                      generator=torch.Generator().manual_seed(skip))


class Runner:
    """Epoch-based (``max_epochs``) or iteration-based (``max_iters``) training.

    Args:
        model: the detector, maybe DDP-wrapped; ``model(**batch)`` returns a dict of losses.
        optimizer: a ``torch.optim`` optimizer over the model's parameters.
        work_dir: where logs and checkpoints go.
        logger: defaults to the 'mixprec' logger.
        meta: saved in every checkpoint (config text, seed, env info, classes...).
        requeue_signal: the advance-warning signal (SLURM's ``--signal``): stop as on SIGTERM, then
            rank 0 requeues the SLURM job; None handles only SIGINT and SIGTERM.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, work_dir: Optional[str] = None,
                 logger: Optional[logging.Logger] = None, meta: Optional[dict] = None,
                 max_epochs: Optional[int] = None, max_iters: Optional[int] = None,
                 timestamp: Optional[str] = None, requeue_signal: Optional[int] = signal.SIGUSR1) -> None:
        if (max_epochs is None) == (max_iters is None):
            raise ValueError('runner needs exactly one of max_epochs and max_iters')
        self.model = model
        self.optimizer = optimizer
        self.work_dir = os.path.abspath(work_dir) if work_dir else None
        if self.work_dir:
            os.makedirs(self.work_dir, exist_ok=True)
        self.logger = logger or logging.getLogger('mixprec')
        self.meta = dict(meta or {})
        self.timestamp = timestamp or time.strftime('%Y%m%d_%H%M%S', time.localtime())
        self.by_epoch = max_epochs is not None
        self._max_epochs = max_epochs
        self._max_iters = max_iters
        self._epoch = 0
        self._iter = 0
        self._inner_iter = 0
        self._resume_inner_iter = 0
        self._hooks: list = []
        self.log_buffer = LogBuffer()
        self.outputs: dict = {}
        self.data_loader: Optional[DataLoader] = None
        self.val_data_loader: Optional[DataLoader] = None
        self.mode = 'train'
        self.rank, self.world_size = get_dist_info()
        self._requeue_signal = requeue_signal
        # stop signals in the order they win when ranks received different ones
        self._stop_signals = tuple(s for s in (requeue_signal, signal.SIGTERM, signal.SIGINT) if s is not None)
        self._received: set = set()
        self._stop_signal: Optional[int] = None  # the last one received here
        self._stop_agreed: Optional[int] = None  # the one all ranks stop for
        self._after_iter = False

    # -- read-only state for hooks --------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def iter(self) -> int:
        return self._iter

    @property
    def inner_iter(self) -> int:
        return self._inner_iter

    @property
    def max_epochs(self) -> Optional[int]:
        return self._max_epochs

    @property
    def max_iters(self) -> Optional[int]:
        return self._max_iters

    @property
    def iters_per_epoch(self) -> int:
        return len(self.data_loader)

    @property
    def hooks(self) -> list:
        return self._hooks

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]['lr'])

    def barrier(self) -> None:
        barrier()

    # -- hooks ---------------------------------------------------------------------------------
    def register_hook(self, hook: Any, priority: Optional[int | str] = None) -> None:
        """Insert ``hook`` by priority (lower runs first; equal priorities keep insertion order).

        Without ``priority``: the hook's own ``priority`` attribute where it declares one, else its
        class's ``default_priority`` (mixprec's hooks; see :class:`Hook`), else NORMAL."""
        if priority is None:
            priority = getattr(hook, 'priority', getattr(hook, 'default_priority', 'NORMAL'))
        hook.priority = get_priority(priority)
        position = len(self._hooks)
        for index in range(len(self._hooks) - 1, -1, -1):
            if hook.priority >= self._hooks[index].priority:
                position = index + 1
                break
            position = index
        self._hooks.insert(position, hook)

    def register_hook_from_cfg(self, cfg: dict) -> None:
        cfg = dict(cfg)
        priority = cfg.pop('priority', None)
        self.register_hook(HOOKS.build(cfg), priority)

    def register_training_hooks(self, lr_config: Optional[dict], optimizer_config: Any,
                                checkpoint_config: Optional[dict], log_config: Optional[dict],
                                custom_hooks_config: Optional[list] = None,
                                momentum_config: Optional[dict] = None) -> None:
        """The standard set, as mmcv 1.x: lr, momentum, optimizer, checkpoint, timer, loggers, custom hooks.

        As mmcv's IterBasedRunner, an iteration-based run makes ``by_epoch=False`` the default of the
        lr, momentum, checkpoint and logger hooks (``lr_config.step`` and ``checkpoint_config.interval``
        count iterations); an epoch-based run keeps each hook's own default (True).
        """
        if not self.by_epoch:
            lr_config = None if lr_config is None else {'by_epoch': False, **lr_config}
            momentum_config = None if momentum_config is None else {'by_epoch': False, **momentum_config}
            checkpoint_config = None if checkpoint_config is None else {'by_epoch': False, **checkpoint_config}
        if lr_config is not None:
            self.register_hook(build_lr_hook(lr_config))
        if momentum_config is not None:
            self.register_hook(build_momentum_hook(momentum_config))
        if optimizer_config is not None:
            if isinstance(optimizer_config, dict):
                optimizer_config = HOOKS.build(dict(type='OptimizerHook', **optimizer_config)
                                               if 'type' not in optimizer_config else optimizer_config)
            self.register_hook(optimizer_config)
        if checkpoint_config is not None:
            self.register_hook(HOOKS.build(dict(type='CheckpointHook', **checkpoint_config)))
        self.register_hook(HOOKS.build(dict(type='IterTimerHook')))
        if log_config is not None:
            for hook_cfg in log_config.get('hooks', []):
                hook_cfg = dict(hook_cfg)
                hook_cfg.setdefault('interval', log_config.get('interval', 50))
                hook_cfg.setdefault('by_epoch', self.by_epoch)
                self.register_hook_from_cfg(hook_cfg)
        for hook_cfg in custom_hooks_config or []:
            self.register_hook_from_cfg(hook_cfg)

    def call_hook(self, stage: str, *args: Any) -> None:
        """``hook.<stage>(runner, *args)`` for every hook in priority order.

        The stages are the methods of :class:`~mixprec.fp16.hook_base.HookBase` (a name that is not
        one is a ValueError). Hooks need not derive from it: one that lacks a stage (an mmcv 1.x hook
        has no ``log_val`` or ``before_resume``, a plain object only what it defines) is skipped
        there.
        """
        if not callable(getattr(HookBase, stage, None)):
            raise ValueError(f'{stage!r} is not a hook stage')
        for hook in self._hooks:
            method = getattr(hook, stage, None)
            if method is not None:
                method(self, *args)

    def log_val(self, metrics: dict) -> None:
        """Hand evaluation metrics to the hooks' ``log_val`` (called by EvalHook on rank 0)."""
        self.call_hook('log_val', metrics)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, data_loader: DataLoader, workflow: Optional[list] = None,
            val_data_loader: Optional[DataLoader] = None) -> None:
        """Train until ``max_epochs`` or ``max_iters``; a stop signal saves a checkpoint and stops.

        ``workflow``: mmcv 1.x's ``[('train', n), ('val', m)]`` (epoch-based): n train epochs, then m
        val-loss epochs on ``val_data_loader``, repeated.
        """
        self.data_loader = data_loader
        self.val_data_loader = val_data_loader
        phases = list(workflow or [('train', 1)])
        if len(data_loader) == 0:
            raise ValueError('the training data loader is empty: no batches to train on')
        if self.by_epoch:
            self._max_iters = self._max_epochs * len(data_loader)
        else:
            self._max_epochs = math.ceil(self._max_iters / len(data_loader))
        self.logger.info('Start running, work_dir: %s, max: %d epochs / %d iters', self.work_dir,
                         self._max_epochs, self._max_iters)
        self._received.clear()
        self._stop_signal = self._stop_agreed = None
        with handled(self._stop_signals, self._request_stop):
            self.call_hook('before_run')
            while self._iter < self._max_iters:
                for mode, epochs in phases:
                    for _ in range(epochs):
                        if mode == 'val':
                            self._val_epoch()
                        elif self._iter < self._max_iters:
                            self._train_epoch()
                        if self._iter < self._max_iters and self._agree_stop():
                            self._stop_with_checkpoint()
            self.call_hook('after_run')

    def _train_epoch(self) -> None:
        self.model.train()
        self.log_buffer.clear()
        self.call_hook('before_train_epoch')
        start, self._resume_inner_iter = self._resume_inner_iter, 0
        loader = _skip_batches(self.data_loader, start) if start else self.data_loader
        self._inner_iter = start
        with starting_workers():
            batches = iter(loader)
        for data_batch in batches:
            self.call_hook('before_train_iter')
            self._run_iter(data_batch)
            self._after_iter = True
            self.call_hook('after_train_iter')
            last = self._inner_iter + 1 == len(self.data_loader) or self._iter + 1 >= self._max_iters
            if self._stop_agreed is not None and not last:  # the last stops after the epoch's hooks
                self._stop_with_checkpoint()
            self._after_iter = False
            self._inner_iter += 1
            self._iter += 1
            if self._iter >= self._max_iters:
                break
        if self._inner_iter == len(self.data_loader):
            self.call_hook('after_train_epoch')
            self._epoch += 1
            self._inner_iter = 0

    @torch.no_grad()
    def _val_epoch(self) -> None:
        """One pass of the losses over ``val_data_loader`` in eval mode, no gradient (mmcv's ``val``)."""
        self.mode = 'val'
        self.model.eval()
        self.log_buffer.clear()
        self.call_hook('before_val_epoch')
        with starting_workers():
            batches = iter(self.val_data_loader)
        for data_batch in batches:
            self.call_hook('before_val_iter')
            self._run_iter(data_batch)
            self.call_hook('after_val_iter')
        self.call_hook('after_val_epoch')
        self.log_buffer.clear()
        self.mode = 'train'

    def _run_iter(self, data_batch: dict) -> None:
        data_batch = move_to_device(data_batch, self.device)
        losses = self.model(**data_batch)
        loss, terms = parse_losses(losses)
        log_vars = self._reduce_for_log(terms)
        num_samples = len(data_batch['img_metas']) if 'img_metas' in data_batch else 1
        self.outputs = dict(loss=loss, log_vars=log_vars, num_samples=num_samples)
        self.log_buffer.update(log_vars, num_samples)

    def _reduce_for_log(self, terms: OrderedDict) -> OrderedDict:
        """Detached loss terms averaged over ranks, in one all-reduce that also carries the stop flags."""
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        packed = torch.cat([values, self._stop_flags(values.device)])
        if is_dist():
            torch.distributed.all_reduce(packed)
            packed[:len(terms)] /= self.world_size
        packed = packed.tolist()
        self._stop_agreed = self._agreed_signal(packed[len(terms):])
        return OrderedDict(zip(terms.keys(), packed[:len(terms)]))

    # -- interruption --------------------------------------------------------------------------
    def _request_stop(self, signum: int, frame) -> None:
        """The handler of the stop signals: only a flag, acted on at the next agreement point."""
        if signum == signal.SIGINT and self._stop_signal is not None:
            raise KeyboardInterrupt
        if signum not in self._received:
            self.logger.warning('%s received: stopping after this iteration with a checkpoint '
                                '(Ctrl-C again to abort at once)', signal.Signals(signum).name)
        self._received.add(signum)
        self._stop_signal = signum

    def _stop_flags(self, device: torch.device) -> torch.Tensor:
        return torch.tensor([1.0 if s in self._received else 0.0 for s in self._stop_signals], device=device)

    def _agreed_signal(self, flags: list) -> Optional[int]:
        """The signal every rank stops for: the first of ``_stop_signals`` that some rank received."""
        return next((s for s, flag in zip(self._stop_signals, flags) if flag > 0), None)

    def _agree_stop(self) -> Optional[int]:
        """Between epochs: agree on the stop flags in one all-reduce (a signal during the epoch's hooks)."""
        flags = self._stop_flags(self.device)
        if is_dist():
            torch.distributed.all_reduce(flags)
        self._stop_agreed = self._agreed_signal(flags.tolist())
        return self._stop_agreed

    def _stop_with_checkpoint(self) -> None:
        """Write ``latest.pth`` (all ranks take part), requeue the SLURM job after the advance-warning
        signal (rank 0), and leave together: a rank exiting first could get the others killed
        (torchrun, ``srun --kill-on-bad-exit``) before the checkpoint is on disk."""
        signum = self._stop_agreed or signal.SIGTERM
        path = self.save_checkpoint(self.work_dir, 'latest.pth', update_latest=False)
        if self.rank == 0 and signum == self._requeue_signal:
            requeue_slurm_job(self.logger)
        self.barrier()
        raise TrainingInterrupted(signum, path)

    # -- checkpoints ---------------------------------------------------------------------------
    def _progress(self) -> tuple[int, int, int]:
        """(completed epochs, completed iterations, completed iterations in the current epoch)."""
        iters = self._iter + 1 if self._after_iter else self._iter
        inner = self._inner_iter + 1 if self._after_iter else self._inner_iter
        if self.data_loader is not None and inner >= len(self.data_loader):
            return self._epoch + 1, iters, 0
        return self._epoch, iters, inner

    def save_checkpoint(self, out_dir: str, filename: str, save_optimizer: bool = True,
                        update_latest: bool = True) -> str:
        """Write ``{'meta', 'state_dict', 'optimizer'}`` atomically; all ranks call it, rank 0 writes.

        ``meta`` holds the counters, every hook's state, and each rank's RNG states, so a resumed
        run continues bit for bit.
        """
        epoch, iters, inner = self._progress()
        rng_states = all_gather_object(get_rng_state())
        path = os.path.join(out_dir, filename)
        if self.rank != 0:
            return path
        meta = dict(self.meta)
        meta.update(epoch=epoch, iter=iters, inner_iter=inner, mixprec_version=mixprec.__version__,
                    time=time.asctime(), rng_states=rng_states,
                    hook_states={type(h).__name__: h.state_dict() for h in self._hooks
                                 if hasattr(h, 'state_dict') and h.state_dict()})
        model = unwrap_model(self.model)
        checkpoint = {'meta': meta,
                      'state_dict': OrderedDict((k, v.detach().cpu()) for k, v in model.state_dict().items())}
        if save_optimizer and self.optimizer is not None:
            checkpoint['optimizer'] = self.optimizer.state_dict()
        self.call_hook('before_save_checkpoint', checkpoint)
        save_file(checkpoint, path)
        if update_latest:
            link_or_copy(path, os.path.join(out_dir, 'latest.pth'))
        self.logger.info('Saved checkpoint %s (epoch %d, iter %d)', path, epoch, iters)
        return path

    def load_checkpoint(self, filename: str, strict: bool = False, trusted: bool = False) -> dict:
        """Weights only (``load_from``): report missing, unexpected and mis-shaped keys."""
        self.logger.info('load checkpoint from %s', filename)
        return load_weights(self.model, filename, strict=strict, logger=self.logger, trusted=trusted)

    def resume(self, filename: str, resume_optimizer: bool = True, trusted: bool = False) -> None:
        """Restore model, optimizer, counters, hook states and RNG states from ``filename``."""
        checkpoint = load_file(filename, map_location='cpu', trusted=trusted)
        if not isinstance(checkpoint, dict) or not {'meta', 'state_dict'} <= set(checkpoint):
            raise CheckpointError(f'{filename} is not a training checkpoint (no meta and state_dict); '
                                  f'use load_from to start from its weights')
        self.call_hook('before_resume', checkpoint)
        load_state_dict(self.model, checkpoint['state_dict'], strict=True, logger=self.logger, source=filename)
        meta = checkpoint.get('meta', {})
        self._epoch, self._iter = meta.get('epoch', 0), meta.get('iter', 0)
        self._resume_inner_iter = meta.get('inner_iter', 0)
        if resume_optimizer and 'optimizer' in checkpoint:
            self.optimizer.load_state_dict(checkpoint['optimizer'])
        rng_states = meta.get('rng_states')
        if rng_states:
            set_rng_state(rng_states[self.rank] if self.rank < len(rng_states) else rng_states[0])
        hook_states = meta.get('hook_states', {})
        for hook in self._hooks:
            if type(hook).__name__ in hook_states and hasattr(hook, 'load_state_dict'):
                hook.load_state_dict(hook_states[type(hook).__name__])
        restored = set(meta) - {'epoch', 'iter', 'inner_iter', 'rng_states', 'hook_states', 'time'}
        self.meta.update({k: meta[k] for k in restored if k not in self.meta})
        self.logger.info('resumed from %s: epoch %d, iter %d', filename, self._epoch, self._iter)
