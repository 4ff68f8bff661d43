"""collate: a list of pipeline outputs to the batch format of docs/contracts.md."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def stack_padded(imgs: Sequence[torch.Tensor], pad_value: float = 0.0) -> torch.Tensor:
    """``[C, h_i, w_i]`` Tensors to one ``[B, C, H, W]``, each padded right/bottom to the max size."""
    height = max(int(img.shape[-2]) for img in imgs)
    width = max(int(img.shape[-1]) for img in imgs)
    return torch.stack([F.pad(img, (0, width - img.shape[-1], 0, height - img.shape[-2]), value=pad_value)
                        for img in imgs])


def _with_batch_shape(metas: Sequence[dict], shape: tuple[int, int]) -> list[dict]:
    return [dict(meta, batch_input_shape=shape) for meta in metas]


def collate(batch: Sequence[dict]) -> dict:
    """Batch samples: ``img`` stacked and padded, ``batch_input_shape`` (H, W) added to each meta,
    every other key a list over samples. Test samples (MultiScaleFlipAug: ``img`` a list over
    augmentations) give ``img`` as a list over augmentations of [B, 3, H, W] and ``img_metas`` as a
    list over augmentations of lists of dicts; other keys become lists over augmentations of lists."""
    if not batch:
        raise ValueError('collate got an empty batch')
    if isinstance(batch[0]['img'], (list, tuple)):
        return _collate_augmented(batch)
    img = stack_padded([s['img'] for s in batch])
    out = {'img': img, 'img_metas': _with_batch_shape([s['img_metas'] for s in batch], tuple(img.shape[-2:]))}
    for key in batch[0]:
        if key not in out:
            out[key] = [s[key] for s in batch]
    return out


def _collate_augmented(batch: Sequence[dict]) -> dict:
    num_augs = len(batch[0]['img'])
    imgs = [stack_padded([s['img'][a] for s in batch]) for a in range(num_augs)]
    out = {'img': imgs,
           'img_metas': [_with_batch_shape([s['img_metas'][a] for s in batch], tuple(imgs[a].shape[-2:]))
                         for a in range(num_augs)]}
    for key in batch[0]:
        if key not in out:
            out[key] = [[s[key][a] for s in batch] for a in range(num_augs)]
    return out
