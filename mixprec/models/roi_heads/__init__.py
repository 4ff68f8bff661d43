"""Second-stage heads of two-stage detectors."""
from .bbox_heads import BBoxHead, ConvFCBBoxHead, Shared2FCBBoxHead
from .mask_heads import FCNMaskHead
from .roi_extractors import SingleRoIExtractor
from .shared_heads import ResLayer
from .standard_roi_head import StandardRoIHead

__all__ = ['BBoxHead', 'ConvFCBBoxHead', 'ResLayer', 'Shared2FCBBoxHead', 'FCNMaskHead', 'SingleRoIExtractor', 'StandardRoIHead']
