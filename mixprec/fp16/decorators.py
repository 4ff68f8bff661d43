"""``auto_fp16`` / ``force_fp32``: mark the regions of a module's forward that run in half or fp32.

Both act only when the module's ``fp16_enabled`` attribute is True (set by ``wrap_fp16_model``);
otherwise the cost is a type check and one attribute lookup. As in mmcv 1.x, calling a decorated
method on anything but an ``nn.Module`` (``auto_fp16``: its ``supported_types``) raises TypeError.
The half dtype and the mode ('master' or 'autocast')
come from the module's ``_fp16_cfg`` attribute, ``(dtype, mode)``, also set by ``wrap_fp16_model``;
a module whose ``fp16_enabled`` was set by hand gets ``(torch.float16, 'master')`` (mmcv's meaning).

- master mode: ``auto_fp16`` casts fp32 tensors of the ``apply_to`` arguments to the half dtype;
  ``force_fp32`` casts half tensors to fp32.
- autocast mode: ``auto_fp16`` runs the method under ``torch.autocast(device_type, dtype)``;
  ``force_fp32`` runs it with autocast disabled and its ``apply_to`` arguments cast to fp32.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Iterable, Optional

import torch

from .utils import HALF_DTYPES, cast_tensor_type, first_tensor

DEFAULT_CFG = (torch.float16, 'master')
_FP32_ONLY = (torch.float32,)
_MODULE = (torch.nn.Module,)


def _arg_plan(fn: Callable, apply_to: Optional[Iterable[str]]):
    """Map ``apply_to`` names to positional indices (``self`` excluded), computed once."""
    if apply_to is None:
        return None, None
    names = set(apply_to)
    params = list(inspect.signature(fn).parameters.values())[1:]
    positions = tuple(i for i, p in enumerate(params)
                      if p.name in names and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    return positions, tuple(names)


def _cast_args(args: tuple, kwargs: dict, plan, dst: torch.dtype, src: tuple):
    positions, names = plan
    if positions is None:
        return cast_tensor_type(args, src, dst), cast_tensor_type(kwargs, src, dst)
    if positions:
        args = list(args)
        for i in positions:
            if i < len(args):
                args[i] = cast_tensor_type(args[i], src, dst)
    for name in names:
        if name in kwargs:
            kwargs[name] = cast_tensor_type(kwargs[name], src, dst)
    return args, kwargs


def _check_owner(decorator: str, fn: Callable, owner, supported_types: tuple) -> None:
    """mmcv 1.x's rule: the decorators apply to methods of ``supported_types`` (nn.Module) only."""
    if not isinstance(owner, supported_types):
        names = ', '.join(t.__name__ for t in supported_types)
        raise TypeError(f'@{decorator} can only decorate methods of {names}; {fn.__qualname__} was '
                        f'called on a {type(owner).__name__}')


def _device_type(module, args: tuple, kwargs: dict) -> str:
    t = first_tensor(args)
    if t is None:
        t = first_tensor(kwargs)
    if t is None and isinstance(module, torch.nn.Module):
        t = next(module.parameters(), None)
    return t.device.type if t is not None else 'cpu'


def auto_fp16(apply_to: Optional[Iterable[str]] = None, out_fp32: bool = False,
              supported_types: tuple = (torch.nn.Module,)) -> Callable:
    """Run a module method in half precision when the module has ``fp16_enabled``.

    Args:
        apply_to: names of the arguments (positional or keyword) whose float tensors are cast;
            None means every argument.
        out_fp32: cast half tensors in the output back to fp32.
        supported_types: the classes whose methods may be decorated (mmcv >= 1.5); calling the
            method on anything else raises TypeError.
    """
    supported_types = tuple(supported_types)

    def decorator(fn: Callable) -> Callable:
        plan = _arg_plan(fn, apply_to)

        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            _check_owner('auto_fp16', fn, self, supported_types)
            if not getattr(self, 'fp16_enabled', False):
                return fn(self, *args, **kwargs)
            dtype, mode = getattr(self, '_fp16_cfg', DEFAULT_CFG)
            if mode == 'autocast':
                with torch.autocast(_device_type(self, args, kwargs), dtype=dtype):
                    output = fn(self, *args, **kwargs)
            else:
                args, kwargs = _cast_args(args, kwargs, plan, dtype, _FP32_ONLY)
                output = fn(self, *args, **kwargs)
            if out_fp32:
                output = cast_tensor_type(output, HALF_DTYPES, torch.float32)
            return output

        return wrapper

    return decorator


def force_fp32(apply_to: Optional[Iterable[str]] = None, out_fp16: bool = False) -> Callable:
    """Run a module method in fp32 (losses, box coding, NMS) when the module has ``fp16_enabled``.

    Args:
        apply_to: names of the arguments (positional or keyword) whose half tensors are cast to
            fp32; None means every argument.
        out_fp16: cast fp32 tensors in the output to the module's half dtype.

    Calling the method on anything but an ``nn.Module`` raises TypeError (as mmcv 1.x).
    """

    def decorator(fn: Callable) -> Callable:
        plan = _arg_plan(fn, apply_to)

        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            _check_owner('force_fp32', fn, self, _MODULE)
            if not getattr(self, 'fp16_enabled', False):
                return fn(self, *args, **kwargs)
            dtype, mode = getattr(self, '_fp16_cfg', DEFAULT_CFG)
            args, kwargs = _cast_args(args, kwargs, plan, torch.float32, HALF_DTYPES)
            if mode == 'autocast':
                with torch.autocast(_device_type(self, args, kwargs), enabled=False):
                    output = fn(self, *args, **kwargs)
            else:
                output = fn(self, *args, **kwargs)
            if out_fp16:
                output = cast_tensor_type(output, _FP32_ONLY, dtype)
            return output

        return wrapper

    return decorator
