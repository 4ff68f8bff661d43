"""Drawing boxes, masks and labels on images (for tools/test.py --show-dir and browse_dataset)."""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_util


def palette(num_classes: int) -> np.ndarray:
    """A fixed, distinct BGR colour per class: [num_classes, 3] uint8."""
    hues = (np.arange(num_classes) * 180 / max(num_classes, 1)).astype(np.uint8)
    hsv = np.stack([hues, np.full_like(hues, 220), np.full_like(hues, 255)], axis=1)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]


def draw_instances(img: np.ndarray, bboxes: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                   scores: Optional[np.ndarray] = None, masks: Optional[Sequence[np.ndarray]] = None,
                   alpha: float = 0.45) -> np.ndarray:
    """Return a copy of ``img`` (H, W, 3 uint8 BGR) with instances drawn.

    bboxes: [N, 4] x1, y1, x2, y2; labels: [N] class indices; masks: N bool [H, W] arrays.
    """
    out = img.copy()
    colors = palette(max(len(class_names), 1))
    if masks is not None:
        for mask, label in zip(masks, labels):
            mask = np.asarray(mask, dtype=bool)
            out[mask] = (out[mask] * (1 - alpha) + colors[label] * alpha).astype(np.uint8)
    for i, (box, label) in enumerate(zip(bboxes, labels)):
        color = tuple(int(c) for c in colors[label])
        x1, y1, x2, y2 = (int(round(v)) for v in box[:4])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, 1)
        text = class_names[label] if label < len(class_names) else str(label)
        if scores is not None:
            text += f' {scores[i]:.2f}'
        cv2.putText(out, text, (x1, max(y1 - 2, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, color, 1, cv2.LINE_AA)
    return out


def draw_result(img: np.ndarray, result, class_names: Sequence[str], score_thr: float = 0.3) -> np.ndarray:
    """Draw a detector's result for one image (per-class arrays, optionally with per-class masks)."""
    bbox_result, segm_result = result if isinstance(result, tuple) else (result, None)
    bboxes = np.concatenate([np.asarray(b).reshape(-1, 5) for b in bbox_result]) if len(bbox_result) else np.zeros((0, 5))
    labels = np.concatenate([np.full(len(b), i, dtype=np.int64) for i, b in enumerate(bbox_result)]) \
        if len(bbox_result) else np.zeros(0, dtype=np.int64)
    masks = None
    if segm_result is not None:
        masks = [m if not isinstance(m, dict) else mask_util.decode(m).astype(bool)
                 for class_masks in segm_result for m in class_masks]
    keep = bboxes[:, 4] >= score_thr
    kept_masks = [m for m, k in zip(masks, keep) if k] if masks is not None else None
    return draw_instances(img, bboxes[keep, :4], labels[keep], class_names, bboxes[keep, 4], kept_masks)
