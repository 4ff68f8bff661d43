"""``wrap_fp16_model``: convert a model for mixed-precision training or inference."""
from __future__ import annotations

import logging
from typing import Union

import torch
from torch import nn

from .utils import HALF_DTYPES, cast_tensor_type, resolve_dtype

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
        return cast_tensor_type(args, torch.float32, HALF_DTYPES)
    module._fp16_input_dtype = None
    return None


def _norm_post_hook(module: nn.Module, args: tuple, output):
    """Cast the output of an fp32 norm layer back to the dtype its input had."""
    dtype = module._fp16_input_dtype
    if dtype is None:
        return None
    module._fp16_input_dtype = None
    return cast_tensor_type(output, dtype, (torch.float32,))


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
                    mode: str = 'master') -> nn.Module:
    """Prepare ``model`` for mixed precision, in place, and return it.

    master: parameters and buffers become ``dtype`` except in normalization layers (BatchNorm*,
    SyncBatchNorm, GroupNorm, LayerNorm, InstanceNorm), which stay fp32 and accept half inputs;
    convolution weights are stored channels_last (see :func:`convs_to_channels_last`).
    autocast: weights stay fp32; the ``auto_fp16`` regions run under ``torch.autocast``.
    In both modes every submodule that has an ``fp16_enabled`` attribute gets it set to True and
    ``_fp16_cfg = (dtype, mode)`` for the decorators.
    """
    if mode not in MODES:
        raise ValueError(f'fp16 mode must be one of {MODES}, got {mode!r}')
    dtype = resolve_dtype(dtype)
    if mode == 'master':
        convs_to_channels_last(model)
        for module in model.modules():
            if is_norm(module):
                patch_norm_fp32(module)
            else:
                _cast_own_tensors(module, dtype)
    enabled = 0
    for module in model.modules():
        if hasattr(module, 'fp16_enabled'):
            module.fp16_enabled = True
            module._fp16_cfg = (dtype, mode)
            enabled += 1
    if enabled == 0:
        consequence = ('the model runs entirely in fp32' if mode == 'autocast'
                       else 'inputs are not cast to half; decorate forward with @auto_fp16')
        logger.warning('wrap_fp16_model: no module has an fp16_enabled attribute, so no @auto_fp16 '
                       'region exists: %s', consequence)
    return model
