"""``wrap_fp16_model``: convert a model for mixed-precision training or inference."""
from __future__ import annotations

import difflib
import logging
from typing import Iterable, Optional, Union

import torch
from torch import nn

from mixprec.registry import ConfigError

from .utils import HALF_DTYPES, cast_tensor_type, first_tensor, resolve_dtype

logger = logging.getLogger(__name__)

MODES = ('master', 'autocast')
NORM_TYPES: tuple = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                     nn.modules.instancenorm._InstanceNorm)
if hasattr(nn, 'RMSNorm'):
    NORM_TYPES = NORM_TYPES + (nn.RMSNorm,)


def is_norm(module: nn.Module) -> bool:
    """True for the normalization layers that stay fp32 in master mode."""
    return isinstance(module, NORM_TYPES)


def _norm_pre_hook(module: nn.Module, args: tuple):
    """Cast half inputs of an fp32 norm layer up to fp32, remembering their dtype."""
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.dtype in HALF_DTYPES:
        module._fp16_input_dtype = x.dtype
        return cast_tensor_type(args, HALF_DTYPES, torch.float32)
    module._fp16_input_dtype = None
    return None


def _norm_post_hook(module: nn.Module, args: tuple, output):
    """Cast the output of an fp32 norm layer back to the dtype its input had."""
    dtype = module._fp16_input_dtype
    if dtype is None:
        return None
    module._fp16_input_dtype = None
    return cast_tensor_type(output, torch.float32, dtype)


def patch_norm_fp32(module: nn.Module) -> nn.Module:
    """Keep ``module`` (a norm layer) in fp32 and let it take half inputs; idempotent.

    BatchNorm kernels (CPU and cuDNN) take half inputs with fp32 parameters and statistics as they
    are, returning the input's dtype, so BatchNorm only keeps fp32 parameters. Other norms get a
    forward pre-hook (input up to fp32) and a forward hook (output back to the input's dtype),
    rather than a replaced ``forward``, so the layer stays picklable and deep-copyable.
    """
    module.float()
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module
    if not getattr(module, '_fp16_norm_patched', False):
        module._fp16_input_dtype = None
        module.register_forward_pre_hook(_norm_pre_hook)
        module.register_forward_hook(_norm_post_hook)
        module._fp16_norm_patched = True
    return module


def convs_to_channels_last(model: nn.Module) -> nn.Module:
    """Store every 2-d convolution's weight channels_last, in place; idempotent.

    A channels_last weight makes the convolutions run and return channels_last: oneDNN's bf16 and
    cuDNN's fp16 kernels work in that layout, so the per-call layout conversions disappear.
    Parameters stay the same objects (their ``.data`` is replaced).
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.weight.dim() == 4:
            weight = module.weight
            if not weight.is_contiguous(memory_format=torch.channels_last):
                weight.data = weight.data.contiguous(memory_format=torch.channels_last)
    return model


def fp32_roots(model: nn.Module, fp32_modules: Optional[Iterable[str]]) -> list[nn.Module]:
    """The modules named in ``fp32_modules`` (names as ``model.named_modules()`` gives them);
    a name that matches no module is a ConfigError naming it and the closest names."""
    if not fp32_modules:
        return []
    if isinstance(fp32_modules, str):
        raise ConfigError(f'fp16.fp32_modules must be a list of module names, got {fp32_modules!r}')
    named = dict(model.named_modules())
    roots = []
    for name in fp32_modules:
        if name not in named or not name:
            close = difflib.get_close_matches(str(name), [n for n in named if n], n=3)
            raise ConfigError(f'fp16.fp32_modules: the model has no module named {name!r}'
                              + (f'; closest: {", ".join(close)}' if close else ''))
        roots.append(named[name])
    return roots


def fp32_module_ids(model: nn.Module, fp32_modules: Optional[Iterable[str]]) -> set[int]:
    """ids of the modules that stay fp32 because of ``fp32_modules`` (the named ones and everything
    inside them)."""
    return {id(m) for root in fp32_roots(model, fp32_modules) for m in root.modules()}


def fp32_param_ids(model: nn.Module, fp32_modules: Optional[Iterable[str]] = None) -> set[int]:
    """ids of the parameters that stay fp32 in master mode: norm layers' and ``fp32_modules``'."""
    kept = fp32_module_ids(model, fp32_modules)
    return {id(p) for m in model.modules() if is_norm(m) or id(m) in kept for p in m.parameters(recurse=False)}


def _fp32_pre_hook(module: nn.Module, args: tuple, kwargs: dict):
    """Inputs of an ``fp32_modules`` module up to fp32; in autocast mode, autocast off inside it."""
    if module._fp16_cfg[1] == 'autocast':
        x = first_tensor((args, kwargs))
        device = x.device.type if x is not None else next(module.parameters()).device.type
        context = torch.autocast(device, enabled=False)
        context.__enter__()
        module._fp16_autocast_off.append(context)
    return cast_tensor_type(args, HALF_DTYPES, torch.float32), cast_tensor_type(kwargs, HALF_DTYPES, torch.float32)


def _fp32_post_hook(module: nn.Module, args: tuple, output) -> None:
    if module._fp16_autocast_off:
        module._fp16_autocast_off.pop().__exit__(None, None, None)


def _keep_fp32(module: nn.Module, dtype: torch.dtype, mode: str) -> None:
    """Run ``module`` (an ``fp32_modules`` entry) in fp32: its half inputs cast up, autocast off
    (autocast mode); its outputs stay fp32. Idempotent."""
    module._fp16_cfg = (dtype, mode)
    if not getattr(module, '_fp16_fp32_root', False):
        module._fp16_autocast_off = []
        module.register_forward_pre_hook(_fp32_pre_hook, with_kwargs=True)
        module.register_forward_hook(_fp32_post_hook, always_call=True)
        module._fp16_fp32_root = True


def _cast_own_tensors(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast the floating parameters (in place, same objects) and buffers of one module, not its children."""
    for param in module.parameters(recurse=False):
        if param.is_floating_point() and param.dtype is not dtype:
            param.data = param.data.to(dtype)
            if param.grad is not None:
                param.grad = param.grad.to(dtype)
    for name, buf in list(module.named_buffers(recurse=False)):
        if buf.is_floating_point() and buf.dtype is not dtype:
            setattr(module, name, buf.to(dtype))


