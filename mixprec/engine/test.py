"""Inference loops over a data loader: one process, or many with results gathered on rank 0."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import pycocotools.mask as mask_util
import torch
from torch import nn
from tqdm import tqdm

from .dist_utils import collect_results, get_dist_info
from .runner import move_to_device


def encode_mask_results(result: Any) -> Any:
    """Mask R-CNN's ``(bbox_results, segm_results)`` with bool masks -> RLE dicts (counts as str)."""
    if not isinstance(result, tuple):
        return result
    bbox_results, segm_results = result
    encoded = []
    for class_masks in segm_results:
        rles = []
        for mask in class_masks:
            if isinstance(mask, dict):
                rles.append(mask)
                continue
            rle = mask_util.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
            rle['counts'] = rle['counts'].decode('ascii')
            rles.append(rle)
        encoded.append(rles)
    return bbox_results, encoded


@torch.no_grad()
def _run(model: nn.Module, data_loader, progress: bool, on_batch: Optional[Callable] = None) -> list:
    model.eval()
    device = next(model.parameters()).device
    results: list = []
    bar = tqdm(total=len(data_loader.sampler) if hasattr(data_loader, 'sampler') else None,
               disable=not progress, desc='test', unit='img', dynamic_ncols=True, leave=False)
    for data in data_loader:
        data = move_to_device(data, device)
        batch_results = model(return_loss=False, rescale=True, **data)
        if on_batch is not None:
            on_batch(data, batch_results)
        results.extend(encode_mask_results(r) for r in batch_results)
        bar.update(len(batch_results))
    bar.close()
    return results


def single_gpu_test(model: nn.Module, data_loader, progress: bool = True,
                    on_batch: Optional[Callable] = None) -> list:
    """Results for every sample of ``data_loader`` in order (see docs/contracts.md)."""
    return _run(model, data_loader, progress, on_batch)


def multi_gpu_test(model: nn.Module, data_loader, progress: bool = True) -> Optional[list]:
    """Each rank runs its shard; rank 0 returns all results in dataset order, others None."""
    rank, _ = get_dist_info()
    part = _run(model, data_loader, progress and rank == 0)
    return collect_results(part, len(data_loader.dataset))
