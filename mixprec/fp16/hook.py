"""``Fp16OptimizerHook``: the optimizer step of a mixed-precision run, driven by any runner.

Needs of the runner only ``model`` (maybe DDP), ``optimizer``, ``outputs['loss']``,
``log_buffer.update(dict, count)``, ``iter``, ``meta`` (dict or None) and optionally ``max_iters``
and ``logger``, so it works under this project's runner and mmcv-1.x-style runners alike; where
mmcv 1.x is installed it is an ``mmcv.runner.Hook`` (see :mod:`.hook_base`), so mmcv 1.x's own
runners register it.
"""
from __future__ import annotations

import difflib
import inspect
import logging
import math
from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist

from mixprec.registry import HOOKS, ConfigError

from .accumulation import window
from .ddp import is_ddp, rebuild_ddp, unwrap
from .flat import FlatGrads, check_params
from .hook_base import HookBase
from .loss_scaler import LossScaler, SkippedStepsError, build_loss_scaler
from .master import MasterParams
from .norm_stats import RunningStatsGuard, has_batch_norm
from .precision import choose_dtype, dtype_name, slow_dtype_reason
from .utils import resolve_dtype
from .wrap import MODES, convs_to_channels_last, fp32_param_ids, fp32_roots, wrap_fp16_model

logger = logging.getLogger(__name__)

_MAX_NAMED = 5


