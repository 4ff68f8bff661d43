"""Learning-rate schedules of mmcv 1.x: ``lr_config = dict(policy='step', ...)`` -> an LrUpdaterHook.

``ParamSchedulerHook`` is the loop both schedules share (lr here, momentum in momentum_updater.py):
with ``by_epoch=True`` the regular value is set before each epoch from the epoch index, otherwise
before each iteration from the iteration index; during warm-up (counted in iterations, or in epochs
with ``warmup_by_epoch``) the value is the regular one scaled by the warm-up factor. Each param group
keeps its own base value (``initial_lr``), so groups built with ``lr_mult`` keep their ratio.
"""
from __future__ import annotations

import inspect
import math
from numbers import Number
from typing import Callable, Optional, Sequence

from mixprec.registry import HOOKS, ConfigError
from .hook import Hook

WARMUPS = ('constant', 'linear', 'exp')


def annealing_cos(start: float, end: float, factor: float, weight: float = 1.0) -> float:
    """Cosine from ``start`` (factor 0) to ``end`` (factor 1); ``weight`` scales the amplitude."""
    return end + 0.5 * weight * (start - end) * (math.cos(math.pi * factor) + 1)


def annealing_linear(start: float, end: float, factor: float) -> float:
    return start + (end - start) * factor


def anneal_function(strategy: str, key: str) -> Callable[[float, float, float], float]:
    functions = {'cos': annealing_cos, 'linear': annealing_linear}
    if strategy not in functions:
        raise ConfigError(f"{key}.anneal_strategy must be 'cos' or 'linear', got {strategy!r}")
    return functions[strategy]


def step_exponent(progress: int, step: int | Sequence[int]) -> int:
    """How many decays have happened: ``progress // step``, or the milestones of a list reached."""
    if isinstance(step, int):
        return progress // step
    return sum(progress >= s for s in step)


def check_step(step, key: str) -> int | list[int]:
    if isinstance(step, int) and not isinstance(step, bool) and step > 0:
        return step
    if (isinstance(step, (list, tuple)) and step and all(isinstance(s, int) and s > 0 for s in step)
            and list(step) == sorted(step)):
        return list(step)
    raise ConfigError(f'{key}.step must be a positive int or an increasing list of them, got {step!r}')


def check_fraction(value, key: str, upper_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Number) or not (0 <= value < 1 if upper_open else 0 <= value <= 1):
        raise ConfigError(f'{key} must be a number in [0, {"1)" if upper_open else "1]"}, got {value!r}')
    return float(value)


def anneal_target(base: float, minimum: Optional[float], ratio: Optional[float]) -> float:
    return minimum if minimum is not None else base * ratio


def check_one_of(minimum, ratio, names: str, key: str) -> None:
    if (minimum is None) == (ratio is None):
        raise ConfigError(f'{key} needs exactly one of {names}, got {minimum!r} and {ratio!r}')


