"""Detectors."""
from .base import BaseDetector
from .single_stage import SingleStageDetector
from .retinanet import RetinaNet
from .two_stage import TwoStageDetector
from .faster_rcnn import FasterRCNN
from .mask_rcnn import MaskRCNN
