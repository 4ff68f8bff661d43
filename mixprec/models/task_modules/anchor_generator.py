"""Anchor generation for dense heads (mmdetection v2 conventions, DESIGN.md §6)."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from mixprec.registry import TASK_UTILS, ConfigError

Stride = Union[int, Sequence[int]]


def _pair(stride: Stride) -> tuple[int, int]:
    if isinstance(stride, (tuple, list)):
        return int(stride[0]), int(stride[1])
    return int(stride), int(stride)


@TASK_UTILS.register_module()
class AnchorGenerator:
    """Anchors for multi-level feature maps.

    Per level, ``len(ratios) * len(scales)`` base anchors centred at
    ``(center_offset * base_size, center_offset * base_size)``, in ratio-major order
    (``ratio_idx * num_scales + scale_idx``); an anchor of ratio r and scale s has
    ``h = base_size * s * sqrt(r)`` and ``w = base_size * s / sqrt(r)``. They are shifted to every
    location ``(x * stride_w, y * stride_h)`` of the feature map, locations in row-major order.

    Args:
        strides: per level an int or (stride_w, stride_h).
        ratios: height / width ratios.
        scales: anchor scales relative to the base size (exclusive with the octave arguments).
        base_sizes: per level base size (default: the level's stride_w).
        scale_major: ratio-major ordering within a location (True, mmdetection's default).
        octave_base_scale, scales_per_octave: scales ``octave_base_scale * 2 ** (i / scales_per_octave)``.
        center_offset: centre of the base anchor as a fraction of the base size.
    """

    def __init__(self, strides: Sequence[Stride], ratios: Sequence[float],
                 scales: Optional[Sequence[float]] = None,
                 base_sizes: Optional[Sequence[int]] = None, scale_major: bool = True,
                 octave_base_scale: Optional[float] = None,
                 scales_per_octave: Optional[int] = None, center_offset: float = 0.) -> None:
        if not 0 <= center_offset <= 1:
            raise ConfigError(f'center_offset must be in [0, 1], got {center_offset}')
        self.strides = [_pair(s) for s in strides]
        self.base_sizes = list(base_sizes) if base_sizes is not None else [s[0] for s in self.strides]
        if len(self.base_sizes) != len(self.strides):
            raise ConfigError(f'base_sizes ({len(self.base_sizes)}) and strides ({len(self.strides)}) '
                             'must have the same length')
        if (scales is None) == (octave_base_scale is None or scales_per_octave is None):
            raise ConfigError('give either scales or both octave_base_scale and scales_per_octave')
        if scales is not None:
            self.scales = torch.tensor(scales, dtype=torch.float32)
        else:
            octave = [2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
            self.scales = torch.tensor(octave, dtype=torch.float32) * octave_base_scale
        self.ratios = torch.tensor(ratios, dtype=torch.float32)
        self.scale_major = scale_major
        self.center_offset = center_offset
        self.base_anchors = [self._base_anchors(size) for size in self.base_sizes]

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def num_base_anchors(self) -> list[int]:
        """Anchors per location, per level."""
        return [a.size(0) for a in self.base_anchors]

    def _base_anchors(self, base_size: int) -> Tensor:
        """[A, 4] anchors of one level around the base centre."""
        ctr = self.center_offset * base_size
        h_ratios = torch.sqrt(self.ratios)
        w_ratios = 1 / h_ratios
        if self.scale_major:
            ws = (base_size * w_ratios[:, None] * self.scales[None, :]).reshape(-1)
            hs = (base_size * h_ratios[:, None] * self.scales[None, :]).reshape(-1)
        else:
            ws = (base_size * self.scales[:, None] * w_ratios[None, :]).reshape(-1)
            hs = (base_size * self.scales[:, None] * h_ratios[None, :]).reshape(-1)
        return torch.stack([ctr - 0.5 * ws, ctr - 0.5 * hs, ctr + 0.5 * ws, ctr + 0.5 * hs], dim=-1)

    def single_level_grid_priors(self, featmap_size: tuple[int, int], level_idx: int,
                                 dtype: torch.dtype = torch.float32,
                                 device: Union[str, torch.device] = 'cpu') -> Tensor:
        """[h * w * A, 4] anchors of one level; index ``(y * w + x) * A + a``."""
        feat_h, feat_w = featmap_size
        stride_w, stride_h = self.strides[level_idx]
        base = self.base_anchors[level_idx].to(device=device, dtype=dtype)
        shift_x = torch.arange(feat_w, device=device).to(dtype) * stride_w
        shift_y = torch.arange(feat_h, device=device).to(dtype) * stride_h
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing='ij')
        xx = xx.reshape(-1)
        yy = yy.reshape(-1)
        shifts = torch.stack([xx, yy, xx, yy], dim=-1)
        return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)

    def grid_priors(self, featmap_sizes: Sequence[tuple[int, int]],
                    dtype: torch.dtype = torch.float32,
                    device: Union[str, torch.device] = 'cpu') -> list[Tensor]:
        """Per level [h_l * w_l * A_l, 4] anchors for feature maps of sizes ``(h_l, w_l)``."""
        if len(featmap_sizes) != self.num_levels:
            raise ValueError(f'got {len(featmap_sizes)} feature maps for {self.num_levels} anchor levels')
        return [self.single_level_grid_priors(tuple(size), i, dtype=dtype, device=device)
                for i, size in enumerate(featmap_sizes)]

    def valid_flags(self, featmap_sizes: Sequence[tuple[int, int]], pad_shape: Sequence[int],
                    device: Union[str, torch.device] = 'cpu') -> list[Tensor]:
        """Per level [h_l * w_l * A_l] bool: the anchor's location lies inside the padded image.

        ``pad_shape`` is the image's own padded (h, w): locations beyond it (added when the batch
        was padded to a common size) are invalid.
        """
        pad_h, pad_w = int(pad_shape[0]), int(pad_shape[1])
        flags = []
        for i, (feat_h, feat_w) in enumerate(featmap_sizes):
            stride_w, stride_h = self.strides[i]
            valid_h = min(int(math.ceil(pad_h / stride_h)), feat_h)
            valid_w = min(int(math.ceil(pad_w / stride_w)), feat_w)
            valid_x = torch.arange(feat_w, device=device) < valid_w
            valid_y = torch.arange(feat_h, device=device) < valid_h
            valid = (valid_y[:, None] & valid_x[None, :]).reshape(-1)
            flags.append(valid[:, None].expand(valid.numel(), self.num_base_anchors[i]).reshape(-1))
        return flags

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(strides={self.strides}, ratios={self.ratios.tolist()}, '
                f'scales={self.scales.tolist()}, base_sizes={self.base_sizes})')
