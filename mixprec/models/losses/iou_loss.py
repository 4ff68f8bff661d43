"""IoU-family box losses on absolute boxes (mmdetection v2.28's iou_loss.py semantics).

The predictions are decoded boxes ``[n, 4]`` (x1, y1, x2, y2), so the heads using these losses set
``reg_decoded_bbox=True``. All share :func:`bbox_overlaps` and compute in fp32.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from mixprec.fp16 import force_fp32
from mixprec.models.task_modules.bbox_ops import bbox_overlaps
from mixprec.registry import MODELS, ConfigError

from .utils import as_fp32, check_reduction, weight_reduce_loss

IOU_MODES = ('linear', 'square', 'log')


def iou_loss(pred: Tensor, target: Tensor, mode: str = 'log', eps: float = 1e-6) -> Tensor:
    """[n] loss of aligned boxes: 1 - IoU ('linear'), 1 - IoU^2 ('square') or -log IoU ('log');
    the IoU is clamped to ``eps`` first."""
    ious = bbox_overlaps(pred, target, is_aligned=True).clamp(min=eps)
    if mode == 'linear':
        return 1 - ious
    if mode == 'square':
        return 1 - ious ** 2
    return -ious.log()


def giou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """[n] 1 - GIoU (Rezatofighi et al., 2019)."""
    return 1 - bbox_overlaps(pred, target, mode='giou', is_aligned=True, eps=eps)


def _centre_penalty(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    """[n] squared centre distance over the squared diagonal of the enclosing box."""
    enclose_wh = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).clamp(min=0)
    diag2 = enclose_wh.pow(2).sum(-1) + eps
    centre_d2 = ((target[:, :2] + target[:, 2:]) - (pred[:, :2] + pred[:, 2:])).pow(2).sum(-1) / 4
    return centre_d2 / diag2


def diou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """[n] 1 - DIoU: 1 - IoU + centre distance penalty (Zheng et al., 2020)."""
    ious = bbox_overlaps(pred, target, is_aligned=True, eps=eps)
    return 1 - (ious - _centre_penalty(pred, target, eps))


def ciou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """[n] 1 - CIoU: DIoU plus the aspect-ratio term ``alpha * v``; ``alpha`` (no gradient) is 0
    where IoU <= 0.5, as in mmdetection v2; CIoU is clamped to [-1, 1]."""
    ious = bbox_overlaps(pred, target, is_aligned=True, eps=eps)
    w1, h1 = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1] + eps
    w2, h2 = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1] + eps
    v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = (ious > 0.5).to(v.dtype) * v / (1 - ious + v)
    cious = ious - (_centre_penalty(pred, target, eps) + alpha * v)
    return 1 - cious.clamp(min=-1.0, max=1.0)


def bounded_iou_loss(pred: Tensor, target: Tensor, beta: float = 0.2, eps: float = 1e-3) -> Tensor:
    """[n, 4] smooth-L1 (``beta``) of the four bounded-IoU terms dx, dy, dw, dh (Tychsen-Smith and
    Petersson, 2018); the target geometry carries no gradient."""
    pred_ctr = (pred[:, :2] + pred[:, 2:]) * 0.5
    pred_wh = pred[:, 2:] - pred[:, :2]
    target = target.detach()
    target_ctr = (target[:, :2] + target[:, 2:]) * 0.5
    target_wh = target[:, 2:] - target[:, :2]
    d = (target_ctr - pred_ctr).abs()
    loss_dxy = 1 - ((target_wh - 2 * d) / (target_wh + 2 * d + eps)).clamp(min=0)
    loss_dwh = 1 - torch.min(target_wh / (pred_wh + eps), pred_wh / (target_wh + eps))
    loss = torch.cat([loss_dxy, loss_dwh], dim=-1)
    return torch.where(loss < beta, 0.5 * loss * loss / beta, loss - 0.5 * beta)


class _BoxLoss(nn.Module):
    """Shared forward of the IoU family: fp32, weight/avg_factor/reduction as mmdetection v2.
    Args: ``eps`` (1e-6), ``reduction``, ``loss_weight``.

    ``per_box`` losses give one value per box, so a [n, 4] weight is averaged over its last axis;
    BoundedIoULoss gives [n, 4] and takes the weight as it is. A weight without a positive entry
    short-cuts to a zero (IoULoss only when reducing), as in mmdetection v2.
    """

    per_box = True
    zero_weight_shortcut_when_unreduced = True

    def __init__(self, eps: float = 1e-6, reduction: str = 'mean', loss_weight: float = 1.0) -> None:
        super().__init__()
        self.fp16_enabled = False
        self.eps = eps
        self.reduction = check_reduction(None, reduction)
        self.loss_weight = loss_weight

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    @force_fp32(apply_to=('pred', 'target'))
    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None, reduction_override: Optional[str] = None) -> Tensor:
        """pred, target: [n, 4] absolute boxes; weight: [n] or [n, 4]. A weight with no positive
        entry gives ``(pred * weight).sum()`` (a zero that keeps the graph), as mmdetection does."""
        reduction = check_reduction(reduction_override, self.reduction)
        pred, target = as_fp32(pred), as_fp32(target)
        if weight is not None:
            weight = as_fp32(weight)
            if not torch.any(weight > 0) and (reduction != 'none' or self.zero_weight_shortcut_when_unreduced):
                return (pred * (weight[:, None] if pred.dim() == weight.dim() + 1 else weight)).sum()
            if self.per_box and weight.dim() > 1:
                if weight.shape != pred.shape:
                    raise ValueError(f'{type(self).__name__}: weight {tuple(weight.shape)} must be [n] or '
                                     f'the shape of pred {tuple(pred.shape)}')
                weight = weight.mean(-1)
        loss = self.elementwise(pred, target)
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)


@MODELS.register_module()
class IoULoss(_BoxLoss):
    """IoU loss; ``mode`` 'log' (-log IoU, mmdetection v2's default), 'linear' or 'square'.
    ``linear=True`` is the deprecated spelling of ``mode='linear'``."""

    zero_weight_shortcut_when_unreduced = False

    def __init__(self, linear: bool = False, eps: float = 1e-6, reduction: str = 'mean',
                 loss_weight: float = 1.0, mode: str = 'log') -> None:
        if mode not in IOU_MODES:
            raise ConfigError(f'IoULoss: mode must be one of {IOU_MODES}, got {mode!r}')
        super().__init__(eps, reduction, loss_weight)
        if linear:
            warnings.warn("IoULoss(linear=True) is deprecated (as in mmdetection v2); use mode='linear'",
                          DeprecationWarning)
        self.mode = 'linear' if linear else mode

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return iou_loss(pred, target, self.mode, self.eps)


@MODELS.register_module()
class GIoULoss(_BoxLoss):
    """Generalized IoU loss, 1 - GIoU."""

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return giou_loss(pred, target, self.eps)


@MODELS.register_module()
class DIoULoss(_BoxLoss):
    """Distance IoU loss, 1 - DIoU."""

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return diou_loss(pred, target, self.eps)


@MODELS.register_module()
class CIoULoss(_BoxLoss):
    """Complete IoU loss, 1 - CIoU."""

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return ciou_loss(pred, target, self.eps)


@MODELS.register_module()
class BoundedIoULoss(_BoxLoss):
    """Bounded IoU loss: smooth L1 (``beta``) of four per-coordinate IoU bounds, [n, 4]."""

    per_box = False

    def __init__(self, beta: float = 0.2, eps: float = 1e-3, reduction: str = 'mean',
                 loss_weight: float = 1.0) -> None:
        super().__init__(eps, reduction, loss_weight)
        self.beta = beta

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return bounded_iou_loss(pred, target, self.beta, self.eps)
