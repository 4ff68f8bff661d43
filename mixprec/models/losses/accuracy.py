"""Classification accuracy for logging."""
from __future__ import annotations

from torch import Tensor


def accuracy(pred: Tensor, target: Tensor) -> Tensor:
    """Top-1 accuracy in percent of ``pred`` [n, C + 1] scores against ``target`` [n]; 0 when n = 0."""
    if pred.size(0) == 0:
        return pred.new_zeros(()).float()
    correct = (pred.argmax(dim=1) == target).float().sum()
    return correct * (100.0 / pred.size(0))
