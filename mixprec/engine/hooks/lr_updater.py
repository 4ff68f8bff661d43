"""Learning-rate schedules: a regular policy per epoch (or iteration) with an iteration warmup."""
from __future__ import annotations

import math
from typing import Optional, Sequence

from mixprec.registry import HOOKS
from .hook import Hook


class LrUpdaterHook(Hook):
    """Sets every param group's lr before each iteration from ``get_lr(runner, base_lr)``.

    Warmup (``'linear'``, ``'constant'`` or ``'exp'``) counts iterations and scales the regular lr:
    linear gives ``regular * (1 - (1 - i / warmup_iters) * (1 - warmup_ratio))``.
    """

    priority = 10

    def __init__(self, by_epoch: bool = True, warmup: Optional[str] = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, warmup_by_epoch: bool = False) -> None:
        if warmup not in (None, 'constant', 'linear', 'exp'):
            raise ValueError(f'lr_config.warmup must be None, "constant", "linear" or "exp", got {warmup!r}')
        if warmup is not None and not 0 < warmup_ratio <= 1.0:
            raise ValueError(f'lr_config.warmup_ratio must be in (0, 1], got {warmup_ratio}')
        self.by_epoch = by_epoch
        self.warmup = warmup
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        self.warmup_by_epoch = warmup_by_epoch
        self.base_lr: list[float] = []

    def get_lr(self, runner, base_lr: float) -> float:
        raise NotImplementedError

    def warmup_factor(self, cur_iter: int) -> float:
        if self.warmup == 'constant':
            return self.warmup_ratio
        if self.warmup == 'linear':
            return 1 - (1 - cur_iter / self.warmup_iters) * (1 - self.warmup_ratio)
        return self.warmup_ratio ** (1 - cur_iter / self.warmup_iters)

    def before_run(self, runner) -> None:
        for group in runner.optimizer.param_groups:
            group.setdefault('initial_lr', group['lr'])
        self.base_lr = [group['initial_lr'] for group in runner.optimizer.param_groups]
        if self.warmup_by_epoch:
            self.warmup_iters = self.warmup_iters * runner.iters_per_epoch

    def before_train_iter(self, runner) -> None:
        cur_iter = runner.iter
        for group, base in zip(runner.optimizer.param_groups, self.base_lr):
            lr = self.get_lr(runner, base)
            if self.warmup is not None and cur_iter < self.warmup_iters:
                lr *= self.warmup_factor(cur_iter)
            group['lr'] = lr

    def progress(self, runner) -> int:
        return runner.epoch if self.by_epoch else runner.iter

    def max_progress(self, runner) -> int:
        return runner.max_epochs if self.by_epoch else runner.max_iters


@HOOKS.register_module()
class StepLrUpdaterHook(LrUpdaterHook):
    """lr = base * gamma ** (number of ``step`` milestones reached), floored at ``min_lr``."""

    def __init__(self, step: int | Sequence[int], gamma: float = 0.1, min_lr: Optional[float] = None,
                 **kwargs) -> None:
        self.step = [step] if isinstance(step, int) else list(step)
        if any(s <= 0 for s in self.step) or self.step != sorted(self.step):
            raise ValueError(f'lr_config.step must be positive and increasing, got {step!r}')
        self.gamma = gamma
        self.min_lr = min_lr
        super().__init__(**kwargs)

    def get_lr(self, runner, base_lr: float) -> float:
        progress = self.progress(runner)
        if len(self.step) == 1:
            exp = progress // self.step[0]
        else:
            exp = sum(progress >= s for s in self.step)
        lr = base_lr * self.gamma ** exp
        return max(lr, self.min_lr) if self.min_lr is not None else lr


@HOOKS.register_module()
class FixedLrUpdaterHook(LrUpdaterHook):
    def get_lr(self, runner, base_lr: float) -> float:
        return base_lr


@HOOKS.register_module()
class CosineAnnealingLrUpdaterHook(LrUpdaterHook):
    """Cosine from base lr to ``min_lr`` (or ``base * min_lr_ratio``) over the run."""

    def __init__(self, min_lr: Optional[float] = None, min_lr_ratio: Optional[float] = None, **kwargs) -> None:
        if (min_lr is None) == (min_lr_ratio is None):
            raise ValueError('CosineAnnealing lr_config needs exactly one of min_lr and min_lr_ratio')
        self.min_lr = min_lr
        self.min_lr_ratio = min_lr_ratio
        super().__init__(**kwargs)

    def get_lr(self, runner, base_lr: float) -> float:
        target = self.min_lr if self.min_lr is not None else base_lr * self.min_lr_ratio
        fraction = self.progress(runner) / max(self.max_progress(runner), 1)
        return target + 0.5 * (base_lr - target) * (1 + math.cos(math.pi * fraction))


def build_lr_hook(lr_config: dict) -> LrUpdaterHook:
    """mmcv's ``lr_config = dict(policy='step', ...)`` -> ``StepLrUpdaterHook(...)``."""
    cfg = dict(lr_config)
    policy = cfg.pop('policy')
    name = policy if policy.endswith('LrUpdaterHook') else f'{policy[0].upper()}{policy[1:]}LrUpdaterHook'
    return HOOKS.build(dict(type=name, **cfg))
