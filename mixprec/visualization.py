"""Drawing boxes, masks and labels on images: ``show_result`` (mmdetection v2's ``BaseDetector.show_result``),
tools/test.py --show / --show-dir, demo/image_demo.py and browse_dataset."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import cv2
import mmcv
import numpy as np
import pycocotools.mask as mask_util

from .palettes import DATASET_PALETTES
from .registry import ConfigError

Color = tuple[int, int, int]
PaletteSpec = Union[None, str, Color, Sequence[Color]]


def palette(num_classes: int) -> np.ndarray:
    """A fixed, distinct BGR colour per class: [num_classes, 3] uint8."""
    hues = (np.arange(num_classes) * 180 / max(num_classes, 1)).astype(np.uint8)
    hsv = np.stack([hues, np.full_like(hues, 220), np.full_like(hues, 255)], axis=1)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]


def get_palette(spec: PaletteSpec, num_classes: int) -> list[Color]:
    """One RGB colour per class, from mmdetection v2's palette inputs.

    ``spec``: a list of RGB tuples (per class), one RGB tuple (every class), ``'random'`` or None
    (random colours drawn with seed 42, leaving numpy's global state alone), ``'coco'``, ``'voc'``,
    ``'citys'`` (the datasets' palettes) or a colour name (``'green'``).
    """
    if isinstance(spec, list):
        colors = [tuple(int(c) for c in color) for color in spec]
    elif isinstance(spec, tuple):
        colors = [tuple(int(c) for c in spec)] * num_classes
    elif spec is None or spec == 'random':
        colors = [tuple(int(c) for c in row) for row in np.random.RandomState(42).randint(0, 256, (num_classes, 3))]
    elif spec in DATASET_PALETTES:
        colors = list(DATASET_PALETTES[spec])
    elif isinstance(spec, str):
        try:
            bgr = mmcv.color_val(spec)
        except (AssertionError, KeyError, TypeError):
            raise ConfigError(f'palette {spec!r}: not a colour name, "random", "coco", "voc" or "citys"') from None
        colors = [tuple(bgr[::-1])] * num_classes
    else:
        raise ConfigError(f'palette {spec!r}: expected a list of RGB tuples, a tuple, a name or None')
    if len(colors) < num_classes:
        raise ConfigError(f'palette {spec!r} has {len(colors)} colours for {num_classes} classes')
    return colors


def _bgr(colors: Sequence[Color]) -> np.ndarray:
    return np.asarray(colors, dtype=np.uint8).reshape(-1, 3)[:, ::-1]


def draw_instances(img: np.ndarray, bboxes: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                   scores: Optional[np.ndarray] = None, masks: Optional[Sequence[np.ndarray]] = None,
                   alpha: float = 0.45, bbox_colors: Optional[np.ndarray] = None,
                   text_colors: Optional[np.ndarray] = None, mask_colors: Optional[np.ndarray] = None,
                   thickness: int = 1, font_scale: float = 0.35) -> np.ndarray:
    """Return a copy of ``img`` (H, W, 3 uint8 BGR) with instances drawn.

    bboxes: [N, 4] x1, y1, x2, y2; labels: [N] class indices; masks: N bool [H, W] arrays;
    ``*_colors``: [num_classes, 3] uint8 BGR per class (default :func:`palette`).
    """
    out = img.copy()
    default = palette(max(len(class_names), int(labels.max()) + 1 if len(labels) else 1, 1))
    bbox_colors = default if bbox_colors is None else bbox_colors
    text_colors = bbox_colors if text_colors is None else text_colors
    mask_colors = bbox_colors if mask_colors is None else mask_colors
    if masks is not None:
        for mask, label in zip(masks, labels):
            mask = np.asarray(mask, dtype=bool)
            out[mask] = (out[mask] * (1 - alpha) + mask_colors[label] * alpha).astype(np.uint8)
    for i, (box, label) in enumerate(zip(bboxes, labels)):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box[:4])
        cv2.rectangle(out, (x1, y1), (x2, y2), tuple(int(c) for c in bbox_colors[label]), thickness)
        text = class_names[label] if label < len(class_names) else f'class {label}'
        if scores is not None:
            text += f'|{scores[i]:.02f}'
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        tx, ty = x1 + thickness, y1 + thickness
        cv2.rectangle(out, (tx, ty), (tx + tw, ty + th + base), (0, 0, 0), -1)
        cv2.putText(out, text, (tx, ty + th), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    tuple(int(c) for c in text_colors[label]), 1, cv2.LINE_AA)
    return out


def _split_result(result) -> tuple[np.ndarray, np.ndarray, Optional[list]]:
    """Per-class results -> bboxes [N, 5], labels [N], masks (N bool [H, W]) or None."""
    bbox_result, segm_result = result if isinstance(result, tuple) else (result, None)
    if isinstance(segm_result, tuple):
        segm_result = segm_result[0]
    bboxes = np.concatenate([np.asarray(b).reshape(-1, 5) for b in bbox_result]) if len(bbox_result) \
        else np.zeros((0, 5), dtype=np.float32)
    labels = np.concatenate([np.full(len(b), i, dtype=np.int64) for i, b in enumerate(bbox_result)]) \
        if len(bbox_result) else np.zeros(0, dtype=np.int64)
    masks = None
    if segm_result is not None:
        masks = [m if not isinstance(m, dict) else mask_util.decode(m).astype(bool)
                 for class_masks in segm_result for m in class_masks]
    return bboxes, labels, masks


def has_display() -> bool:
    """Whether a window can be opened (an X11 or Wayland display is set)."""
    return bool(os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))


def imshow(img: np.ndarray, win_name: str = '', wait_time: int = 0) -> None:
    """Show ``img`` in a window (cv2); without a display, one line saying so."""
    if not has_display():
        raise ConfigError('show: no display to open a window on (DISPLAY is not set); '
                          'write the image to a file instead (out_file / --out-file / --show-dir)')
    cv2.imshow(win_name or 'result', img)
    cv2.waitKey(int(wait_time * 1000) if wait_time else 0)


def show_result(img: Union[str, np.ndarray], result, class_names: Sequence[str], score_thr: float = 0.3,
                bbox_color: PaletteSpec = (72, 101, 241), text_color: PaletteSpec = (72, 101, 241),
                mask_color: PaletteSpec = None, thickness: int = 2, font_size: int = 13, win_name: str = '',
                show: bool = False, wait_time: float = 0, out_file: Optional[str] = None) -> Optional[np.ndarray]:
    """Draw a detector's result for one image, as mmdetection v2's ``BaseDetector.show_result``.

    ``img``: a path or a BGR [H, W, 3] array; ``result``: per-class [n, 5] arrays, or
    ``(bbox_result, segm_result)``. Boxes with score > ``score_thr`` are drawn (all when it is 0),
    coloured per class from the palette specs (see :func:`get_palette`). Writes ``out_file`` when
    given (then never shows); returns the drawn BGR image only when neither ``show`` nor ``out_file``.
    """
    img = mmcv.imread(img).astype(np.uint8)
    bboxes, labels, masks = _split_result(result)
    if score_thr > 0:
        keep = bboxes[:, 4] > score_thr
        bboxes, labels = bboxes[keep], labels[keep]
        masks = [m for m, k in zip(masks, keep) if k] if masks is not None else None
    num_colors = max(int(labels.max()) + 1 if len(labels) else 1, 1)
    corners = bboxes[:, :4].astype(np.int32).astype(np.float32)  # truncated, as mmdetection draws them
    drawn = draw_instances(img, corners, labels, class_names or (), bboxes[:, 4], masks or None,
                           bbox_colors=_bgr(get_palette(bbox_color, num_colors)),
                           text_colors=_bgr(get_palette(text_color, num_colors)),
                           mask_colors=_bgr(get_palette(mask_color, num_colors)),
                           thickness=thickness, font_scale=font_size / 36)
    if out_file is not None:
        mmcv.imwrite(drawn, out_file)
    elif show:
        imshow(drawn, win_name, wait_time)
    if not (show or out_file):
        return drawn
    return None