class ParamSchedulerHook(Hook):
    """Sets one option of every param group (``lr``, momentum) from ``get_value(runner, base)``.

    Args:
        by_epoch: schedule over epochs (set before each epoch) or iterations.
        warmup: None, 'constant', 'linear' or 'exp', over the first ``warmup_iters`` iterations
            (epochs with ``warmup_by_epoch``), starting from ``warmup_ratio``.
    """

    config_key = 'schedule'
    initial_key = 'initial'

    def __init__(self, by_epoch: bool = True, warmup: Optional[str] = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, warmup_by_epoch: bool = False) -> None:
        key = self.config_key
        if warmup is not None:
            if warmup not in WARMUPS:
                raise ConfigError(f'{key}.warmup must be None, "constant", "linear" or "exp", got {warmup!r}')
            if isinstance(warmup_iters, bool) or not isinstance(warmup_iters, int) or warmup_iters <= 0:
                raise ConfigError(f'{key}.warmup_iters must be a positive int with warmup={warmup!r}, '
                                  f'got {warmup_iters!r}')
            if not isinstance(warmup_ratio, Number) or not 0 < warmup_ratio <= 1.0:
                raise ConfigError(f'{key}.warmup_ratio must be in (0, 1], got {warmup_ratio!r}')
        self.by_epoch = by_epoch
        self.warmup = warmup
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        self.warmup_by_epoch = warmup_by_epoch
        self.base_values: list[float] = []
        self.regular: list[float] = []

    # -- what a subclass provides ------------------------------------------------------------------
    def get_value(self, runner, base: float) -> float:
        raise NotImplementedError

    def read(self, group: dict) -> float:
        raise NotImplementedError

    def write(self, group: dict, value: float) -> None:
        raise NotImplementedError

    def warm(self, value: float, factor: float) -> float:
        """The warm-up value from the regular one and the warm-up factor (in (0, 1])."""
        return value * factor

    # -- the loop ----------------------------------------------------------------------------------
    def warmup_factor(self, cur_iter: int) -> float:
        if self.warmup == 'constant':
            return self.warmup_ratio
        if self.warmup == 'linear':
            return 1 - (1 - cur_iter / self.warmup_iters) * (1 - self.warmup_ratio)
        return self.warmup_ratio ** (1 - cur_iter / self.warmup_iters)

    def _set(self, runner, values: list[float]) -> None:
        for group, value in zip(runner.optimizer.param_groups, values):
            self.write(group, value)

    def _regular(self, runner) -> list[float]:
        return [self.get_value(runner, base) for base in self.base_values]

    def before_run(self, runner) -> None:
        for group in runner.optimizer.param_groups:
            group.setdefault(self.initial_key, self.read(group))
        self.base_values = [group[self.initial_key] for group in runner.optimizer.param_groups]
        self._resolve_warmup(runner)

    def _resolve_warmup(self, runner) -> None:
        """``warmup_by_epoch``: ``warmup_iters`` counted epochs; turn them into iterations, once."""
        if self.warmup_by_epoch:
            self.warmup_iters = self.warmup_iters * runner.iters_per_epoch
            self.warmup_by_epoch = False

    def before_train_epoch(self, runner) -> None:
        if self.by_epoch:
            self.regular = self._regular(runner)
            self._set(runner, self.regular)

    def before_train_iter(self, runner) -> None:
        cur_iter = runner.iter
        if not self.by_epoch:
            self.regular = self._regular(runner)
        elif self.warmup is None or cur_iter > self.warmup_iters:
            return
        if self.warmup is None or cur_iter >= self.warmup_iters:
            self._set(runner, self.regular)
        else:
            factor = self.warmup_factor(cur_iter)
            self._set(runner, [self.warm(v, factor) for v in self.regular])

    @staticmethod
    def progress(runner, by_epoch: bool) -> tuple[int, int]:
        """(current index, total) in epochs or iterations."""
        if by_epoch:
            return runner.epoch, runner.max_epochs
        return runner.iter, runner.max_iters


class LrUpdaterHook(ParamSchedulerHook):
    """The lr schedules (``get_lr(runner, base_lr)``); warm-up multiplies the lr by the factor."""

    default_priority = 10
    config_key = 'lr_config'
    initial_key = 'initial_lr'

    def get_lr(self, runner, base_lr: float) -> float:
        raise NotImplementedError

    def get_value(self, runner, base: float) -> float:
        return self.get_lr(runner, base)

    def read(self, group: dict) -> float:
        return group['lr']

    def write(self, group: dict, value: float) -> None:
        group['lr'] = value


@HOOKS.register_module()
class FixedLrUpdaterHook(LrUpdaterHook):
    def get_lr(self, runner, base_lr: float) -> float:
        return base_lr


