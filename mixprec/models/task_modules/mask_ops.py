"""Mask operations of Mask R-CNN: training targets cut from gt bitmaps, test-time pasting.

Both are batched over RoIs: targets are one ``roi_align`` call per image over every positive RoI,
pasting is one ``grid_sample`` call per chunk of detections.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align


def mask_target_single(pos_proposals: Tensor, pos_assigned_gt_inds: Tensor,
                       gt_masks: Union[Tensor, np.ndarray], mask_size: int) -> Tensor:
    """Binary mask targets of one image's positive RoIs.

    The gt bitmap of the object each RoI is assigned to is resampled inside the RoI with
    ``roi_align(aligned=True, sampling_ratio=0)`` (the RoI index column is the gt index, so the
    bitmaps are not copied per RoI) and binarised at 0.5.

    Args:
        pos_proposals: [n, 4] positive RoIs (x1, y1, x2, y2) in the resized image.
        pos_assigned_gt_inds: [n] int64, index of each RoI's gt object.
        gt_masks: [G, H, W] uint8 bitmaps of the image's gt objects (at its pad shape).
        mask_size: side of the square targets.

    Returns:
        [n, mask_size, mask_size] float32 targets in {0, 1}.
    """
    num_pos = pos_proposals.size(0)
    device = pos_proposals.device
    if num_pos == 0:
        return pos_proposals.new_zeros((0, mask_size, mask_size), dtype=torch.float32)
    masks = torch.as_tensor(gt_masks, device=device)
    rois = torch.cat([pos_assigned_gt_inds.to(device=device, dtype=torch.float32)[:, None],
                      pos_proposals.float()], dim=1)
    targets = roi_align(masks[:, None].float(), rois, (mask_size, mask_size), spatial_scale=1.0,
                        sampling_ratio=0, aligned=True)[:, 0]
    return (targets >= 0.5).float()


def mask_target(pos_proposals_list: Sequence[Tensor], pos_assigned_gt_inds_list: Sequence[Tensor],
                gt_masks_list: Sequence[Union[Tensor, np.ndarray]], mask_size: int) -> Tensor:
    """Mask targets of a batch: :func:`mask_target_single` per image, concatenated.

    Returns:
        [sum n_i, mask_size, mask_size] float32 targets in {0, 1}, in the order of the images.
    """
    targets = [mask_target_single(p, i, m, mask_size)
               for p, i, m in zip(pos_proposals_list, pos_assigned_gt_inds_list, gt_masks_list)]
    return torch.cat(targets, dim=0)


def _paste_chunk(masks: Tensor, boxes: Tensor, img_h: int, img_w: int) -> tuple[Tensor, tuple]:
    """Resample ``masks`` [n, m, m] into the boxes [n, 4] over the region the boxes cover.

    Each output pixel (x, y) samples its mask at the pixel centre (x + 0.5, y + 0.5) mapped into
    the box's [-1, 1] grid coordinates; bilinear, zero outside the mask (detectron2's paste).

    Returns:
        ([n, y1 - y0, x1 - x0] float32 values, (slice(y0, y1), slice(x0, x1))) where the slices
        locate the region in the [img_h, img_w] image.
    """
    x0 = int(torch.clamp(boxes[:, 0].min().floor() - 1, min=0))
    y0 = int(torch.clamp(boxes[:, 1].min().floor() - 1, min=0))
    x1 = int(torch.clamp(boxes[:, 2].max().ceil() + 1, max=img_w))
    y1 = int(torch.clamp(boxes[:, 3].max().ceil() + 1, max=img_h))
    region = (slice(y0, max(y0, y1)), slice(x0, max(x0, x1)))
    if x1 <= x0 or y1 <= y0:
        return masks.new_zeros((masks.size(0), 0, 0)), region
    bx1, by1, bx2, by2 = boxes.float().unbind(dim=1)
    width = (bx2 - bx1).clamp(min=1e-6)[:, None]
    height = (by2 - by1).clamp(min=1e-6)[:, None]
    xs = torch.arange(x0, x1, device=boxes.device, dtype=torch.float32) + 0.5
    ys = torch.arange(y0, y1, device=boxes.device, dtype=torch.float32) + 0.5
    grid_x = (xs[None, :] - bx1[:, None]) / width * 2 - 1
    grid_y = (ys[None, :] - by1[:, None]) / height * 2 - 1
    n = masks.size(0)
    grid = torch.stack([grid_x[:, None, :].expand(n, y1 - y0, x1 - x0),
                        grid_y[:, :, None].expand(n, y1 - y0, x1 - x0)], dim=3)
    pasted = F.grid_sample(masks[:, None].float(), grid, mode='bilinear', padding_mode='zeros',
                           align_corners=False)
    return pasted[:, 0], region


def paste_masks_in_image(masks: Tensor, boxes: Tensor, img_shape: Sequence[int],
                         threshold: float = 0.5, max_chunk_pixels: int = 1 << 24) -> Tensor:
    """Paste per-detection mask probabilities into the image and threshold them.

    Args:
        masks: [n, m, m] probabilities, one mask per box.
        boxes: [n, 4] boxes (x1, y1, x2, y2) in the coordinates of the output image.
        img_shape: (h, w) of the output image.
        threshold: a pixel is in the mask when its pasted probability is >= threshold.
        max_chunk_pixels: bound on n_chunk * h * w per ``grid_sample`` call (memory).

    Returns:
        [n, h, w] bool masks.
    """
    img_h, img_w = int(img_shape[0]), int(img_shape[1])
    num = masks.size(0)
    out = torch.zeros((num, img_h, img_w), dtype=torch.bool, device=masks.device)
    if num == 0:
        return out
    chunk = max(1, max_chunk_pixels // max(1, img_h * img_w))
    for start in range(0, num, chunk):
        values, (ys, xs) = _paste_chunk(masks[start:start + chunk], boxes[start:start + chunk],
                                        img_h, img_w)
        out[start:start + chunk, ys, xs] = values >= threshold
    return out
