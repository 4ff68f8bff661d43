"""Geometric and photometric transforms: Resize, RandomFlip, Normalize, Pad (mmdetection v2).

Every transform updates the image fields, the box fields (``bbox_fields``) and the mask fields
(``mask_fields``, uint8 ``[N, H, W]``) together, and records what it did in the results dict so
detections can be mapped back (``scale_factor``, ``flip``, ``flip_direction``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import mmcv
import numpy as np

from mixprec.registry import TRANSFORMS, ConfigError
from ..masks import flip_masks, pad_masks, resize_masks

Scale = tuple[int, int]
_DIRECTIONS = ('horizontal', 'vertical', 'diagonal')


@TRANSFORMS.register_module()
class Resize:
    """Resize to ``img_scale`` (w, h) or (long, short) with keep_ratio, as mmdetection v2.

    keep_ratio: scale = min(long_max / long, short_max / short); new side int(side * scale + 0.5).
    Several scales: ``multiscale_mode='range'`` samples long and short edges uniformly between
    them, ``'value'`` picks one; ``ratio_range`` multiplies the single scale by a random ratio.
    A ``scale`` already in results (set by MultiScaleFlipAug) wins. Writes ``scale_factor`` as
    float32 [w_scale, h_scale, w_scale, h_scale].
    """

    def __init__(self, img_scale: Union[Scale, Sequence[Scale], None] = None, multiscale_mode: str = 'range',
                 ratio_range: Optional[Sequence[float]] = None, keep_ratio: bool = True,
                 bbox_clip_border: bool = True, interpolation: str = 'bilinear') -> None:
        if img_scale is None:
            self.img_scale = None
        else:
            single = not isinstance(img_scale, list) or all(isinstance(v, (int, float)) for v in img_scale)
            scales = [img_scale] if single else list(img_scale)
            self.img_scale = [tuple(int(v) for v in s) for s in scales]
        if multiscale_mode not in ('range', 'value'):
            raise ConfigError(f"Resize: multiscale_mode must be 'range' or 'value', got {multiscale_mode!r}")
        if ratio_range is not None and (self.img_scale is None or len(self.img_scale) != 1):
            raise ConfigError('Resize: ratio_range needs exactly one img_scale')
        self.multiscale_mode = multiscale_mode
        self.ratio_range = ratio_range
        self.keep_ratio = keep_ratio
        self.bbox_clip_border = bbox_clip_border
        self.interpolation = interpolation

    def _random_scale(self) -> Scale:
        if self.img_scale is None:
            raise ConfigError('Resize: img_scale is None and no scale was given by MultiScaleFlipAug')
        if self.ratio_range is not None:
            low, high = self.ratio_range
            ratio = np.random.random_sample() * (high - low) + low
            return int(self.img_scale[0][0] * ratio), int(self.img_scale[0][1] * ratio)
        if len(self.img_scale) == 1:
            return self.img_scale[0]
        if self.multiscale_mode == 'value':
            return self.img_scale[np.random.randint(len(self.img_scale))]
        longs = [max(s) for s in self.img_scale]
        shorts = [min(s) for s in self.img_scale]
        return (int(np.random.randint(min(longs), max(longs) + 1)),
                int(np.random.randint(min(shorts), max(shorts) + 1)))

    def __call__(self, results: dict) -> dict:
        if 'scale' not in results:
            if 'scale_factor' in results:
                h, w = results['img'].shape[:2]
                factor = float(np.asarray(results['scale_factor']).reshape(-1)[0])
                results['scale'] = (int(w * factor), int(h * factor))
            else:
                results['scale'] = self._random_scale()
        self._resize_img(results)
        self._resize_bboxes(results)
        self._resize_masks(results)
        return results

    def _resize_img(self, results: dict) -> None:
        for key in results.get('img_fields', ['img']):
            img = results[key]
            h, w = img.shape[:2]
            if self.keep_ratio:
                out = mmcv.imrescale(img, results['scale'], interpolation=self.interpolation)
            else:
                out = mmcv.imresize(img, results['scale'], interpolation=self.interpolation)
            new_h, new_w = out.shape[:2]
            results[key] = out
            results['scale_factor'] = np.array([new_w / w, new_h / h, new_w / w, new_h / h], dtype=np.float32)
            results['img_shape'] = out.shape
            results['pad_shape'] = out.shape
            results['keep_ratio'] = self.keep_ratio

    def _resize_bboxes(self, results: dict) -> None:
        h, w = results['img_shape'][:2]
        for key in results.get('bbox_fields', []):
            boxes = (results[key] * results['scale_factor']).astype(np.float32)
            if self.bbox_clip_border:
                boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
                boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
            results[key] = boxes

    def _resize_masks(self, results: dict) -> None:
        h, w = results['img_shape'][:2]
        for key in results.get('mask_fields', []):
            results[key] = resize_masks(results[key], h, w)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(img_scale={self.img_scale}, multiscale_mode={self.multiscale_mode!r}, '
                f'ratio_range={self.ratio_range}, keep_ratio={self.keep_ratio})')


def flip_bboxes(bboxes: np.ndarray, img_shape: tuple, direction: str) -> np.ndarray:
    """Flip ``[N, 4]`` x1y1x2y2 boxes inside an image of ``img_shape`` (h, w, ...)."""
    h, w = img_shape[:2]
    out = bboxes.copy()
    if direction in ('horizontal', 'diagonal'):
        out[:, 0] = w - bboxes[:, 2]
        out[:, 2] = w - bboxes[:, 0]
    if direction in ('vertical', 'diagonal'):
        out[:, 1] = h - bboxes[:, 3]
        out[:, 3] = h - bboxes[:, 1]
    return out


@TRANSFORMS.register_module()
class RandomFlip:
    """Flip with probability ``flip_ratio`` (float split evenly over directions, or one per direction).

    A ``flip`` already in results (set by MultiScaleFlipAug) is obeyed.
    """

    def __init__(self, flip_ratio: Union[float, Sequence[float], None] = None,
                 direction: Union[str, Sequence[str]] = 'horizontal') -> None:
        directions = [direction] if isinstance(direction, str) else list(direction)
        bad = [d for d in directions if d not in _DIRECTIONS]
        if bad:
            raise ConfigError(f'RandomFlip: direction {bad[0]!r} is not one of {_DIRECTIONS}')
        if isinstance(flip_ratio, (list, tuple)):
            if len(flip_ratio) != len(directions) or sum(flip_ratio) > 1 or min(flip_ratio) < 0:
                raise ConfigError(f'RandomFlip: flip_ratio {flip_ratio} must give one probability per '
                                  f'direction {directions}, summing to <= 1')
        elif flip_ratio is not None and not 0 <= flip_ratio <= 1:
            raise ConfigError(f'RandomFlip: flip_ratio must be in [0, 1], got {flip_ratio}')
        self.flip_ratio = flip_ratio
        self.direction = direction
        self._directions = directions

    def _choose(self) -> Optional[str]:
        if isinstance(self.flip_ratio, (list, tuple)):
            probs = list(self.flip_ratio)
        else:
            ratio = self.flip_ratio or 0.0
            probs = [ratio / len(self._directions)] * len(self._directions)
        probs.append(1.0 - sum(probs))
        choice = np.random.choice(len(probs), p=probs)
        return None if choice == len(self._directions) else self._directions[choice]

    def __call__(self, results: dict) -> dict:
        if 'flip' not in results:
            direction = self._choose()
            results['flip'] = direction is not None
            results['flip_direction'] = direction
        elif 'flip_direction' not in results:
            results['flip_direction'] = self._directions[0] if results['flip'] else None
        if results['flip']:
            direction = results['flip_direction']
            for key in results.get('img_fields', ['img']):
                results[key] = np.ascontiguousarray(mmcv.imflip(results[key], direction=direction))
            for key in results.get('bbox_fields', []):
                results[key] = flip_bboxes(results[key], results['img_shape'], direction)
            for key in results.get('mask_fields', []):
                results[key] = flip_masks(results[key], direction)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(flip_ratio={self.flip_ratio}, direction={self.direction!r})'


@TRANSFORMS.register_module()
class Normalize:
    """(img - mean) / std per channel, BGR to RGB first when ``to_rgb``; records ``img_norm_cfg``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], to_rgb: bool = True) -> None:
        self.mean = np.array(mean, dtype=np.float32)
        self.std = np.array(std, dtype=np.float32)
        self.to_rgb = to_rgb

    def __call__(self, results: dict) -> dict:
        for key in results.get('img_fields', ['img']):
            results[key] = mmcv.imnormalize(results[key], self.mean, self.std, self.to_rgb)
        results['img_norm_cfg'] = dict(mean=self.mean, std=self.std, to_rgb=self.to_rgb)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(mean={self.mean.tolist()}, std={self.std.tolist()}, to_rgb={self.to_rgb})'