@HOOKS.register_module()
class StepLrUpdaterHook(LrUpdaterHook):
    """lr = base * gamma ** (decays reached), floored at ``min_lr``."""

    def __init__(self, step: int | Sequence[int], gamma: float = 0.1, min_lr: Optional[float] = None,
                 **kwargs) -> None:
        self.step = check_step(step, self.config_key)
        self.gamma = gamma
        self.min_lr = min_lr
        super().__init__(**kwargs)

    def get_lr(self, runner, base_lr: float) -> float:
        lr = base_lr * self.gamma ** step_exponent(self.progress(runner, self.by_epoch)[0], self.step)
        return max(lr, self.min_lr) if self.min_lr is not None else lr


@HOOKS.register_module()
class ExpLrUpdaterHook(LrUpdaterHook):
    """lr = base * gamma ** progress."""

    def __init__(self, gamma: float, **kwargs) -> None:
        self.gamma = gamma
        super().__init__(**kwargs)

    def get_lr(self, runner, base_lr: float) -> float:
        return base_lr * self.gamma ** self.progress(runner, self.by_epoch)[0]


@HOOKS.register_module()
class PolyLrUpdaterHook(LrUpdaterHook):
    """lr = (base - min_lr) * (1 - progress / max_progress) ** power + min_lr."""

    def __init__(self, power: float = 1., min_lr: float = 0., **kwargs) -> None:
        self.power = power
        self.min_lr = min_lr
        super().__init__(**kwargs)

    def get_lr(self, runner, base_lr: float) -> float:
        progress, total = self.progress(runner, self.by_epoch)
        return (base_lr - self.min_lr) * (1 - progress / total) ** self.power + self.min_lr


@HOOKS.register_module()
class InvLrUpdaterHook(LrUpdaterHook):
    """lr = base * (1 + gamma * progress) ** -power."""

    def __init__(self, gamma: float, power: float = 1., **kwargs) -> None:
        self.gamma = gamma
        self.power = power
        super().__init__(**kwargs)

    def get_lr(self, runner, base_lr: float) -> float:
        return base_lr * (1 + self.gamma * self.progress(runner, self.by_epoch)[0]) ** (-self.power)


@HOOKS.register_module()
class CosineAnnealingLrUpdaterHook(LrUpdaterHook):
    """Cosine from the base lr to ``min_lr`` (or ``base * min_lr_ratio``) over the run."""

    def __init__(self, min_lr: Optional[float] = None, min_lr_ratio: Optional[float] = None, **kwargs) -> None:
        check_one_of(min_lr, min_lr_ratio, 'min_lr and min_lr_ratio', self.config_key)
        self.min_lr = min_lr
        self.min_lr_ratio = min_lr_ratio
        super().__init__(**kwargs)

    def get_lr(self, runner, base_lr: float) -> float:
        progress, total = self.progress(runner, self.by_epoch)
        return annealing_cos(base_lr, anneal_target(base_lr, self.min_lr, self.min_lr_ratio), progress / total)


@HOOKS.register_module()
class LinearAnnealingLrUpdaterHook(CosineAnnealingLrUpdaterHook):
    """Linear from the base lr to ``min_lr`` (or ``base * min_lr_ratio``) over the run."""

    def get_lr(self, runner, base_lr: float) -> float:
        progress, total = self.progress(runner, self.by_epoch)
        return annealing_linear(base_lr, anneal_target(base_lr, self.min_lr, self.min_lr_ratio), progress / total)


@HOOKS.register_module()
class FlatCosineAnnealingLrUpdaterHook(LrUpdaterHook):
    """Flat at the base lr until ``start_percent`` of the run, then cosine to the minimum."""

    def __init__(self, start_percent: float = 0.75, min_lr: Optional[float] = None,
                 min_lr_ratio: Optional[float] = None, **kwargs) -> None:
        check_one_of(min_lr, min_lr_ratio, 'min_lr and min_lr_ratio', self.config_key)
        self.start_percent = check_fraction(start_percent, f'{self.config_key}.start_percent')
        self.min_lr = min_lr
        self.min_lr_ratio = min_lr_ratio
        super().__init__(**kwargs)

    def get_lr(self, runner, base_lr: float) -> float:
        progress, total = self.progress(runner, self.by_epoch)
        start = round(total * self.start_percent)
        if progress < start:
            return base_lr
        target = anneal_target(base_lr, self.min_lr, self.min_lr_ratio)
        return annealing_cos(base_lr, target, (progress - start) / (total - start))


