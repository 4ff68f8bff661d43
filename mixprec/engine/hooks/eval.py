"""EvalHook / DistEvalHook: evaluate on a validation loader during training, keep the best."""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
from torch import nn

from mixprec.checkpoint import link_or_copy
from mixprec.registry import HOOKS, ConfigError
from ..dist_utils import broadcast_object, raise_if_any_rank_failed
from ..rng import preserved_rng_state
from .hook import Hook


@HOOKS.register_module()
class EvalHook(Hook):
    """Every ``interval`` epochs (or iterations): test, ``dataset.evaluate``, log, keep the best.

    Args:
        dataloader: the validation loader.
        interval: evaluate every ``interval`` epochs (``by_epoch``) or iterations.
        save_best: a metric key (e.g. ``'bbox_mAP'``) or ``'auto'`` (the first returned key);
            the best checkpoint is kept as ``best_{key}_epoch_{n}.pth``.
        rule: ``'greater'`` or ``'less'`` (default ``'greater'``, ``'less'`` for keys with "loss").
        tmpdir, gpu_collect: how :class:`DistEvalHook` gathers the ranks' results (mmdetection v2's
            keys); accepted here too, without effect in one process, so that one config serves both.
        **eval_kwargs: passed to ``dataset.evaluate`` (``metric=...``).

    A failure while testing or evaluating, on any rank, ends every rank at once with that error.
    """

    default_priority = 70

    def __init__(self, dataloader, start: Optional[int] = None, interval: int = 1, by_epoch: bool = True,
                 save_best: Optional[str] = None, rule: Optional[str] = None, tmpdir: Optional[str] = None,
                 gpu_collect: bool = False, **eval_kwargs) -> None:
        if rule not in (None, 'greater', 'less'):
            raise ConfigError(f'evaluation.rule must be "greater" or "less", got {rule!r}')
        self.dataloader = dataloader
        self.start = start
        self.interval = interval
        self.by_epoch = by_epoch
        self.save_best = save_best
        self.rule = rule
        self.tmpdir = tmpdir
        self.gpu_collect = gpu_collect
        self.eval_kwargs = eval_kwargs
        self.best_score: Optional[float] = None
        self.best_ckpt: Optional[str] = None
        self.last_metrics: dict = {}
        self.latest_results: Optional[list] = None

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch and self._due(runner.epoch + 1):
            self.evaluate_and_log(runner)

    def after_train_iter(self, runner) -> None:
        if not self.by_epoch and self._due(runner.iter + 1):
            self.evaluate_and_log(runner)

    def _due(self, progress: int) -> bool:
        if self.start is not None and progress < self.start:
            return False
        return (progress - (self.start or 0)) % self.interval == 0

    def test(self, runner) -> Optional[list]:
        from ..test import single_gpu_test
        return single_gpu_test(runner.model, self.dataloader)

    def evaluate_and_log(self, runner) -> None:
        """Test (every rank its shard), evaluate on rank 0, log there; every rank then learns of any
        rank's failure (and raises) or of the metrics, and keeps the best checkpoint together."""
        metrics: dict = {}
        error = None
        try:
            with preserved_rng_state():
                results = self.test(runner)
            if runner.rank == 0:
                self.latest_results = results
                metrics = self.dataloader.dataset.evaluate(results, logger=runner.logger, **self.eval_kwargs)
        except Exception as exc:  # every rank learns of it below, then raises
            error = exc
        raise_if_any_rank_failed(error, 'evaluation')
        metrics = broadcast_object(metrics)
        if runner.rank == 0:
            self.last_metrics = dict(metrics)
            runner.log_val(metrics)
        if self.save_best:
            self._keep_best(runner, metrics)

    def _keep_best(self, runner, metrics: dict) -> None:
        """On every rank (a new best may need a checkpoint save, which all ranks join); files on rank 0."""
        key = next(iter(metrics)) if self.save_best == 'auto' else self.save_best
        if key not in metrics:
            raise ConfigError(f'evaluation.save_best={key!r} is not among the metrics: {", ".join(metrics)}')
        score = float(metrics[key])
        rule = self.rule or ('less' if 'loss' in key else 'greater')
        better = self.best_score is None or (score > self.best_score if rule == 'greater' else score < self.best_score)
        if not better or math.isnan(score):
            return
        self.best_score = score
        progress = f'epoch_{runner.epoch + 1}' if self.by_epoch else f'iter_{runner.iter + 1}'
        name = f'best_{key}_{progress}.pth'
        source = os.path.join(runner.work_dir, f'{progress}.pth')
        target = os.path.join(runner.work_dir, name)
        if not broadcast_object(os.path.exists(source)):
            runner.save_checkpoint(runner.work_dir, name, save_optimizer=False, update_latest=False)
        elif runner.rank == 0:
            link_or_copy(source, target)
        if runner.rank == 0 and self.best_ckpt and self.best_ckpt != target and os.path.exists(self.best_ckpt):
            os.remove(self.best_ckpt)
        self.best_ckpt = target
        if runner.rank == 0:
            runner.logger.info('best %s %.4f at %s, saved %s', key, score, progress, name)

    def state_dict(self) -> dict:
        return {'best_score': self.best_score, 'best_ckpt': self.best_ckpt}

    def load_state_dict(self, state: dict) -> None:
        self.best_score = state.get('best_score')
        self.best_ckpt = state.get('best_ckpt')


@HOOKS.register_module()
class DistEvalHook(EvalHook):
    """EvalHook for distributed runs: every rank tests its shard, rank 0 evaluates.

    ``broadcast_bn_buffer`` (default True, as mmdetection v2): before testing, every rank takes rank
    0's BatchNorm running statistics. DDP runs with ``broadcast_buffers=False``, so with trainable BN
    each rank's statistics drift apart, and the shards would be tested by different models (not the
    one the checkpoint saves).

    ``gpu_collect=True`` gathers the results through the process group (NCCL: the GPUs; gloo: the
    CPU, the same call), ``tmpdir`` without it through files in that shared folder, neither through
    the process group (mmdetection's default is files under the work dir): see
    :func:`~mixprec.engine.test.multi_gpu_test`.
    """

    def __init__(self, dataloader, *args, broadcast_bn_buffer: bool = True, **kwargs) -> None:
        super().__init__(dataloader, *args, **kwargs)
        self.broadcast_bn_buffer = broadcast_bn_buffer

    def test(self, runner) -> Optional[list]:
        from ..test import multi_gpu_test
        if self.broadcast_bn_buffer and torch.distributed.is_available() and torch.distributed.is_initialized():
            for module in runner.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                    torch.distributed.broadcast(module.running_mean, 0)
                    torch.distributed.broadcast(module.running_var, 0)
        return multi_gpu_test(runner.model, self.dataloader, tmpdir=self.tmpdir, gpu_collect=self.gpu_collect)
