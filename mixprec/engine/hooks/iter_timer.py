"""IterTimerHook: data loading and whole-iteration times into the log buffer."""
from __future__ import annotations

import time

from mixprec.registry import HOOKS
from .hook import Hook


@HOOKS.register_module()
class IterTimerHook(Hook):
    default_priority = 80

    def before_train_epoch(self, runner) -> None:
        self._t = time.perf_counter()

    def before_train_iter(self, runner) -> None:
        runner.log_buffer.update({'data_time': time.perf_counter() - self._t})

    def after_train_iter(self, runner) -> None:
        runner.log_buffer.update({'time': time.perf_counter() - self._t})
        self._t = time.perf_counter()
