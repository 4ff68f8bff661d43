"""Training engine: runner, hooks, checkpoints, logging, distributed helpers, test loops.

With the mixed-precision names of :mod:`mixprec.fp16`, this namespace holds those of mmcv 1.x's
``mmcv.runner`` that mixprec implements (see the README's "Compatibility with mmcv 1.x")."""
from mixprec.fp16 import (Fp16OptimizerHook, GradientCumulativeFp16OptimizerHook, LossScaler, auto_fp16,  # noqa: F401
                          force_fp32, wrap_fp16_model)
from .dist_utils import (RankFailedError, all_gather_object, barrier, broadcast_object, close_dist, collect_results,
                         get_dist_info, init_dist, is_dist)
from .hooks import *  # noqa: F401,F403  (the hook classes, registered in HOOKS)
from .log_buffer import LogBuffer
from .logger import get_logger
from .rng import get_rng_state, preserved_rng_state, set_rng_state
from .runner import Runner, TrainingInterrupted, move_to_device, parse_losses
from .test import encode_mask_results, multi_gpu_test, single_gpu_test
