"""Two passes over a built model, each done once and logged, that keep its numbers and make it faster:

- :func:`use_fast_convs` gives every plain ``nn.Conv2d`` a kernel route (:mod:`mixprec.ops.conv`:
  Winograd F(4x4, 3x3) for wide stride-1 3x3 convolutions, oneDNN for 1x1 ones, else PyTorch's),
  taken per call only for fp32 CPU inputs outside autocast;
- :func:`fold_batchnorms` folds each BatchNorm that the model declares to follow a convolution into
  that convolution while the norm's statistics are frozen (eval mode, ``norm_eval``, frozen stages,
  inference): a frozen BatchNorm is a per-channel affine map y = c * s + b (s = gamma /
  sqrt(running_var + eps), b = beta - running_mean * s), so ``norm(conv(x)) = conv(x, W * s) + b``.
  One convolution instead of two layers, and autograd keeps only the convolution's input (and W,
  s) for backward, where BatchNorm also keeps the convolution's output for gamma's gradient. The
  values and the gradients of W, gamma and beta are the two layers' up to float rounding (W * s is
  computed in fp32 and rounded once to the convolution's dtype).

  Its one caveat: under half precision, a norm whose gamma trains is not folded. gamma's gradient
  would then come from the half weight gradient as sum(grad * c) - mean * sum(grad), two large terms
  that cancel, where BatchNorm's backward centres c first. So bf16 training folds only frozen stages
  and frozen-affine norms (caffe-style ``requires_grad=False``); fp32 training and all inference
  fold every frozen norm.

``place_model`` runs both; model code stays ``self.norm1(self.conv1(x))``. The modules keep their
identity, parameters, buffers, state-dict keys and hooks: their class becomes :class:`FastConv2d`
(a subclass of ``nn.Conv2d``) and :class:`FoldedBatchNorm2d` / :class:`FoldedSyncBatchNorm`, as
``torch.nn.utils.parametrize`` swaps a module's class. Only modules of exactly PyTorch's classes are
swapped, so a user's subclass keeps its own forward.

What folding relies on, and what it checks on every call:

- Declared data flow: a module lists its pairs with ``conv_norm_pairs() -> [(conv_name,
  norm_name), ...]``, a promise that its forward applies that norm to that conv's output and uses
  the conv's output nowhere else; a plain ``nn.Sequential`` declares its consecutive (conv, norm)
  children. Run the pass after any surgery that changes a module's forward.
- The conv folds only while its owner still holds it and a folded norm at the declared names (a
  layer swapped in later runs as itself), the norm is in eval mode, and neither module nor torch's
  global module hooks have hooks (a user's hook sees the layer it hooked run as itself).
- The norm skips its own arithmetic only for the very tensor that its conv folded it into in this
  thread; any other input is normalised as by ``nn.BatchNorm2d``.
"""
from __future__ import annotations

import copy
import logging
import threading
import weakref
from collections import Counter
from typing import Iterator, Optional

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module

from mixprec.ops import winograd as _winograd
from mixprec.ops.conv import autocast_dtype, conv2d, route_for, scaled_conv2d

logger = logging.getLogger(__name__)

_FULL_PRECISION = (torch.float32, torch.float64)


def folds_with_trainable_gamma(device_type: str, dtype: torch.dtype) -> bool:
    """Whether a frozen-statistics BatchNorm whose gamma trains folds into its convolution when that
    runs in ``dtype`` on ``device_type``: only in full precision on the CPU.

    Half precision never folds it (the caveat above). On other devices (CUDA) full precision does not
    fold it either, so that fp32 and mixed-precision runs there compute the same graph, mmdetection's,
    and their speed and memory ratios are about precision alone; on the CPU the fp32 fold stays, a
    speed-up of the fp32 path (see ``place_model``)."""
    return device_type == 'cpu' and dtype in _FULL_PRECISION


