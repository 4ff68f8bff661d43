"""Momentum schedules of mmcv 1.x: ``momentum_config = dict(policy='cyclic', ...)``.

The momentum is each group's ``momentum`` (SGD, RMSprop) or ``betas[0]`` (Adam, AdamW, ...). The
loop is the lr schedules' (``ParamSchedulerHook``); warm-up divides the momentum by the factor.
"""
from __future__ import annotations

from typing import Optional, Sequence

from mixprec.registry import HOOKS, ConfigError
from .lr_updater import (CyclicSchedule, ParamSchedulerHook, anneal_target, annealing_cos, annealing_linear,
                         build_scheduler_hook, check_one_cycle_args, check_one_of, check_step, per_group,
                         step_exponent)


def has_momentum(group: dict) -> bool:
    return 'momentum' in group or 'betas' in group


class MomentumUpdaterHook(ParamSchedulerHook):
    """The momentum schedules (``get_momentum(runner, base_momentum)``)."""

    default_priority = 30
    config_key = 'momentum_config'
    initial_key = 'initial_momentum'

    def __init__(self, by_epoch: bool = True, warmup: Optional[str] = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.9, warmup_by_epoch: bool = False) -> None:
        super().__init__(by_epoch, warmup, warmup_iters, warmup_ratio, warmup_by_epoch)

    def get_momentum(self, runner, base_momentum: float) -> float:
        raise NotImplementedError

    def get_value(self, runner, base: float) -> float:
        return self.get_momentum(runner, base)

    def before_run(self, runner) -> None:
        if not all(has_momentum(g) for g in runner.optimizer.param_groups):
            raise ConfigError(f'momentum_config: {type(runner.optimizer).__name__} has neither momentum '
                              f'nor betas to schedule')
        super().before_run(runner)

    def read(self, group: dict) -> float:
        return group['momentum'] if 'momentum' in group else group['betas'][0]

    def write(self, group: dict, value: float) -> None:
        if 'momentum' in group:
            group['momentum'] = value
        else:
            group['betas'] = (value, group['betas'][1])

    def warm(self, value: float, factor: float) -> float:
        return value / factor


@HOOKS.register_module()
class StepMomentumUpdaterHook(MomentumUpdaterHook):
    """momentum = base * gamma ** (decays reached), floored at ``min_momentum``."""

    def __init__(self, step: int | Sequence[int], gamma: float = 0.5, min_momentum: Optional[float] = None,
                 **kwargs) -> None:
        self.step = check_step(step, self.config_key)
        self.gamma = gamma
        self.min_momentum = min_momentum
        super().__init__(**kwargs)

    def get_momentum(self, runner, base_momentum: float) -> float:
        value = base_momentum * self.gamma ** step_exponent(self.progress(runner, self.by_epoch)[0], self.step)
        return max(value, self.min_momentum) if self.min_momentum is not None else value


@HOOKS.register_module()
class CosineAnnealingMomentumUpdaterHook(MomentumUpdaterHook):
    """Cosine from the base momentum to ``min_momentum`` (or ``base * min_momentum_ratio``)."""

    def __init__(self, min_momentum: Optional[float] = None, min_momentum_ratio: Optional[float] = None,
                 **kwargs) -> None:
        check_one_of(min_momentum, min_momentum_ratio, 'min_momentum and min_momentum_ratio', self.config_key)
        self.min_momentum = min_momentum
        self.min_momentum_ratio = min_momentum_ratio
        super().__init__(**kwargs)

    def get_momentum(self, runner, base_momentum: float) -> float:
        progress, total = self.progress(runner, self.by_epoch)
        target = anneal_target(base_momentum, self.min_momentum, self.min_momentum_ratio)
        return annealing_cos(base_momentum, target, progress / total)


@HOOKS.register_module()
class LinearAnnealingMomentumUpdaterHook(CosineAnnealingMomentumUpdaterHook):
    """Linear from the base momentum to ``min_momentum`` (or ``base * min_momentum_ratio``)."""

    def get_momentum(self, runner, base_momentum: float) -> float:
        progress, total = self.progress(runner, self.by_epoch)
        target = anneal_target(base_momentum, self.min_momentum, self.min_momentum_ratio)
        return annealing_linear(base_momentum, target, progress / total)


