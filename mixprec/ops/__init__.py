"""Operators that pick their own kernel: models call them (or modules built on them) and never know
which one runs. Each gives the reference operator's numbers up to float rounding."""
from .conv import ROUTES, conv2d, route_for, scaled_conv2d
from .nms import batched_nms, soft_nms
from .roi_align import roi_align_levels

__all__ = ['ROUTES', 'batched_nms', 'conv2d', 'roi_align_levels', 'route_for', 'scaled_conv2d', 'soft_nms']
