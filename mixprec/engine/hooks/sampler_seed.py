"""DistSamplerSeedHook: a new shuffle each epoch, the same on every rank."""
from __future__ import annotations

from mixprec.registry import HOOKS
from .hook import Hook


@HOOKS.register_module()
class DistSamplerSeedHook(Hook):
    default_priority = 0

    def before_train_epoch(self, runner) -> None:
        loader = runner.data_loader
        for sampler in (getattr(loader, 'sampler', None), getattr(loader, 'batch_sampler', None)):
            if hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(runner.epoch)
