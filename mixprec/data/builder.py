"""build_dataset and build_dataloader: from config dicts to a DataLoader yielding contract batches."""
from __future__ import annotations

import random
from functools import partial
from typing import Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mixprec.registry import DATASETS
from mixprec.stop_signals import shield_worker
from .collate import collate
from .sample_seeds import SeededDataset, SeededSampler
from .samplers import DistributedGroupSampler, DistributedSampler, GroupSampler, _dist_info


def build_dataset(cfg: Union[dict, list], default_args: Optional[dict] = None) -> Dataset:
    """Build a dataset from ``cfg`` (a dict with ``type``; a list means ConcatDataset of them)."""
    if isinstance(cfg, (list, tuple)):
        from .dataset_wrappers import ConcatDataset
        return ConcatDataset([build_dataset(c, default_args) for c in cfg])
    return DATASETS.build(cfg, default_args)


def worker_init_fn(worker_id: int, num_workers: int, rank: int, seed: Optional[int]) -> None:
    """Seed numpy, random and torch in a worker with ``seed + rank * num_workers + worker_id``, and
    shield it from the training run's stop signals (the main process owns the stop).

    Without a seed, numpy and random take torch's per-worker seed, so forked workers do not
    share one numpy stream (identical random flips in every worker). A training loader's samples
    draw from their own per-sample seeds (:mod:`.sample_seeds`), not from these streams.
    """
    shield_worker()
    if seed is None:
        worker_seed = torch.initial_seed() % 2 ** 32
    else:
        worker_seed = num_workers * rank + worker_id + seed
    np.random.seed(worker_seed)
    random.seed(worker_seed)
    torch.manual_seed(worker_seed)


def build_dataloader(dataset: Dataset, samples_per_gpu: int, workers_per_gpu: int, num_gpus: int = 1,
                     dist: bool = False, shuffle: bool = True, seed: Optional[int] = None,
                     persistent_workers: bool = False, **kwargs) -> DataLoader:
    """A DataLoader with :func:`collate` as mmdetection v2 builds it.

    dist: one process per device; training (``shuffle``) uses DistributedGroupSampler, testing
    DistributedSampler (ordered, padded). Not dist: GroupSampler when shuffling, else in order; the
    batch is ``num_gpus * samples_per_gpu``. Rank and world size come from torch.distributed
    when it is initialised. Workers are seeded by :func:`worker_init_fn`, samplers by ``seed + epoch``.
    A shuffling (training) loader seeds each sample's augmentation by (seed, rank, epoch, position in
    the epoch) (:mod:`.sample_seeds`): the same with any number of workers and across a mid-epoch
    resume; its ``dataset`` and ``sampler`` are then wrappers that read through to the given ones.
    """
    rank, world_size = _dist_info()
    if dist:
        if shuffle:
            sampler = DistributedGroupSampler(dataset, samples_per_gpu, world_size, rank, seed=seed)
        else:
            sampler = DistributedSampler(dataset, world_size, rank, shuffle=False, seed=seed)
        batch_size, num_workers = samples_per_gpu, workers_per_gpu
    else:
        sampler = GroupSampler(dataset, samples_per_gpu * num_gpus, seed=seed) if shuffle else None
        batch_size, num_workers = num_gpus * samples_per_gpu, num_gpus * workers_per_gpu
    init_fn = partial(worker_init_fn, num_workers=num_workers, rank=rank, seed=seed)
    if shuffle:
        sampler = SeededSampler(sampler, 0 if seed is None else seed, rank)
        dataset = SeededDataset(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, pin_memory=kwargs.pop('pin_memory', False), worker_init_fn=init_fn,
                      persistent_workers=persistent_workers and num_workers > 0, **kwargs)
