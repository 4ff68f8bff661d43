"""Fast proposal recall (mmdetection's ``proposal_fast``): greedy one-to-one matching of proposals to
ground truth per image, without COCOeval's area ranges or crowd handling."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def bbox_overlaps(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of x1y1x2y2 boxes ``[N, 4+]`` and ``[M, 4+]`` as ``[N, M]`` (widths are x2 - x1)."""
    b1, b2 = boxes1[:, None, :4].astype(np.float64), boxes2[None, :, :4].astype(np.float64)
    iw = np.clip(np.minimum(b1[..., 2], b2[..., 2]) - np.maximum(b1[..., 0], b2[..., 0]), 0, None)
    ih = np.clip(np.minimum(b1[..., 3], b2[..., 3]) - np.maximum(b1[..., 1], b2[..., 1]), 0, None)
    inter = iw * ih
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    return inter / np.maximum(area1 + area2 - inter, np.finfo(np.float64).eps)


def _matched_ious(gt: np.ndarray, proposals: np.ndarray) -> np.ndarray:
    """IoU of each ground-truth box with its proposal under greedy best-pair-first matching."""
    ious = bbox_overlaps(gt, proposals) if len(proposals) else np.zeros((len(gt), 0))
    matched = np.zeros(len(gt))
    for k in range(min(len(gt), ious.shape[1])):
        g, p = np.unravel_index(np.argmax(ious), ious.shape)
        matched[k] = ious[g, p]
        ious[g, :] = -1
        ious[:, p] = -1
    return matched


def eval_recalls(gts: Sequence[np.ndarray], proposals: Sequence[np.ndarray], proposal_nums: Sequence[int],
                 iou_thrs: Sequence[float]) -> np.ndarray:
    """Recall ``[len(proposal_nums), len(iou_thrs)]`` over all images: the fraction of ground-truth
    boxes matched (one to one) by one of the top-n proposals (rows sorted by score, column 4)."""
    if len(gts) != len(proposals):
        raise ValueError(f'{len(gts)} ground-truth entries but {len(proposals)} proposal entries')
    total = sum(len(g) for g in gts)
    recalls = np.zeros((len(proposal_nums), len(iou_thrs)))
    if total == 0:
        return recalls
    for i, num in enumerate(proposal_nums):
        matched = []
        for gt, props in zip(gts, proposals):
            props = np.asarray(props, dtype=np.float64)
            props = props.reshape(-1, props.shape[-1]) if props.size else np.zeros((0, 5))
            if props.shape[1] > 4:
                props = props[np.argsort(-props[:, 4], kind='stable')]
            matched.append(_matched_ious(np.asarray(gt).reshape(-1, 4), props[:num]))
        matched = np.concatenate(matched)
        recalls[i] = [(matched >= thr).sum() / total for thr in iou_thrs]
    return recalls
