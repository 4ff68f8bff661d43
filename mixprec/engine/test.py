"""Inference loops over a data loader: one process, or many with results gathered on rank 0."""
from __future__ import annotations

import os
import os.path as osp
import pickle
from typing import Any, Callable, Optional

import numpy as np
import pycocotools.mask as mask_util
import torch
from torch import nn
from tqdm import tqdm

from mixprec.stop_signals import starting_workers
from .dist_utils import barrier, collect_results, get_dist_info, raise_if_any_rank_failed
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
    with starting_workers():  # during training: the workers ignore the runner's stop signals
        batches = iter(data_loader)
    for data in batches:
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


def collect_results_in_dir(part: list, size: int, tmpdir: str) -> Optional[list]:
    """Gather each rank's results on rank 0 through files in ``tmpdir`` (a folder every rank sees).

    Like :func:`collect_results` (same order, padding dropped) but the results travel through
    ``tmpdir/part_<rank>.pkl`` instead of the process group; rank 0 removes the files it read.
    """
    rank, world = get_dist_info()
    os.makedirs(tmpdir, exist_ok=True)
    with open(osp.join(tmpdir, f'part_{rank}.pkl'), 'wb') as f:
        pickle.dump(part, f)
    barrier()
    if rank != 0:
        return None
    parts = []
    for r in range(world):
        path = osp.join(tmpdir, f'part_{r}.pkl')
        with open(path, 'rb') as f:
            parts.append(pickle.load(f))
        os.remove(path)
    return [res for group in zip(*parts) for res in group][:size]


def multi_gpu_test(model: nn.Module, data_loader, tmpdir: Optional[str] = None, gpu_collect: bool = False,
                   progress: bool = True) -> Optional[list]:
    """Each rank runs its shard; rank 0 returns all results in dataset order, others None.

    Results are gathered through the process group, or through files in ``tmpdir`` (a folder every
    rank sees) when it is given and ``gpu_collect`` is not, as mmdetection v2 chooses. The process
    group is mmdetection's ``gpu_collect`` on NCCL (through the GPUs) and the same call on gloo
    (through the CPU): one pickled list per rank either way, so nothing falls back. A rank that fails
    on its shard ends every rank with its error before the gathering (no rank waits for it).
    """
    rank, _ = get_dist_info()
    part, error = None, None
    try:
        part = _run(model, data_loader, progress and rank == 0)
    except Exception as exc:  # every rank learns of it below, then raises
        error = exc
    raise_if_any_rank_failed(error, 'testing its shard')
    if tmpdir is not None and not gpu_collect:
        return collect_results_in_dir(part, len(data_loader.dataset), tmpdir)
    return collect_results(part, len(data_loader.dataset))


# keys of ``cfg.evaluation`` that configure the EvalHook, not ``dataset.evaluate``
EVAL_HOOK_KEYS = ('interval', 'tmpdir', 'start', 'gpu_collect', 'save_best', 'rule', 'dynamic_intervals', 'by_epoch')


def evaluation_kwargs(cfg, metric, options: Optional[dict] = None) -> dict:
    """``dataset.evaluate`` arguments as mmdetection v2's tools build them: ``cfg.evaluation`` without
    the hook's keys, then ``metric`` and the command line's ``--eval-options``."""
    kwargs = {k: v for k, v in dict(cfg.get('evaluation') or {}).items() if k not in EVAL_HOOK_KEYS}
    kwargs.update(metric=metric, **(options or {}))
    return kwargs
