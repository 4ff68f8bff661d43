"""Training hooks (each registered in ``mixprec.registry.HOOKS``)."""
from .checkpoint import CheckpointHook
from .ema import ExpMomentumEMAHook, LinearMomentumEMAHook
from .eval import DistEvalHook, EvalHook
from .hook import Hook, PRIORITIES, get_priority
from .iter_timer import IterTimerHook
from .logger import JsonLoggerHook, LoggerHook, TextLoggerHook
from .lr_updater import (CosineAnnealingLrUpdaterHook, CosineRestartLrUpdaterHook, CyclicLrUpdaterHook,
                         ExpLrUpdaterHook, FixedLrUpdaterHook, FlatCosineAnnealingLrUpdaterHook, InvLrUpdaterHook,
                         LinearAnnealingLrUpdaterHook, LrUpdaterHook, OneCycleLrUpdaterHook, PolyLrUpdaterHook,
                         StepLrUpdaterHook, build_lr_hook)
from .momentum_updater import (CosineAnnealingMomentumUpdaterHook, CyclicMomentumUpdaterHook,
                               LinearAnnealingMomentumUpdaterHook, MomentumUpdaterHook, OneCycleMomentumUpdaterHook,
                               StepMomentumUpdaterHook, build_momentum_hook)
from .optimizer import GradientCumulativeOptimizerHook, NonFiniteLossError, OptimizerHook
from .misc import CheckInvalidLossHook, EmptyCacheHook, MemoryProfilerHook, SyncBuffersHook
from .num_class_check import NumClassCheckHook
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
    'CosineRestartLrUpdaterHook', 'CyclicLrUpdaterHook', 'ExpLrUpdaterHook', 'FlatCosineAnnealingLrUpdaterHook',
    'InvLrUpdaterHook', 'LinearAnnealingLrUpdaterHook', 'OneCycleLrUpdaterHook', 'PolyLrUpdaterHook',
    'CosineAnnealingMomentumUpdaterHook', 'CyclicMomentumUpdaterHook', 'LinearAnnealingMomentumUpdaterHook',
    'MomentumUpdaterHook', 'OneCycleMomentumUpdaterHook', 'StepMomentumUpdaterHook', 'build_momentum_hook',
    'GradientCumulativeOptimizerHook',
]