def wrap_fp16_model(model: nn.Module, dtype: Union[str, torch.dtype] = torch.float16,
                    mode: str = 'master', fp32_modules: Optional[Iterable[str]] = None) -> nn.Module:
    """Prepare ``model`` for mixed precision, in place, and return it.

    ``dtype='auto'`` decides on the device of the model's parameters
    (:func:`mixprec.fp16.precision.choose_dtype`) and leaves the model unchanged where no half
    precision pays.

    master: parameters and buffers become ``dtype`` except in normalization layers (BatchNorm*,
    SyncBatchNorm, GroupNorm, LayerNorm, InstanceNorm), which stay fp32 and accept half inputs;
    convolution weights are stored channels_last (see :func:`convs_to_channels_last`).
    autocast: weights stay fp32; the ``auto_fp16`` regions run under ``torch.autocast``.
    In both modes every submodule that has an ``fp16_enabled`` attribute gets it set to True and
    ``_fp16_cfg = (dtype, mode)`` for the decorators.
    fp32_modules: names of submodules (``'roi_head.mask_head'``) that run entirely in fp32: their
    parameters and buffers stay fp32 (master mode), their half inputs are cast up and autocast is
    off inside them (autocast mode), their decorators stay inactive; their outputs are fp32.
    """
    if mode not in MODES:
        raise ConfigError(f'fp16 mode must be one of {MODES}, got {mode!r}')
    if dtype == 'auto':
        first = next(model.parameters(), None)
        dtype = resolve_dtype('auto', first.device if first is not None else 'cpu')
        if dtype is torch.float32:
            logger.info("wrap_fp16_model: dtype='auto' -> float32 on this device: the model stays as it is")
            return model
    dtype = resolve_dtype(dtype)
    kept = fp32_module_ids(model, fp32_modules)
    for root in fp32_roots(model, fp32_modules):
        _keep_fp32(root, dtype, mode)
    if mode == 'master':
        convs_to_channels_last(model)
        for module in model.modules():
            if is_norm(module):
                patch_norm_fp32(module)
            elif id(module) not in kept:
                _cast_own_tensors(module, dtype)
    enabled = 0
    for module in model.modules():
        if hasattr(module, 'fp16_enabled') and id(module) in kept:
            module.fp16_enabled = False
        elif hasattr(module, 'fp16_enabled'):
            module.fp16_enabled = True
            module._fp16_cfg = (dtype, mode)
            enabled += 1
    if enabled == 0:
        consequence = ('the model runs entirely in fp32' if mode == 'autocast'
                       else 'inputs are not cast to half; decorate forward with @auto_fp16')
        logger.warning('wrap_fp16_model: no module has an fp16_enabled attribute, so no @auto_fp16 '
                       'region exists: %s', consequence)
    return model
