"""Instance masks as plain uint8 bitmaps ``[N, H, W]``: decoding from COCO and geometric ops.

Masks stay numpy arrays through the pipeline so every transform is one vectorised call; the
model receives them as a uint8 Tensor at the padded image size (see docs/contracts.md).
"""
from __future__ import annotations

from typing import Union

import cv2
import numpy as np
import pycocotools.mask as mask_utils

Segmentation = Union[list, dict]


def segm_to_rle(segm: Segmentation, height: int, width: int) -> dict:
    """One COCO segmentation (polygon list, uncompressed or compressed RLE) as compressed RLE."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm, dict) and isinstance(segm.get('counts'), list):
        return mask_utils.frPyObjects(segm, height, width)
    if isinstance(segm, dict) and 'counts' in segm:
        return segm
    raise ValueError(f'segmentation must be a polygon list or an RLE dict, got {type(segm).__name__}')


def decode_masks(segms: list, height: int, width: int) -> np.ndarray:
    """Decode COCO segmentations into a uint8 array ``[N, height, width]`` of 0/1."""
    if not segms:
        return np.zeros((0, height, width), dtype=np.uint8)
    return np.stack([mask_utils.decode(segm_to_rle(s, height, width)) for s in segms]).astype(np.uint8)


def encode_mask(mask: np.ndarray) -> dict:
    """Encode one ``[H, W]`` bool/uint8 mask as RLE with ``counts`` as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    return rle


def resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of ``[N, h, w]`` masks to ``[N, height, width]``."""
    if len(masks) == 0:
        return np.zeros((0, height, width), dtype=np.uint8)
    return np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in masks])


def flip_masks(masks: np.ndarray, direction: str) -> np.ndarray:
    """Flip ``[N, H, W]`` masks 'horizontal', 'vertical' or 'diagonal' (both)."""
    axes = {'horizontal': (2,), 'vertical': (1,), 'diagonal': (1, 2)}[direction]
    return np.ascontiguousarray(np.flip(masks, axis=axes))


def pad_masks(masks: np.ndarray, height: int, width: int, pad_val: int = 0) -> np.ndarray:
    """Pad ``[N, h, w]`` masks right/bottom to ``[N, height, width]``."""
    n, h, w = masks.shape
    out = np.full((n, height, width), pad_val, dtype=masks.dtype)
    out[:, :h, :w] = masks
    return out
