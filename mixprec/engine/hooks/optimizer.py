"""OptimizerHook: backward and optimizer step for fp32 training, with a non-finite loss guard."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch.nn.utils import clip_grad_norm_

from mixprec.registry import HOOKS
from .hook import Hook


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses for too many consecutive iterations."""


@HOOKS.register_module()
class OptimizerHook(Hook):
    """zero_grad -> backward -> (clip) -> step, once per iteration.

    A non-finite loss skips the step; ``max_nonfinite_iters`` consecutive ones stop the run with
    the names of the loss terms that were not finite.

    Args:
        grad_clip: ``dict(max_norm=..., norm_type=2)`` or None.
        max_nonfinite_iters: consecutive non-finite iterations tolerated before stopping.
    """

    priority = 40

    def __init__(self, grad_clip: Optional[dict] = None, max_nonfinite_iters: int = 5) -> None:
        self.grad_clip = grad_clip
        self.max_nonfinite_iters = max_nonfinite_iters
        self.nonfinite_streak = 0

    def after_train_iter(self, runner) -> None:
        loss = runner.outputs['loss']
        bad_terms = [k for k, v in runner.outputs['log_vars'].items() if not math.isfinite(v)]
        if bad_terms:
            self._skip(runner, bad_terms)
            return
        self.nonfinite_streak = 0
        runner.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            params = [p for g in runner.optimizer.param_groups for p in g['params'] if p.grad is not None]
            if params:
                grad_norm = clip_grad_norm_(params, **self.grad_clip)
                runner.log_buffer.update({'grad_norm': float(grad_norm)}, runner.outputs['num_samples'])
        runner.optimizer.step()

    def _skip(self, runner, bad_terms: list[str]) -> None:
        self.nonfinite_streak += 1
        runner.logger.warning('iter %d: non-finite loss terms %s; step skipped (%d in a row)',
                              runner.iter + 1, ', '.join(bad_terms), self.nonfinite_streak)
        if self.nonfinite_streak >= self.max_nonfinite_iters:
            raise NonFiniteLossError(
                f'{self.nonfinite_streak} consecutive iterations with non-finite losses '
                f'({", ".join(bad_terms)}) at iter {runner.iter + 1}: training diverged; '
                f'lower the lr, add optimizer_config.grad_clip, or check the data')