@HOOKS.register_module()
class CosineRestartLrUpdaterHook(LrUpdaterHook):
    """Cosine restarted at the end of each of ``periods``, the i-th with amplitude ``restart_weights[i]``."""

    def __init__(self, periods: Sequence[int], restart_weights: Sequence[float] = (1,),
                 min_lr: Optional[float] = None, min_lr_ratio: Optional[float] = None, **kwargs) -> None:
        key = self.config_key
        check_one_of(min_lr, min_lr_ratio, 'min_lr and min_lr_ratio', key)
        if not isinstance(periods, (list, tuple)) or not all(isinstance(p, int) and p > 0 for p in periods):
            raise ConfigError(f'{key}.periods must be a list of positive ints, got {periods!r}')
        if len(periods) != len(restart_weights):
            raise ConfigError(f'{key}: periods and restart_weights must have the same length, '
                              f'got {len(periods)} and {len(restart_weights)}')
        self.periods = list(periods)
        self.restart_weights = list(restart_weights)
        self.min_lr = min_lr
        self.min_lr_ratio = min_lr_ratio
        self.cumulative_periods = [sum(self.periods[:i + 1]) for i in range(len(self.periods))]
        super().__init__(**kwargs)

    def get_lr(self, runner, base_lr: float) -> float:
        progress = self.progress(runner, self.by_epoch)[0]
        index = next((i for i, end in enumerate(self.cumulative_periods) if progress < end), None)
        if index is None:
            raise ConfigError(f'{self.config_key}: progress {progress} is past the end of the periods '
                              f'{self.periods} (cumulative {self.cumulative_periods}); make them cover the run')
        start = self.cumulative_periods[index - 1] if index else 0
        alpha = min((progress - start) / self.periods[index], 1)
        target = anneal_target(base_lr, self.min_lr, self.min_lr_ratio)
        return annealing_cos(base_lr, target, alpha, self.restart_weights[index])


