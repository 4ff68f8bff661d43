"""Sigmoid focal loss (RetinaNet)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixprec.fp16 import force_fp32
from mixprec.registry import MODELS, ConfigError

from .cross_entropy_loss import expand_onehot_labels
from .utils import check_reduction, weight_reduce_loss


class _SigmoidFocal(torch.autograd.Function):
    """Element-wise sigmoid focal loss with a hand-written gradient (a few passes over [n, C]
    instead of autograd's dozens).

    With ``z = x`` for targets 1 and ``-x`` for targets 0, ``p_t = sigmoid(z)``:
    ``loss = alpha_t (1 - p_t)^gamma softplus(-z)`` and
    ``dloss/dx = -sign alpha_t (1 - p_t)^gamma (gamma p_t softplus(-z) + 1 - p_t)``.
    """

    @staticmethod
    def forward(ctx, pred: Tensor, target: Tensor, gamma: float, alpha: float) -> Tensor:
        sign = target * 2 - 1
        z = pred * sign
        p_t = torch.sigmoid(z)
        neg_log_p = F.softplus(-z)
        alpha_t = target * (2 * alpha - 1) + (1 - alpha)
        ctx.gamma = gamma
        ctx.save_for_backward(sign, p_t, neg_log_p, alpha_t)
        return alpha_t * (1 - p_t).pow(gamma) * neg_log_p

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        sign, p_t, neg_log_p, alpha_t = ctx.saved_tensors
        one_minus = 1 - p_t
        grad = (ctx.gamma * p_t) * neg_log_p
        grad += one_minus
        grad *= one_minus.pow(ctx.gamma)
        grad *= alpha_t
        grad *= sign
        grad *= grad_out
        return -grad, None, None, None


def sigmoid_focal_loss(pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                       gamma: float = 2.0, alpha: float = 0.25, reduction: str = 'mean',
                       avg_factor: Optional[float] = None) -> Tensor:
    """Focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)`` summed over the C sigmoid outputs.

    Args:
        pred: [n, C] logits.
        target: [n] labels in 0..C (C = background: every output is a negative) or [n, C] 0/1.
        weight: [n] per-sample or [n, C] weights.
    """
    pred = pred.float()
    onehot = expand_onehot_labels(target, pred.size(1)) if target.dim() == 1 else target.float()
    loss = _SigmoidFocal.apply(pred, onehot, gamma, alpha)
    if weight is not None:
        weight = weight.float()
        if weight.dim() == 1:
            weight = weight[:, None]
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


@MODELS.register_module()
class FocalLoss(nn.Module):
    """``forward(pred [n, C], target [n], weight [n] or None, avg_factor)``; sigmoid form only."""

    fp16_enabled = False

    def __init__(self, use_sigmoid: bool = True, gamma: float = 2.0, alpha: float = 0.25,
                 reduction: str = 'mean', loss_weight: float = 1.0) -> None:
        super().__init__()
        if not use_sigmoid:
            raise ConfigError('FocalLoss: only the sigmoid form (use_sigmoid=True) is implemented')
        self.use_sigmoid = use_sigmoid
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = reduction
        self.loss_weight = loss_weight

    @force_fp32(apply_to=('pred', ))
    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None, reduction_override: Optional[str] = None) -> Tensor:
        reduction = check_reduction(reduction_override, self.reduction)
        loss = sigmoid_focal_loss(pred, target, weight, self.gamma, self.alpha, reduction, avg_factor)
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return f'gamma={self.gamma}, alpha={self.alpha}, loss_weight={self.loss_weight}'
