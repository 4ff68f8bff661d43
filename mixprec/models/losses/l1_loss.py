"""Element-wise box regression losses: L1, smooth L1 and balanced L1 (mmdetection v2 semantics)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from mixprec.fp16 import force_fp32
from mixprec.registry import MODELS, ConfigError

from .utils import as_fp32, check_reduction, weight_reduce_loss


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Element-wise |pred - target|, fp32."""
    return (as_fp32(pred) - as_fp32(target)).abs()


def smooth_l1_loss(pred: Tensor, target: Tensor, beta: float = 1.0) -> Tensor:
    """Element-wise Huber-style loss: quadratic under ``beta`` (> 0), linear above, fp32."""
    diff = (as_fp32(pred) - as_fp32(target)).abs()
    return torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def balanced_l1_loss(pred: Tensor, target: Tensor, beta: float = 1.0, alpha: float = 0.5,
                     gamma: float = 1.5) -> Tensor:
    """Element-wise balanced L1 (Libra R-CNN): with b = e^(gamma / alpha) - 1, under ``beta``
    alpha / b * (b x + 1) log(b x / beta + 1) - alpha x, above it gamma x + gamma / b - alpha beta."""
    diff = (as_fp32(pred) - as_fp32(target)).abs()
    b = np.e ** (gamma / alpha) - 1
    inlier = alpha / b * (b * diff + 1) * torch.log(b * diff / beta + 1) - alpha * diff
    return torch.where(diff < beta, inlier, gamma * diff + gamma / b - alpha * beta)


def _check_beta(name: str, beta: float) -> float:
    if not beta > 0:
        raise ConfigError(f'{name}: beta must be > 0, got {beta!r}')
    return float(beta)


class _ElementwiseLoss(nn.Module):
    fp16_enabled = False

    def __init__(self, reduction: str = 'mean', loss_weight: float = 1.0) -> None:
        super().__init__()
        self.reduction = reduction
        self.loss_weight = loss_weight

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    @force_fp32(apply_to=('pred', 'target'))
    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None, reduction_override: Optional[str] = None) -> Tensor:
        """pred, target [n, 4]; weight [n, 4] or broadcastable. Empty targets give a zero with grad."""
        reduction = check_reduction(reduction_override, self.reduction)
        if target.numel() == 0:
            return as_fp32(pred).sum() * 0
        loss = self.elementwise(pred, target)
        if weight is not None:
            weight = as_fp32(weight)
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)


@MODELS.register_module()
class L1Loss(_ElementwiseLoss):
    """Mean absolute error (RetinaNet and R-CNN box regression)."""

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return l1_loss(pred, target)


@MODELS.register_module()
class SmoothL1Loss(_ElementwiseLoss):
    """Smooth L1 with transition point ``beta``."""

    def __init__(self, beta: float = 1.0, reduction: str = 'mean', loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        self.beta = _check_beta('SmoothL1Loss', beta)

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return smooth_l1_loss(pred, target, self.beta)


@MODELS.register_module()
class BalancedL1Loss(_ElementwiseLoss):
    """Balanced L1 (Libra R-CNN) with ``alpha``, ``gamma`` and transition point ``beta``."""

    def __init__(self, alpha: float = 0.5, gamma: float = 1.5, beta: float = 1.0, reduction: str = 'mean',
                 loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        self.alpha, self.gamma = alpha, gamma
        self.beta = _check_beta('BalancedL1Loss', beta)

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return balanced_l1_loss(pred, target, self.beta, self.alpha, self.gamma)
