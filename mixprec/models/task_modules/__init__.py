"""Anchors, box coding, assignment, sampling and box operations used by the heads."""
from .anchor_generator import AnchorGenerator
from .assigners import AssignResult, MaxIoUAssigner
from .bbox_coder import DeltaXYWHBBoxCoder
from .bbox_ops import bbox2result, bbox2roi, bbox_overlaps, multiclass_nms
from .mask_ops import mask_target, paste_masks_in_image
from .samplers import OHEMSampler, PseudoSampler, RandomSampler, SamplingResult

__all__ = [
    'AnchorGenerator', 'AssignResult', 'MaxIoUAssigner', 'DeltaXYWHBBoxCoder', 'bbox2result', 'bbox2roi',
    'bbox_overlaps', 'multiclass_nms', 'PseudoSampler', 'RandomSampler', 'SamplingResult', 'OHEMSampler',
]
