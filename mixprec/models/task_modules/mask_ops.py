"""Mask operations of Mask R-CNN: training targets cut from gt bitmaps, test-time pasting.

Both are batched over RoIs: targets are one ``roi_align`` call per image over every positive RoI,
pasting is one ``grid_sample`` call per chunk of detections, each over a window around its box.
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
    bitmaps are not copied per RoI) and binarised at 0.5. Polygon masks (an object with
    ``crop_and_resize``, mixprec.data.PolygonMasks) are moved into each RoI and rasterised at the
    target size instead, as mmdetection v2 does.

    Args:
        pos_proposals: [n, 4] positive RoIs (x1, y1, x2, y2) in the resized image.
        pos_assigned_gt_inds: [n] int64, index of each RoI's gt object.
        gt_masks: [G, H, W] uint8 bitmaps of the image's gt objects (at its pad shape), or their
            polygons.
        mask_size: side of the square targets.

    Returns:
        [n, mask_size, mask_size] float32 targets in {0, 1}.
    """
    num_pos = pos_proposals.size(0)
    device = pos_proposals.device
    if num_pos == 0:
        return pos_proposals.new_zeros((0, mask_size, mask_size), dtype=torch.float32)
    if hasattr(gt_masks, 'crop_and_resize'):
        targets = gt_masks.crop_and_resize(pos_proposals.detach().float().cpu().numpy(), mask_size,
                                           pos_assigned_gt_inds.cpu().numpy())
        return torch.from_numpy(targets).to(device=device, dtype=torch.float32)
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


def _paste_windows(masks: Tensor, boxes: Tensor, img_h: int, img_w: int) -> tuple[Tensor, Tensor]:
    """Resample ``masks`` [n, m, m] into their boxes [n, 4], each over its own window.

    Each output pixel (x, y) samples its mask at the pixel centre (x + 0.5, y + 0.5) mapped into
    the box's [-1, 1] grid coordinates; bilinear, zero outside the mask (detectron2's paste).
    A detection's window covers its box plus one pixel each side; all windows share the size of
    the largest (so one ``grid_sample`` call does them all) and are shifted to lie in the image.
    Pixels outside a window are farther than one pixel from the box: their value is 0.

    Returns:
        values [n, wh, ww] float32 and flat indices [n, wh * ww] of the window pixels in an
        [img_h * img_w] image.
    """
    box = boxes.float()
    left = (box[:, 0].floor() - 1).clamp(min=0, max=img_w).long()
    top = (box[:, 1].floor() - 1).clamp(min=0, max=img_h).long()
    right = (box[:, 2].ceil() + 1).clamp(min=0, max=img_w).long()
    bottom = (box[:, 3].ceil() + 1).clamp(min=0, max=img_h).long()
    win_w = max(1, int((right - left).max()))
    win_h = max(1, int((bottom - top).max()))
    left = left.clamp(max=img_w - win_w)
    top = top.clamp(max=img_h - win_h)
    xs = left[:, None] + torch.arange(win_w, device=boxes.device)  # [n, ww]
    ys = top[:, None] + torch.arange(win_h, device=boxes.device)  # [n, wh]
    width = (box[:, 2] - box[:, 0]).clamp(min=1e-6)[:, None]
    height = (box[:, 3] - box[:, 1]).clamp(min=1e-6)[:, None]
    grid_x = (xs + 0.5 - box[:, 0:1]) / width * 2 - 1
    grid_y = (ys + 0.5 - box[:, 1:2]) / height * 2 - 1
    n = masks.size(0)
    grid = torch.stack([grid_x[:, None, :].expand(n, win_h, win_w),
                        grid_y[:, :, None].expand(n, win_h, win_w)], dim=3)
    values = F.grid_sample(masks[:, None].float(), grid, mode='bilinear', padding_mode='zeros',
                           align_corners=False)[:, 0]
    flat = (ys[:, :, None] * img_w + xs[:, None, :]).view(n, -1)
    return values, flat


def paste_masks_in_image(masks: Tensor, boxes: Tensor, img_shape: Sequence[int],
                         threshold: float = 0.5, max_chunk_pixels: int = 1 << 24) -> Tensor:
    """Paste per-detection mask probabilities into the image and threshold them.

    Args:
        masks: [n, m, m] probabilities, one mask per box.
        boxes: [n, 4] boxes (x1, y1, x2, y2) in the coordinates of the output image.
        img_shape: (h, w) of the output image.
        threshold: a pixel is in the mask when its pasted probability is >= threshold.
        max_chunk_pixels: bound on the pixels resampled per ``grid_sample`` call (memory).

    Returns:
        [n, h, w] bool masks.
    """
    img_h, img_w = int(img_shape[0]), int(img_shape[1])
    num = masks.size(0)
    out = torch.zeros((num, img_h * img_w), dtype=torch.bool, device=masks.device)
    if num == 0 or img_h == 0 or img_w == 0:
        return out.view(num, img_h, img_w)
    box = boxes.float()
    sides = torch.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]).clamp(min=0) + 3
    window = int(torch.clamp(sides.max().ceil(), max=max(img_h, img_w))) ** 2
    chunk = max(1, max_chunk_pixels // window)
    for start in range(0, num, chunk):
        values, flat = _paste_windows(masks[start:start + chunk], boxes[start:start + chunk], img_h, img_w)
        out[start:start + chunk].scatter_(1, flat, (values >= threshold).view(flat.shape))
    return out.view(num, img_h, img_w)