def has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` runs hooks: its own forward or backward (pre-)hooks, or torch's
    global module hooks (the test ``nn.Module.__call__`` makes; torch has no public accessor)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or _module._global_forward_hooks
                or _module._global_forward_pre_hooks or _module._global_backward_hooks
                or _module._global_backward_pre_hooks)


class _Pending(threading.local):
    """Per thread: ``id(norm)`` -> a weak reference to the conv output that has that norm folded in."""

    def __init__(self) -> None:
        self.outputs: dict[int, weakref.ref] = {}


_PENDING = _Pending()


class _PassesFoldedOutput:
    """A norm's forward that returns the output its convolution folded it into as it is, and
    normalises every other input as the norm class does."""

    def forward(self, x: Tensor) -> Tensor:
        ref = _PENDING.outputs.pop(id(self), None)
        if ref is not None and ref() is x:
            return x
        return super().forward(x)


class FoldedBatchNorm2d(_PassesFoldedOutput, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that :func:`fold_batchnorms` folded into the convolution before it."""


class FoldedSyncBatchNorm(_PassesFoldedOutput, nn.SyncBatchNorm):
    """``nn.SyncBatchNorm`` that :func:`fold_batchnorms` folded into the convolution before it."""


_FOLDED = {nn.BatchNorm2d: FoldedBatchNorm2d, nn.SyncBatchNorm: FoldedSyncBatchNorm}
_FOLDED_TYPES = tuple(_FOLDED.values())


class FastConv2d(nn.Conv2d):
    """``nn.Conv2d`` computed on its ``route``'s kernel, with the BatchNorm after it folded in when
    :func:`fold_batchnorms` linked one and folding applies to this call. Same parameters and
    state-dict keys as ``nn.Conv2d``; made from one by the passes, never built directly."""

    route: str = 'pytorch'
    _fold: Optional[tuple[nn.Module, str, str]] = None  # (owner, conv name, norm name)

    def forward(self, x: Tensor) -> Tensor:
        norm = self._norm_to_fold()
        if norm is not None:
            out = self._folded(norm, x)
            if out is not None:
                _PENDING.outputs[id(norm)] = weakref.ref(out)
                return out
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups, self.route)

    def _norm_to_fold(self) -> Optional[nn.modules.batchnorm._BatchNorm]:
        """The linked norm when it may be folded into this call, else None."""
        if self._fold is None:
            return None
        owner, conv_name, norm_name = self._fold
        try:
            if owner.get_submodule(conv_name) is not self:
                return None
            norm = owner.get_submodule(norm_name)
        except AttributeError:
            return None
        if type(norm) not in _FOLDED_TYPES or norm.training or has_hooks(self) or has_hooks(norm):
            return None
        return norm

    def _folded(self, norm: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Optional[Tensor]:
        """``norm(conv(x))`` as one scaled convolution; None where gamma trains in half precision."""
        dtype = autocast_dtype(x.device.type) or self.weight.dtype
        gamma_trains = torch.is_grad_enabled() and norm.weight is not None and norm.weight.requires_grad
        if gamma_trains and not folds_with_trainable_gamma(x.device.type, dtype):
            return None
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = norm.weight * scale
        shift = -norm.running_mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias
        if self.bias is not None:
            shift = shift + self.bias * scale
        return scaled_conv2d(x.to(dtype), self.weight, scale, shift.to(dtype), self.stride, self.padding,
                             self.dilation, self.groups, self.route)

    def __deepcopy__(self, memo: dict) -> 'FastConv2d':
        """A copy made together with its owner (a whole model's deepcopy) folds into the copied norm; a
        conv copied on its own is not linked (it would otherwise fold a hidden copy of the norm in)."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy({k: v for k, v in self.__dict__.items() if k != '_fold'}, memo))
        if self._fold is not None and id(self._fold[0]) in memo:
            new._fold = (memo[id(self._fold[0])], *self._fold[1:])
        return new

    def __getstate__(self) -> dict:
        """Pickled without its link (whether the owner is pickled too is unknown here): a loaded
        model folds again once ``place_model`` or :func:`fold_batchnorms` has run on it."""
        state = super().__getstate__()
        state.pop('_fold', None)
        return state


def _plain_conv(module: nn.Module) -> bool:
    """An ``nn.Conv2d`` (or one already made a FastConv2d) that pads with zeros by number."""
    return (type(module) in (nn.Conv2d, FastConv2d) and module.padding_mode == 'zeros'
            and not isinstance(module.padding, str))


def use_fast_convs(model: nn.Module, winograd: bool = True) -> Counter:
    """Route every plain ``nn.Conv2d`` of ``model`` (see :func:`mixprec.ops.conv.route_for`);
    ``winograd=False`` keeps 3x3 convolutions on PyTorch's kernel. Idempotent; returns and logs
    how many convolutions take each route."""
    if not isinstance(winograd, bool):
        raise TypeError(f'use_fast_convs: winograd must be True or False, got {winograd!r}')
    routes = Counter()
    for module in model.modules():
        if _plain_conv(module):
            module.__class__ = FastConv2d
            module.route = route_for(module.weight.shape, module.stride, module.padding, module.dilation,
                                     module.groups, winograd)
            routes[module.route] += 1
    logger.info('fp32 CPU convolutions: %d may run as Winograd F(4x4, 3x3) (wide stride-1 3x3, from %d output '
                'pixels), %d 1x1 on oneDNN, %d on PyTorch\'s kernel (cpu_winograd=%s); same numbers up to '
                'float rounding', routes['winograd'], _winograd.MIN_OUTPUT_PIXELS, routes['onednn'],
                routes['pytorch'], winograd)
    return routes


def _declared_pairs(model: nn.Module) -> Iterator[tuple[nn.Module, str, str]]:
    """(owner, conv name, norm name) of every declared conv -> norm pair."""
    for module in model.modules():
        if type(module) is nn.Sequential:
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                if isinstance(module._modules[first], nn.Conv2d):
                    yield module, first, second
        elif hasattr(module, 'conv_norm_pairs'):
            for conv_name, norm_name in module.conv_norm_pairs():
                yield module, conv_name, norm_name


def fold_batchnorms(model: nn.Module) -> int:
    """Link each declared (conv, BatchNorm) pair of ``model`` so that the norm folds into the conv
    while its statistics are frozen (see the module docstring). Idempotent; returns and logs the
    number of pairs."""
    linked = 0
    for owner, conv_name, norm_name in _declared_pairs(model):
        conv, norm = owner.get_submodule(conv_name), owner.get_submodule(norm_name)
        norm_class = _FOLDED.get(type(norm), type(norm) if type(norm) in _FOLDED_TYPES else None)
        if not _plain_conv(conv) or norm_class is None or not norm.track_running_stats:
            continue
        conv.__class__ = FastConv2d
        norm.__class__ = norm_class
        conv._fold = (owner, conv_name, norm_name)
        linked += 1
    logger.info('BatchNorm folding: %d BatchNorms fold into the convolution before them while their statistics '
                'are frozen (eval mode), same numbers up to float rounding; under half precision a norm whose '
                'gamma trains stays a layer of its own', linked)
    return linked
