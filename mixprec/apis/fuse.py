"""Fold inference-mode BatchNorm into the convolution registered just before it."""
from __future__ import annotations

import torch
from torch import nn


def _fuse(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> nn.Conv2d:
    """conv(x) then bn: w' = w * g / sqrt(var + eps), b' = (b - mean) * g / sqrt(var + eps) + beta."""
    factor = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
    weight = conv.weight.float() * factor.reshape(-1, 1, 1, 1)
    bias = conv.bias.float() if conv.bias is not None else torch.zeros_like(bn.running_mean, dtype=torch.float32)
    bias = (bias - bn.running_mean.float()) * factor + bn.bias.float()
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    fused.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    fused.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    return fused.to(conv.weight.device)


def fuse_conv_bn(module: nn.Module) -> nn.Module:
    """In place: each BatchNorm that follows a Conv2d among a module's children is folded into it.

    Only for inference (BN statistics frozen); returns ``module``.
    """
    last_conv_name = None
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and last_conv_name is not None:
            setattr(module, last_conv_name, _fuse(getattr(module, last_conv_name), child))
            setattr(module, name, nn.Identity())
            last_conv_name = None
        elif isinstance(child, nn.Conv2d):
            last_conv_name = name
        else:
            fuse_conv_bn(child)
            last_conv_name = None
    return module
