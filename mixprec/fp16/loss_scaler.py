"""``LossScaler``: static or dynamic loss scale with hysteresis, clamps and a collapse error."""
from __future__ import annotations

from typing import Optional, Union

from mixprec.registry import ConfigError

_STATE_KEYS = ('mode', 'loss_scale', 'growth_factor', 'backoff_factor', 'growth_interval',
               'hysteresis', 'min_scale', 'max_scale', 'growth_tracker', 'hysteresis_left',
               'skipped_steps')


class LossScaleCollapseError(RuntimeError):
    """The dynamic loss scale would fall below ``min_scale``: gradients overflow at any scale."""


class SkippedStepsError(LossScaleCollapseError):
    """Too many consecutive skipped steps (any scale, static included): the run has diverged.

    A subclass of :class:`LossScaleCollapseError`, so what stops a run on a collapsed scale
    (``tools/train.py``: one line, exit code 1) stops it on this too."""


class LossScaler:
    """Keeps the loss scale and decides it from the overflow history.

    dynamic: after ``hysteresis`` consecutive overflowing steps the scale is multiplied by
    ``backoff_factor``; after exactly ``growth_interval`` consecutive clean steps by
    ``growth_factor``. The scale is clamped to [min_scale, max_scale]; an overflow at
    ``min_scale`` raises :class:`LossScaleCollapseError` (as DeepSpeed: a backoff that would cross
    the floor first lands on it, the next one raises).
    static: the scale stays ``init_scale``; overflowing steps are still detected, skipped and
    counted (mmcv's static mode applied them).

    mmcv's legacy names are accepted: ``scale_factor`` sets growth_factor and backoff_factor
    (1 / scale_factor), ``scale_window`` sets growth_interval.
    """

    def __init__(self, init_scale: float = 2.**16, mode: str = 'dynamic',
                 growth_factor: float = 2., backoff_factor: float = .5,
                 growth_interval: int = 1000, hysteresis: int = 1, min_scale: float = 1.,
                 max_scale: float = 2.**24, scale_factor: Optional[float] = None,
                 scale_window: Optional[int] = None) -> None:
        if mode not in ('dynamic', 'static'):
            raise ConfigError(f"LossScaler mode must be 'dynamic' or 'static', got {mode!r}")
        if scale_factor is not None:
            growth_factor, backoff_factor = float(scale_factor), 1. / float(scale_factor)
        if scale_window is not None:
            growth_interval = scale_window
        if init_scale <= 0 or growth_factor < 1 or not 0 < backoff_factor < 1:
            raise ConfigError('LossScaler needs init_scale > 0, growth_factor >= 1 and '
                             f'0 < backoff_factor < 1, got {init_scale}, {growth_factor}, {backoff_factor}')
        if growth_interval < 1 or hysteresis < 1 or not 0 < min_scale <= max_scale:
            raise ConfigError('LossScaler needs growth_interval >= 1, hysteresis >= 1 and '
                             f'0 < min_scale <= max_scale, got {growth_interval}, {hysteresis}, '
                             f'{min_scale}, {max_scale}')
        self.mode = mode
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.hysteresis = int(hysteresis)
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        init_scale = float(init_scale)
        self.loss_scale = init_scale if mode == 'static' else min(max(init_scale, min_scale), max_scale)
        self.growth_tracker = 0
        self.hysteresis_left = self.hysteresis
        self.skipped_steps = 0

    @property
    def dynamic(self) -> bool:
        return self.mode == 'dynamic'

    @property
    def cur_scale(self) -> float:
        """mmcv's name for :attr:`loss_scale`."""
        return self.loss_scale

    def update(self, overflow: bool) -> None:
        """Record one optimizer step (skipped when ``overflow``) and adjust the scale."""
        if overflow:
            self.skipped_steps += 1
        if not self.dynamic:
            return
        if not overflow:
            self.hysteresis_left = self.hysteresis
            self.growth_tracker += 1
            if self.growth_tracker >= self.growth_interval:
                self.loss_scale = min(self.loss_scale * self.growth_factor, self.max_scale)
                self.growth_tracker = 0
            return
        self.growth_tracker = 0
        self.hysteresis_left -= 1
        if self.hysteresis_left > 0:
            return
        self.hysteresis_left = self.hysteresis
        new_scale = self.loss_scale * self.backoff_factor
        if new_scale < self.min_scale:
            if self.loss_scale <= self.min_scale:
                raise LossScaleCollapseError(
                    f'loss scale would fall below min_scale={self.min_scale:g}: gradients are inf/NaN '
                    f'even at the smallest scale ({self.skipped_steps} steps skipped), so the run has '
                    'diverged. Try dtype="bfloat16" (no loss scaling needed), gradient clipping '
                    '(grad_clip=dict(max_norm=35, norm_type=2)), a lower learning rate or a longer '
                    'warmup, and resume from a checkpoint saved before the divergence.')
            new_scale = self.min_scale
        self.loss_scale = new_scale

    def update_scale(self, overflow: bool) -> None:
        """mmcv's name for :meth:`update`."""
        self.update(overflow)

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in _STATE_KEYS}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`; mmcv's keys (cur_scale, scale_factor, scale_window,
        cur_iter, last_overflow_iter) are understood too."""
        legacy = {'cur_scale': 'loss_scale', 'scale_window': 'growth_interval'}
        for key, value in state.items():
            key = legacy.get(key, key)
            if key in _STATE_KEYS:
                setattr(self, key, value)
        if 'scale_factor' in state and 'growth_factor' not in state:
            self.growth_factor = float(state['scale_factor'])
            self.backoff_factor = 1. / self.growth_factor
        self.loss_scale = float(self.loss_scale)

    def __repr__(self) -> str:
        return (f'LossScaler(mode={self.mode!r}, loss_scale={self.loss_scale:g}, '
                f'growth_interval={self.growth_interval}, hysteresis={self.hysteresis})')


def build_loss_scaler(loss_scale: Union[float, str, dict, None], default: Union[float, str]) -> LossScaler:
    """A LossScaler from the hook's ``loss_scale`` argument: a number (static), 'dynamic' or a dict
    of LossScaler arguments; None means ``default``."""
    if loss_scale is None:
        loss_scale = default
    if isinstance(loss_scale, LossScaler):
        return loss_scale
    if loss_scale == 'dynamic':
        return LossScaler(mode='dynamic')
    if isinstance(loss_scale, dict):
        return LossScaler(**loss_scale)
    if isinstance(loss_scale, (int, float)) and not isinstance(loss_scale, bool):
        return LossScaler(init_scale=float(loss_scale), mode='static')
    raise ConfigError(f"loss_scale must be a number, 'dynamic' or a dict of LossScaler arguments, "
                     f'got {loss_scale!r}')
