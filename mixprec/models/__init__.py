"""Detection models: backbones, necks, heads, losses, detectors and their task utilities."""
from . import task_modules
from . import losses
from . import backbones
from . import necks
from . import dense_heads
from . import detectors
from . import roi_heads
from .builder import build_backbone, build_detector, build_head, build_loss, build_neck, build_task_util, place_model
from .fast_conv import fold_batchnorms, use_fast_convs

__all__ = ['build_backbone', 'build_detector', 'build_head', 'build_loss', 'build_neck', 'build_task_util',
           'fold_batchnorms', 'place_model', 'use_fast_convs']
