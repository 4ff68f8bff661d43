"""MultiScaleFlipAug: run the inner transforms once per (scale, flip) and list the outputs."""
from __future__ import annotations

import copy
from typing import Optional, Sequence, Union

from mixprec.registry import TRANSFORMS, ConfigError
from .compose import Compose

_DIRECTIONS = ('horizontal', 'vertical', 'diagonal')


@TRANSFORMS.register_module()
class MultiScaleFlipAug:
    """Test-time augmentation; output values are lists over augmentations (scale-major, then
    no-flip followed by each flip direction), e.g. ``img: [Tensor[3, H, W], ...]``."""

    def __init__(self, transforms: Sequence[dict], img_scale: Union[tuple, list, None] = None,
                 scale_factor: Union[float, list, None] = None, flip: bool = False,
                 flip_direction: Union[str, Sequence[str]] = 'horizontal') -> None:
        if (img_scale is None) == (scale_factor is None):
            raise ConfigError('MultiScaleFlipAug: give exactly one of img_scale and scale_factor, '
                              f'got img_scale={img_scale}, scale_factor={scale_factor}')
        self.transforms = Compose(transforms)
        if img_scale is not None:
            self.img_scale = img_scale if isinstance(img_scale, list) else [img_scale]
            self.scale_key = 'scale'
        else:
            self.img_scale = scale_factor if isinstance(scale_factor, list) else [scale_factor]
            self.scale_key = 'scale_factor'
        self.flip = flip
        self.flip_direction = [flip_direction] if isinstance(flip_direction, str) else list(flip_direction)
        bad = [d for d in self.flip_direction if d not in _DIRECTIONS]
        if bad:
            raise ConfigError(f'MultiScaleFlipAug: flip_direction {bad[0]!r} is not one of {_DIRECTIONS}')

    def __call__(self, results: dict) -> Optional[dict]:
        flips: list[tuple[bool, Optional[str]]] = [(False, None)]
        if self.flip:
            flips += [(True, d) for d in self.flip_direction]
        outputs = []
        for scale in self.img_scale:
            for flip, direction in flips:
                aug = copy.deepcopy(results)
                aug[self.scale_key] = tuple(scale) if self.scale_key == 'scale' else scale
                aug['flip'] = flip
                aug['flip_direction'] = direction
                out = self.transforms(aug)
                if out is None:
                    return None
                outputs.append(out)
        return {key: [o[key] for o in outputs] for key in outputs[0]}

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(transforms={self.transforms}, img_scale={self.img_scale}, '
                f'flip={self.flip}, flip_direction={self.flip_direction})')
