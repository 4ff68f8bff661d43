"""Dataset wrappers used by configs: RepeatDataset (short epochs made longer) and ConcatDataset."""
from __future__ import annotations

import bisect
from typing import Sequence, Union

import numpy as np
from torch.utils.data import Dataset

from mixprec.registry import DATASETS


def _as_dataset(dataset: Union[dict, Dataset]) -> Dataset:
    if isinstance(dataset, dict):
        from .builder import build_dataset
        return build_dataset(dataset)
    return dataset


@DATASETS.register_module()
class RepeatDataset(Dataset):
    """``dataset`` repeated ``times`` (index i is item ``i % len(dataset)``); flags tiled to match."""

    def __init__(self, dataset: Union[dict, Dataset], times: int) -> None:
        self.dataset = _as_dataset(dataset)
        self.times = int(times)
        self.CLASSES = self.dataset.CLASSES
        self._ori_len = len(self.dataset)
        self.flag = np.tile(self.dataset.flag, self.times)

    def __getitem__(self, idx: int):
        return self.dataset[idx % self._ori_len]

    def __len__(self) -> int:
        return self.times * self._ori_len

    def get_ann_info(self, idx: int) -> dict:
        return self.dataset.get_ann_info(idx % self._ori_len)


@DATASETS.register_module()
class ConcatDataset(Dataset):
    """Datasets one after another, sharing the first one's CLASSES; ``evaluate`` scores each part
    on its slice of the results, keys prefixed by the part index (``0_bbox_mAP``)."""

    def __init__(self, datasets: Sequence[Union[dict, Dataset]]) -> None:
        self.datasets = [_as_dataset(d) for d in datasets]
        self.CLASSES = self.datasets[0].CLASSES
        self.cumulative_sizes = np.cumsum([len(d) for d in self.datasets]).tolist()
        self.flag = np.concatenate([d.flag for d in self.datasets])

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def _locate(self, idx: int) -> tuple[int, int]:
        if idx < 0:
            idx += len(self)
        part = bisect.bisect_right(self.cumulative_sizes, idx)
        start = self.cumulative_sizes[part - 1] if part else 0
        return part, idx - start

    def __getitem__(self, idx: int):
        part, local = self._locate(idx)
        return self.datasets[part][local]

    def get_ann_info(self, idx: int) -> dict:
        part, local = self._locate(idx)
        return self.datasets[part].get_ann_info(local)

    def evaluate(self, results: list, logger=None, **kwargs) -> dict:
        if len(results) != len(self):
            raise ValueError(f'ConcatDataset.evaluate: {len(results)} results for {len(self)} images')
        out, start = {}, 0
        for i, (dataset, end) in enumerate(zip(self.datasets, self.cumulative_sizes)):
            for key, value in dataset.evaluate(results[start:end], logger=logger, **kwargs).items():
                out[f'{i}_{key}'] = value
            start = end
        return out
