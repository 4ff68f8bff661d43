"""Compose: run a list of transforms (dicts built from TRANSFORMS, or callables) in order."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

from mixprec.registry import TRANSFORMS, ConfigError


@TRANSFORMS.register_module()
class Compose:
    """Apply transforms in sequence; a transform returning None stops the chain (returns None)."""

    def __init__(self, transforms: Sequence[Union[dict, Callable]]) -> None:
        self.transforms: list[Callable] = []
        for t in transforms:
            if isinstance(t, dict):
                self.transforms.append(TRANSFORMS.build(t))
            elif callable(t):
                self.transforms.append(t)
            else:
                raise ConfigError(f'pipeline step must be a config dict or a callable, got {t!r}')

    def __call__(self, data: dict) -> Optional[dict]:
        for t in self.transforms:
            data = t(data)
            if data is None:
                return None
        return data

    def __repr__(self) -> str:
        inner = ''.join(f'\n    {t}' for t in self.transforms)
        return f'{self.__class__.__name__}({inner}\n)'
