"""``Fp16OptimizerHook``: the optimizer step of a mixed-precision run, driven by any runner.

Needs of the runner only ``model`` (maybe DDP), ``optimizer``, ``outputs['loss']``,
``log_buffer.update(dict, count)``, ``iter``, ``meta`` (dict or None) and optionally ``max_iters``
and ``logger``, so it works under this project's runner and mmcv-1.x-style runners alike.
"""
from __future__ import annotations

import logging
from typing import Optional, Union

import torch
import torch.distributed as dist

from mixprec.registry import HOOKS

from .ddp import is_ddp, rebuild_ddp, unwrap
from .flat import FlatGrads
from .loss_scaler import LossScaler, build_loss_scaler
from .master import MasterParams
from .utils import resolve_dtype
from .wrap import MODES, convs_to_channels_last, wrap_fp16_model

logger = logging.getLogger(__name__)

_MMCV_IGNORED = ('coalesce', 'bucket_size_mb')
_MAX_NAMED = 5


@HOOKS.register_module()
class Fp16OptimizerHook:
    """Mixed-precision optimizer hook (backward, loss scaling, overflow skip, clip, step).

    Args:
        grad_clip: ``dict(max_norm=..., norm_type=2)`` applied to the unscaled fp32 gradients.
        loss_scale: a number (static scale), 'dynamic', or a dict of :class:`LossScaler`
            arguments. None (default) means 'dynamic' for float16 and a static 1.0 for bfloat16:
            bf16 has fp32's exponent range, so scaling buys nothing, yet non-finite steps are still
            detected and skipped.
        dtype: 'float16' | 'bfloat16' | 'auto' (float16 on CUDA, bfloat16 on the CPU).
        mode: 'master' (half model, fp32 master weights owned by the optimizer) or 'autocast'
            (fp32 model, ``@auto_fp16`` regions under ``torch.autocast``).
        distributed: agree on the overflow flag across ranks (all_reduce MAX) when
            torch.distributed is initialised.
        cumulative_iters: accumulate gradients over this many iterations per optimizer step.
    """

    priority = 30

    def __init__(self, grad_clip: Optional[dict] = None,
                 loss_scale: Union[float, str, dict, None] = None,
                 dtype: Union[str, torch.dtype] = 'float16', mode: str = 'master',
                 distributed: bool = True, cumulative_iters: int = 1, **kwargs) -> None:
        if mode not in MODES:
            raise ValueError(f'Fp16OptimizerHook: mode must be one of {MODES}, got {mode!r}')
        if grad_clip is not None and 'max_norm' not in grad_clip:
            raise ValueError(f'Fp16OptimizerHook: grad_clip needs max_norm, got {grad_clip!r}')
        if int(cumulative_iters) < 1:
            raise ValueError(f'Fp16OptimizerHook: cumulative_iters must be >= 1, got {cumulative_iters}')
        unknown = [k for k in kwargs if k not in _MMCV_IGNORED]
        if unknown:
            logger.warning('Fp16OptimizerHook: ignoring unknown arguments %s', unknown)
        self.grad_clip = grad_clip
        self.mode = mode
        self.distributed = distributed
        self.cumulative_iters = int(cumulative_iters)
        self._dtype_arg = dtype
        self._loss_scale_arg = loss_scale
        self.dtype = resolve_dtype(dtype)
        self.loss_scaler: LossScaler = build_loss_scaler(loss_scale, self._default_loss_scale())
        self._masters: Optional[MasterParams] = None
        self._grads: Optional[FlatGrads] = None
        self._grad_tensors: list[torch.Tensor] = []
        self._names: list[str] = []
        self._found_inf: Optional[torch.Tensor] = None
        self._inv_scale: Optional[torch.Tensor] = None
        self._started = False

    def _default_loss_scale(self) -> Union[float, str]:
        return 1.0 if self.dtype is torch.bfloat16 else 'dynamic'

    def _log(self, runner) -> logging.Logger:
        return getattr(runner, 'logger', None) or logger

    # ------------------------------------------------------------------ setup
    def before_run(self, runner) -> None:
        """Convert the model, create the masters (master mode), rebuild DDP, restore the scaler."""
        if self._grads is not None:
            self._log(runner).warning('Fp16OptimizerHook: before_run called again; the model is '
                                      'already converted, nothing to do')
            return
        model, optimizer = runner.model, runner.optimizer
        module = unwrap(model)
        first = next(module.parameters(), None)
        device = first.device if first is not None else torch.device('cpu')
        if self._dtype_arg == 'auto':
            self.dtype = resolve_dtype('auto', device.type)
            if self._loss_scale_arg is None:
                self.loss_scaler = build_loss_scaler(None, self._default_loss_scale())
            self._log(runner).info("Fp16OptimizerHook: dtype='auto' -> %s (model on %s)",
                                   str(self.dtype).replace('torch.', ''), device.type)
        if self.mode == 'master':
            convs_to_channels_last(module)
            self._masters = MasterParams(module, optimizer)
            wrap_fp16_model(module, self.dtype, 'master')
            self._grads = FlatGrads(self._masters.model_params)
            total = self._masters.flat.numel() if self._masters.params else 0
            expected = [n for n in (self._masters.half_numel, total - self._masters.half_numel) if n]
            if [flat.numel() for flat in self._grads.flats] != expected:
                raise RuntimeError('Fp16OptimizerHook: model parameter dtypes after conversion do not '
                                   'match the master layout (half parameters, then fp32 norm ones)')
            self._grad_tensors = [self._masters.grad_flat] if self._masters.params else []
            self._names = self._masters.names
        else:
            wrap_fp16_model(module, self.dtype, 'autocast')
            names = {id(p): n for n, p in module.named_parameters()}
            params = [p for g in optimizer.param_groups for p in g['params'] if p.requires_grad]
            params.sort(key=lambda p: str(p.dtype))
            self._grads = FlatGrads(params)
            self._grad_tensors = self._grads.flats
            self._names = [names.get(id(p), '<not in model>') for p in params]
        if is_ddp(model) and (self.mode == 'master' or model.gradient_as_bucket_view):
            runner.model = rebuild_ddp(model)
        self._found_inf = torch.zeros(1, device=device)
        self._inv_scale = torch.ones(1, device=device)
        if getattr(runner, 'iter', 0) % self.cumulative_iters:
            self._log(runner).warning(
                'Fp16OptimizerHook: resuming at iter %d, inside an accumulation window of %d '
                'iterations: the first window is incomplete, its loss still divided by %d',
                runner.iter, self.cumulative_iters, self.cumulative_iters)
        meta = getattr(runner, 'meta', None)
        if isinstance(meta, dict) and 'loss_scaler' in (meta.get('fp16') or {}):
            self.loss_scaler.load_state_dict(meta['fp16']['loss_scaler'])
        self._log(runner).info('Fp16OptimizerHook: mode=%s dtype=%s %r', self.mode,
                               str(self.dtype).replace('torch.', ''), self.loss_scaler)

    # ------------------------------------------------------------------ accumulation windows
    def _window(self, it: int, max_iters: Optional[int]) -> tuple[int, bool, bool]:
        """(loss divisor, first iteration of the window, last iteration of the window) for ``it``.

        Windows start at multiples of ``cumulative_iters``; the run's last, incomplete window
        divides by its own length and steps at ``max_iters`` (as mmcv's
        GradientCumulativeOptimizerHook)."""
        n = self.cumulative_iters
        if n == 1:
            return 1, True, True
        divisor = n
        if max_iters:
            tail_start = max_iters // n * n
            if it >= tail_start:
                divisor = max_iters - tail_start
        last = (it + 1) % n == 0 or (bool(max_iters) and it + 1 >= max_iters)
        return divisor, it % n == 0, last

    def before_train_iter(self, runner) -> None:
        """Under DDP, all-reduce gradients only on the window's last iteration (``no_sync``)."""
        if self.cumulative_iters > 1 and is_ddp(runner.model):
            _, _, last = self._window(runner.iter, getattr(runner, 'max_iters', None))
            runner.model.require_backward_grad_sync = last

    # ------------------------------------------------------------------ the step
    def after_train_iter(self, runner) -> None:
        """Backward of the scaled loss; at the window's end check, unscale, clip, step, copy back."""
        if self._grads is None:
            raise RuntimeError('Fp16OptimizerHook: after_train_iter called before before_run')
        divisor, first, last = self._window(runner.iter, getattr(runner, 'max_iters', None))
        self._grads.ensure_attached()
        if first or not self._started:
            self._grads.zero_()
            self._started = True
        scale = self.loss_scaler.loss_scale
        loss = runner.outputs['loss'].float()
        (loss * (scale / divisor)).backward()
        log_vars = {}
        if last:
            if is_ddp(runner.model):
                runner.model.require_backward_grad_sync = True
            log_vars = self._step(runner, scale)
        log_vars['loss_scale'] = float(self.loss_scaler.loss_scale)
        log_vars['skipped_steps'] = self.loss_scaler.skipped_steps
        runner.log_buffer.update(log_vars, runner.outputs.get('num_samples', 1))
        self._update_meta(runner)

    def _step(self, runner, scale: float) -> dict:
        if self._masters is not None:
            self._masters.ensure_grads_attached()
            self._masters.copy_grads_from(self._grads.flats)
        norm = self._unscale_and_check(scale)
        overflow = self._agree_on_overflow()
        log_vars = {}
        if overflow:
            self._warn_overflow(runner, scale, norm)
        else:
            if self.grad_clip is not None:
                log_vars['grad_norm'] = self._clip(norm)
            runner.optimizer.step()
            if self._masters is not None:
                self._masters.copy_to_model()
        self.loss_scaler.update(overflow)
        return log_vars

    def _norm_type(self) -> float:
        return float(self.grad_clip.get('norm_type', 2)) if self.grad_clip is not None else 2.

    def _total_norm(self) -> torch.Tensor:
        """Norm of all fp32 grads together (one kernel per flat buffer); inf/NaN if any is."""
        grads, norm_type = self._grad_tensors, self._norm_type()
        if len(grads) == 1:
            return torch.linalg.vector_norm(grads[0], norm_type)
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, norm_type)), norm_type)

    def _unscale_and_check(self, scale: float) -> Optional[torch.Tensor]:
        """Unscale the fp32 grads and set the local overflow flag, in one pass over them.

        scale != 1: the fused amp kernel multiplies by 1/scale and flags inf/NaN. scale == 1
        (bf16's default): nothing to multiply, so a read-only norm pass flags them instead (a
        norm that overflows fp32, i.e. gradients beyond ~1e19, counts as an overflow too) and its
        value is returned for clipping."""
        found_inf = self._found_inf.zero_()
        if not self._grad_tensors:
            return None
        if scale == 1.0:
            norm = self._total_norm()
            found_inf.copy_(~torch.isfinite(norm))
            return norm
        torch._amp_foreach_non_finite_check_and_unscale_(
            self._grad_tensors, found_inf, self._inv_scale.fill_(1.0 / scale))
        return None

    def _agree_on_overflow(self) -> bool:
        """The overflow flag, all_reduce(MAX)-ed across ranks when running distributed."""
        found_inf = self._found_inf
        if self.distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(found_inf, op=dist.ReduceOp.MAX)
        return bool(found_inf.item())

    def _clip(self, norm: Optional[torch.Tensor]) -> float:
        """Clip the unscaled fp32 grads to ``max_norm`` as ``clip_grad_norm_`` does (same
        coefficient arithmetic); the multiply is skipped when it would be by 1. Returns the norm."""
        if not self._grad_tensors:
            return 0.0
        total = self._total_norm() if norm is None else norm
        coef = float(self.grad_clip['max_norm']) / (total + 1e-6)
        if float(coef) < 1.0:
            torch._foreach_mul_(self._grad_tensors, coef)
        return float(total)

    def _warn_overflow(self, runner, scale: float, norm: Optional[torch.Tensor]) -> None:
        """One warning line naming the first parameters whose grads are inf or NaN."""
        views = self._masters.grad_views if self._masters is not None else self._grads.views
        bad = []
        for name, grad in zip(self._names, views):
            if len(bad) > _MAX_NAMED:
                break
            if not bool(torch.isfinite(grad).all()):
                has_nan, has_inf = bool(torch.isnan(grad).any()), bool(torch.isinf(grad).any())
                bad.append(f"{name} ({'+'.join(k for k, f in (('inf', has_inf), ('nan', has_nan)) if f)})")
        where = ', '.join(bad[:_MAX_NAMED]) + (', ...' if len(bad) > _MAX_NAMED else '')
        if not bad:
            local = norm is not None and not bool(torch.isfinite(norm))
            where = ('none, but their norm overflows fp32' if local
                     else 'none on this rank (another rank overflowed)')
        self._log(runner).warning(
            'Fp16OptimizerHook: gradient overflow at iter %d with loss_scale %g, step skipped '
            '(%d skipped so far); non-finite grads: %s', runner.iter + 1, scale,
            self.loss_scaler.skipped_steps + 1, where)

    # ------------------------------------------------------------------ state
    def _fp16_meta(self) -> dict:
        return {'loss_scaler': self.loss_scaler.state_dict(),
                'dtype': str(self.dtype).replace('torch.', ''), 'mode': self.mode}

    def _update_meta(self, runner) -> None:
        if getattr(runner, 'meta', None) is None:
            runner.meta = {}
        runner.meta['fp16'] = self._fp16_meta()

    def state_dict(self) -> dict:
        return self._fp16_meta()

    def load_state_dict(self, state: dict) -> None:
        if 'loss_scaler' in state:
            self.loss_scaler.load_state_dict(state['loss_scaler'])

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Master mode: fp32 masters (and fp32 buffers) as ``state_dict``; always: scaler in meta."""
        if self._masters is not None and 'state_dict' in checkpoint:
            fp32 = self._masters.fp32_state_dict(unwrap(runner.model))
            state = checkpoint['state_dict']
            prefixed = any(k.startswith('module.') for k in state)
            for key, value in fp32.items():
                state['module.' + key if prefixed else key] = value
        checkpoint.setdefault('meta', {})
        if checkpoint['meta'] is None:
            checkpoint['meta'] = {}
        checkpoint['meta']['fp16'] = self._fp16_meta()
        self._update_meta(runner)

    # ------------------------------------------------------------------ no-op hook points
    def after_run(self, runner) -> None:
        pass

    def before_epoch(self, runner) -> None:
        pass

    def after_epoch(self, runner) -> None:
        pass

    def before_iter(self, runner) -> None:
        pass

    def after_iter(self, runner) -> None:
        pass

    def before_train_epoch(self, runner) -> None:
        pass

    def after_train_epoch(self, runner) -> None:
        pass

    def before_val_epoch(self, runner) -> None:
        pass

    def after_val_epoch(self, runner) -> None:
        pass

    def before_val_iter(self, runner) -> None:
        pass

    def after_val_iter(self, runner) -> None:
        pass
