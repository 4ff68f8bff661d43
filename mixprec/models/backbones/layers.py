"""Normalization layers from config, the conv-norm pair with frozen statistics folded into one
convolution, and the conv(-norm)(-ReLU) block with mmcv's key names."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module
from torch.nn.modules.batchnorm import _BatchNorm

from . import winograd

_NORM_TYPES = {'BN': ('bn', nn.BatchNorm2d), 'SyncBN': ('bn', nn.SyncBatchNorm), 'GN': ('gn', nn.GroupNorm)}


def build_norm_layer(cfg: dict, num_features: int, postfix: str = '') -> tuple[str, nn.Module]:
    """``(name, layer)`` for ``dict(type='BN' | 'SyncBN' | 'GN', requires_grad=True, ...)``.

    The name is 'bn' (BN, SyncBN) or 'gn' (GN) plus ``postfix``, as in mmcv, so ResNet's BN layers
    are ``bn1, bn2, ...`` like torchvision's. GN needs ``num_groups``; other keys (eps, momentum)
    go to the layer.
    """
    cfg = dict(cfg)
    norm_type = cfg.pop('type', None)
    if norm_type not in _NORM_TYPES:
        raise ValueError(f'norm_cfg type must be one of {sorted(_NORM_TYPES)}, got {norm_type!r}')
    requires_grad = cfg.pop('requires_grad', True)
    abbr, layer_cls = _NORM_TYPES[norm_type]
    if norm_type == 'GN':
        if 'num_groups' not in cfg:
            raise ValueError('norm_cfg type GN needs num_groups')
        layer = layer_cls(num_channels=num_features, **cfg)
    else:
        layer = layer_cls(num_features, **cfg)
    for param in layer.parameters():
        param.requires_grad = requires_grad
    return f'{abbr}{postfix}', layer


_FULL_PRECISION = (torch.float32, torch.float64)


def _has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` runs hooks that a functional call of its weights would skip: its
    own forward or backward hooks, or global module hooks (the test ``nn.Module.__call__`` makes)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or _module._global_forward_hooks
                or _module._global_forward_pre_hooks or _module._global_backward_hooks
                or _module._global_backward_pre_hooks)


def _autocast_dtype(device: str) -> Optional[torch.dtype]:
    """autocast's lower-precision dtype on ``device`` when autocast is on there, else None."""
    if hasattr(torch, 'get_autocast_dtype'):  # torch >= 2.4
        enabled, dtype = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
    elif device == 'cpu':
        enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    else:
        enabled, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    return dtype if enabled else None


