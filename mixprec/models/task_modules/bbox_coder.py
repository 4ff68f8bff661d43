"""Box <-> delta coding (``dx, dy, dw, dh``), mmdetection v2's DeltaXYWHBBoxCoder."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from mixprec.registry import TASK_UTILS

MaxShape = Optional[Union[Sequence[int], Sequence[Sequence[int]], Tensor]]


@TASK_UTILS.register_module()
class DeltaXYWHBBoxCoder:
    """Encode boxes as normalised centre/size deltas relative to anchors or proposals.

    ``dx = (gx - px) / pw``, ``dw = log(gw / pw)`` (same for y, h), then ``(delta - means) / stds``.
    Decoding clamps ``dw, dh`` to ``|log(wh_ratio_clip)|`` and, with ``clip_border``, clips the
    boxes to the image (``max_shape`` = the resized, unpadded ``(h, w)``).
    """

    def __init__(self, target_means: Sequence[float] = (0., 0., 0., 0.),
                 target_stds: Sequence[float] = (1., 1., 1., 1.), clip_border: bool = True,
                 add_ctr_clamp: bool = False, ctr_clamp: float = 32) -> None:
        self.means = tuple(float(m) for m in target_means)
        self.stds = tuple(float(s) for s in target_stds)
        self.clip_border = clip_border
        self.add_ctr_clamp = add_ctr_clamp
        self.ctr_clamp = ctr_clamp

    def encode(self, bboxes: Tensor, gt_bboxes: Tensor) -> Tensor:
        """Deltas [N, 4] (fp32) that turn ``bboxes`` [N, 4] into ``gt_bboxes`` [N, 4]."""
        if bboxes.shape[:-1] != gt_bboxes.shape[:-1]:
            raise ValueError(f'encode: {tuple(bboxes.shape)} boxes vs {tuple(gt_bboxes.shape)} targets')
        p = bboxes[..., :4].float()
        g = gt_bboxes[..., :4].float()
        pxy = (p[..., :2] + p[..., 2:]) * 0.5
        pwh = p[..., 2:] - p[..., :2]
        gxy = (g[..., :2] + g[..., 2:]) * 0.5
        gwh = g[..., 2:] - g[..., :2]
        deltas = torch.cat([(gxy - pxy) / pwh, torch.log(gwh / pwh)], dim=-1)
        means = deltas.new_tensor(self.means)
        stds = deltas.new_tensor(self.stds)
        return (deltas - means) / stds

    def decode(self, bboxes: Tensor, pred_bboxes: Tensor, max_shape: MaxShape = None,
               wh_ratio_clip: float = 16 / 1000) -> Tensor:
        """Apply deltas to boxes.

        Args:
            bboxes: [N, 4] or [B, N, 4] anchors / proposals.
            pred_bboxes: [..., N, 4 * k] deltas; with k > 1 (class-specific) each group of 4 is
                decoded against the same box.
            max_shape: ``(h, w)`` (extra entries ignored), or per image for batched input; None
                disables clipping.
            wh_ratio_clip: bound of the size change, as a ratio.

        Returns:
            boxes with the shape of ``pred_bboxes``.
        """
        if pred_bboxes.size(-1) % 4 != 0:
            raise ValueError(f'decode: last dim of deltas must be a multiple of 4, got {pred_bboxes.size(-1)}')
        num_per_box = pred_bboxes.size(-1) // 4
        deltas = pred_bboxes.reshape(*pred_bboxes.shape[:-1], num_per_box, 4)
        rois = bboxes[..., None, :4]
        means = deltas.new_tensor(self.means)
        stds = deltas.new_tensor(self.stds)
        denorm = deltas * stds + means
        dxy = denorm[..., :2]
        dwh = denorm[..., 2:]
        pxy = (rois[..., :2] + rois[..., 2:]) * 0.5
        pwh = rois[..., 2:] - rois[..., :2]
        dxy_wh = pwh * dxy
        max_ratio = abs(math.log(wh_ratio_clip))
        if self.add_ctr_clamp:
            dxy_wh = dxy_wh.clamp(min=-self.ctr_clamp, max=self.ctr_clamp)
            dwh = dwh.clamp(max=max_ratio)
        else:
            dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
        gxy = pxy + dxy_wh
        gwh = pwh * dwh.exp()
        boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
        if self.clip_border and max_shape is not None:
            boxes = _clip(boxes, max_shape, pred_bboxes.dim())
        return boxes.reshape(pred_bboxes.shape)


def _clip(boxes: Tensor, max_shape: MaxShape, pred_dim: int) -> Tensor:
    """Clip [..., k, 4] boxes to [0, w] x [0, h]; per image when max_shape is a sequence of shapes."""
    if isinstance(max_shape, Tensor):
        hw = max_shape[..., :2].to(boxes)
    elif len(max_shape) > 0 and isinstance(max_shape[0], (tuple, list)):
        hw = boxes.new_tensor([list(s[:2]) for s in max_shape])
    else:
        hw = boxes.new_tensor(list(max_shape[:2]))
    if hw.dim() == 2:
        if pred_dim != 3:
            raise ValueError('decode: per-image max_shape needs batched [B, N, 4k] deltas')
        hw = hw[:, None, None, :]
    upper = torch.stack([hw[..., 1], hw[..., 0], hw[..., 1], hw[..., 0]], dim=-1)
    return torch.min(boxes.clamp(min=0), upper)
