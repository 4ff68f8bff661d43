"""Data: COCO and synthetic shapes datasets, mmdetection v2 pipelines, samplers, collate, loaders."""
from .builder import build_dataloader, build_dataset, worker_init_fn
from .coco import COCO_CLASSES, CocoDataset
from .collate import collate, stack_padded
from .dataset_wrappers import ConcatDataset, RepeatDataset
from .masks import PolygonMasks, decode_masks, encode_mask, segm_to_rle
from .pipelines import *  # noqa: F401,F403  (registers the transforms)
from .pipelines import __all__ as _pipeline_names
from .samplers import DistributedGroupSampler, DistributedSampler, GroupSampler, merge_ordered_results
from .shapes import make_shapes_dataset
from .shapes_dataset import ShapesDataset, ensure_shapes_dataset

__all__ = ['build_dataloader', 'build_dataset', 'worker_init_fn', 'COCO_CLASSES', 'CocoDataset', 'collate',
           'stack_padded', 'ConcatDataset', 'RepeatDataset', 'PolygonMasks', 'decode_masks', 'encode_mask', 'segm_to_rle',
           'DistributedGroupSampler', 'DistributedSampler', 'GroupSampler', 'merge_ordered_results',
           'make_shapes_dataset', 'ShapesDataset', 'ensure_shapes_dataset', *_pipeline_names]