def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation, groups: int) -> Tensor:
    """``F.conv2d``, with two fp32 CPU routes that do the same arithmetic faster.

    Stride-1 3x3 convolutions wide and large enough go to Winograd F(4x4, 3x3) (:mod:`.winograd`:
    a quarter of the multiplications, its own backward). 1x1 convolutions go to oneDNN: PyTorch
    runs a stride-1 1x1 fp32 convolution with one thread and a batch under 16 as an MKL GEMM, which
    on AMD CPUs reaches half of oneDNN's speed (a ResNet-50 1x1 at 512 px: 44 against 84 GFLOP/s
    here); its backward is PyTorch's. Same numbers up to float rounding; half precision and
    autocast are untouched.
    """
    if x.device.type == 'cpu' and x.dtype == torch.float32 and _autocast_dtype('cpu') is None:
        if winograd.applies(x, weight, stride, padding, dilation, groups):
            return winograd.conv3x3(x, weight, bias)
        if (weight.shape[-2:] == (1, 1) and torch.backends.mkldnn.is_available()
                and torch.backends.mkldnn.enabled):
            return torch.mkldnn_convolution(x, weight, bias, padding, stride, dilation, groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def _runs_as_module(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` must run as its own module call: it has hooks (a user's forward or backward
    hook still sees it run), pads other than with zeros, or is not a plain ``nn.Conv2d`` (a user's
    subclass or swapped-in layer keeps its own forward)."""
    return (type(conv) is not nn.Conv2d or _has_hooks(conv) or conv.padding_mode != 'zeros'
            or isinstance(conv.padding, str))


def _folds(norm: nn.Module) -> bool:
    """Whether ``norm`` is a BatchNorm with frozen statistics whose forward is PyTorch's own (a
    subclass with its own forward, e.g. a user's frozen norm, runs as itself) and that has no hooks."""
    return (isinstance(norm, _BatchNorm) and type(norm).forward in (_BatchNorm.forward, nn.SyncBatchNorm.forward)
            and not norm.training and norm.running_var is not None and not _has_hooks(norm))


def run_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` through :func:`conv2d`, unless it :func:`_runs_as_module`."""
    if _runs_as_module(conv):
        return conv(x)
    return conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _conv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, args: tuple, output_mask: list) -> tuple:
    """``(grad_x, grad_weight, grad_bias)`` of :func:`conv2d` (None where ``output_mask`` is False);
    differentiable again when grad mode is on (``create_graph=True``: a gradient penalty)."""
    stride, padding, dilation, groups = args
    if not torch.is_grad_enabled() and winograd.applies(x, weight, stride, padding, dilation, groups):
        return winograd.conv3x3_backward(grad, x, weight, output_mask)
    return torch.ops.aten.convolution_backward(grad, x, weight, [weight.size(0)], stride, padding, dilation,
                                               False, [0] * len(stride), groups, output_mask)


class _FoldedConv(torch.autograd.Function):
    """``conv(x, W * s) + b`` (per output channel s, b) that keeps x, W and s for backward and
    recomputes W * s there, so the folded weight costs no memory between forward and backward. Its
    backward is made of differentiable ops, so double backward works as through the two layers."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, scale: Tensor, shift: Tensor, conv: nn.Conv2d) -> Tensor:
        ctx.conv_args = (conv.stride, conv.padding, conv.dilation, conv.groups)
        ctx.save_for_backward(x, weight, scale)
        return conv2d(x, _fold(weight, scale, x.dtype), shift, *ctx.conv_args)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, scale = ctx.saved_tensors
        folded = _fold(weight, scale, x.dtype)
        needs_x, needs_w, needs_s, needs_b = ctx.needs_input_grad[:4]
        grad_x, grad_folded, grad_shift = _conv2d_backward(grad, x, folded, ctx.conv_args,
                                                           [needs_x, needs_w or needs_s, needs_b])
        grad_w = grad_s = None
        if needs_w:
            grad_w = (grad_folded * _per_channel(scale, weight)).to(weight.dtype)
        if needs_s:
            grad_s = (grad_folded.to(scale.dtype) * weight.to(scale.dtype)).sum(dim=tuple(range(1, weight.dim())))
        return grad_x, grad_w, grad_s, grad_shift, None


def _per_channel(values: Tensor, like: Tensor) -> Tensor:
    return values.reshape(-1, *[1] * (like.dim() - 1))


def _fold(weight: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """W * s per output channel, computed in the wider of the two dtypes, rounded once to ``dtype``."""
    return (weight * _per_channel(scale, weight)).to(dtype)


def folds_with_trainable_gamma(device_type: str, dtype: torch.dtype) -> bool:
    """Whether a frozen-statistics BatchNorm whose gamma trains is folded into its convolution when
    that runs in ``dtype`` on ``device_type``: only in full precision on the CPU.

    Half precision never folds it (:func:`conv_norm`: gamma's gradient would cancel). On other devices
    (CUDA) full precision does not fold it either, so that fp32 and mixed-precision runs there compute
    the same graph, mmdetection's, and their speed and memory ratios are about precision alone; on the
    CPU the fp32 fold stays, a speed-up of the project's main fp32 path (see ``place_model``).
    """
    return device_type == 'cpu' and dtype in _FULL_PRECISION


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(conv(x))``, as one convolution when ``norm`` is a BatchNorm with frozen statistics.

    A BatchNorm in eval mode (``norm_eval``, frozen stages, inference) is a per-channel affine map
    y = c * s + b with s = gamma / sqrt(running_var + eps), b = beta - running_mean * s, so
    ``norm(conv(x)) = conv(x, W * s) + b``. Autograd then keeps only the convolution's input (and
    W, s) for backward, where BatchNorm also keeps the convolution's output for gamma's gradient (a
    third of a frozen-BN ResNet's activation memory), and the elementwise norm passes disappear. The
    gradients of W, gamma and beta are those of the two layers up to float rounding; W * s is
    computed in fp32 (master mode's norms are fp32) and rounded once to the convolution's dtype.

    Falls back to the two calls when the norm trains its statistics or is not a BatchNorm, the conv
    pads other than with zeros, either module has hooks (a user's forward or backward hook still sees
    its module run) or is a subclass with a forward of its own (:func:`_runs_as_module`,
    :func:`_folds`), or when gamma trains and the convolution runs in half precision: gamma's gradient
    would then come from the half weight gradient as sum(grad * c) - mean * sum(grad), two large
    terms that cancel, where BatchNorm's backward centres c first (so bf16 training folds only the
    frozen stages and frozen-affine norms; fp32 training on the CPU and all inference fold every
    frozen norm; fp32 training on CUDA folds only what half precision folds:
    :func:`folds_with_trainable_gamma`).
    """
    if not _folds(norm) or _runs_as_module(conv):
        return norm(run_conv(conv, x))
    dtype = _autocast_dtype(x.device.type) or conv.weight.dtype
    gamma_trains = torch.is_grad_enabled() and norm.weight is not None and norm.weight.requires_grad
    if gamma_trains and not folds_with_trainable_gamma(x.device.type, dtype):
        return norm(run_conv(conv, x))
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = norm.weight * scale
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    x, shift = x.to(dtype), shift.to(dtype)
    if not torch.is_grad_enabled() or not (x.requires_grad or conv.weight.requires_grad or gamma_trains
                                           or shift.requires_grad):
        return conv2d(x, _fold(conv.weight, scale, dtype), shift, conv.stride, conv.padding, conv.dilation,
                      conv.groups)
    with torch.autocast(x.device.type, enabled=False):
        return _FoldedConv.apply(x, conv.weight, scale, shift, conv)


def conv_norm_seq(seq: nn.Module, x: Tensor) -> Tensor:
    """``seq(x)`` for a ``Sequential(conv, norm)`` (ResNet's ``downsample``), folded as :func:`conv_norm`."""
    if type(seq) is nn.Sequential and len(seq) == 2 and isinstance(seq[0], nn.Conv2d) and not _has_hooks(seq):
        return conv_norm(seq[0], seq[1], x)
    return seq(x)


class ConvModule(nn.Module):
    """Conv2d, optional norm, optional ReLU, keyed ``conv``, ``bn``/``gn`` like mmcv's ConvModule.

    Args:
        bias: 'auto' means a bias only without a norm layer.
        norm_cfg: see :func:`build_norm_layer`; None for no norm.
        act_cfg: ``dict(type='ReLU')`` or None for no activation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, bias='auto', norm_cfg: Optional[dict] = None,
                 act_cfg: Optional[dict] = None, inplace: bool = True) -> None:
        super().__init__()
        if act_cfg is not None and act_cfg.get('type') != 'ReLU':
            raise ValueError(f"ConvModule supports act_cfg=dict(type='ReLU') or None, got {act_cfg!r}")
        use_bias = norm_cfg is None if bias == 'auto' else bool(bias)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, bias=use_bias)
        self.norm_name = None
        if norm_cfg is not None:
            self.norm_name, norm = build_norm_layer(norm_cfg, out_channels)
            self.add_module(self.norm_name, norm)
        self.activate = nn.ReLU(inplace=inplace) if act_cfg is not None else None

    def forward(self, x: Tensor) -> Tensor:
        if self.norm_name is not None:
            x = conv_norm(self.conv, getattr(self, self.norm_name), x)
        else:
            x = run_conv(self.conv, x)
        if self.activate is not None:
            x = self.activate(x)
        return x
