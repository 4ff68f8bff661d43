"""A tensor that says it lives on ``cuda:0`` while its data stays on the CPU, for CPU tests of code
paths that must move device tensors to the CPU.

Every op runs on the CPU data and wraps its results again, except a copy to the CPU (``.cpu()``,
``.to('cpu')``), which returns the plain CPU tensor. ``torch.save`` pickles such a tensor as its
subclass, which ``torch.load(weights_only=True)`` refuses: as a real CUDA tensor in a checkpoint
fails to load on a machine without CUDA, a forgotten ``.cpu()`` fails here.
"""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_map


class FakeCudaTensor(torch.Tensor):
    @staticmethod
    def __new__(cls, data: torch.Tensor) -> 'FakeCudaTensor':
        return torch.Tensor._make_wrapper_subclass(cls, data.shape, dtype=data.dtype, device='cuda:0',
                                                   strides=data.stride(), requires_grad=data.requires_grad)

    def __init__(self, data: torch.Tensor) -> None:
        self.data_on_cpu = data

    def __repr__(self) -> str:
        return f'FakeCudaTensor({self.data_on_cpu!r})'

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_cpu = func is torch.ops.aten._to_copy.default and torch.device(kwargs.get('device', 'cuda')).type == 'cpu'
        args, kwargs = tree_map(_unwrap, (args, kwargs))
        out = func(*args, **kwargs)
        return out if to_cpu else tree_map(_wrap, out)


def _unwrap(value):
    return value.data_on_cpu if isinstance(value, FakeCudaTensor) else value


def _wrap(value):
    return FakeCudaTensor(value) if isinstance(value, torch.Tensor) else value
