"""Loading transforms: image file to array, annotation dict to gt arrays (mmdetection v2 names)."""
from __future__ import annotations

import os.path as osp
from typing import Optional

import mmcv
import numpy as np

from mixprec.registry import TRANSFORMS, ConfigError
from ..errors import MissingImageError, UnreadableImageError
from ..masks import PolygonMasks, decode_masks


def check_file_client(transform: str, file_client_args: Optional[dict]) -> None:
    """mmcv's FileClient argument: only the local disk (``dict(backend='disk')``) is supported."""
    if file_client_args is None or dict(file_client_args) == {'backend': 'disk'}:
        return
    raise ConfigError(f"{transform}: file_client_args={dict(file_client_args)!r} is not supported; "
                      f"images and annotations are read from the local disk: dict(backend='disk')")


@TRANSFORMS.register_module()
class LoadImageFromFile:
    """Read ``img_prefix/img_info['filename']`` as BGR ``[H, W, 3]`` (uint8, or float32 if asked).

    With ``color_type='color'`` grayscale and 4-channel (alpha) images become 3-channel BGR. A missing
    file raises :class:`MissingImageError`, one that cannot be decoded (truncated, not an image)
    :class:`UnreadableImageError`, both naming the file.
    """

    def __init__(self, to_float32: bool = False, color_type: str = 'color',
                 file_client_args: Optional[dict] = None) -> None:
        check_file_client(type(self).__name__, file_client_args)
        self.to_float32 = to_float32
        self.color_type = color_type

    def __call__(self, results: dict) -> dict:
        prefix = results.get('img_prefix')
        name = results['img_info']['filename']
        filename = osp.join(prefix, name) if prefix else name
        if not osp.isfile(filename):
            raise MissingImageError(f'image file not found: {filename}')
        with open(filename, 'rb') as f:
            content = f.read()
        img = mmcv.imfrombytes(content, self.color_type) if content else None
        if img is None:
            raise UnreadableImageError(f'{filename}: cannot decode the image ({len(content)} bytes; '
                                       'truncated, corrupt or not an image file)')
        if self.to_float32:
            img = img.astype(np.float32)
        results['filename'] = filename
        results['ori_filename'] = name
        results['img'] = img
        results['img_shape'] = img.shape
        results['ori_shape'] = img.shape
        results['img_fields'] = ['img']
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(to_float32={self.to_float32}, color_type={self.color_type!r})'


@TRANSFORMS.register_module()
class LoadAnnotations:
    """Copy ``ann_info`` into ``gt_bboxes`` [N, 4] float32, ``gt_labels`` [N] int64,
    ``gt_bboxes_ignore`` [K, 4] float32 and ``gt_masks``: uint8 [N, H, W] decoded by pycocotools, or
    with ``poly2mask=False`` the polygons as :class:`PolygonMasks` (mmdetection v2)."""

    def __init__(self, with_bbox: bool = True, with_label: bool = True, with_mask: bool = False,
                 poly2mask: bool = True, file_client_args: Optional[dict] = None) -> None:
        check_file_client(type(self).__name__, file_client_args)
        self.with_bbox = with_bbox
        self.with_label = with_label
        self.with_mask = with_mask
        self.poly2mask = poly2mask

    def __call__(self, results: dict) -> dict:
        ann = results['ann_info']
        if self.with_bbox:
            results['gt_bboxes'] = np.asarray(ann['bboxes'], dtype=np.float32).reshape(-1, 4)
            ignore = ann.get('bboxes_ignore')
            if ignore is not None:
                results['gt_bboxes_ignore'] = np.asarray(ignore, dtype=np.float32).reshape(-1, 4)
                results['bbox_fields'].append('gt_bboxes_ignore')
            results['bbox_fields'].append('gt_bboxes')
        if self.with_label:
            results['gt_labels'] = np.asarray(ann['labels'], dtype=np.int64).reshape(-1)
        if self.with_mask:
            info = results['img_info']
            if self.poly2mask:
                results['gt_masks'] = decode_masks(ann['masks'], info['height'], info['width'])
            else:
                results['gt_masks'] = PolygonMasks.from_coco(ann['masks'], info['height'], info['width'],
                                                             where=f"{info.get('filename', '')}: ")
            results['mask_fields'].append('gt_masks')
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(with_bbox={self.with_bbox}, with_label={self.with_label}, '
                f'with_mask={self.with_mask}, poly2mask={self.poly2mask})')
