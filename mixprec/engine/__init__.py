"""Training engine: runner, hooks, checkpoints, logging, distributed helpers, test loops."""
from .dist_utils import (RankFailedError, all_gather_object, barrier, broadcast_object, close_dist, collect_results,
                         get_dist_info, init_dist, is_dist)
from .hooks import *  # noqa: F401,F403  (the hook classes, registered in HOOKS)
from .log_buffer import LogBuffer
from .logger import get_logger
from .rng import get_rng_state, preserved_rng_state, set_rng_state
from .runner import Runner, TrainingInterrupted, move_to_device, parse_losses
from .test import encode_mask_results, multi_gpu_test, single_gpu_test