class CyclicSchedule:
    """mmcv's cyclic schedule (lr or momentum), iteration-based; a mixin listed before the hook's base.

    Each of ``cyclic_times`` cycles (``max_iters // cyclic_times`` iterations) anneals from the base
    value to ``base * target_ratio[0]`` over its first ``step_ratio_up`` fraction, then to
    ``base * target_ratio[1]``; cycle c scales the distance to the peak by ``gamma ** c``.
    """

    def _init_cyclic(self, target_ratio, cyclic_times: int, step_ratio_up: float, anneal_strategy: str,
                     gamma: float, by_epoch: bool) -> None:
        key = self.config_key
        if isinstance(target_ratio, Number) and not isinstance(target_ratio, bool):
            target_ratio = (target_ratio, target_ratio / 1e5)
        elif isinstance(target_ratio, (tuple, list)) and len(target_ratio) == 1:
            target_ratio = (target_ratio[0], target_ratio[0] / 1e5)
        if not isinstance(target_ratio, (tuple, list)) or len(target_ratio) != 2:
            raise ConfigError(f'{key}.target_ratio must be a number or a tuple of two, got {target_ratio!r}')
        if by_epoch:
            raise ConfigError(f'{key}: the cyclic policy supports only by_epoch=False')
        if not 0 < gamma <= 1:
            raise ConfigError(f'{key}.gamma must be in (0, 1], got {gamma!r}')
        if isinstance(cyclic_times, bool) or not isinstance(cyclic_times, int) or cyclic_times < 1:
            raise ConfigError(f'{key}.cyclic_times must be a positive int, got {cyclic_times!r}')
        self.target_ratio = tuple(target_ratio)
        self.cyclic_times = cyclic_times
        self.step_ratio_up = check_fraction(step_ratio_up, f'{key}.step_ratio_up', upper_open=True)
        self.anneal = anneal_function(anneal_strategy, key)
        self.gamma = gamma
        self.iters_per_cycle = 0
        self.iters_up = 0

    def before_run(self, runner) -> None:
        super().before_run(runner)
        self.iters_per_cycle = runner.max_iters // self.cyclic_times
        if self.iters_per_cycle < 1:
            raise ConfigError(f'{self.config_key}.cyclic_times={self.cyclic_times} exceeds the '
                              f'{runner.max_iters} iterations of the run')
        self.iters_up = int(self.step_ratio_up * self.iters_per_cycle)

    def cyclic_value(self, runner, base: float) -> float:
        cur = runner.iter % self.iters_per_cycle
        scale = self.gamma ** (runner.iter // self.iters_per_cycle)
        peak = 1 - scale + self.target_ratio[0] * scale
        if cur < self.iters_up:
            return self.anneal(base, base * peak, cur / self.iters_up)
        return self.anneal(base * peak, base * self.target_ratio[1],
                           (cur - self.iters_up) / (self.iters_per_cycle - self.iters_up))


@HOOKS.register_module()
class CyclicLrUpdaterHook(CyclicSchedule, LrUpdaterHook):
    """Cyclic lr (iteration-based): up to ``base * target_ratio[0]``, down to ``base * target_ratio[1]``."""

    def __init__(self, by_epoch: bool = False, target_ratio=(10, 1e-4), cyclic_times: int = 1,
                 step_ratio_up: float = 0.4, anneal_strategy: str = 'cos', gamma: float = 1, **kwargs) -> None:
        self._init_cyclic(target_ratio, cyclic_times, step_ratio_up, anneal_strategy, gamma, by_epoch)
        super().__init__(by_epoch=by_epoch, **kwargs)

    def get_lr(self, runner, base_lr: float) -> float:
        return self.cyclic_value(runner, base_lr)


def per_group(value, optimizer, key: str) -> list[float]:
    """A number for every param group, a list with one per group, or a dict by optimizer class name."""
    count = len(optimizer.param_groups)
    if isinstance(value, dict):
        name = type(optimizer).__name__
        if name not in value:
            raise ConfigError(f'{key}: a dict needs the optimizer name {name!r} as key, got {list(value)}')
        value = value[name]
    if isinstance(value, Number) and not isinstance(value, bool):
        return [float(value)] * count
    if isinstance(value, (list, tuple)) and len(value) == count:
        return [float(v) for v in value]
    raise ConfigError(f'{key} must be a number or a list with one value per param group ({count}), got {value!r}')


def check_one_cycle_args(by_epoch: bool, pct_start, anneal_strategy: str, key: str) -> Callable:
    if by_epoch:
        raise ConfigError(f'{key}: the OneCycle policy supports only by_epoch=False')
    check_fraction(pct_start, f'{key}.pct_start')
    return anneal_function(anneal_strategy, key)


@HOOKS.register_module()
class OneCycleLrUpdaterHook(LrUpdaterHook):
    """The 1cycle policy: from ``max_lr / div_factor`` up to ``max_lr`` over ``pct_start`` of
    ``total_steps`` (default: the run's iterations), then down to ``initial / final_div_factor``
    (``three_phase``: back to the initial lr first, then down)."""

    def __init__(self, max_lr, total_steps: Optional[int] = None, pct_start: float = 0.3,
                 anneal_strategy: str = 'cos', div_factor: float = 25, final_div_factor: float = 1e4,
                 three_phase: bool = False, by_epoch: bool = False, **kwargs) -> None:
        key = self.config_key
        self.anneal = check_one_cycle_args(by_epoch, pct_start, anneal_strategy, key)
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)):
            raise ConfigError(f'{key}.total_steps must be an int, got {total_steps!r}')
        self.max_lr = max_lr
        self.total_steps = total_steps
        self.pct_start = float(pct_start)
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor
        self.three_phase = three_phase
        self.phases: list[tuple[float, float, float]] = []
        super().__init__(by_epoch=by_epoch, **kwargs)

    def before_run(self, runner) -> None:
        total = self.total_steps if self.total_steps is not None else runner.max_iters
        if total < runner.max_iters:
            raise ConfigError(f'{self.config_key}.total_steps={total} is less than the run\'s '
                              f'{runner.max_iters} iterations')
        self._resolve_warmup(runner)
        max_lrs = per_group(self.max_lr, runner.optimizer, f'{self.config_key}.max_lr')
        self.base_values = [lr / self.div_factor for lr in max_lrs]
        for group, lr in zip(runner.optimizer.param_groups, self.base_values):
            group.setdefault('initial_lr', lr)
        up = float(self.pct_start * total) - 1
        if self.three_phase:
            self.phases = [(up, 1, self.div_factor), (float(2 * self.pct_start * total) - 2, self.div_factor, 1),
                           (total - 1, 1, 1 / self.final_div_factor)]
        else:
            self.phases = [(up, 1, self.div_factor), (total - 1, self.div_factor, 1 / self.final_div_factor)]

    def get_lr(self, runner, base_lr: float) -> float:
        start = 0
        for end, start_factor, end_factor in self.phases:
            if runner.iter <= end:
                pct = (runner.iter - start) / (end - start)
                return self.anneal(base_lr * start_factor, base_lr * end_factor, pct)
            start = end
        return base_lr * self.phases[-1][2]


