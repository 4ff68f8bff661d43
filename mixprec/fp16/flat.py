"""Flat buffers: many parameters' data or gradients as views of one contiguous tensor per dtype,
so that zeroing, copying, the finite check and norms are one kernel each instead of one per tensor."""
from __future__ import annotations

from operator import attrgetter, is_
from typing import Sequence

import torch

_GRAD = attrgetter('grad')


def _layout(t: torch.Tensor) -> str:
    """'dense' (a permutation of a contiguous layout: contiguous, channels_last, transposed),
    'gaps' (non-overlapping with holes: a slice) or 'overlap' (elements may share memory)."""
    span, dense = 1, True
    for stride, size in sorted((s, n) for s, n in zip(t.stride(), t.shape) if n > 1):
        if stride < span:
            return 'overlap'
        dense = dense and stride == span
        span = stride * size
    return 'dense' if dense else 'gaps'


def check_params(named: Sequence[tuple[str, torch.Tensor]]) -> None:
    """Refuse parameters whose elements overlap in memory (an in-place update of one element
    would change others): one line naming the first such parameter."""
    for name, param in named:
        if _layout(param) == 'overlap':
            raise ValueError(f'Fp16OptimizerHook: parameter {name} (shape {tuple(param.shape)}, strides '
                             f'{param.stride()}) has overlapping elements; make it a tensor of its own '
                             '(nn.Parameter(t.clone()))')


def _view_strides(t: torch.Tensor) -> tuple[int, ...]:
    """``t``'s strides when they are dense (contiguous, channels_last, transposed), else contiguous
    ones: a slice with gaps gets a packed view instead of one that runs into its neighbour's."""
    if _layout(t) == 'dense':
        return t.stride()
    return torch.empty(t.shape, device='meta').stride()


def flat_views(tensors: Sequence[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A zeroed flat buffer [sum(numel)] of ``dtype`` and one view per tensor, shaped like it.

    Each view has its tensor's strides when they are dense (a channels_last weight gets a
    channels_last view), so a gradient view keeps autograd's layout contract and two flat buffers
    built from tensors of the same layouts line up element for element.
    """
    device = tensors[0].device
    flat = torch.zeros(sum(t.numel() for t in tensors), dtype=dtype, device=device)
    views, offset = [], 0
    for t in tensors:
        views.append(flat.as_strided(t.shape, _view_strides(t), offset))
        offset += t.numel()
    return flat, views


def homogeneous_groups(*lists: Sequence[torch.Tensor]) -> list[tuple[list[torch.Tensor], ...]]:
    """Split parallel tensor lists into groups in each of which every list's tensors share one device
    and one dtype (the i-th tensors of all lists stay together, order kept within a group).

    For ``torch._foreach_*``: CUDA's multi-tensor kernels are chosen from the first tensor of a
    list, and in a range of releases ``_foreach_copy_`` took its fast path for destinations of
    mixed dtypes (fixed upstream in PyTorch PR 173531), writing e.g. halves into fp32 storage.
    Compute the groups once where the lists do not change, and make one call per group.
    """
    groups: dict[tuple, tuple[list[torch.Tensor], ...]] = {}
    for items in zip(*lists):
        key = tuple((t.device, t.dtype) for t in items)
        group = groups.get(key)
        if group is None:
            group = groups[key] = tuple([] for _ in lists)
        for members, t in zip(group, items):
            members.append(t)
    return list(groups.values())


def all_attached(tensors: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> bool:
    """Whether ``tensors[i].grad is grads[i]`` for all i (iterated in C, no Python loop body)."""
    return all(map(is_, map(_GRAD, tensors), grads))


class FlatGrads:
    """The ``.grad`` of ``params`` kept as views of one flat buffer per dtype, and which of them
    received a gradient in the current accumulation window.

    ``params`` must be ordered with equal dtypes adjacent; then ``flats`` (one per dtype run, in
    order) concatenated line up with the parameters. Autograd accumulates into an existing
    ``.grad`` in place and DDP (gradient_as_bucket_view=False) copies its reduced buckets into it,
    so the views stay valid. A gradient hook on each parameter marks it in ``touched`` (a byte
    per parameter, also readable as the tensor ``touched_mask``) and, only when something replaced
    or dropped its ``.grad`` since (``zero_grad()``, an assignment), puts the view back first with
    what an fp32 run would hold: nothing at a window's first gradient (fp32 zeroes there), the
    replacement's value (or zero for None) inside a window.
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
        self.touched = bytearray(len(self.params))
        self.touched_mask = (torch.frombuffer(self.touched, dtype=torch.uint8) if self.params
                             else torch.zeros(0, dtype=torch.uint8))
        for param, view in zip(self.params, self.views):
            param.grad = view
        self._handles = [p.register_hook(self._grad_hook(i)) for i, p in enumerate(self.params)]

    def _grad_hook(self, i: int):
        param, view, touched = self.params[i], self.views[i], self.touched

        def hook(grad: torch.Tensor) -> None:
            if param.grad is not view:
                self._reattach(i, inside_window=bool(touched[i]))
            touched[i] = 1
        return hook

    def _reattach(self, i: int, inside_window: bool) -> None:
        param, view = self.params[i], self.views[i]
        with torch.no_grad():
            if not inside_window or param.grad is None:
                view.zero_()
            else:
                view.copy_(param.grad)
        param.grad = view

    def all_touched(self) -> bool:
        return bool(self.touched_mask.all()) if self.params else True

    def untouched(self) -> list[int]:
        return self.touched_mask.logical_not().nonzero().flatten().tolist()

    def start_window(self) -> None:
        """Zero the gradients and forget which parameters received one."""
        for flat in self.flats:
            flat.zero_()
        self.touched_mask.zero_()

    def drop_untouched(self, untouched: Sequence[int]) -> None:
        """``.grad = None`` for ``untouched`` parameters, as fp32's zero_grad(set_to_none) leaves
        them; their hooks re-attach the views when they next receive a gradient."""
        for i in untouched:
            self.params[i].grad = None

    def adopt_foreign(self) -> None:
        """Take into the views the grads someone else created during backward (DDP fills a
        locally unused parameter's None grad with the reduced bucket) and mark them received."""
        if all_attached(self.params, self.views):
            return
        for i, (param, view) in enumerate(zip(self.params, self.views)):
            if param.grad is not None and param.grad is not view:
                with torch.no_grad():
                    view.copy_(param.grad)
                param.grad = view
                self.touched[i] = 1

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
