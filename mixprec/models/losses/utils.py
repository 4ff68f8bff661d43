"""Weighting and reduction shared by the losses."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_EPS = torch.finfo(torch.float32).eps


def as_fp32(x: Tensor) -> Tensor:
    """Half / bfloat16 tensors cast up to fp32; fp32 and fp64 kept (gradcheck runs in fp64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    if reduction == 'none':
        return loss
    if reduction == 'mean':
        return loss.mean()
    if reduction == 'sum':
        return loss.sum()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def weight_reduce_loss(loss: Tensor, weight: Optional[Tensor] = None, reduction: str = 'mean',
                       avg_factor: Optional[float] = None) -> Tensor:
    """Multiply by ``weight`` (broadcast), then reduce; 'mean' divides by ``avg_factor`` if given."""
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return reduce_loss(loss, reduction)
    if reduction == 'mean':
        return loss.sum() / (avg_factor + _EPS)
    if reduction == 'none':
        return loss
    raise ValueError('avg_factor can only be used with reduction="mean" or "none"')


def check_reduction(reduction_override: Optional[str], reduction: str) -> str:
    if reduction_override not in (None, 'none', 'mean', 'sum'):
        raise ValueError(f'reduction_override must be None, none, mean or sum, got {reduction_override!r}')
    return reduction_override or reduction
