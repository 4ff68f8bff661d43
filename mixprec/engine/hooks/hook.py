"""The training hooks' base class and priorities; the stages themselves are declared on ``HookBase``."""
from __future__ import annotations

from mixprec.fp16.hook_base import HookBase
from mixprec.registry import ConfigError

PRIORITIES = {
    'HIGHEST': 0, 'VERY_HIGH': 10, 'HIGH': 30, 'ABOVE_NORMAL': 40, 'NORMAL': 50,
    'BELOW_NORMAL': 60, 'LOW': 70, 'VERY_LOW': 90, 'LOWEST': 100,
}


def get_priority(priority: int | str) -> int:
    if isinstance(priority, int):
        return priority
    if priority not in PRIORITIES:
        raise ConfigError(f'hook priority must be an int or one of {", ".join(PRIORITIES)}, got {priority!r}')
    return PRIORITIES[priority]


class Hook(HookBase):
    """Base class of the training hooks: the stages of :class:`~mixprec.fp16.hook_base.HookBase`
    (every one a no-op; a hook overrides those it needs), a default priority and schedule helpers.

    ``default_priority`` is where :meth:`Runner.register_hook` puts the hook when no priority is
    given. It is not called ``priority``: registration sets that attribute on the instance, and
    mmcv 1.x's runners refuse a hook that already has it. Where the installed mmcv is 1.x this class
    derives from mmcv's ``Hook`` (see :mod:`mixprec.fp16.hook_base`), so those runners accept it.
    """

    default_priority: int = PRIORITIES['NORMAL']

    @staticmethod
    def every_n_iters(runner, n: int) -> bool:
        return n > 0 and (runner.iter + 1) % n == 0

    @staticmethod
    def every_n_inner_iters(runner, n: int) -> bool:
        return n > 0 and (runner.inner_iter + 1) % n == 0

    @staticmethod
    def every_n_epochs(runner, n: int) -> bool:
        return n > 0 and (runner.epoch + 1) % n == 0

    @staticmethod
    def end_of_epoch(runner) -> bool:
        return runner.inner_iter + 1 == len(runner.data_loader)
