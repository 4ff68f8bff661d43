"""Faster R-CNN (Ren et al., 2015) with FPN."""
from __future__ import annotations

from mixprec.registry import MODELS

from .two_stage import TwoStageDetector


@MODELS.register_module()
class FasterRCNN(TwoStageDetector):
    """A :class:`TwoStageDetector` whose RoI head has a box head only."""
