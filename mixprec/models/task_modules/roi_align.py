"""RoIAlign as a sparse matrix product, for fast training on the CPU.

RoIAlign is linear in the features: each output cell averages bilinear samples, i.e. a weighted sum
of at most ``4 * grid_h * grid_w`` feature pixels. Writing those weights as a sparse matrix
``M [num_rois * ph * pw, B * H * W]`` gives ``out = M @ features`` and ``grad_features = M^T @
grad_out``: two multi-threaded sparse products, where torchvision's CPU backward scatters one sample
at a time. The numbers are torchvision's (``aligned``, adaptive ``sampling_ratio=0`` included),
up to float rounding.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align


def _axis_weights(start: Tensor, bin_size: Tensor, grid: Tensor, num_bins: int, g_max: int,
                  size: int) -> tuple[Tensor, Tensor]:
    """Bilinear taps along one axis.

    Args:
        start, bin_size, grid: [n] RoI start, bin size and samples per bin (in feature pixels).

    Returns:
        index [n, num_bins, g_max, 2] (low, high pixel) and weight [n, num_bins, g_max, 2]; samples
        beyond ``grid`` or outside [-1, size] weigh 0.
    """
    bins = torch.arange(num_bins, dtype=start.dtype, device=start.device)
    steps = torch.arange(g_max, dtype=start.dtype, device=start.device)
    step = (bin_size / grid.clamp(min=1))[:, None, None]
    coord = start[:, None, None] + bins[None, :, None] * bin_size[:, None, None] + (steps[None, None, :] + 0.5) * step
    used = (steps[None, None, :] < grid[:, None, None]) & (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.floor()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    coord = torch.where(at_edge, low, coord)
    frac = coord - low
    high = torch.where(at_edge, low, low + 1)
    index = torch.stack([low, high], dim=-1).long()
    weight = torch.stack([1 - frac, frac], dim=-1) * used[..., None].to(frac.dtype)
    return index, weight


def _bucket_entries(rois: Tensor, grid_h: Tensor, grid_w: Tensor, g_max: int, output_size: tuple[int, int],
                    height: int, width: int, x1: Tensor, y1: Tensor, bin_w: Tensor,
                    bin_h: Tensor) -> tuple[Tensor, Tensor]:
    """Column indices and weights of the matrix rows of RoIs whose grids fit in ``g_max``.

    Returns flat tensors in row-major order: per output cell, ``4 * grid_h * grid_w`` entries.
    """
    ph, pw = output_size
    y_index, y_weight = _axis_weights(y1, bin_h, grid_h, ph, g_max, height)
    x_index, x_weight = _axis_weights(x1, bin_w, grid_w, pw, g_max, width)
    batch = rois[:, 0].long() * (height * width)
    # [n, ph, pw, g, 2, g, 2]: output cell, then y sample and tap, then x sample and tap
    cols = (batch[:, None, None, None, None, None, None]
            + y_index[:, :, None, :, :, None, None] * width + x_index[:, None, :, None, None, :, :])
    weights = y_weight[:, :, None, :, :, None, None] * x_weight[:, None, :, None, None, :, :]
    count = (grid_h * grid_w).clamp(min=1).to(weights.dtype)
    weights = weights / count[:, None, None, None, None, None, None]
    steps = torch.arange(g_max, device=rois.device)
    keep = ((steps[None, :] < grid_h[:, None])[:, None, None, :, None, None, None]
            & (steps[None, :] < grid_w[:, None])[:, None, None, None, None, :, None])
    keep = keep.expand_as(cols)
    return cols[keep], weights[keep]


def sparse_roi_align(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                     sampling_ratio: int = 0, aligned: bool = True) -> Tensor:
    """torchvision's ``roi_align`` as ``M @ features`` (see the module docstring).

    Args:
        features: [B, C, H, W] float32.
        rois: [n, 5] (batch_idx, x1, y1, x2, y2) in image pixels.

    Returns:
        [n, C, ph, pw].
    """
    num_imgs, channels, height, width = features.shape
    ph, pw = output_size
    num_rois = rois.size(0)
    if num_rois == 0:
        return features.new_zeros((0, channels, ph, pw))
    offset = 0.5 if aligned else 0.0
    x1, y1 = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset
    roi_w, roi_h = rois[:, 3] * spatial_scale - offset - x1, rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = roi_w / pw, roi_h / ph
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full((num_rois,), sampling_ratio, dtype=torch.long, device=rois.device)
    else:
        grid_h, grid_w = torch.ceil(roi_h / ph).long().clamp(min=0), torch.ceil(roi_w / pw).long().clamp(min=0)
    g = torch.maximum(grid_h, grid_w)
    order = torch.argsort(g, stable=True)
    cols, vals = [], []
    for g_max in torch.unique(g).tolist():
        members = order[g[order] == g_max]
        c, v = _bucket_entries(rois[members], grid_h[members], grid_w[members], max(g_max, 1), (ph, pw),
                               height, width, x1[members], y1[members], bin_w[members], bin_h[members])
        cols.append(c)
        vals.append(v)
    per_row = (4 * grid_h[order] * grid_w[order]).repeat_interleave(ph * pw)
    crow = torch.cat([per_row.new_zeros(1), per_row.cumsum(0)])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        matrix = torch.sparse_csr_tensor(crow, torch.cat(cols), torch.cat(vals).to(features.dtype),
                                         (num_rois * ph * pw, num_imgs * height * width))
    flat = features.permute(0, 2, 3, 1).reshape(num_imgs * height * width, channels)
    pooled = (matrix @ flat).reshape(num_rois, ph, pw, channels).permute(0, 3, 1, 2)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(num_rois, device=order.device)
    return pooled[inverse]


def roi_align(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
              sampling_ratio: int = 0, aligned: bool = True) -> Tensor:
    """RoIAlign: the sparse-matrix form when training on the CPU, torchvision's kernel otherwise."""
    needs_grad = torch.is_grad_enabled() and features.requires_grad
    if features.device.type == 'cpu' and needs_grad and features.dtype == torch.float32:
        return sparse_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return tv_roi_align(features, rois, output_size, spatial_scale=spatial_scale,
                        sampling_ratio=sampling_ratio, aligned=aligned)
