"""Samplers: aspect-group batching for training (single and multi process), ordered split for testing.

A group sampler yields indices in runs of ``samples_per_gpu`` that all share ``dataset.flag``, so a
batch holds only landscape or only portrait images and padding stays small.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Sampler


def _group_sizes(dataset) -> np.ndarray:
    flag = getattr(dataset, 'flag', None)
    if flag is None:
        raise AttributeError(f'{type(dataset).__name__} has no "flag" array; group samplers need aspect groups')
    if len(flag) == 0:
        raise ValueError(f'{type(dataset).__name__} is empty: no images to sample (check its annotation file)')
    return np.bincount(np.asarray(flag, dtype=np.int64))


class GroupSampler(Sampler):
    """Shuffle within each aspect group, pad each group to a multiple of ``samples_per_gpu`` with
    repeats from that group, then shuffle the batches. Seeded by ``seed + epoch`` (``set_epoch``)."""

    def __init__(self, dataset, samples_per_gpu: int = 1, seed: Optional[int] = None) -> None:
        self.dataset = dataset
        self.samples_per_gpu = samples_per_gpu
        self.flag = np.asarray(dataset.flag, dtype=np.int64)
        self.group_sizes = _group_sizes(dataset)
        self.num_samples = int(sum(math.ceil(s / samples_per_gpu) * samples_per_gpu for s in self.group_sizes))
        self.seed = 0 if seed is None else seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed + self.epoch)
        spg = self.samples_per_gpu
        chunks = []
        for group, size in enumerate(self.group_sizes):
            if size == 0:
                continue
            idx = rng.permutation(np.flatnonzero(self.flag == group))
            extra = math.ceil(size / spg) * spg - size
            chunks.append(np.concatenate([idx, rng.choice(idx, extra)]) if extra else idx)
        indices = np.concatenate(chunks).reshape(-1, spg)
        indices = indices[rng.permutation(len(indices))].reshape(-1)
        return iter(indices.tolist())

    def __len__(self) -> int:
        return self.num_samples


class DistributedGroupSampler(Sampler):
    """Group sampler for ``num_replicas`` processes (mmdetection v2's algorithm).

    Each group is shuffled and padded (by cycling) to a multiple of ``samples_per_gpu *
    num_replicas``; batches of all groups are shuffled together, and rank r takes the r-th
    contiguous slice of ``num_samples``: every rank gets the same number of group-pure batches.
    All ranks draw the same permutation from ``seed + epoch``.
    """

    def __init__(self, dataset, samples_per_gpu: int = 1, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None, seed: Optional[int] = 0) -> None:
        default_rank, default_world = _dist_info()
        self.dataset = dataset
        self.samples_per_gpu = samples_per_gpu
        self.num_replicas = default_world if num_replicas is None else num_replicas
        self.rank = default_rank if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f'rank {self.rank} is outside [0, {self.num_replicas})')
        self.seed = 0 if seed is None else seed
        self.epoch = 0
        self.flag = np.asarray(dataset.flag, dtype=np.int64)
        self.group_sizes = _group_sizes(dataset)
        unit = samples_per_gpu * self.num_replicas
        self.num_samples = int(sum(math.ceil(s / unit) * samples_per_gpu for s in self.group_sizes))
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        unit = self.samples_per_gpu * self.num_replicas
        chunks = []
        for group, size in enumerate(self.group_sizes):
            if size == 0:
                continue
            idx = torch.from_numpy(np.flatnonzero(self.flag == group))
            idx = idx[torch.randperm(int(size), generator=g)]
            target = math.ceil(size / unit) * unit
            chunks.append(idx.repeat(math.ceil(target / size))[:target])
        indices = torch.cat(chunks).view(-1, self.samples_per_gpu)
        indices = indices[torch.randperm(len(indices), generator=g)].view(-1)
        offset = self.num_samples * self.rank
        return iter(indices[offset:offset + self.num_samples].tolist())

    def __len__(self) -> int:
        return self.num_samples


class DistributedSampler(Sampler):
    """Test-time split: rank r takes indices ``r, r + W, r + 2W, ...`` of the dataset, padded by
    wrapping so every rank has ``ceil(N / W)``. Interleave the ranks' outputs and cut to N
    (:func:`merge_ordered_results`) to get dataset order back. ``shuffle=True`` permutes first
    (seeded by ``seed + epoch``)."""

    def __init__(self, dataset, num_replicas: Optional[int] = None, rank: Optional[int] = None,
                 shuffle: bool = False, seed: Optional[int] = 0) -> None:
        default_rank, default_world = _dist_info()
        self.dataset = dataset
        self.num_replicas = default_world if num_replicas is None else num_replicas
        self.rank = default_rank if rank is None else rank
        self.shuffle = shuffle
        self.seed = 0 if seed is None else seed
        self.epoch = 0
        self.num_samples = math.ceil(len(dataset) / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(n, generator=g).tolist()
        else:
            indices = list(range(n))
        indices = (indices * math.ceil(self.total_size / max(n, 1)))[:self.total_size]
        return iter(indices[self.rank:self.total_size:self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


def merge_ordered_results(parts: list[list], size: int) -> list:
    """Per-rank result lists from :class:`DistributedSampler` (no shuffle) back in dataset order."""
    ordered = [item for group in zip(*parts) for item in group]
    return ordered[:size]


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
