"""Data pipeline transforms (mmdetection v2 names), registered in ``mixprec.registry.TRANSFORMS``."""
from .compose import Compose
from .formatting import DEFAULT_META_KEYS, Collect, DefaultFormatBundle, ImageToTensor, ToTensor, to_tensor
from .loading import LoadAnnotations, LoadImageFromFile
from .test_time_aug import MultiScaleFlipAug
from .transforms import Normalize, Pad, RandomFlip, Resize, flip_bboxes

__all__ = ['Compose', 'DEFAULT_META_KEYS', 'Collect', 'DefaultFormatBundle', 'ImageToTensor', 'ToTensor',
           'to_tensor', 'LoadAnnotations', 'LoadImageFromFile', 'MultiScaleFlipAug', 'Normalize', 'Pad',
           'RandomFlip', 'Resize', 'flip_bboxes']
