"""RoI feature extraction from a feature pyramid."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from mixprec.fp16 import force_fp32
from mixprec.ops import roi_align_levels
from mixprec.registry import MODELS, ConfigError


@MODELS.register_module()
class SingleRoIExtractor(nn.Module):
    """Pool each RoI from the one pyramid level that matches its size (FPN paper, eq. 1).

    level = floor(log2(sqrt(w * h) / finest_scale + 1e-6)), clamped to the available levels, so
    with finest_scale 56 RoIs under 112 px go to stride 4, under 224 px to stride 8, and so on.

    Args:
        roi_layer: ``dict(type='RoIAlign', output_size=7, sampling_ratio=0, aligned=True)``;
            pooled with torchvision's RoIAlign numbers (one sparse product over all levels on the CPU).
        out_channels: channels of the feature maps (and of the pooled features).
        featmap_strides: stride of each level used, finest first.
        finest_scale: RoI scale mapped to the first level.
    """

    def __init__(self, roi_layer: dict, out_channels: int, featmap_strides: Sequence[int],
                 finest_scale: int = 56) -> None:
        super().__init__()
        layer = dict(roi_layer)
        layer_type = layer.pop('type', 'RoIAlign')
        if layer_type != 'RoIAlign':
            raise ConfigError(f'SingleRoIExtractor: roi_layer type must be RoIAlign, got {layer_type!r}')
        output_size = layer.pop('output_size')
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        self.sampling_ratio = int(layer.pop('sampling_ratio', 0))
        self.aligned = bool(layer.pop('aligned', True))
        if layer:
            raise ConfigError(f'SingleRoIExtractor: unsupported roi_layer keys {sorted(layer)}')
        self.out_channels = out_channels
        self.featmap_strides = list(featmap_strides)
        self.finest_scale = finest_scale
        self.fp16_enabled = False

    @property
    def num_inputs(self) -> int:
        """Number of pyramid levels the extractor reads (the first ``num_inputs`` of the neck)."""
        return len(self.featmap_strides)

    def map_roi_levels(self, rois: Tensor, num_levels: int) -> Tensor:
        """Pyramid level of each RoI.

        Args:
            rois: [k, 5] (batch_idx, x1, y1, x2, y2).
            num_levels: number of levels.

        Returns:
            [k] int64 levels in [0, num_levels - 1].
        """
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return levels.clamp(min=0, max=num_levels - 1).long()

    @force_fp32(apply_to=(), out_fp16=True)
    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        """Pool RoI features in fp32 (half features are cast as they are read).

        Args:
            feats: per level [B, C, H_l, W_l]; only the first ``num_inputs`` are read.
            rois: [k, 5] (batch_idx, x1, y1, x2, y2) in input-image pixels.

        Returns:
            [k, C, *output_size] pooled features (fp32; the half dtype under ``fp16_enabled``).
        """
        num_levels = self.num_inputs
        rois = rois.float()
        if rois.size(0) == 0:
            return feats[0].new_zeros((0, self.out_channels, *self.output_size), dtype=torch.float32)
        levels = self.map_roi_levels(rois, num_levels)
        return roi_align_levels(feats[:num_levels], rois, levels, self.output_size,
                                [1.0 / s for s in self.featmap_strides], self.sampling_ratio, self.aligned)
