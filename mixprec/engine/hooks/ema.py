"""ExpMomentumEMAHook / LinearMomentumEMAHook: an exponential moving average of the weights (mmdetection v2).

The averages live on the model as fp32 buffers named ``ema_<state key with '.' -> '_'>`` (mmdet's names),
so they are saved in, and resumed from, every checkpoint. After each train epoch the averages are
swapped into the model (evaluation, val epochs and the epoch's checkpoint see the EMA weights, the
``ema_*`` buffers then hold the trained ones) and swapped back before the next epoch, as mmdet does.

Under the Fp16OptimizerHook's master mode the model's weights are half, so the averages are computed
from the fp32 masters, and a swap exchanges fp32 masters with fp32 averages and writes the half model
from them; swapping back restores the half weights bit for bit from a copy.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from mixprec.checkpoint import unwrap_model
from mixprec.fp16 import Fp16OptimizerHook
from mixprec.registry import HOOKS, ConfigError
from .hook import Hook

PREFIX = 'ema_'


def ema_name(key: str) -> str:
    """The buffer holding the average of state key ``key`` ('.' is not allowed in buffer names)."""
    return PREFIX + key.replace('.', '_')


def _fp32_masters(runner) -> dict:
    """``{id(model parameter): fp32 master}`` of an Fp16OptimizerHook in master mode ({} otherwise)."""
    for hook in runner.hooks:
        if isinstance(hook, Fp16OptimizerHook):
            return hook.fp32_params()
    return {}


class BaseEMAHook(Hook):
    """``ema = (1 - m) * ema + m * weight`` every ``interval`` iterations, ``m`` from ``momentum_at(iter)``.

    Args:
        momentum: the weight ``m`` of the current value (0 < m < 1).
        interval: update every ``interval`` iterations.
        skip_buffers: average only the parameters, not the buffers (BN running statistics).
        resume_from: a checkpoint to resume the whole run from (mmdet's argument; same as ``resume_from``).
    """

    default_priority = 49  # before CheckpointHook (50) and EvalHook (70): both see the EMA weights

    def __init__(self, momentum: float = 0.0002, interval: int = 1, skip_buffers: bool = False,
                 resume_from: Optional[str] = None) -> None:
        if not 0 < momentum < 1:
            raise ConfigError(f'{type(self).__name__}: momentum must be in (0, 1), got {momentum!r}')
        self.momentum = momentum
        self.interval = interval
        self.skip_buffers = skip_buffers
        self.resume_from = resume_from
        self.swapped = False
        self._entries: list = []
        self._stash: Optional[list] = None
        self._resumed: dict = {}

    def momentum_at(self, it: int) -> float:
        return self.momentum

    def _keys(self, module) -> list:
        names = [n for n, _ in module.named_parameters()] if self.skip_buffers else list(module.state_dict())
        return [n for n in names if not n.startswith(PREFIX)]

    def _register(self, module, sources: dict) -> None:
        """fp32 ``ema_*`` buffers from the fp32 values ``sources[key]``, unless they exist already (resume)."""
        for key in self._keys(module):
            if not hasattr(module, ema_name(key)):
                value = sources[key].detach()
                module.register_buffer(ema_name(key), value.float().clone() if value.is_floating_point()
                                       else value.clone())

    def before_resume(self, runner, checkpoint: dict) -> None:
        """Called by the runner before it loads a checkpoint: create the buffers its ``ema_*`` keys fill, and
        keep their fp32 values, which the fp16 hook's model conversion would round to half."""
        saved = {k.split('.')[-1]: v for k, v in checkpoint.get('state_dict', {}).items()
                 if k.split('.')[-1].startswith(PREFIX)}
        if saved:
            module = unwrap_model(runner.model)
            self._register(module, module.state_dict())
            self._resumed = {name: value.float().clone() if value.is_floating_point() else value.clone()
                             for name, value in saved.items()}

    def before_run(self, runner) -> None:
        """Pair each state entry with its fp32 source (the master under the fp16 hook) and its average."""
        module = unwrap_model(runner.model)
        for name, value in self._resumed.items():
            module.register_buffer(name, value.to(getattr(module, name).device))
        self._resumed = {}
        masters = _fp32_masters(runner)
        state = module.state_dict(keep_vars=True)
        sources = {key: masters.get(id(state[key]), state[key]) for key in self._keys(module)}
        self._register(module, sources)
        self._entries = [(state[key], source, getattr(module, ema_name(key))) for key, source in sources.items()]

    def after_train_iter(self, runner) -> None:
        if (runner.iter + 1) % self.interval:
            return
        m = self.momentum_at(runner.iter)
        with torch.no_grad():
            emas, sources = [], []
            for _, source, ema in self._entries:
                if ema.is_floating_point():
                    emas.append(ema)
                    sources.append(source if source.dtype == torch.float32 else source.float())
            torch._foreach_mul_(emas, 1 - m)
            torch._foreach_add_(emas, [s.detach() for s in sources], alpha=m)

    @torch.no_grad()
    def after_train_epoch(self, runner) -> None:
        """Put the averages into the model for evaluation and the checkpoint (exchange, as mmdet)."""
        if self.swapped:
            return
        self._stash = []
        for model_tensor, source, ema in self._entries:
            self._stash.append((model_tensor.clone() if model_tensor is not source else None,
                                ema.clone() if source.dtype != ema.dtype else None))
            current = source.clone()
            source.copy_(ema)
            ema.copy_(current)
            if model_tensor is not source:
                model_tensor.copy_(source)
        self.swapped = True

    @torch.no_grad()
    def before_train_epoch(self, runner) -> None:
        """Put the trained weights back, exactly: lossy casts are undone from the copies made at the swap.

        (After a resume from a swapped checkpoint there are no copies; the half model is then cast
        from its fp32 masters, as the fp16 hook keeps it.)"""
        if not self.swapped:
            return
        for index, (model_tensor, source, ema) in enumerate(self._entries):
            model_copy, ema_copy = self._stash[index] if self._stash else (None, None)
            current = source.clone()
            source.copy_(ema)
            ema.copy_(ema_copy if ema_copy is not None else current)
            if model_tensor is not source:
                model_tensor.copy_(model_copy if model_copy is not None else source)
        self._stash = None
        self.swapped = False

    def state_dict(self) -> dict:
        return {'swapped': self.swapped}

    def load_state_dict(self, state: dict) -> None:
        self.swapped = bool(state.get('swapped', False))


@HOOKS.register_module()
class ExpMomentumEMAHook(BaseEMAHook):
    """``m(i) = (1 - momentum) * exp(-(1 + i) / total_iter) + momentum``: close to 1 early, then ``momentum``."""

    def __init__(self, total_iter: int = 2000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.total_iter = total_iter

    def momentum_at(self, it: int) -> float:
        return (1 - self.momentum) * math.exp(-(1 + it) / self.total_iter) + self.momentum


@HOOKS.register_module()
class LinearMomentumEMAHook(BaseEMAHook):
    """``m(i) = min(momentum ** interval, (1 + i) / (warm_up + i))``."""

    def __init__(self, warm_up: int = 100, **kwargs) -> None:
        super().__init__(**kwargs)
        self.warm_up = warm_up

    def momentum_at(self, it: int) -> float:
        return min(self.momentum ** self.interval, (1 + it) / (self.warm_up + it))
