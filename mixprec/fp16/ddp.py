"""DistributedDataParallel helpers: find the wrapped module, rebuild a wrapper after conversion.

Why rebuild: DDP builds its gradient buckets and autograd hooks from the parameters' dtypes at
construction. ``wrap_fp16_model`` changes ``param.data`` to half afterwards, which detaches the
hooks (the grad accumulators are recreated) and leaves fp32 buckets, so the next iteration fails
("Expected to have finished reduction..."). A fresh wrapper with the same settings around the
converted module has half buckets and working hooks.
"""
from __future__ import annotations

import inspect
import logging

from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

logger = logging.getLogger(__name__)

_COPIED = ('device_ids', 'output_device', 'dim', 'broadcast_buffers', 'process_group',
           'find_unused_parameters', 'static_graph')


def is_ddp(model: nn.Module) -> bool:
    return isinstance(model, DistributedDataParallel)


def unwrap(model: nn.Module) -> nn.Module:
    """The user module inside a (Distributed)DataParallel wrapper, or ``model`` itself."""
    return model.module if isinstance(model, (DataParallel, DistributedDataParallel)) else model


def rebuild_ddp(ddp: DistributedDataParallel) -> DistributedDataParallel:
    """A new wrapper of the same class and settings around ``ddp.module``.

    ``gradient_as_bucket_view`` is always False in the new wrapper: the hook keeps the gradients in
    its own flat buffers and DDP must copy the reduced buckets into them, not replace them.
    Communication hooks registered on the old wrapper are not carried over (register them after
    ``before_run``). Every rank must call this (the constructor broadcasts rank 0's parameters).
    """
    accepted = inspect.signature(type(ddp).__init__).parameters
    copied = _COPIED
    if 'forward_sync_buffers' in accepted and hasattr(ddp, 'forward_sync_buffers'):
        copied = tuple(n if n != 'broadcast_buffers' else 'forward_sync_buffers' for n in copied)
    kwargs = {name: getattr(ddp, name) for name in copied if name in accepted and hasattr(ddp, name)}
    if 'bucket_cap_mb' in accepted and getattr(ddp, 'bucket_bytes_cap', None):
        kwargs['bucket_cap_mb'] = ddp.bucket_bytes_cap / 2**20
    if 'gradient_as_bucket_view' in accepted:
        if getattr(ddp, 'gradient_as_bucket_view', False):
            logger.info('Fp16OptimizerHook: rebuilding DDP with gradient_as_bucket_view=False')
        kwargs['gradient_as_bucket_view'] = False
    return type(ddp)(ddp.module, **kwargs)
