"""Instance masks, as uint8 bitmaps ``[N, H, W]`` or as :class:`PolygonMasks`: decoding from
COCO and geometric ops.

Bitmaps stay numpy arrays through the pipeline so every transform is one vectorised call; the
model receives them as a uint8 Tensor at the padded image size (see docs/contracts.md).
Polygons (``LoadAnnotations(poly2mask=False)``, mmdetection v2's PolygonMasks) stay polygons up
to the mask head, which rasterises each positive RoI's polygon at the target size.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

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


def mask_to_polygons(mask: np.ndarray, fill_holes: bool = False) -> Optional[list]:
    """Pixel-edge polygons of a ``[H, W]`` mask, or None when it has holes (polygons cannot say so)
    unless ``fill_holes``, which traces the outer boundaries only.

    Contours are traced on the mask upsampled 2x, where a boundary pixel's parity tells which edge
    of the original pixel it lies on; mapping ``X -> (X + X % 2) / 2`` puts vertices on pixel
    edges, so pycocotools rasterises the polygons back to the same pixels.
    """
    up = np.kron(mask.astype(np.uint8), np.ones((2, 2), dtype=np.uint8))
    mode = cv2.RETR_EXTERNAL if fill_holes else cv2.RETR_CCOMP
    contours, hierarchy = cv2.findContours(up, mode, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None or (hierarchy[0][:, 3] >= 0).any():
        return None
    polygons = []
    for contour in contours:
        pts = contour.reshape(-1, 2).astype(np.float64)
        pts = _drop_redundant((pts + pts % 2) / 2)
        if len(pts) >= 3:
            polygons.append([float(v) for v in pts.reshape(-1)])
    return polygons or None


def _drop_redundant(pts: np.ndarray) -> np.ndarray:
    """Remove repeated and collinear vertices of a closed polygon ``[K, 2]``."""
    pts = pts[np.any(pts != np.roll(pts, 1, axis=0), axis=1)]
    if len(pts) < 3:
        return pts
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    cross = (pts[:, 0] - prev[:, 0]) * (nxt[:, 1] - pts[:, 1]) - (pts[:, 1] - prev[:, 1]) * (nxt[:, 0] - pts[:, 0])
    return pts[cross != 0]


class PolygonMasks:
    """The polygons of N instances in an image of ``height`` x ``width``.

    ``masks[i]`` is the list of [2k] float arrays (x0, y0, x1, y1, ...) of instance i's parts.
    Geometric ops return new objects; the transforms dispatch to them through :func:`resize_masks`,
    :func:`flip_masks` and :func:`pad_masks`.
    """

    def __init__(self, masks: Sequence[Sequence[np.ndarray]], height: int, width: int) -> None:
        self.masks = [[np.asarray(p, dtype=np.float64) for p in parts] for parts in masks]
        self.height = int(height)
        self.width = int(width)

    @classmethod
    def from_coco(cls, segms: list, height: int, width: int, where: str = '') -> 'PolygonMasks':
        """COCO polygon segmentations; parts with an odd count or fewer than 3 points are dropped
        (mmdetection v2's process_polygons). An RLE segmentation (mmdetection v2 cannot take one
        here) is traced into pixel-edge polygons, exact unless it has holes, which are filled
        with a warning."""
        masks = []
        for segm in segms:
            if not isinstance(segm, list):
                bitmap = mask_utils.decode(segm_to_rle(segm, height, width))
                segm = mask_to_polygons(bitmap)
                if segm is None:
                    warnings.warn(f'{where}an RLE mask with holes kept as polygons (poly2mask=False) '
                                  f'has its holes filled')
                    segm = mask_to_polygons(bitmap, fill_holes=True) or []
            masks.append([p for p in map(np.asarray, segm) if len(p) % 2 == 0 and len(p) >= 6])
        return cls(masks, height, width)

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index) -> 'PolygonMasks':
        inds = np.arange(len(self))[index]
        return PolygonMasks([self.masks[i] for i in np.atleast_1d(inds)], self.height, self.width)

    def __repr__(self) -> str:
        return f'PolygonMasks(num_masks={len(self)}, height={self.height}, width={self.width})'

    def _map(self, fn) -> list:
        return [[fn(p.copy()) for p in parts] for parts in self.masks]

    def resize(self, height: int, width: int) -> 'PolygonMasks':
        """Scale x by ``width / self.width`` and y by ``height / self.height``."""
        sx, sy = width / self.width, height / self.height

        def scale(p: np.ndarray) -> np.ndarray:
            p[0::2] *= sx
            p[1::2] *= sy
            return p
        return PolygonMasks(self._map(scale), height, width)

    def flip(self, direction: str) -> 'PolygonMasks':
        """Mirror 'horizontal' (x -> width - x), 'vertical' or 'diagonal' (both)."""
        if direction not in ('horizontal', 'vertical', 'diagonal'):
            raise ValueError(f'flip direction must be horizontal, vertical or diagonal, got {direction!r}')

        def mirror(p: np.ndarray) -> np.ndarray:
            if direction in ('horizontal', 'diagonal'):
                p[0::2] = self.width - p[0::2]
            if direction in ('vertical', 'diagonal'):
                p[1::2] = self.height - p[1::2]
            return p
        return PolygonMasks(self._map(mirror), self.height, self.width)

    def pad(self, height: int, width: int) -> 'PolygonMasks':
        """Padding right/bottom moves no point; only the canvas grows."""
        return PolygonMasks(self.masks, height, width)

    def to_ndarray(self) -> np.ndarray:
        """uint8 bitmaps [N, height, width] rasterised by pycocotools."""
        return decode_masks([[p.tolist() for p in parts] for parts in self.masks], self.height, self.width)

    def crop_and_resize(self, bboxes: np.ndarray, out_size: int, inds: Optional[np.ndarray] = None) -> np.ndarray:
        """uint8 [n, out_size, out_size]: polygon ``inds[j]`` moved into box j [x1, y1, x2, y2]
        (sides at least 1 px) and rasterised at ``out_size`` (mmdetection v2's mask targets)."""
        inds = np.arange(len(bboxes)) if inds is None else np.asarray(inds)
        out = np.zeros((len(bboxes), out_size, out_size), dtype=np.uint8)
        for j, (box, i) in enumerate(zip(np.asarray(bboxes, dtype=np.float64), inds)):
            x1, y1, x2, y2 = box[:4]
            sx, sy = out_size / max(x2 - x1, 1.0), out_size / max(y2 - y1, 1.0)
            parts = []
            for p in self.masks[int(i)]:
                q = p.copy()
                q[0::2] = (q[0::2] - x1) * sx
                q[1::2] = (q[1::2] - y1) * sy
                parts.append(q.tolist())
            if parts:
                out[j] = decode_masks([parts], out_size, out_size)[0]
        return out


def encode_mask(mask: np.ndarray) -> dict:
    """Encode one ``[H, W]`` bool/uint8 mask as RLE with ``counts`` as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    return rle


def resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of ``[N, h, w]`` masks to ``[N, height, width]`` (polygons: scaled)."""
    if isinstance(masks, PolygonMasks):
        return masks.resize(height, width)
    if len(masks) == 0:
        return np.zeros((0, height, width), dtype=np.uint8)
    return np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in masks])


def flip_masks(masks: np.ndarray, direction: str) -> np.ndarray:
    """Flip ``[N, H, W]`` masks (or polygons) 'horizontal', 'vertical' or 'diagonal' (both)."""
    if isinstance(masks, PolygonMasks):
        return masks.flip(direction)
    axes = {'horizontal': (2,), 'vertical': (1,), 'diagonal': (1, 2)}[direction]
    return np.ascontiguousarray(np.flip(masks, axis=axes))


def pad_masks(masks: np.ndarray, height: int, width: int, pad_val: int = 0) -> np.ndarray:
    """Pad ``[N, h, w]`` masks (or polygons' canvas) right/bottom to ``[N, height, width]``."""
    if isinstance(masks, PolygonMasks):
        return masks.pad(height, width)
    n, h, w = masks.shape
    out = np.full((n, height, width), pad_val, dtype=masks.dtype)
    out[:, :h, :w] = masks
    return out
