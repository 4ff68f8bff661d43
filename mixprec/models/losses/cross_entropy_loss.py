"""Softmax / sigmoid / mask cross-entropy."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixprec.fp16 import force_fp32
from mixprec.registry import MODELS, ConfigError

from .utils import check_reduction, weight_reduce_loss


def cross_entropy(pred: Tensor, label: Tensor, weight: Optional[Tensor] = None,
                  reduction: str = 'mean', avg_factor: Optional[float] = None,
                  class_weight: Optional[Tensor] = None) -> Tensor:
    """Softmax CE. pred [n, C + 1] logits, label [n] in 0..C, weight [n]."""
    loss = F.cross_entropy(pred.float(), label, weight=class_weight, reduction='none')
    if weight is not None:
        weight = weight.float()
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def expand_onehot_labels(labels: Tensor, num_classes: int) -> Tensor:
    """[n] labels in 0..C (C = background) -> [n, C] float one-hot; background and negative
    (ignored) labels give all-zero rows."""
    onehot = torch.zeros((labels.size(0), num_classes), dtype=torch.float32, device=labels.device)
    fg = torch.nonzero((labels >= 0) & (labels < num_classes), as_tuple=False).squeeze(1)
    onehot[fg, labels[fg]] = 1.0
    return onehot


def binary_cross_entropy(pred: Tensor, label: Tensor, weight: Optional[Tensor] = None,
                         reduction: str = 'mean', avg_factor: Optional[float] = None,
                         class_weight: Optional[Tensor] = None) -> Tensor:
    """Sigmoid BCE. pred [n, C] logits; label [n] class indices (C = background) or [n, C] targets."""
    pred = pred.float()
    if pred.dim() != label.dim():
        valid = (label >= 0).float()
        label = expand_onehot_labels(label, pred.size(-1))
        if weight is not None:
            weight = weight.float()[:, None] * valid[:, None]
        else:
            weight = valid[:, None].expand_as(label)
    elif weight is not None:
        weight = weight.float()
    loss = F.binary_cross_entropy_with_logits(pred, label.float(), pos_weight=class_weight, reduction='none')
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def mask_cross_entropy(pred: Tensor, target: Tensor, label: Tensor,
                       class_weight: Optional[Tensor] = None) -> Tensor:
    """Mean BCE of each RoI's mask logits on its gt class channel.

    pred [n, C, h, w] (or [n, 1, h, w] class-agnostic), target [n, h, w], label [n].
    """
    if pred.size(1) == 1:
        pred_slice = pred[:, 0]
    else:
        pred_slice = pred[torch.arange(pred.size(0), device=pred.device), label]
    return F.binary_cross_entropy_with_logits(pred_slice.float(), target.float(), weight=class_weight,
                                              reduction='mean')


@MODELS.register_module()
class CrossEntropyLoss(nn.Module):
    """Cross-entropy in one of three forms.

    - softmax (default): ``forward(cls_score [n, C + 1], label [n], weight [n])``;
    - ``use_sigmoid``: BCE with one-hot targets, background (label C) all zeros:
      ``forward(cls_score [n, C], label [n], weight [n])``;
    - ``use_mask``: ``forward(mask_pred [n, C, h, w], mask_targets [n, h, w], labels [n])``: the
      third argument is the RoIs' gt labels, the loss the mean BCE on those channels.
    """

    fp16_enabled = False

    def __init__(self, use_sigmoid: bool = False, use_mask: bool = False, reduction: str = 'mean',
                 class_weight: Optional[Sequence[float]] = None, loss_weight: float = 1.0) -> None:
        super().__init__()
        if use_sigmoid and use_mask:
            raise ConfigError('CrossEntropyLoss: use_sigmoid and use_mask are exclusive')
        self.use_sigmoid = use_sigmoid
        self.use_mask = use_mask
        self.reduction = reduction
        self.class_weight = list(class_weight) if class_weight is not None else None
        self.loss_weight = loss_weight

    @force_fp32(apply_to=('pred', ))
    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None, reduction_override: Optional[str] = None) -> Tensor:
        reduction = check_reduction(reduction_override, self.reduction)
        class_weight = pred.new_tensor(self.class_weight).float() if self.class_weight is not None else None
        if self.use_mask:
            loss = mask_cross_entropy(pred, target, weight, class_weight)
        elif self.use_sigmoid:
            loss = binary_cross_entropy(pred, target, weight, reduction, avg_factor, class_weight)
        else:
            loss = cross_entropy(pred, target, weight, reduction, avg_factor, class_weight)
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return f'use_sigmoid={self.use_sigmoid}, use_mask={self.use_mask}, loss_weight={self.loss_weight}'
