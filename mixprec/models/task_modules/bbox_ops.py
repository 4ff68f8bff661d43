"""Box operations shared by the heads: overlaps, RoI packing, class-aware NMS, results formatting.

Boxes are ``[x1, y1, x2, y2]`` floats; width is ``x2 - x1`` (no +1), as in mmdetection v2.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from mixprec.ops.nms import batched_nms


def bbox_overlaps(bboxes1: Tensor, bboxes2: Tensor, mode: str = 'iou', is_aligned: bool = False,
                  eps: float = 1e-6) -> Tensor:
    """IoU, IoF (intersection over the area of ``bboxes1``) or GIoU between two sets of boxes.

    Args:
        bboxes1: [N, 4] (extra trailing columns such as scores are ignored).
        bboxes2: [M, 4]; with ``is_aligned`` M must equal N.
        mode: 'iou', 'iof' or 'giou' (IoU minus the share of the enclosing box outside the union).
        is_aligned: compare row i with row i only.
        eps: lower bound of the union (or area) and of the enclosing area, against division by 0.

    Returns:
        [N, M] overlaps, or [N] when ``is_aligned``.
    """
    if mode not in ('iou', 'iof', 'giou'):
        raise ValueError(f"bbox_overlaps: mode must be 'iou', 'iof' or 'giou', got {mode!r}")
    bboxes1 = bboxes1[..., :4]
    bboxes2 = bboxes2[..., :4]
    if not is_aligned:
        bboxes1 = bboxes1[..., :, None, :]
        bboxes2 = bboxes2[..., None, :, :]
    area1 = (bboxes1[..., 2] - bboxes1[..., 0]) * (bboxes1[..., 3] - bboxes1[..., 1])
    area2 = (bboxes2[..., 2] - bboxes2[..., 0]) * (bboxes2[..., 3] - bboxes2[..., 1])
    wh = (torch.min(bboxes1[..., 2:], bboxes2[..., 2:]) - torch.max(bboxes1[..., :2], bboxes2[..., :2])).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - overlap if mode != 'iof' else area1.expand_as(overlap)
    union = union.clamp(min=eps)
    ious = overlap / union
    if mode != 'giou':
        return ious
    enclose_wh = (torch.max(bboxes1[..., 2:], bboxes2[..., 2:])
                  - torch.min(bboxes1[..., :2], bboxes2[..., :2])).clamp(min=0)
    enclose_area = (enclose_wh[..., 0] * enclose_wh[..., 1]).clamp(min=eps)
    return ious - (enclose_area - union) / enclose_area


def check_gt_labels(labels: Tensor, num_classes: int, head: str) -> None:
    """Raise when a gt label is outside 0..num_classes-1: the dataset's classes and the head's
    ``num_classes`` disagree (mmdetection v2 would silently train such labels as background)."""
    if labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(f'{head}: gt label {int(labels.max())} but num_classes={num_classes}; the dataset\'s '
                         f'classes (data.train.classes) and the model\'s num_classes must agree')


def bbox2roi(bbox_list: Sequence[Tensor]) -> Tensor:
    """Pack per-image boxes into RoIs.

    Args:
        bbox_list: per image a Tensor [n_i, 4] (or [n_i, >4]; only the first 4 columns are used).

    Returns:
        [sum n_i, 5] with columns ``batch_idx, x1, y1, x2, y2``.
    """
    rois = []
    for img_id, bboxes in enumerate(bbox_list):
        inds = bboxes.new_full((bboxes.size(0), 1), img_id)
        rois.append(torch.cat([inds, bboxes[:, :4]], dim=-1))
    return torch.cat(rois, dim=0)


def bbox2result(bboxes: Tensor, labels: Tensor, num_classes: int) -> list[np.ndarray]:
    """Split detections by class into the per-class result format.

    Args:
        bboxes: [n, 5] ``x1, y1, x2, y2, score``.
        labels: [n] in 0..num_classes-1.

    Returns:
        ``num_classes`` float32 arrays [n_c, 5].
    """
    if bboxes.shape[0] == 0:
        return [np.zeros((0, 5), dtype=np.float32) for _ in range(num_classes)]
    bboxes_np = bboxes.detach().float().cpu().numpy()
    labels_np = labels.detach().cpu().numpy()
    return [bboxes_np[labels_np == c, :] for c in range(num_classes)]


def multiclass_nms(multi_bboxes: Tensor, multi_scores: Tensor, score_thr: float, nms_cfg: dict,
                   max_num: int = -1, score_factors: Optional[Tensor] = None,
                   return_inds: bool = False):
    """Class-aware NMS over every (box, class) pair whose score exceeds ``score_thr``.

    Args:
        multi_bboxes: [n, 4] class-agnostic or [n, C * 4] class-specific boxes.
        multi_scores: [n, C + 1]; the last column (background) is ignored.
        score_thr: pairs with score <= score_thr are dropped.
        nms_cfg: ``dict(type='nms', iou_threshold=...)`` or a soft-NMS config (decayed scores).
        max_num: keep at most this many detections (-1: all).
        score_factors: [n] multiplied into the scores before thresholding.
        return_inds: also return the kept indices into the flattened [n * C] pairs.

    Returns:
        dets [k, 5] (x1, y1, x2, y2, score), labels [k] (and inds [k] with ``return_inds``).
    """
    num_classes = multi_scores.size(1) - 1
    num_boxes = multi_scores.size(0)
    if multi_bboxes.shape[1] > 4:
        bboxes = multi_bboxes.reshape(num_boxes, num_classes, 4)
    else:
        bboxes = multi_bboxes[:, None].expand(num_boxes, num_classes, 4)
    scores = multi_scores[:, :-1]
    if score_factors is not None:
        scores = scores * score_factors[:, None]
    labels = torch.arange(num_classes, dtype=torch.long, device=scores.device)
    labels = labels.view(1, -1).expand_as(scores)

    bboxes = bboxes.reshape(-1, 4)
    scores = scores.reshape(-1)
    labels = labels.reshape(-1)
    inds = torch.nonzero(scores > score_thr).squeeze(1)
    bboxes, scores, labels = bboxes[inds], scores[inds], labels[inds]

    dets, keep = batched_nms(bboxes, scores, labels, nms_cfg, max_num=max_num)
    if return_inds:
        return dets, labels[keep], inds[keep]
    return dets, labels[keep]