@HOOKS.register_module()
class Fp16OptimizerHook(HookBase):
    """Mixed-precision optimizer hook (backward, loss scaling, overflow skip, clip, step).

    The first five arguments are mmcv 1.x's, in its order, so mmcv-style calls (positional ones
    included) work unchanged.

    Args:
        grad_clip: ``dict(max_norm=..., norm_type=2)`` applied to the unscaled fp32 gradients.
        coalesce, bucket_size_mb: mmcv 1.x arguments, accepted and without effect.
        loss_scale: a number (static scale), 'dynamic', or a dict of :class:`LossScaler`
            arguments. None (default) means a static 512 for float16, mmcv 1.x's default and the
            scale of every mmdetection v2 fp16 config (so such code gets the scale it had; a static
            scale steps from the first iteration, where a dynamic one starts by skipping steps
            until its scale fits), and a static 1.0 for bfloat16: bf16 has fp32's exponent range,
            so scaling buys nothing. Overflowing steps are detected and skipped at any scale.
        dtype: 'float16' | 'bfloat16' | 'auto': at ``before_run``, the precision that is fast and
            safe on the model's device (:func:`mixprec.fp16.precision.choose_dtype`): bfloat16 on
            CUDA 8.0+ and on CPUs with native bf16, float16 on CUDA 7.x, and elsewhere none: then
            the hook *declines* mixed precision and runs the plain fp32 step (no model conversion,
            no master copies, no loss scaling), saying so in the log and in the checkpoints'
            ``meta['fp16']``. An explicit dtype is honoured, with a warning where the device has no
            fast path for it.
        mode: 'master' (half model, fp32 master weights owned by the optimizer) or 'autocast'
            (fp32 model, ``@auto_fp16`` regions under ``torch.autocast``).
        distributed: agree on the overflow flag across ranks (all_reduce MAX) when
            torch.distributed is initialised.
        cumulative_iters: accumulate gradients over this many iterations per optimizer step.
        max_skipped_steps: this many consecutive skipped steps stop the run with
            :class:`SkippedStepsError` (a static scale, bf16's default, never backs off, so a loss
            that is non-finite every iteration would otherwise be skipped forever).
        fp32_modules: names of submodules run entirely in fp32 (see :func:`wrap_fp16_model`).

    The update equals the fp32 ``OptimizerHook``'s up to rounding, whatever the training code does
    between steps: parameters that got no gradient in a window are handed to the optimizer with
    ``.grad = None`` (no weight decay, momentum or Adam step, as after fp32's
    ``zero_grad(set_to_none=True)``); gradients that were set to None or replaced are taken back
    into the flat buffers at the next backward; a skipped step restores the running statistics of
    the norm layers in training mode, so it leaves no trace.

    Writing parameter values after ``before_run`` (master mode): ``model.load_state_dict`` and
    ``mixprec.checkpoint.load_checkpoint`` (on the model or a submodule) update the masters with the
    exact fp32 values; any in-place write to a parameter (``p.copy_(v)``, ``p.mul_(m)`` under
    ``torch.no_grad()``, as EMA hooks that swap weights for evaluation do) is taken into its master
    at the next step and at every checkpoint. Writes through ``p.data`` are invisible to PyTorch's
    version counters: they reach the checkpoints (compared by value there) but not the next step
    unless the code calls :meth:`sync_masters`. Frozen parameters keep exact fp32 copies for the
    checkpoints, which follow such writes the same way.
    """

    default_priority = 30

    def __init__(self, grad_clip: Optional[dict] = None, coalesce: bool = True, bucket_size_mb: int = -1,
                 loss_scale: Union[float, str, dict, None] = None, distributed: bool = True,
                 dtype: Union[str, torch.dtype] = 'float16', mode: str = 'master',
                 cumulative_iters: int = 1, max_skipped_steps: int = 100,
                 fp32_modules: Optional[Sequence[str]] = None, **kwargs) -> None:
        if kwargs:
            name = next(iter(kwargs))
            valid = [n for n in inspect.signature(Fp16OptimizerHook.__init__).parameters
                     if n not in ('self', 'kwargs')]
            close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
            raise ConfigError(f'{type(self).__name__}: unknown argument {name!r}'
                              + (f'; did you mean {", ".join(close)}?' if close else '')
                              + f' (valid: {", ".join(valid)})')
        if int(max_skipped_steps) < 1:
            raise ConfigError(f'Fp16OptimizerHook: max_skipped_steps must be >= 1, got {max_skipped_steps}')
        if fp32_modules is not None and (isinstance(fp32_modules, str) or
                                         not all(isinstance(n, str) for n in fp32_modules)):
            raise ConfigError(f'Fp16OptimizerHook: fp32_modules must be a list of module names, got '
                              f'{fp32_modules!r}')
        if mode not in MODES:
            raise ConfigError(f'Fp16OptimizerHook: mode must be one of {MODES}, got {mode!r}')
        if grad_clip is not None and 'max_norm' not in grad_clip:
            raise ConfigError(f'Fp16OptimizerHook: grad_clip needs max_norm, got {grad_clip!r}')
        if int(cumulative_iters) < 1:
            raise ConfigError(f'Fp16OptimizerHook: cumulative_iters must be >= 1, got {cumulative_iters}')
        self.grad_clip = grad_clip
        self.mode = mode
        self.distributed = distributed
        self.cumulative_iters = int(cumulative_iters)
        self.max_skipped_steps = int(max_skipped_steps)
        self.fp32_modules = list(fp32_modules or [])
        self._skip_streak = 0
        self._bad_terms: list[str] = []
        self._stats: Optional[RunningStatsGuard] = None
        self._dtype_arg = dtype
        self._loss_scale_arg = loss_scale
        # 'auto' is decided on the model's device in before_run; None until then
        self.dtype: Optional[torch.dtype] = None if dtype == 'auto' else resolve_dtype(dtype)
        self.declined: Optional[str] = None
        self.loss_scaler: LossScaler = build_loss_scaler(loss_scale, self._default_loss_scale())
        self._masters: Optional[MasterParams] = None
        self._grads: Optional[FlatGrads] = None
        self._grad_tensors: list[torch.Tensor] = []
        self._names: list[str] = []
        self._found_inf: Optional[torch.Tensor] = None
        self._inv_scale: Optional[torch.Tensor] = None
        self._started = False

    def _default_loss_scale(self) -> float:
        return 1.0 if self.dtype is torch.bfloat16 else 512.

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
        self._choose_dtype(runner, device)
        fp32_roots(module, self.fp32_modules)  # a misspelt name fails before anything changes
        check_params(list(module.named_parameters()))
        if self.mode == 'master' and self.declined is None:
            convs_to_channels_last(module)
            self._masters = MasterParams(module, optimizer, fp32_param_ids(module, self.fp32_modules))
            wrap_fp16_model(module, self.dtype, 'master', self.fp32_modules)
            self._masters.record_versions()
            self._grads = FlatGrads(self._masters.model_params)
            total = self._masters.flat.numel() if self._masters.params else 0
            expected = [n for n in (self._masters.half_numel, total - self._masters.half_numel) if n]
            if [flat.numel() for flat in self._grads.flats] != expected:
                raise RuntimeError('Fp16OptimizerHook: model parameter dtypes after conversion do not '
                                   'match the master layout (half parameters, then fp32 ones)')
            self._grad_tensors = [self._masters.grad_flat] if self._masters.params else []
            self._names = self._masters.names
        else:
            if self.declined is None:
                wrap_fp16_model(module, self.dtype, 'autocast', self.fp32_modules)
            names = {id(p): n for n, p in module.named_parameters()}
            params = [p for g in optimizer.param_groups for p in g['params'] if p.requires_grad]
            params.sort(key=lambda p: str(p.dtype))
            self._grads = FlatGrads(params)
            self._grad_tensors = self._grads.flats
            self._names = [names.get(id(p), '<not in model>') for p in params]
        self._stats = RunningStatsGuard(module)
        if is_ddp(model) and ((self.mode == 'master' and self.declined is None) or model.gradient_as_bucket_view):
            runner.model = rebuild_ddp(model)
        self._found_inf = torch.zeros(1, device=device)
        self._inv_scale = torch.ones(1, device=device)
        if getattr(runner, 'iter', 0) % self.cumulative_iters:
            self._log(runner).warning(
                'Fp16OptimizerHook: resuming at iter %d, inside an accumulation window of %d '
                'iterations: the first window is incomplete, its loss still divided by %d',
                runner.iter, self.cumulative_iters, self.cumulative_iters)
        meta = getattr(runner, 'meta', None)
        if isinstance(meta, dict) and 'loss_scaler' in (meta.get('fp16') or {}) and self.declined is None:
            self.loss_scaler.load_state_dict(meta['fp16']['loss_scaler'])
        if self.declined is None:
            self._log(runner).info('Fp16OptimizerHook: mode=%s dtype=%s %r', self.mode,
                                   dtype_name(self.dtype), self.loss_scaler)

    def _choose_dtype(self, runner, device: torch.device) -> None:
        """Settle ``dtype='auto'`` on ``device`` (or decline mixed precision there), or warn when an
        explicit dtype has no fast path on it."""
        log = self._log(runner)
        if self._dtype_arg != 'auto':
            slow = slow_dtype_reason(self.dtype, device)
            if slow:
                log.warning('Fp16OptimizerHook: dtype=%s on %s as configured, but %s',
                            dtype_name(self.dtype), device.type, slow)
            return
        choice = choose_dtype(device)
        self.dtype = choice.dtype
        if choice.mixed:
            log.info("Fp16OptimizerHook: dtype='auto' -> %s on %s: %s", dtype_name(self.dtype),
                     device.type, choice.reason)
            if self._loss_scale_arg is None:
                self.loss_scaler = build_loss_scaler(None, self._default_loss_scale())
            return
        self.declined = choice.reason
        self.loss_scaler = build_loss_scaler(1.0, 1.0)
        log.warning("Fp16OptimizerHook: dtype='auto' -> float32 on %s: mixed precision declined (%s); "
                    'training with the plain fp32 step (no master weights, no loss scaling)',
                    device.type, choice.reason)

    # ------------------------------------------------------------------ accumulation windows
    def _window(self, runner) -> tuple[int, bool, bool]:
        """(loss divisor, first, last iteration of the window) of the runner's iteration
        (:func:`mixprec.fp16.accumulation.window`)."""
        return window(runner.iter, self.cumulative_iters, getattr(runner, 'max_iters', None))

    def before_train_iter(self, runner) -> None:
        """At a window's start, save the norm layers' running statistics (restored if the step is
        skipped); under DDP, all-reduce gradients only on the window's last iteration."""
        _, first, last = self._window(runner)
        if first and self._stats is not None:
            self._stats.snapshot()
        if self.cumulative_iters > 1 and is_ddp(runner.model):
            runner.model.require_backward_grad_sync = last

    def fp32_params(self) -> dict[int, torch.Tensor]:
        """Master mode: ``{id(model parameter): its fp32 master}``, the values the optimizer steps
        (and exact fp32 copies of frozen parameters); averages of the weights (EMA) read these rather
        than the half model. Empty in autocast mode, when mixed precision was declined, and before
        ``before_run``."""
        return self._masters.fp32_copies() if self._masters is not None else {}

    def fp32_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``model``'s state dict with the fp32 masters in place of its half parameters (what the
        checkpoints hold); the model's own state dict in autocast mode or when mixed precision was
        declined."""
        module = unwrap(model)
        if self._masters is not None:
            return self._masters.fp32_state_dict(module)
        return module.state_dict()

    def sync_masters(self, runner=None) -> None:
        """Master mode: take values written into the model's parameters (also through ``.data``)
        into the masters now. Not needed after ``load_state_dict`` or in-place writes without
        ``.data``; a no-op in autocast mode."""
        if self._masters is not None:
            self._masters.sync_from_model(compare_all=True)

    # ------------------------------------------------------------------ the step
    def after_train_iter(self, runner) -> None:
        """Backward of the scaled loss; at the window's end check, unscale, clip, step, copy back."""
        if self._grads is None:
            raise RuntimeError('Fp16OptimizerHook: after_train_iter called before before_run')
        divisor, first, last = self._window(runner)
        if first or not self._started:
            self._grads.start_window()
            self._bad_terms = []
            self._started = True
        self._note_bad_terms(runner.outputs.get('log_vars'))
        scale = self.loss_scaler.loss_scale
        loss = runner.outputs['loss'].float()
        (loss * (scale / divisor)).backward()
        log_vars = {}
        if last:
            if is_ddp(runner.model):
                runner.model.require_backward_grad_sync = True
            log_vars = self._step(runner, scale, loss)
        log_vars['loss_scale'] = float(self.loss_scaler.loss_scale)
        log_vars['skipped_steps'] = self.loss_scaler.skipped_steps
        runner.log_buffer.update(log_vars, runner.outputs.get('num_samples', 1))
        self._update_meta(runner)

    def _note_bad_terms(self, log_vars: Optional[dict]) -> None:
        """Remember the loss terms of this window that were not finite (for the overflow warning)."""
        for key, value in (log_vars or {}).items():
            if 'loss' in key and key not in self._bad_terms:
                try:
                    finite = math.isfinite(float(value))
                except (TypeError, ValueError, RuntimeError):
                    continue
                if not finite:
                    self._bad_terms.append(key)

    def _step(self, runner, scale: float, loss: torch.Tensor) -> dict:
        grads, masters, ddp = self._grads, self._masters, is_ddp(runner.model)
        if ddp:
            grads.adopt_foreign()
        if masters is not None:
            masters.copy_grads_from(grads.flats)
        norm = self._unscale_and_check(scale)
        overflow = self._agree_on_overflow(ddp)
        untouched = [] if grads.all_touched() else grads.untouched()
        log_vars = {}
        if overflow:
            self._stats.restore()
            self._warn_overflow(runner, scale, norm, loss)
        else:
            if masters is not None:
                masters.sync_from_model()
                masters.attach_grads(untouched)
            else:
                grads.drop_untouched(untouched)
            if self.grad_clip is not None:
                log_vars['grad_norm'] = self._clip(norm)
            runner.optimizer.step()
            if masters is not None:
                masters.copy_to_model()
        self.loss_scaler.update(overflow)
        self._check_streak(runner, overflow, scale)
        return log_vars

    def _check_streak(self, runner, overflow: bool, scale: float) -> None:
        self._skip_streak = self._skip_streak + 1 if overflow else 0
        if self._skip_streak >= self.max_skipped_steps:
            raise SkippedStepsError(
                f'{self._skip_streak} consecutive optimizer steps skipped for inf/NaN gradients at iter '
                f'{runner.iter + 1} (loss_scale {scale:g}, max_skipped_steps={self.max_skipped_steps}): '
                'the run has diverged. Try a lower learning rate or a longer warmup, gradient clipping '
                '(grad_clip=dict(max_norm=35, norm_type=2)), check the data, and resume from a '
                'checkpoint saved before the divergence.')

    def _norm_type(self) -> float:
        return float(self.grad_clip.get('norm_type', 2)) if self.grad_clip is not None else 2.

    def _total_norm(self) -> torch.Tensor:
        """Norm of all grads together (one kernel per flat buffer, each of one dtype, accumulated
        in fp32); inf/NaN if any is."""
        grads, norm_type = self._grad_tensors, self._norm_type()
        if len(grads) == 1:
            return torch.linalg.vector_norm(grads[0], norm_type)
        norms = [torch.linalg.vector_norm(g, norm_type, dtype=torch.float32) for g in grads]
        return torch.linalg.vector_norm(torch.stack(norms), norm_type)

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
        inv_scale = self._inv_scale.fill_(1.0 / scale)
        for flat in self._grad_tensors:  # one dtype each: multi-tensor kernels get homogeneous lists
            torch._amp_foreach_non_finite_check_and_unscale_([flat], found_inf, inv_scale)
        return None

    def _agree_on_overflow(self, ddp: bool) -> bool:
        """The overflow flag, all_reduce(MAX)-ed across ranks when running distributed; under DDP
        the same collective agrees on which parameters received a gradient on any rank."""
        found_inf = self._found_inf
        if self.distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if ddp:
                touched = self._grads.touched_mask
                agreed = torch.cat([found_inf, touched.to(found_inf)])
                dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
                found_inf.copy_(agreed[:1])
                touched.copy_(agreed[1:].cpu() > 0)
            else:
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
            for flat in self._grad_tensors:
                flat.mul_(coef)
        return float(total)

    def _warn_overflow(self, runner, scale: float, norm: Optional[torch.Tensor], loss: torch.Tensor) -> None:
        """One warning line naming the non-finite loss terms (or saying that the overflow arose in
        backward) and the first parameters whose grads are inf or NaN."""
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
        terms = [t for t in self._bad_terms if t != 'loss'] or list(self._bad_terms)
        if not terms and not bool(torch.isfinite(loss)):
            terms = ['loss']
        losses = (f'non-finite loss terms: {", ".join(terms)}' if terms else
                  'all loss terms finite, the overflow arose in backward')
        self._log(runner).warning(
            'Fp16OptimizerHook: gradient overflow at iter %d with loss_scale %g, step skipped '
            '(%d skipped so far); %s; non-finite grads: %s', runner.iter + 1, scale,
            self.loss_scaler.skipped_steps + 1, losses, where)

    # ------------------------------------------------------------------ state
    def _fp16_meta(self) -> dict:
        meta = {'loss_scaler': self.loss_scaler.state_dict(),
                'dtype': dtype_name(self.dtype) if self.dtype is not None else str(self._dtype_arg),
                'mode': self.mode}
        if self.declined is not None:
            meta.update(mode='fp32', requested=dict(dtype=self._dtype_arg, mode=self.mode),
                        declined=self.declined)
        return meta

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


