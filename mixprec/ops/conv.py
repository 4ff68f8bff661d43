"""2-d convolution that runs the same arithmetic on a faster kernel where one pays, and the
convolution with a per-output-channel scale and shift folded into it.

Routes (chosen once per convolution by :func:`route_for`, taken per call only for fp32 CPU inputs
outside autocast; everything else is PyTorch's ``F.conv2d``):

- ``'winograd'``: stride-1 3x3 convolutions wide and large enough run as Winograd F(4x4, 3x3)
  (:mod:`.winograd`: a quarter of the multiplications, its own backward);
- ``'onednn'``: 1x1 convolutions with at least ``ONEDNN_MIN_OUT`` outputs run on oneDNN
  (``torch.mkldnn_convolution``). PyTorch sends a stride-1 1x1 fp32 convolution with one thread
  and a small batch to an MKL matrix product, which is much slower than oneDNN on some CPUs (AMD's
  in particular); narrower outputs are a memory-bound pass either way. Backward is PyTorch's;
- ``'pytorch'``: ``F.conv2d``.

All routes give the direct convolution's values up to float rounding.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import winograd

ROUTES = ('winograd', 'onednn', 'pytorch')
ONEDNN_MIN_OUT = 16


def autocast_dtype(device: str) -> Optional[torch.dtype]:
    """autocast's lower-precision dtype on ``device`` when autocast is on there, else None."""
    if hasattr(torch, 'get_autocast_dtype'):  # torch >= 2.4
        enabled, dtype = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
    elif device == 'cpu':
        enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    else:
        enabled, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    return dtype if enabled else None


def route_for(weight_shape: Sequence[int], stride, padding, dilation, groups: int, winograd_on: bool = True) -> str:
    """The route of a convolution of this configuration: one of :data:`ROUTES`."""
    if winograd_on and winograd.eligible(weight_shape, stride, padding, dilation, groups):
        return 'winograd'
    if tuple(weight_shape[-2:]) == (1, 1) and weight_shape[0] >= ONEDNN_MIN_OUT:
        return 'onednn'
    return 'pytorch'


def _fp32_cpu(x: Tensor, weight: Tensor) -> bool:
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and weight.dtype == torch.float32
            and autocast_dtype('cpu') is None)


def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation, groups: int,
           route: str = 'pytorch') -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)`` on ``route``'s kernel where
    it applies to this call (fp32 on the CPU outside autocast; Winograd also needs enough output
    pixels and a channels_last operand), else PyTorch's."""
    if route != 'pytorch' and _fp32_cpu(x, weight):
        if route == 'winograd' and winograd.applies(x, weight, stride, padding, dilation, groups):
            return winograd.conv3x3(x, weight, bias)
        if route == 'onednn' and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled:
            return torch.mkldnn_convolution(x, weight, bias, padding, stride, dilation, groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def conv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, args: tuple, output_mask: list,
                    route: str = 'pytorch') -> tuple:
    """``(grad_x, grad_weight, grad_bias)`` of :func:`conv2d` with ``args = (stride, padding,
    dilation, groups)`` (None where ``output_mask`` is False); differentiable again when grad mode
    is on (``create_graph=True``: a gradient penalty), where it is PyTorch's."""
    stride, padding, dilation, groups = args
    if (route == 'winograd' and not torch.is_grad_enabled()
            and winograd.applies(x, weight, stride, padding, dilation, groups)):
        return winograd.conv3x3_backward(grad, x, weight, output_mask)
    return torch.ops.aten.convolution_backward(grad, x, weight, [weight.size(0)], stride, padding, dilation,
                                               False, [0] * len(stride), groups, output_mask)


def _per_channel(values: Tensor, like: Tensor) -> Tensor:
    return values.reshape(-1, *[1] * (like.dim() - 1))


def _scaled(weight: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """W * s per output channel, computed in the wider of the two dtypes, rounded once to ``dtype``."""
    return (weight * _per_channel(scale, weight)).to(dtype)


class _ScaledConv(torch.autograd.Function):
    """``conv(x, W * s) + b`` that keeps x, W and s for backward and recomputes W * s there, so the
    scaled weight costs no memory between forward and backward. Its backward is made of
    differentiable ops, so double backward works."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, scale: Tensor, shift: Tensor, args: tuple, route: str) -> Tensor:
        ctx.conv_args, ctx.route = args, route
        ctx.save_for_backward(x, weight, scale)
        return conv2d(x, _scaled(weight, scale, x.dtype), shift, *args, route=route)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, scale = ctx.saved_tensors
        scaled = _scaled(weight, scale, x.dtype)
        needs_x, needs_w, needs_s, needs_b = ctx.needs_input_grad[:4]
        grad_x, grad_scaled, grad_shift = conv2d_backward(grad, x, scaled, ctx.conv_args,
                                                          [needs_x, needs_w or needs_s, needs_b], ctx.route)
        grad_w = grad_s = None
        if needs_w:
            grad_w = (grad_scaled * _per_channel(scale, weight)).to(weight.dtype)
        if needs_s:
            grad_s = (grad_scaled.to(scale.dtype) * weight.to(scale.dtype)).sum(dim=tuple(range(1, weight.dim())))
        return grad_x, grad_w, grad_s, grad_shift, None, None


def scaled_conv2d(x: Tensor, weight: Tensor, scale: Tensor, shift: Tensor, stride, padding, dilation, groups: int,
                  route: str = 'pytorch') -> Tensor:
    """``conv2d(x, W * s, shift)`` with ``s`` and ``shift`` [C_out], in ``x``'s dtype (``shift``
    must have it): W * s is computed in the wider of W's and s's dtypes and rounded once. Where
    autograd is needed, only x, W and s are kept for backward (not W * s), and the gradients of W
    and s are those of the unscaled convolution followed by the scale, up to float rounding."""
    args = (stride, padding, dilation, groups)
    if not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad or scale.requires_grad
                                           or shift.requires_grad):
        return conv2d(x, _scaled(weight, scale, x.dtype), shift, *args, route=route)
    with torch.autocast(x.device.type, enabled=False):
        return _ScaledConv.apply(x, weight, scale, shift, args, route)
