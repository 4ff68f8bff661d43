"""Second-stage heads of two-stage detectors."""
from .bbox_heads import ConvFCBBoxHead, Shared2FCBBoxHead
from .mask_heads import FCNMaskHead
from .roi_extractors import SingleRoIExtractor
from .standard_roi_head import StandardRoIHead

__all__ = ['ConvFCBBoxHead', 'Shared2FCBBoxHead', 'FCNMaskHead', 'SingleRoIExtractor', 'StandardRoIHead']
