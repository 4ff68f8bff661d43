"""Synthetic shapes: a seeded generator of a real COCO-format dataset (PNG + instances json).

Circles (and mild ellipses), squares (and mild rectangles, axis-aligned) and triangles in random
colours on solid, gradient or noise backgrounds; several per image, overlapping (a later shape
occludes earlier ones, and a shape is rejected if it would hide most of one), some cut by the
border. Each instance is annotated from its *visible* pixels: tight box, area from pycocotools,
segmentation as an exact pixel-edge polygon (most), compressed or uncompressed RLE (some, and
whenever the visible region has a hole), plus a few ``iscrowd=1`` clusters of dots.
Category ids are 1, 3, 5 so code cannot assume ``label == id`` or ``id - 1``.
Every image draws from its own generator seeded by ``(seed, split, index)``: identical bytes
for a seed, whatever the other images.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from typing import Optional

import cv2
import numpy as np
import pycocotools.mask as mask_utils

from mixprec.registry import ConfigError

from .masks import mask_to_polygons, segm_to_rle

CATEGORIES = ({'id': 1, 'name': 'circle', 'supercategory': 'shape'},
              {'id': 3, 'name': 'square', 'supercategory': 'shape'},
              {'id': 5, 'name': 'triangle', 'supercategory': 'shape'})
SPLITS = ('train', 'val')
MIN_VISIBLE_AREA = 12
MIN_KEPT_FRACTION = 0.5


def make_shapes_dataset(root: str, num_train: int = 500, num_val: int = 100, img_size: int = 256,
                        seed: int = 0, min_shapes: int = 2, max_shapes: int = 6) -> dict:
    """Write ``root/{train,val}/*.png`` and ``root/annotations/instances_{train,val}.json``.

    ``img_size`` is the long side; the short side is 60-100 % of it, landscape or portrait at random.
    The json files are written last, through a temp file and ``os.replace``, so their presence
    means the split is complete. Returns ``{'train': json_path, 'val': json_path}``.
    """
    if min_shapes < 1 or max_shapes < min_shapes:
        raise ConfigError(f'need 1 <= min_shapes <= max_shapes, got {min_shapes}, {max_shapes}')
    if img_size < 32:
        raise ConfigError(f'img_size must be >= 32 px, got {img_size}')
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    paths = {}
    for split_idx, (split, count) in enumerate(zip(SPLITS, (num_train, num_val))):
        paths[split] = _write_split(root, split, split_idx, count, img_size, seed, min_shapes, max_shapes)
    return paths


def _write_split(root: str, split: str, split_idx: int, count: int, img_size: int, seed: int,
                 min_shapes: int, max_shapes: int) -> str:
    os.makedirs(osp.join(root, split), exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        rng = np.random.default_rng([seed, split_idx, i])
        img, instances = render_image(rng, img_size, min_shapes, max_shapes)
        file_name = f'{i:06d}.png'
        cv2.imwrite(osp.join(root, split, file_name), img)
        h, w = img.shape[:2]
        images.append({'id': i + 1, 'file_name': file_name, 'width': w, 'height': h})
        for inst in instances:
            annotations.append(_annotation(rng, inst, len(annotations) + 1, i + 1, h, w))
    coco = {'info': {'description': f'mixprec synthetic shapes, seed {seed}'}, 'licenses': [],
            'images': images, 'annotations': annotations, 'categories': [dict(c) for c in CATEGORIES]}
    path = osp.join(root, 'annotations', f'instances_{split}.json')
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(coco, f)
    os.replace(tmp, path)
    return path


def render_image(rng: np.random.Generator, img_size: int, min_shapes: int,
                 max_shapes: int) -> tuple[np.ndarray, list[dict]]:
    """One BGR uint8 image and its instances: dicts with ``mask`` (visible, uint8 [H, W]),
    ``category_id`` and ``iscrowd``."""
    short = int(round(img_size * rng.uniform(0.6, 1.0)))
    h, w = (short, img_size) if rng.random() < 0.5 else (img_size, short)
    img = _background(rng, h, w)
    owner = np.full((h, w), -1, dtype=np.int32)
    placed: list[dict] = []
    if rng.random() < 0.2:
        _try_place(rng, img, owner, placed, lambda: _crowd_mask(rng, h, w), iscrowd=1)
    for _ in range(int(rng.integers(min_shapes, max_shapes + 1))):
        _try_place(rng, img, owner, placed, lambda: _shape_mask(rng, h, w), iscrowd=0)
    instances = []
    for k, inst in enumerate(placed):
        visible = (owner == k).astype(np.uint8)
        instances.append({'mask': visible, 'category_id': inst['category_id'], 'iscrowd': inst['iscrowd']})
    return img, instances


def _try_place(rng, img, owner, placed, draw, iscrowd: int, tries: int = 20) -> None:
    """Draw a shape where it leaves every earlier instance at least half visible; give up after ``tries``."""
    for _ in range(tries):
        mask, full_area, cat_id = draw()
        area = int(mask.sum())
        if area < MIN_VISIBLE_AREA or area < MIN_KEPT_FRACTION * full_area:
            continue
        covered = np.bincount(owner[mask > 0] + 1, minlength=len(placed) + 1)[1:]
        if any(p['area'] - c < max(MIN_VISIBLE_AREA, MIN_KEPT_FRACTION * p['full_area'])
               for p, c in zip(placed, covered)):
            continue
        color = _contrasting_color(rng, img, mask)
        if color is None:
            continue
        for p, c in zip(placed, covered):
            p['area'] -= int(c)
        img[mask > 0] = color
        owner[mask > 0] = len(placed)
        placed.append({'area': area, 'full_area': area, 'category_id': cat_id, 'iscrowd': iscrowd})
        return


def _contrasting_color(rng, img: np.ndarray, mask: np.ndarray) -> Optional[np.ndarray]:
    under = img[mask > 0].astype(np.float32).mean(axis=0)
    for _ in range(10):
        color = rng.integers(0, 256, size=3)
        if np.linalg.norm(color - under) > 90:
            return color.astype(np.uint8)
    return None


def _background(rng, h: int, w: int) -> np.ndarray:
    kind = rng.integers(3)
    base = rng.integers(0, 256, size=3).astype(np.float32)
    if kind == 0:
        img = np.broadcast_to(base, (h, w, 3)).copy()
    elif kind == 1:
        other = rng.integers(0, 256, size=3).astype(np.float32)
        theta = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xs * np.cos(theta) + ys * np.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        img = base + t[..., None] * (other - base)
    else:
        coarse = rng.normal(0, 40, size=(max(h // 8, 2), max(w // 8, 2), 3)).astype(np.float32)
        img = base + cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
        img += rng.normal(0, 6, size=(h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_mask(rng, h: int, w: int) -> tuple[np.ndarray, int, int]:
    """A random circle/ellipse, square/rectangle or triangle: (visible-in-image mask, full area, cat id)."""
    size = rng.uniform(0.12, 0.45) * min(h, w)
    margin = int(size) + 2
    canvas = np.zeros((h + 2 * margin, w + 2 * margin), dtype=np.uint8)
    cx = int(rng.uniform(0, w)) + margin
    cy = int(rng.uniform(0, h)) + margin
    kind = int(rng.integers(3))
    if kind == 0:
        a = max(int(size / 2), 2)
        b = max(int(a * rng.uniform(0.75, 1.0)), 2)
        cv2.ellipse(canvas, (cx, cy), (a, b), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 1:
        sw = max(int(size), 3)
        sh = max(int(size * rng.uniform(0.75, 1.33)), 3)
        cv2.rectangle(canvas, (cx - sw // 2, cy - sh // 2), (cx - sw // 2 + sw - 1, cy - sh // 2 + sh - 1), 1, -1)
    else:
        angles = rng.uniform(0, 2 * np.pi) + np.deg2rad(np.array([0, 120, 240]) + rng.uniform(-15, 15, 3))
        pts = np.stack([cx + size / 1.7 * np.cos(angles), cy + size / 1.7 * np.sin(angles)], axis=1)
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1)
    full_area = int(canvas.sum())
    return canvas[margin:margin + h, margin:margin + w].copy(), full_area, CATEGORIES[kind]['id']


def _crowd_mask(rng, h: int, w: int) -> tuple[np.ndarray, int, int]:
    """A cluster of 4-8 small dots of one category: one crowd region."""
    mask = np.zeros((h, w), dtype=np.uint8)
    region = max(int(0.25 * min(h, w)), 8)
    x0 = int(rng.integers(0, max(w - region, 1)))
    y0 = int(rng.integers(0, max(h - region, 1)))
    for _ in range(int(rng.integers(4, 9))):
        center = (x0 + int(rng.integers(0, region)), y0 + int(rng.integers(0, region)))
        cv2.circle(mask, center, int(rng.integers(2, 5)), 1, -1)
    return mask, int(mask.sum()), CATEGORIES[int(rng.integers(3))]['id']


def _annotation(rng, inst: dict, ann_id: int, image_id: int, h: int, w: int) -> dict:
    mask = inst['mask']
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]
    draw = rng.random()
    if inst['iscrowd'] or draw < 0.1:
        segm = uncompressed_rle(mask)
    elif draw < 0.2:
        segm = mask_utils.encode(np.asfortranarray(mask))
        segm['counts'] = segm['counts'].decode('ascii')
    else:
        segm = mask_to_polygons(mask)
        if segm is None:
            segm = uncompressed_rle(mask)
    area = float(mask_utils.area(segm_to_rle(segm, h, w)))
    return {'id': ann_id, 'image_id': image_id, 'category_id': inst['category_id'], 'bbox': bbox,
            'area': area, 'segmentation': segm, 'iscrowd': inst['iscrowd']}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a uint8 ``[H, W]`` mask: column-major run lengths, zeros first."""
    flat = mask.flatten(order='F').astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {'counts': [int(r) for r in runs], 'size': [int(mask.shape[0]), int(mask.shape[1])]}
