"""Per-sample random state: a training sample's augmentation depends on where it sits in the epoch, not
on which data worker loads it.

:class:`SeededSampler` pairs each index with ``(seed, rank, epoch, position in the rank's epoch)``;
:class:`SeededDataset` loads the sample with numpy, ``random`` and torch's CPU generator seeded from
that key, and puts the caller's generators back afterwards. Each worker's running random stream
would make a sample's flip depend on the samples that worker happened to load before it: on the
number of workers, on whether they persist across epochs, and, after a mid-epoch resume that skips
the epoch's first batches, on the samples skipped. With the key, a resumed epoch reproduces the
uninterrupted one bit for bit, with 0 or N workers alike, and with nothing to save in the checkpoint.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class SeededSampler(Sampler):
    """``sampler``'s indices as ``(index, (seed, rank, epoch, position))`` keys for :class:`SeededDataset`.

    ``set_epoch`` (DistSamplerSeedHook) reaches the wrapped sampler too; other attributes read through.
    """

    def __init__(self, sampler, seed: int, rank: int) -> None:
        self.sampler = sampler
        self.base_seed = seed % 2 ** 64
        self.rank = rank
        self.key_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.key_epoch = epoch
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple]:
        entropy = (self.base_seed, self.rank, self.key_epoch)
        for position, index in enumerate(self.sampler):
            yield index, (*entropy, position)

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name: str) -> Any:
        if name == 'sampler':
            raise AttributeError(name)
        return getattr(self.sampler, name)


class SeededDataset(Dataset):
    """``dataset`` loading a ``(index, key)`` pair with the generators seeded by ``key``; a plain index
    as ``dataset`` does. Other attributes (``CLASSES``, ``flag``, ``evaluate``...) and ``__class__``
    read through."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        if not isinstance(item, tuple):
            return self.dataset[item]
        index, key = item
        with seeded_generators(key):
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        if name == 'dataset':
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def __class__(self) -> type:
        """The wrapped dataset's class, for ``isinstance`` and messages that name the dataset."""
        return type(self.dataset)

    def __reduce__(self) -> tuple:  # pickling (spawned workers) goes by the real class
        return SeededDataset, (self.dataset,)


@contextlib.contextmanager
def seeded_generators(key: tuple) -> Iterator[None]:
    """numpy's global generator, ``random`` and torch's CPU generator seeded from ``key`` (through
    numpy's SeedSequence, so nearby keys give unrelated streams), restored on exit. CUDA's generators
    are left alone."""
    words = np.random.SeedSequence(list(key)).generate_state(4, dtype=np.uint32)
    saved = np.random.get_state(), random.getstate(), torch.get_rng_state()
    np.random.seed(words)
    random.seed(int(words[0]) << 32 | int(words[1]))
    torch.default_generator.manual_seed(int(words[2]) << 32 | int(words[3]))
    try:
        yield
    finally:
        np.random.set_state(saved[0])
        random.setstate(saved[1])
        torch.set_rng_state(saved[2])
