"""RoIAlign of each RoI on its pyramid level (:func:`roi_align_levels`): a sparse weighted sum over the
pyramid's pixels on the CPU, torchvision's kernel elsewhere.

RoIAlign is linear in the features: each output cell averages bilinear samples, i.e. a weighted sum
of at most ``4 * grid_h * grid_w`` feature pixels. With every level's features as rows of one
[P, C] matrix (P = the pixels of all levels and images, channels last), the pooled cells of all
RoIs are ``M @ features`` for a sparse ``M [num_rois * ph * pw, P]``, and the features' gradient is
``M^T @ grad``. Both run as ``embedding_bag`` sums (one multi-threaded pass each; torchvision's CPU
kernel computes the sample weights per channel and scatters its backward one sample at a time).
The numbers are torchvision's ``roi_align`` (``aligned``, adaptive ``sampling_ratio=0`` included)
up to float rounding.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align


def _axis_taps(start: Tensor, bin_size: Tensor, grid: int, num_bins: int, size: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear taps along one axis for RoIs that share ``grid`` samples per bin (torchvision's
    sample positions and edge rules).

    Args:
        start, bin_size, size: [n] RoI start and bin size in feature pixels, and the level's extent.

    Returns:
        index [n, num_bins, grid, 2] (low, high pixel) and weight [n, num_bins, grid, 2]; a sample
        outside [-1, size] weighs 0.
    """
    bins = torch.arange(num_bins, dtype=start.dtype, device=start.device)
    steps = torch.arange(grid, dtype=start.dtype, device=start.device) + 0.5
    coord = (start[:, None, None] + bins[None, :, None] * bin_size[:, None, None]
             + steps[None, None, :] * bin_size[:, None, None] / grid)
    size = size.to(start.dtype)[:, None, None]
    used = (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.floor()
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    coord = torch.where(at_edge, low, coord)
    frac = coord - low
    high = torch.where(at_edge, low, low + 1)
    index = torch.stack([low, high], dim=-1).long()
    weight = torch.stack([1 - frac, frac], dim=-1) * used[..., None]
    return index, weight


class PoolMatrix:
    """The sparse ``M``: row r's entries are ``cols[offsets[r]:offsets[r + 1]]`` with ``weights``.

    Attributes:
        offsets: [R + 1] int64, cols: [nnz] int64 (pixel rows of the [P, C] features),
        weights: [nnz] float32, num_cols: P.
    """

    def __init__(self, offsets: Tensor, cols: Tensor, weights: Tensor, num_cols: int) -> None:
        self.offsets, self.cols, self.weights, self.num_cols = offsets, cols, weights, num_cols

    @property
    def num_rows(self) -> int:
        return self.offsets.numel() - 1

    def apply(self, flat: Tensor) -> Tensor:
        """``M @ flat``: [P, C] -> [R, C] (no autograd: see :class:`_SparsePool`)."""
        return F.embedding_bag(self.cols, flat, self.offsets, mode='sum', per_sample_weights=self.weights,
                               include_last_offset=True)

    def transposed(self) -> 'PoolMatrix':
        """``M^T`` in the same form (entries grouped by column, a stable sort)."""
        order = torch.argsort(self.cols, stable=True)
        rows = torch.repeat_interleave(torch.arange(self.num_rows, device=self.cols.device), self.offsets.diff())
        counts = torch.bincount(self.cols, minlength=self.num_cols)
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return PoolMatrix(offsets, rows[order], self.weights[order], self.num_rows)


class _SparsePool(torch.autograd.Function):
    """``M @ stack_levels(feats)``; backward ``M^T @ grad``, split back into the levels (their
    dtypes, channels_last strides)."""

    @staticmethod
    def forward(ctx, matrix: PoolMatrix, *feats: Tensor) -> Tensor:
        ctx.matrix = matrix
        ctx.levels = [(f.shape, f.dtype) for f in feats]
        return matrix.apply(stack_levels(feats))

    @staticmethod
    def backward(ctx, grad: Tensor):
        if not any(ctx.needs_input_grad[1:]):
            return (None,) * (1 + len(ctx.levels))
        grad_flat = ctx.matrix.transposed().apply(grad.contiguous())
        grads, start = [], 0
        for (b, c, h, w), dtype in ctx.levels:
            grads.append(grad_flat[start:start + b * h * w].view(b, h, w, c).permute(0, 3, 1, 2).to(dtype))
            start += b * h * w
        return (None, *grads)


def pool_matrix(rois: Tensor, levels: Tensor, shapes: Sequence[tuple[int, int, int]], scales: Sequence[float],
                output_size: tuple[int, int], sampling_ratio: int = 0, aligned: bool = True) -> PoolMatrix:
    """The RoIAlign weights of ``rois`` on the pyramid levels ``levels``.

    Args:
        rois: [n, 5] (batch_idx, x1, y1, x2, y2) in image pixels.
        levels: [n] int64 pyramid level of each RoI.
        shapes: (B, H, W) of each level; the levels' pixels are stacked level by level, each in
            (image, y, x) order, as :func:`stack_levels` lays them out.
        scales: spatial scale (1 / stride) of each level.

    Returns:
        the matrix with rows in (RoI, ph, pw) order and columns indexing the stacked pixels.
    """
    ph, pw = output_size
    device = rois.device
    rois = rois.float()
    heights = torch.tensor([s[1] for s in shapes], device=device)[levels]
    widths = torch.tensor([s[2] for s in shapes], device=device)[levels]
    starts = torch.tensor([0] + [b * h * w for b, h, w in shapes], device=device).cumsum(0)[levels]
    base = starts + rois[:, 0].long() * heights * widths
    scale = torch.tensor(list(scales), dtype=torch.float32, device=device)[levels]
    offset = 0.5 if aligned else 0.0
    x1, y1 = rois[:, 1] * scale - offset, rois[:, 2] * scale - offset
    roi_w, roi_h = rois[:, 3] * scale - offset - x1, rois[:, 4] * scale - offset - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = roi_w / pw, roi_h / ph
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full_like(levels, sampling_ratio)
    else:
        grid_h = torch.ceil(bin_h).long().clamp(min=0)
        grid_w = torch.ceil(bin_w).long().clamp(min=0)
    per_cell = 4 * grid_h * grid_w
    per_roi = per_cell * (ph * pw)
    roi_start = per_roi.cumsum(0) - per_roi
    nnz = int(per_roi.sum())
    cols = torch.empty(nnz, dtype=torch.long, device=device)
    weights = torch.empty(nnz, dtype=torch.float32, device=device)
    key = grid_h * (int(grid_w.max()) + 1) + grid_w if len(rois) else grid_h
    for k in torch.unique(key).tolist():
        members = torch.nonzero(key == k).squeeze(1)
        gh, gw = int(grid_h[members[0]]), int(grid_w[members[0]])
        if gh == 0 or gw == 0:
            continue
        y_index, y_weight = _axis_taps(y1[members], bin_h[members], gh, ph, heights[members])
        x_index, x_weight = _axis_taps(x1[members], bin_w[members], gw, pw, widths[members])
        y_weight = y_weight / (gh * gw)
        n = members.numel()
        # [n, ph, pw, gh, 2, gw, 2]: output cell, then y sample and tap, then x sample and tap
        c = (base[members][:, None, None, None, None, None, None]
             + (y_index * widths[members][:, None, None, None])[:, :, None, :, :, None, None]
             + x_index[:, None, :, None, None, :, :])
        w = y_weight[:, :, None, :, :, None, None] * x_weight[:, None, :, None, None, :, :]
        if n == len(rois):
            cols.copy_(c.reshape(-1))
            weights.copy_(w.reshape(-1))
        else:
            dest = (roi_start[members][:, None] + torch.arange(c[0].numel(), device=device)).reshape(-1)
            cols[dest] = c.reshape(-1)
            weights[dest] = w.reshape(-1)
    row_sizes = per_cell.repeat_interleave(ph * pw)
    offsets = torch.cat([row_sizes.new_zeros(1), row_sizes.cumsum(0)])
    return PoolMatrix(offsets, cols, weights, sum(b * h * w for b, h, w in shapes))


def stack_levels(feats: Sequence[Tensor]) -> Tensor:
    """The levels' features as rows of one fp32 [P, C] matrix, level by level, each (image, y, x).

    One copy per level (a cast from bf16 / fp16 included); channels_last levels copy contiguously."""
    channels = feats[0].size(1)
    flat = feats[0].new_empty((sum(f.numel() // channels for f in feats), channels), dtype=torch.float32)
    start = 0
    for f in feats:
        b, _, h, w = f.shape
        flat[start:start + b * h * w].view(b, h, w, channels).copy_(f.permute(0, 2, 3, 1))
        start += b * h * w
    return flat


def _sparse_roi_align_levels(feats: Sequence[Tensor], rois: Tensor, levels: Tensor, output_size: tuple[int, int],
                            scales: Sequence[float], sampling_ratio: int = 0, aligned: bool = True) -> Tensor:
    """RoIAlign of each RoI on its own level in one sparse product (see the module docstring).

    Args:
        feats: per level [B, C, H_l, W_l] (any float dtype; pooled in fp32).
        rois: [n, 5] (batch_idx, x1, y1, x2, y2) in image pixels.
        levels: [n] int64 level of each RoI.
        scales: spatial scale of each level.

    Returns:
        [n, C, ph, pw] fp32, contiguous: a box head's flatten is then a view, where the pooled cells'
        own (n, ph, pw, C) layout would need a second copy of them alive beside the first.
    """
    ph, pw = output_size
    channels = feats[0].size(1)
    if rois.size(0) == 0:
        return feats[0].new_zeros((0, channels, ph, pw), dtype=torch.float32)
    matrix = pool_matrix(rois, levels, [tuple(f.shape[i] for i in (0, 2, 3)) for f in feats], scales, output_size,
                         sampling_ratio, aligned)
    pooled = _SparsePool.apply(matrix, *feats)
    return pooled.view(rois.size(0), ph, pw, channels).permute(0, 3, 1, 2).contiguous()


def roi_align_levels(feats: Sequence[Tensor], rois: Tensor, levels: Tensor, output_size: tuple[int, int],
                     scales: Sequence[float], sampling_ratio: int = 0, aligned: bool = True) -> Tensor:
    """RoIAlign of each RoI on its level, in fp32: the sparse form on the CPU, torchvision's kernel
    (one call per level) elsewhere. Returns [n, C, ph, pw]."""
    if feats[0].device.type == 'cpu':
        return _sparse_roi_align_levels(feats, rois, levels, output_size, scales, sampling_ratio, aligned)
    rois = rois.float()
    pooled = feats[0].new_zeros((rois.size(0), feats[0].size(1), *output_size), dtype=torch.float32)
    for level, (feat, scale) in enumerate(zip(feats, scales)):
        inds = torch.nonzero(levels == level).squeeze(1)
        if inds.numel():
            pooled[inds] = tv_roi_align(feat.float(), rois[inds], output_size, spatial_scale=scale,
                                        sampling_ratio=sampling_ratio, aligned=aligned)
    return pooled
