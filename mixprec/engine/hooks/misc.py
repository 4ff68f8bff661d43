"""Small hooks of mmcv 1.x / mmdetection v2: EmptyCacheHook, CheckInvalidLossHook, SyncBuffersHook,
MemoryProfilerHook."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from mixprec.checkpoint import unwrap_model
from mixprec.registry import HOOKS, ConfigError
from .hook import Hook
from .optimizer import NonFiniteLossError


@HOOKS.register_module()
class EmptyCacheHook(Hook):
    """``torch.cuda.empty_cache()`` before/after each epoch and/or after each iteration (train and val)."""

    def __init__(self, before_epoch: bool = False, after_epoch: bool = True, after_iter: bool = False) -> None:
        self._before_epoch = before_epoch
        self._after_epoch = after_epoch
        self._after_iter = after_iter

    @staticmethod
    def _empty() -> None:
        torch.cuda.empty_cache()

    def before_train_epoch(self, runner) -> None:
        if self._before_epoch:
            self._empty()

    before_val_epoch = before_train_epoch

    def after_train_epoch(self, runner) -> None:
        if self._after_epoch:
            self._empty()

    after_val_epoch = after_train_epoch

    def after_train_iter(self, runner) -> None:
        if self._after_iter:
            self._empty()

    after_val_iter = after_train_iter


@HOOKS.register_module()
class CheckInvalidLossHook(Hook):
    """Every ``interval`` iterations, stop the run when the total loss is inf or NaN (mmdetection v2)."""

    def __init__(self, interval: int = 50) -> None:
        self.interval = interval

    def after_train_iter(self, runner) -> None:
        if not self.every_n_iters(runner, self.interval):
            return
        loss = float(runner.outputs['loss'].detach())
        if not math.isfinite(loss):
            terms = [k for k, v in runner.outputs.get('log_vars', {}).items() if not math.isfinite(v)]
            raise NonFiniteLossError(f'loss become infinite or NaN! (loss {loss} at iter {runner.iter + 1}'
                                     + (f'; non-finite terms: {", ".join(terms)})' if terms else ')'))


@HOOKS.register_module()
class SyncBuffersHook(Hook):
    """After each (train or val) epoch, average the model's buffers (BN running stats) over the ranks (mmcv 1.x).

    Integer buffers (``num_batches_tracked``) are summed and floor-divided, floating ones averaged.
    """

    def __init__(self, distributed: bool = True) -> None:
        self.distributed = distributed

    def after_train_epoch(self, runner) -> None:
        if not (self.distributed and dist.is_available() and dist.is_initialized()):
            return
        world_size = dist.get_world_size()
        for buffer in unwrap_model(runner.model).buffers():
            dist.all_reduce(buffer)
            if buffer.is_floating_point():
                buffer.div_(world_size)
            else:
                buffer.floor_divide_(world_size)

    after_val_epoch = after_train_epoch


@HOOKS.register_module()
class MemoryProfilerHook(Hook):
    """Every ``interval`` iterations log system (virtual, swap) and process memory, as mmdetection v2.

    Needs the optional ``psutil`` and ``memory_profiler`` packages.
    """

    def __init__(self, interval: int = 50) -> None:
        try:
            from psutil import swap_memory, virtual_memory
            from memory_profiler import memory_usage
        except ImportError as exc:
            raise ConfigError(f'MemoryProfilerHook needs psutil and memory_profiler ({exc}): '
                              'pip install psutil memory_profiler') from None
        self._swap_memory = swap_memory
        self._virtual_memory = virtual_memory
        self._memory_usage = memory_usage
        self.interval = interval

    def after_train_iter(self, runner) -> None:
        if not self.every_n_iters(runner, self.interval):
            return
        mb = 1024 * 1024
        virtual, swap = self._virtual_memory(), self._swap_memory()
        process = self._memory_usage()[0]
        runner.logger.info(
            'Memory information available_memory: %d MB, used_memory: %d MB, memory_utilization: %s %%, '
            'available_swap_memory: %d MB, used_swap_memory: %d MB, swap_memory_utilization: %s %%, '
            'current_process_memory: %d MB', round(virtual.available / mb), round(virtual.used / mb),
            virtual.percent, round((swap.total - swap.used) / mb), round(swap.used / mb), swap.percent,
            round(process))
