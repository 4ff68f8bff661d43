"""Training hooks (each registered in ``mixprec.registry.HOOKS``)."""
from .checkpoint import CheckpointHook
from .ema import ExpMomentumEMAHook, LinearMomentumEMAHook
from .eval import DistEvalHook, EvalHook
from .hook import Hook, PRIORITIES, get_priority
from .iter_timer import IterTimerHook
from .logger import JsonLoggerHook, LoggerHook, TextLoggerHook
from .misc import CheckInvalidLossHook, EmptyCacheHook, MemoryProfilerHook, SyncBuffersHook
from .num_class_check import NumClassCheckHook
from .lr_updater import (CosineAnnealingLrUpdaterHook, FixedLrUpdaterHook, LrUpdaterHook, StepLrUpdaterHook,
                         build_lr_hook)
from .optimizer import NonFiniteLossError, OptimizerHook
from .sampler_seed import DistSamplerSeedHook
from .tensorboard_logger import TensorboardLoggerHook
from .wandb_logger import MMDetWandbHook, WandbLoggerHook

__all__ = [
    'CheckInvalidLossHook', 'CheckpointHook', 'EmptyCacheHook', 'ExpMomentumEMAHook', 'LinearMomentumEMAHook',
    'MMDetWandbHook', 'MemoryProfilerHook', 'NumClassCheckHook', 'SyncBuffersHook', 'TensorboardLoggerHook',
    'WandbLoggerHook', 'CosineAnnealingLrUpdaterHook', 'DistEvalHook', 'DistSamplerSeedHook', 'EvalHook',
    'FixedLrUpdaterHook', 'Hook', 'IterTimerHook', 'JsonLoggerHook', 'LoggerHook', 'LrUpdaterHook',
    'NonFiniteLossError', 'OptimizerHook', 'PRIORITIES', 'StepLrUpdaterHook', 'TextLoggerHook',
    'build_lr_hook', 'get_priority',
]
