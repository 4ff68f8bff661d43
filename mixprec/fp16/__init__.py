"""Mixed-precision core: model conversion, the auto_fp16 / force_fp32 decorators, loss scaling and
the Fp16OptimizerHook. Imports nothing from mixprec except the registry."""
from .decorators import auto_fp16, force_fp32
from . import precision
from .hook import Fp16OptimizerHook, GradientCumulativeFp16OptimizerHook
from .loss_scaler import LossScaleCollapseError, LossScaler, SkippedStepsError, build_loss_scaler
from .precision import PrecisionChoice, choose_dtype
from .utils import cast_tensor_type, resolve_dtype
from .wrap import convs_to_channels_last, is_norm, patch_norm_fp32, wrap_fp16_model

__all__ = ['PrecisionChoice', 'choose_dtype', 'precision', 'auto_fp16', 'force_fp32', 'Fp16OptimizerHook',
           'GradientCumulativeFp16OptimizerHook', 'LossScaleCollapseError', 'LossScaler', 'SkippedStepsError',
           'build_loss_scaler', 'cast_tensor_type', 'convs_to_channels_last', 'resolve_dtype', 'is_norm',
           'patch_norm_fp32', 'wrap_fp16_model']
