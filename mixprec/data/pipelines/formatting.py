"""Formatting transforms: numpy arrays to Tensors and the final ``Collect`` (mmdetection v2)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from mixprec.registry import TRANSFORMS

from ..masks import PolygonMasks

DEFAULT_META_KEYS = ('filename', 'ori_filename', 'ori_shape', 'img_shape', 'pad_shape', 'scale_factor',
                     'flip', 'flip_direction', 'img_norm_cfg')


def to_tensor(data) -> torch.Tensor:
    """numpy array, Tensor, sequence, int or float to a Tensor (arrays share memory when possible)."""
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(data))
    if isinstance(data, (Sequence, int, float)) and not isinstance(data, str):
        return torch.tensor(data)
    raise TypeError(f'cannot convert {type(data).__name__} to a Tensor')


def _image_to_chw(img: np.ndarray) -> torch.Tensor:
    if img.ndim < 3:
        img = img[..., None]
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


@TRANSFORMS.register_module()
class ImageToTensor:
    """``[H, W, C]`` arrays under ``keys`` to ``[C, H, W]`` Tensors."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)

    def __call__(self, results: dict) -> dict:
        for key in self.keys:
            results[key] = _image_to_chw(results[key])
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(keys={self.keys})'


@TRANSFORMS.register_module()
class ToTensor:
    """Arrays under ``keys`` to Tensors."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)

    def __call__(self, results: dict) -> dict:
        for key in self.keys:
            results[key] = to_tensor(results[key])
        return results


@TRANSFORMS.register_module()
class DefaultFormatBundle:
    """img to float32 ``[3, H, W]``; gt_bboxes(_ignore) float32, gt_labels int64, gt_masks uint8
    ``[N, H, W]`` Tensors (PolygonMasks stay as they are); fills pad_shape, scale_factor and img_norm_cfg when missing."""

    def __init__(self, img_to_float: bool = True) -> None:
        self.img_to_float = img_to_float

    def __call__(self, results: dict) -> dict:
        if 'img' in results:
            img = results['img']
            if self.img_to_float and img.dtype == np.uint8:
                img = img.astype(np.float32)
            channels = 1 if img.ndim < 3 else img.shape[2]
            results.setdefault('pad_shape', img.shape)
            results.setdefault('scale_factor', 1.0)
            results.setdefault('img_norm_cfg', dict(mean=np.zeros(channels, dtype=np.float32),
                                                    std=np.ones(channels, dtype=np.float32), to_rgb=False))
            results['img'] = _image_to_chw(img)
        for key in ('proposals', 'gt_bboxes', 'gt_bboxes_ignore'):
            if key in results:
                results[key] = to_tensor(np.asarray(results[key], dtype=np.float32))
        if 'gt_labels' in results:
            results['gt_labels'] = to_tensor(np.asarray(results['gt_labels'], dtype=np.int64))
        if 'gt_masks' in results and not isinstance(results['gt_masks'], PolygonMasks):
            results['gt_masks'] = to_tensor(np.asarray(results['gt_masks'], dtype=np.uint8))
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(img_to_float={self.img_to_float})'


@TRANSFORMS.register_module()
class Collect:
    """Keep ``keys`` and gather ``meta_keys`` into one ``img_metas`` dict."""

    def __init__(self, keys: Sequence[str], meta_keys: Sequence[str] = DEFAULT_META_KEYS) -> None:
        self.keys = list(keys)
        self.meta_keys = list(meta_keys)

    def __call__(self, results: dict) -> dict:
        missing = [k for k in self.keys if k not in results]
        if missing:
            raise KeyError(f'Collect: key {missing[0]!r} is not in the results; available: {sorted(results)}')
        data = {'img_metas': {k: results[k] for k in self.meta_keys if k in results}}
        for key in self.keys:
            data[key] = results[key]
        return data

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(keys={self.keys}, meta_keys={self.meta_keys})'
