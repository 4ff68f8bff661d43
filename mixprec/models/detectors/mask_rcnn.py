"""Mask R-CNN (He et al., 2017) with FPN."""
from __future__ import annotations

from mixprec.registry import MODELS

from .two_stage import TwoStageDetector


@MODELS.register_module()
class MaskRCNN(TwoStageDetector):
    """A :class:`TwoStageDetector` whose RoI head also has a mask head; test results are
    ``(bbox_results, segm_results)`` per image."""