@HOOKS.register_module()
class CyclicMomentumUpdaterHook(CyclicSchedule, MomentumUpdaterHook):
    """Cyclic momentum (iteration-based), usually paired with the cyclic lr: down while the lr goes up."""

    def __init__(self, by_epoch: bool = False, target_ratio=(0.85 / 0.95, 1), cyclic_times: int = 1,
                 step_ratio_up: float = 0.4, anneal_strategy: str = 'cos', gamma: float = 1, **kwargs) -> None:
        self._init_cyclic(target_ratio, cyclic_times, step_ratio_up, anneal_strategy, gamma, by_epoch)
        super().__init__(by_epoch=by_epoch, **kwargs)

    def get_momentum(self, runner, base_momentum: float) -> float:
        return self.cyclic_value(runner, base_momentum)


@HOOKS.register_module()
class OneCycleMomentumUpdaterHook(MomentumUpdaterHook):
    """1cycle momentum: from ``max_momentum`` down to ``base_momentum`` over ``pct_start`` of the
    run, then back up (``three_phase``: down, up, then flat at ``max_momentum``)."""

    def __init__(self, base_momentum=0.85, max_momentum=0.95, pct_start: float = 0.3,
                 anneal_strategy: str = 'cos', three_phase: bool = False, by_epoch: bool = False,
                 **kwargs) -> None:
        self.anneal = check_one_cycle_args(by_epoch, pct_start, anneal_strategy, self.config_key)
        self.base_momentum = base_momentum
        self.max_momentum = max_momentum
        self.pct_start = float(pct_start)
        self.three_phase = three_phase
        self.phases: list[tuple[float, str, str]] = []
        super().__init__(by_epoch=by_epoch, **kwargs)

    def before_run(self, runner) -> None:
        optimizer = runner.optimizer
        if not all(has_momentum(g) for g in optimizer.param_groups):
            raise ConfigError(f'momentum_config: {type(optimizer).__name__} has neither momentum nor betas')
        self._resolve_warmup(runner)
        lows = per_group(self.base_momentum, optimizer, 'momentum_config.base_momentum')
        highs = per_group(self.max_momentum, optimizer, 'momentum_config.max_momentum')
        for group, low, high in zip(optimizer.param_groups, lows, highs):
            self.write(group, high)
            group['base_momentum'] = low
            group['max_momentum'] = high
        total = runner.max_iters
        down = float(self.pct_start * total) - 1
        if self.three_phase:
            self.phases = [(down, 'max_momentum', 'base_momentum'),
                           (float(2 * self.pct_start * total) - 2, 'base_momentum', 'max_momentum'),
                           (total - 1, 'max_momentum', 'max_momentum')]
        else:
            self.phases = [(down, 'max_momentum', 'base_momentum'), (total - 1, 'base_momentum', 'max_momentum')]

    def _regular(self, runner) -> list[float]:
        return [self._one_cycle(runner.iter, group) for group in runner.optimizer.param_groups]

    def _one_cycle(self, cur_iter: int, group: dict) -> float:
        """The phase holding ``cur_iter`` (the last one past its end, as mmcv), annealed between its ends."""
        start = 0
        for end, start_key, end_key in self.phases[:-1]:
            if cur_iter <= end:
                return self.anneal(group[start_key], group[end_key], (cur_iter - start) / (end - start))
            start = end
        end, start_key, end_key = self.phases[-1]
        return self.anneal(group[start_key], group[end_key], (cur_iter - start) / (end - start))


def build_momentum_hook(momentum_config: dict) -> MomentumUpdaterHook:
    """``momentum_config = dict(policy='cyclic', ...)`` -> ``CyclicMomentumUpdaterHook(...)``."""
    return build_scheduler_hook(momentum_config, MomentumUpdaterHook, 'momentum_config')