@TRANSFORMS.register_module()
class Pad:
    """Pad right/bottom to a fixed ``size`` (h, w) or to multiples of ``size_divisor``; masks follow.

    ``pad_val``: a number for the image (masks get 0) or a dict ``img=..., masks=...``.
    """

    def __init__(self, size: Optional[Scale] = None, size_divisor: Optional[int] = None,
                 pad_val: Union[float, dict] = 0) -> None:
        if (size is None) == (size_divisor is None):
            raise ConfigError(f'Pad: give exactly one of size and size_divisor, got size={size}, '
                              f'size_divisor={size_divisor}')
        self.size = size
        self.size_divisor = size_divisor
        self.pad_val = pad_val if isinstance(pad_val, dict) else dict(img=pad_val, masks=0)

    def __call__(self, results: dict) -> dict:
        img_val = self.pad_val.get('img', 0)
        for key in results.get('img_fields', ['img']):
            if self.size is not None:
                padded = mmcv.impad(results[key], shape=tuple(self.size), pad_val=img_val)
            else:
                padded = mmcv.impad_to_multiple(results[key], self.size_divisor, pad_val=img_val)
            results[key] = padded
        results['pad_shape'] = padded.shape
        results['pad_fixed_size'] = self.size
        results['pad_size_divisor'] = self.size_divisor
        h, w = padded.shape[:2]
        for key in results.get('mask_fields', []):
            results[key] = pad_masks(results[key], h, w, self.pad_val.get('masks', 0))
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(size={self.size}, size_divisor={self.size_divisor}, pad_val={self.pad_val})'
