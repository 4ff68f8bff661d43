"""Small helpers shared by the fp16 modules: dtype names and recursive tensor casting."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable, Optional, Union

import torch

from mixprec.registry import ConfigError

from .precision import choose_dtype

HALF_DTYPES = (torch.float16, torch.bfloat16)

_DTYPE_NAMES = {
    'float16': torch.float16, 'fp16': torch.float16, 'half': torch.float16,
    'bfloat16': torch.bfloat16, 'bf16': torch.bfloat16,
}


def resolve_dtype(dtype: Union[str, torch.dtype], device: Union[str, torch.device, None] = None) -> torch.dtype:
    """Turn 'float16' | 'bfloat16' | 'auto' | a half torch dtype into a torch dtype.

    'auto' is :func:`mixprec.fp16.precision.choose_dtype` on ``device`` (default: the current CUDA
    device if there is one, else the CPU): float16, bfloat16, or float32 where no half precision
    pays on that device.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in HALF_DTYPES:
            raise ConfigError(f'fp16 dtype must be float16 or bfloat16, got {dtype}')
        return dtype
    if dtype == 'auto':
        if device is None:
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        return choose_dtype(device).dtype
    if dtype not in _DTYPE_NAMES:
        raise ConfigError(f"fp16 dtype must be one of 'float16', 'bfloat16', 'auto', got {dtype!r}")
    return _DTYPE_NAMES[dtype]


def cast_tensor_type(inputs: Any, src_type: Union[torch.dtype, Iterable[torch.dtype], None],
                     dst_type: Optional[torch.dtype]) -> Any:
    """Cast the tensors of dtype ``src_type`` in ``inputs`` (also inside lists, tuples, dicts) to
    ``dst_type``.

    mmcv 1.x's signature and rule: only tensors whose dtype is ``src_type`` (or one of them, when a
    tuple of dtypes is given) are cast, so tensors of other dtypes and everything that is not a
    tensor (strings, arrays, modules, numbers) pass through; a ``src_type`` that is not a dtype
    (mmcv's tests pass None or ``str``) matches no tensor. Unlike mmcv, containers are rebuilt only
    when something inside them changed, and namedtuples keep their type.
    """
    if isinstance(src_type, torch.dtype):
        src = (src_type,)
    elif isinstance(src_type, (tuple, list, set, frozenset)):
        src = tuple(t for t in src_type if isinstance(t, torch.dtype))
    else:
        src = ()
    return _cast(inputs, src, dst_type) if src else inputs


def _cast(obj: Any, src: tuple, dst: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(dst) if obj.dtype in src and obj.dtype != dst else obj
    if isinstance(obj, (list, tuple)):
        items = [_cast(x, src, dst) for x in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        if isinstance(obj, list):
            return items
        if hasattr(obj, '_fields'):
            return type(obj)(*items)
        return type(obj)(items)
    if isinstance(obj, Mapping):
        out = {k: _cast(v, src, dst) for k, v in obj.items()}
        if all(out[k] is obj[k] for k in obj):
            return obj
        return type(obj)(out) if type(obj) is not dict else out
    return obj


def first_tensor(obj: Any) -> Optional[torch.Tensor]:
    """The first tensor found in ``obj`` (depth first through lists, tuples, dicts), or None."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        for x in obj:
            t = first_tensor(x)
            if t is not None:
                return t
    elif isinstance(obj, dict):
        for x in obj.values():
            t = first_tensor(x)
            if t is not None:
                return t
    return None
