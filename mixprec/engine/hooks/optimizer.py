"""OptimizerHook and GradientCumulativeOptimizerHook: backward and optimizer step for fp32 training."""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch
from torch import nn
from torch.nn.utils import clip_grad_norm_

from mixprec.fp16.accumulation import window
from mixprec.fp16.norm_stats import has_batch_norm
from mixprec.registry import HOOKS, ConfigError
from .hook import Hook


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses for too many consecutive iterations."""


def params_outside_graph(loss: torch.Tensor, model: nn.Module) -> list[tuple[str, torch.Size]]:
    """(name, shape) of the parameters of ``model`` that require grad but that ``loss`` does not
    depend on (unused in the forward pass, or used only for outputs that are not in the loss)."""
    in_graph, seen, stack = set(), set(), [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        variable = getattr(fn, 'variable', None)
        if variable is not None:
            in_graph.add(id(variable))
        stack.extend(parent for parent, _ in fn.next_functions)
    return [(n, p.shape) for n, p in model.named_parameters() if p.requires_grad and id(p) not in in_graph]


def nonfinite_terms(outputs: dict) -> list[str]:
    """Names of the non-finite loss terms in ``outputs['log_vars']``; without log_vars (an mmcv 1.x
    ``train_step`` may return only ``loss`` and ``num_samples``), ['loss'] when the loss itself is."""
    log_vars = outputs.get('log_vars')
    if log_vars is None:
        return [] if bool(torch.isfinite(outputs['loss'].detach()).all()) else ['loss']
    return [k for k, v in log_vars.items() if not math.isfinite(v)]


@HOOKS.register_module()
class OptimizerHook(Hook):
    """zero_grad -> backward -> (clip) -> step, once per iteration.

    A non-finite loss skips the step; ``max_nonfinite_iters`` consecutive ones stop the run with
    the names of the loss terms that were not finite.

    Args:
        grad_clip: ``dict(max_norm=..., norm_type=2)`` or None.
        detect_anomalous_params: before each backward, log (level ERROR) every parameter that
            requires grad but is not in the loss's graph, one line each (mmcv 1.x's debugging
            option; it walks the whole autograd graph, so it slows training).
        max_nonfinite_iters: consecutive non-finite iterations tolerated before stopping.
    """

    default_priority = 40

    def __init__(self, grad_clip: Optional[dict] = None, detect_anomalous_params: bool = False,
                 max_nonfinite_iters: int = 5) -> None:
        self.grad_clip = grad_clip
        self.detect_anomalous_params = detect_anomalous_params
        self.max_nonfinite_iters = max_nonfinite_iters
        self.nonfinite_streak = 0

    def before_train_iter(self, runner) -> None:
        """Release the previous step's gradients before the forward pass (torchvision's reference
        loop zeroes there too), so the activations never share memory with a full set of gradients
        (164 MB for an fp32 R-50 Faster R-CNN); every after_train_iter hook has still seen them."""
        runner.optimizer.zero_grad(set_to_none=True)

    def after_train_iter(self, runner) -> None:
        loss = runner.outputs['loss']
        bad_terms = nonfinite_terms(runner.outputs)
        if bad_terms:
            self._skip(runner, bad_terms)
            return
        self.nonfinite_streak = 0
        runner.optimizer.zero_grad(set_to_none=True)
        self._backward(runner, loss)
        self._step(runner)

    def _backward(self, runner, loss: torch.Tensor) -> None:
        if self.detect_anomalous_params:
            for name, shape in params_outside_graph(loss, runner.model):
                runner.logger.log(level=logging.ERROR,
                                  msg=f'{name} with shape {tuple(shape)} is not in the computational graph')
        loss.backward()

    def _step(self, runner) -> None:
        """Clip (when configured, logging ``grad_norm``) and step the optimizer."""
        if self.grad_clip is not None:
            params = [p for g in runner.optimizer.param_groups for p in g['params'] if p.grad is not None]
            if params:
                grad_norm = clip_grad_norm_(params, **self.grad_clip)
                runner.log_buffer.update({'grad_norm': float(grad_norm)}, runner.outputs.get('num_samples', 1))
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


@HOOKS.register_module()
class GradientCumulativeOptimizerHook(OptimizerHook):
    """Accumulate gradients over ``cumulative_iters`` iterations per optimizer step (mmcv 1.x).

    Windows start at multiples of ``cumulative_iters``; each loss is divided by the window's length,
    so a window's step equals one step over the windows' batches concatenated (up to rounding, and
    to batch statistics of BatchNorm layers in train mode). The run's last, incomplete window
    divides by its own length and steps at ``max_iters``. Under DDP the gradients are all-reduced
    only on a window's last backward. A non-finite loss skips its window's step (every rank sees the
    same averaged loss, so they all skip).

    Args:
        cumulative_iters: iterations per optimizer step.
        grad_clip, detect_anomalous_params, max_nonfinite_iters: as :class:`OptimizerHook`.
    """

    def __init__(self, cumulative_iters: int = 1, **kwargs) -> None:
        if isinstance(cumulative_iters, bool) or not isinstance(cumulative_iters, int) or cumulative_iters < 1:
            raise ConfigError(f'optimizer_config.cumulative_iters must be a positive int, got {cumulative_iters!r}')
        super().__init__(**kwargs)
        self.cumulative_iters = cumulative_iters
        self._window_ok = True

    def before_run(self, runner) -> None:
        if runner.iter % self.cumulative_iters:
            runner.logger.warning('GradientCumulativeOptimizerHook: resuming at iter %d, inside a window of %d '
                                  'iterations: that first window steps with fewer gradients', runner.iter,
                                  self.cumulative_iters)
        if self.cumulative_iters > 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                                             for m in runner.model.modules()):
            runner.logger.warning('GradientCumulativeOptimizerHook: the model has BatchNorm layers; their '
                                  'batch statistics still see one iteration\'s batch, not the window')

    @staticmethod
    def has_batch_norm(module: nn.Module) -> bool:
        """Whether ``module`` holds a BatchNorm layer (mmcv 1.x's method; the warning in
        :meth:`before_run` counts only those in training mode)."""
        return has_batch_norm(module)

    def _window(self, runner) -> tuple[int, bool, bool]:
        """(loss divisor, first, last iteration of the window) of the runner's iteration
        (:func:`mixprec.fp16.accumulation.window`)."""
        return window(runner.iter, self.cumulative_iters, getattr(runner, 'max_iters', None))

    def before_train_iter(self, runner) -> None:
        """At a window's start, release the gradients (see :class:`OptimizerHook`); under DDP, reduce
        them only on the window's last backward."""
        _, first, last = self._window(runner)
        if first:
            runner.optimizer.zero_grad(set_to_none=True)
        if isinstance(runner.model, nn.parallel.DistributedDataParallel):
            runner.model.require_backward_grad_sync = last

    def after_train_iter(self, runner) -> None:
        divisor, first, last = self._window(runner)
        if first:
            runner.optimizer.zero_grad(set_to_none=True)
            self._window_ok = True
        bad_terms = nonfinite_terms(runner.outputs)
        if bad_terms:
            self._window_ok = False
            self._skip(runner, bad_terms)
        else:
            self.nonfinite_streak = 0
            self._backward(runner, runner.outputs['loss'] / divisor)
        if last and self._window_ok:
            self._step(runner)