@HOOKS.register_module()
class GradientCumulativeFp16OptimizerHook(Fp16OptimizerHook):
    """mmcv 1.x's name for :class:`Fp16OptimizerHook` with ``cumulative_iters``: gradients of
    ``cumulative_iters`` iterations per optimizer step, the run's last incomplete window dividing
    by its own length. ``cumulative_iters`` comes first, as in mmcv; the other arguments are
    :class:`Fp16OptimizerHook`'s."""

    def __init__(self, cumulative_iters: int = 1, **kwargs) -> None:
        if isinstance(cumulative_iters, bool) or not isinstance(cumulative_iters, int) or cumulative_iters < 1:
            raise ConfigError(f'GradientCumulativeFp16OptimizerHook: cumulative_iters must be a positive int, '
                              f'got {cumulative_iters!r}')
        super().__init__(cumulative_iters=cumulative_iters, **kwargs)

    @staticmethod
    def has_batch_norm(module: torch.nn.Module) -> bool:
        """Whether ``module`` holds a BatchNorm layer (mmcv 1.x's method)."""
        return has_batch_norm(module)

    def before_run(self, runner) -> None:
        """:meth:`Fp16OptimizerHook.before_run`, then mmcv's warning for BatchNorm layers in training
        mode, whose batch statistics see one iteration's batch, not the window's."""
        super().before_run(runner)
        if self.cumulative_iters > 1 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
                                             for m in unwrap(runner.model).modules()):
            self._log(runner).warning('GradientCumulativeFp16OptimizerHook: the model has BatchNorm layers; '
                                      "their batch statistics still see one iteration's batch, not the window")
