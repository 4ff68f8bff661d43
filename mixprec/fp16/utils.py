"""Small helpers shared by the fp16 modules: dtype names and recursive tensor casting."""
from __future__ import annotations

from typing import Any, Iterable, Optional, Union

import torch

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
            raise ValueError(f'fp16 dtype must be float16 or bfloat16, got {dtype}')
        return dtype
    if dtype == 'auto':
        if device is None:
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        return choose_dtype(device).dtype
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"fp16 dtype must be one of 'float16', 'bfloat16', 'auto', got {dtype!r}")
    return _DTYPE_NAMES[dtype]


def cast_tensor_type(inputs: Any, dst_type: torch.dtype,
                     src_types: Optional[Iterable[torch.dtype]] = None) -> Any:
    """Cast floating tensors in ``inputs`` (also inside lists, tuples, dicts) to ``dst_type``.

    Only tensors whose dtype is in ``src_types`` are cast (default: every floating dtype), so
    integer tensors (labels, indices) and anything that is not a tensor pass through unchanged.
    Containers are rebuilt only when something inside them changed type.
    """
    src = tuple(src_types) if src_types is not None else None
    return _cast(inputs, dst_type, src)


def _cast(obj: Any, dst: torch.dtype, src: Optional[tuple]) -> Any:
    if isinstance(obj, torch.Tensor):
        if obj.dtype is dst or not obj.is_floating_point():
            return obj
        if src is not None and obj.dtype not in src:
            return obj
        return obj.to(dst)
    if isinstance(obj, (list, tuple)):
        items = [_cast(x, dst, src) for x in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        if isinstance(obj, list):
            return items
        if hasattr(obj, '_fields'):
            return type(obj)(*items)
        return type(obj)(items)
    if isinstance(obj, dict):
        out = {k: _cast(v, dst, src) for k, v in obj.items()}
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
