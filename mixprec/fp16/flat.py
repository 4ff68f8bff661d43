"""Flat buffers: many parameters' data or gradients as views of one contiguous tensor per dtype,
so that zeroing, copying, the finite check and norms are one kernel each instead of one per tensor."""
from __future__ import annotations

from typing import Sequence

import torch


def flat_views(tensors: Sequence[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A zeroed flat buffer [sum(numel)] of ``dtype`` and one view per tensor, shaped like it.

    Each view has its tensor's strides (a channels_last weight gets a channels_last view), so a
    gradient view keeps autograd's layout contract and two flat buffers built from tensors of the
    same layouts line up element for element.
    """
    device = tensors[0].device
    flat = torch.zeros(sum(t.numel() for t in tensors), dtype=dtype, device=device)
    views, offset = [], 0
    for t in tensors:
        views.append(flat.as_strided(t.shape, t.stride(), offset))
        offset += t.numel()
    return flat, views


class FlatGrads:
    """The ``.grad`` of ``params`` kept as views of one flat buffer per dtype.

    ``params`` must be ordered with equal dtypes adjacent; then ``flats`` (one per dtype run, in
    order) concatenated line up with the parameters. Autograd accumulates into an existing
    ``.grad`` in place and DDP (gradient_as_bucket_view=False) copies its reduced buckets into it,
    so the views stay valid; ``ensure_attached`` re-attaches them if someone set grads to None.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter]) -> None:
        self.params = list(params)
        self.flats: list[torch.Tensor] = []
        self.views: list[torch.Tensor] = []
        start = 0
        for end in range(1, len(self.params) + 1):
            if end == len(self.params) or self.params[end].dtype != self.params[start].dtype:
                flat, views = flat_views(self.params[start:end], self.params[start].dtype)
                self.flats.append(flat)
                self.views.extend(views)
                start = end
        self.attach()

    def attach(self) -> None:
        """Point every parameter's ``.grad`` at its view (one pass, not on the hot path)."""
        for param, view in zip(self.params, self.views):
            if param.grad is not None and param.grad is not view:
                view.copy_(param.grad)
            param.grad = view

    def ensure_attached(self) -> bool:
        """Cheap check (first and last parameter) that the views are still the grads; re-attach if
        not. Returns True when it had to re-attach."""
        if not self.params:
            return False
        if self.params[0].grad is self.views[0] and self.params[-1].grad is self.views[-1]:
            return False
        self.attach()
        return True

    def zero_(self) -> None:
        for flat in self.flats:
            flat.zero_()
