"""TensorboardLoggerHook: the log records as TensorBoard scalars (mmcv 1.x's tags: ``train/loss``,
``learning_rate``, ``val/bbox_mAP``...), in ``work_dir/tf_logs`` by default. Needs ``tensorboard``."""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Optional

from mixprec.registry import HOOKS, ConfigError
from .logger import LoggerHook


@HOOKS.register_module()
class TensorboardLoggerHook(LoggerHook):
    """Writes an event file on rank 0; strings (``bbox_mAP_copypaste``) become text summaries."""

    def __init__(self, log_dir: Optional[str] = None, interval: int = 10, ignore_last: bool = True,
                 by_epoch: bool = True) -> None:
        super().__init__(interval, ignore_last, by_epoch)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError('TensorboardLoggerHook needs the tensorboard package: pip install tensorboard '
                              '(or pip install "mixprec[tensorboard]")') from None
        self._writer_cls = SummaryWriter
        self.log_dir = log_dir
        self.writer = None

    def before_run(self, runner) -> None:
        if runner.rank != 0:
            return
        self.log_dir = self.log_dir or os.path.join(runner.work_dir, 'tf_logs')
        self.writer = self._writer_cls(self.log_dir)

    def write(self, runner, record: OrderedDict) -> None:
        if self.writer is None:
            return
        step, tags = self.loggable_tags(runner, record)
        for tag, value in tags.items():
            if isinstance(value, str):
                self.writer.add_text(tag, value, step)
            else:
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def after_run(self, runner) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
