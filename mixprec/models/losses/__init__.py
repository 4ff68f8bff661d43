"""Losses, registered in MODELS; every one computes in fp32."""
from .accuracy import accuracy
from .cross_entropy_loss import CrossEntropyLoss, binary_cross_entropy, cross_entropy, mask_cross_entropy
from .focal_loss import FocalLoss, sigmoid_focal_loss
from .iou_loss import BoundedIoULoss, CIoULoss, DIoULoss, GIoULoss, IoULoss
from .l1_loss import BalancedL1Loss, L1Loss, SmoothL1Loss
from .utils import reduce_loss, weight_reduce_loss

__all__ = [
    'accuracy', 'CrossEntropyLoss', 'binary_cross_entropy', 'cross_entropy', 'mask_cross_entropy',
    'FocalLoss', 'sigmoid_focal_loss', 'L1Loss', 'SmoothL1Loss',
    'BalancedL1Loss', 'IoULoss', 'GIoULoss', 'DIoULoss', 'CIoULoss', 'BoundedIoULoss', 'reduce_loss', 'weight_reduce_loss',
]
