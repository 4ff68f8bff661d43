"""CheckpointHook: save every ``interval`` epochs (or iterations), keep the last ``max_keep_ckpts``."""
from __future__ import annotations

import os
from typing import Optional

from mixprec.registry import HOOKS
from .hook import Hook


@HOOKS.register_module()
class CheckpointHook(Hook):
    """Writes ``epoch_N.pth`` (or ``iter_N.pth``) and ``latest.pth`` through ``runner.save_checkpoint``.

    Args:
        interval: save every ``interval`` epochs (``by_epoch``) or iterations.
        max_keep_ckpts: how many numbered checkpoints to keep (-1: all).
        save_optimizer: include the optimizer state (needed to resume).
        save_last: also save at the end of the run when it is not on the interval.
        out_dir: folder for the checkpoints (default: the work dir).
    """

    default_priority = 50

    def __init__(self, interval: int = 1, by_epoch: bool = True, save_optimizer: bool = True,
                 out_dir: Optional[str] = None, max_keep_ckpts: int = -1, save_last: bool = True) -> None:
        self.interval = interval
        self.by_epoch = by_epoch
        self.save_optimizer = save_optimizer
        self.out_dir = out_dir
        self.max_keep_ckpts = max_keep_ckpts
        self.save_last = save_last

    def before_run(self, runner) -> None:
        self.out_dir = self.out_dir or runner.work_dir

    def after_train_epoch(self, runner) -> None:
        last = runner.epoch + 1 == runner.max_epochs
        if self.by_epoch and (self.every_n_epochs(runner, self.interval) or (self.save_last and last)):
            self._save(runner, f'epoch_{runner.epoch + 1}.pth')

    def after_train_iter(self, runner) -> None:
        last = runner.iter + 1 == runner.max_iters
        if not self.by_epoch and (self.every_n_iters(runner, self.interval) or (self.save_last and last)):
            self._save(runner, f'iter_{runner.iter + 1}.pth')

    def _save(self, runner, filename: str) -> None:
        runner.save_checkpoint(self.out_dir, filename, save_optimizer=self.save_optimizer)
        if runner.rank == 0 and self.max_keep_ckpts > 0:
            self._remove_old(runner)

    def _remove_old(self, runner) -> None:
        prefix = 'epoch_' if self.by_epoch else 'iter_'
        current = runner.epoch + 1 if self.by_epoch else runner.iter + 1
        step = self.interval
        for index in range(current - self.max_keep_ckpts * step, 0, -step):
            path = os.path.join(self.out_dir, f'{prefix}{index}.pth')
            if not os.path.exists(path):
                break
            os.remove(path)