def _accepted_arguments(cls: type) -> set[str]:
    names = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get('__init__')
        if init is None or klass is object:
            continue
        names |= {p.name for p in inspect.signature(init).parameters.values()
                  if p.name != 'self' and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names


def build_scheduler_hook(config: dict, base: type, key: str) -> ParamSchedulerHook:
    """mmcv 1.x's ``dict(policy='step', ...)`` -> ``StepLrUpdaterHook(...)`` (or ...MomentumUpdaterHook).

    A lower-case policy name is title-cased, as mmcv does; an unknown policy or argument is one
    ConfigError naming it."""
    if not isinstance(config, dict) or 'policy' not in config:
        raise ConfigError(f'{key} must be a dict with a "policy" key, e.g. dict(policy="step", step=[8, 11]); '
                          f'got {config!r}')
    cfg = dict(config)
    policy = cfg.pop('policy')
    suffix = base.__name__
    known = sorted(n[:-len(suffix)] for n, c in HOOKS.module_dict.items()
                   if n.endswith(suffix) and n != suffix and isinstance(c, type) and issubclass(c, base))
    name = (policy.title() if policy == policy.lower() else policy) if isinstance(policy, str) else policy
    cls = HOOKS.get(f'{name}{suffix}') if isinstance(name, str) else None
    if cls is None or not issubclass(cls, base):
        raise ConfigError(f'{key}.policy {policy!r} is not a known policy; known: {", ".join(known)}')
    accepted = _accepted_arguments(cls)
    unknown = [k for k in cfg if k not in accepted]
    if unknown:
        raise ConfigError(f'{key}: policy {policy!r} takes no argument {unknown[0]!r}; '
                          f'it takes: {", ".join(sorted(accepted))}')
    return cls(**cfg)


def build_lr_hook(lr_config: dict) -> LrUpdaterHook:
    """``lr_config = dict(policy='step', ...)`` -> ``StepLrUpdaterHook(...)``."""
    return build_scheduler_hook(lr_config, LrUpdaterHook, 'lr_config')
