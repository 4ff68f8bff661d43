"""Running statistics of norm layers, saved before a step's forward and restored when the step is
skipped, so that a skipped step leaves no trace in the model."""
from __future__ import annotations

from operator import attrgetter

import torch
from torch import nn

from .flat import homogeneous_groups

_TRAINING = attrgetter('training')
_STAT_NAMES = ('running_mean', 'running_var', 'num_batches_tracked')


class RunningStatsGuard:
    """Snapshot / restore of the running buffers of the norm layers in training mode.

    Layers: every BatchNorm / InstanceNorm with ``track_running_stats``. Which of them are in
    training mode is read once per snapshot (a C-level pass over their ``training`` flags); the
    buffer lists are rebuilt only when that pattern changes. Snapshot and restore are one
    ``torch._foreach_copy_`` per buffer dtype and device (float statistics, int64 counters: see
    :func:`~.flat.homogeneous_groups`); a model whose norm layers are all in eval mode (``norm_eval``)
    costs nothing.
    """

    def __init__(self, module: nn.Module) -> None:
        self.norms = [m for m in module.modules()
                      if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
        self._pattern: list[bool] = []
        self._live: list[torch.Tensor] = []
        self._groups: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        self._valid = False

    def snapshot(self) -> None:
        pattern = list(map(_TRAINING, self.norms))
        if pattern != self._pattern:
            self._pattern = pattern
            self._live = [m._buffers[name] for m, on in zip(self.norms, pattern) if on
                          for name in _STAT_NAMES if m._buffers.get(name) is not None]
            self._groups = homogeneous_groups([t.clone() for t in self._live], self._live)
        else:
            for saved, live in self._groups:
                torch._foreach_copy_(saved, live)
        self._valid = True

    def restore(self) -> bool:
        """Put the snapshot back (once); False when there was none to restore."""
        if not self._valid:
            return False
        for saved, live in self._groups:
            torch._foreach_copy_(live, saved)
        self._valid = False
        return True


def has_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` is or holds a BatchNorm layer (SyncBatchNorm included)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
