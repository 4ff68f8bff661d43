"""Logger hooks: mmdetection v2's text line and its ``log.json`` format."""
from __future__ import annotations

import datetime
import json
import os
import resource
from collections import OrderedDict

import torch

from mixprec.registry import HOOKS
from .hook import Hook


def peak_memory_mb(device: torch.device) -> int:
    """CUDA's max_memory_allocated on GPUs, the process's peak RSS on the CPU, in MB."""
    if device.type == 'cuda':
        return int(torch.cuda.max_memory_allocated(device) / 2 ** 20)
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


class LoggerHook(Hook):
    """Averages the log buffer every ``interval`` iterations and hands it to ``write``."""

    default_priority = 90

    def __init__(self, interval: int = 50, ignore_last: bool = True, by_epoch: bool = True) -> None:
        self.interval = interval
        self.ignore_last = ignore_last
        self.by_epoch = by_epoch

    def after_train_iter(self, runner) -> None:
        inner_done = self.every_n_inner_iters(runner, self.interval) if self.by_epoch \
            else self.every_n_iters(runner, self.interval)
        if inner_done or (self.by_epoch and self.end_of_epoch(runner) and not self.ignore_last):
            runner.log_buffer.average(self.interval)
            self.write(runner, self.train_record(runner))

    def log_val(self, runner, metrics: dict) -> None:
        progress = len(runner.data_loader) if self.by_epoch else runner.iter + 1
        record = OrderedDict(mode='val', epoch=runner.epoch + 1, iter=progress, lr=runner.current_lr())
        record.update(metrics)
        self.write(runner, record)

    def after_val_epoch(self, runner) -> None:
        """A val-loss epoch of ``workflow = [('train', 1), ('val', 1)]``: one ``mode='val'`` record (mmcv 1.x)."""
        runner.log_buffer.average()
        record = OrderedDict(mode='val', epoch=runner.epoch, iter=len(runner.val_data_loader), lr=runner.current_lr())
        record.update(runner.log_buffer.output)
        self.write(runner, record)

    def loggable_tags(self, runner, record: OrderedDict) -> tuple[int, dict]:
        """(global step, ``{'train/loss': ..., 'learning_rate': ..., 'momentum': ...}``) as mmcv's loggers tag them."""
        mode = record['mode']
        step = runner.iter + 1 if mode == 'train' else runner.iter
        skip = {'mode', 'epoch', 'iter', 'lr', 'memory', 'time', 'data_time'}
        tags = {f'{mode}/{k}': v for k, v in record.items() if k not in skip}
        tags['learning_rate'] = record['lr']
        group = runner.optimizer.param_groups[0]
        if 'momentum' in group or 'betas' in group:
            tags['momentum'] = group.get('momentum', group.get('betas', (0,))[0])
        return step, tags

    def train_record(self, runner) -> OrderedDict:
        record = OrderedDict(mode='train', epoch=runner.epoch + 1,
                             iter=runner.inner_iter + 1 if self.by_epoch else runner.iter + 1,
                             lr=runner.current_lr(), memory=peak_memory_mb(runner.device))
        record.update(runner.log_buffer.output)
        return record

    def write(self, runner, record: OrderedDict) -> None:
        raise NotImplementedError


@HOOKS.register_module()
class TextLoggerHook(LoggerHook):
    """``Epoch [e][i/n]\\tlr: ..., eta: ..., time: ..., data_time: ..., memory: ..., loss_x: ...``

    As mmcv 1.x's, it also writes ``{timestamp}.log.json`` (mmdetection's configs list only this
    hook and expect the json log); when a :class:`JsonLoggerHook` is registered too, that one writes it.
    """

    def before_run(self, runner) -> None:
        self.start_iter = runner.iter
        self._json = None
        if not any(isinstance(hook, JsonLoggerHook) for hook in runner.hooks):
            self._json = JsonLoggerHook(self.interval, self.ignore_last, self.by_epoch)
            self._json.before_run(runner)

    def write(self, runner, record: OrderedDict) -> None:
        if self._json is not None:
            self._json.write(runner, record)
        if record['mode'] == 'val':
            items = ', '.join(f'{k}: {_fmt(v)}' for k, v in record.items() if k not in ('mode', 'epoch', 'iter', 'lr'))
            if self.by_epoch:
                runner.logger.info('Epoch(val) [%d][%d]\t%s', record['epoch'], record['iter'], items)
            else:
                runner.logger.info('Iter(val) [%d]\t%s', record['iter'], items)
            return
        if self.by_epoch:
            head = f'Epoch [{record["epoch"]}][{record["iter"]}/{len(runner.data_loader)}]\t'
        else:
            head = f'Iter [{record["iter"]}/{runner.max_iters}]\t'
        parts = [f'lr: {record["lr"]:.3e}']
        if 'time' in record:
            done = runner.iter + 1 - self.start_iter
            eta = record['time'] * (runner.max_iters - runner.iter - 1)
            parts.append(f'eta: {datetime.timedelta(seconds=int(eta))}' if done > 0 else 'eta: -')
            parts.append(f'time: {record["time"]:.3f}, data_time: {record.get("data_time", 0.0):.3f}')
        parts.append(f'memory: {record["memory"]}')
        skip = {'mode', 'epoch', 'iter', 'lr', 'time', 'data_time', 'memory'}
        parts += [f'{k}: {_fmt(v)}' for k, v in record.items() if k not in skip]
        runner.logger.info(head + ', '.join(parts))


@HOOKS.register_module()
class JsonLoggerHook(LoggerHook):
    """``{timestamp}.log.json``: a first line of run meta, then one JSON object per log record."""

    def before_run(self, runner) -> None:
        self.path = None
        if runner.rank != 0 or runner.work_dir is None:
            return
        self.path = os.path.join(runner.work_dir, f'{runner.timestamp}.log.json')
        meta = {k: v for k, v in (runner.meta or {}).items() if k in ('env_info', 'config', 'seed', 'exp_name')}
        if meta:
            self._append(meta)

    def write(self, runner, record: OrderedDict) -> None:
        if self.path is None:
            return
        out = OrderedDict()
        for key, value in record.items():
            out[key] = round(value, 5) if isinstance(value, float) else value
        self._append(out)

    def _append(self, obj: dict) -> None:
        with open(self.path, 'a') as f:
            f.write(json.dumps(obj) + '\n')


def _fmt(value) -> str:
    return f'{value:.4f}' if isinstance(value, float) else str(value)
