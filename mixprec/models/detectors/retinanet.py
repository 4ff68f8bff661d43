"""RetinaNet (Lin et al., 2017)."""
from __future__ import annotations

from mixprec.registry import MODELS

from .single_stage import SingleStageDetector


@MODELS.register_module()
class RetinaNet(SingleStageDetector):
    """A :class:`SingleStageDetector` with a RetinaHead."""
