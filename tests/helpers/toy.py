"""A tiny model and dataset that speak the detector's interface, for engine tests."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


class ToyModel(nn.Module):
    """Conv + BN + dropout + linear regression: ``model(img, img_metas, target)`` -> losses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 1)

    def forward(self, img, img_metas, target=None, return_loss=True, **kwargs):
        x = F.relu(self.bn(self.conv(img))).mean((2, 3))
        x = F.dropout(x, 0.1, self.training)
        pred = self.fc(x).squeeze(1)
        if not return_loss:
            return [p.item() for p in pred]
        return dict(loss_reg=F.mse_loss(pred, target), loss_aux=[0.01 * pred.abs().mean()],
                    acc=(pred - target).abs().lt(0.5).float().mean() * 100)


class ToyDataset(Dataset):
    """Fixed images per index; the target gets numpy noise (an 'augmentation' that uses the RNG)."""

    def __init__(self, size: int = 12) -> None:
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randn(size, 3, 8, 8, generator=gen)
        self.flag = np.zeros(size, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> dict:
        img = self.images[idx]
        target = 2.0 + 10 * img.mean() + float(np.random.randn()) * 0.01
        return dict(img=img, img_metas=dict(idx=idx), target=target)


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A shuffle that depends only on (seed, epoch), as the project's samplers do."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=gen).tolist())

    def __len__(self) -> int:
        return self.size


def toy_collate(batch: list[dict]) -> dict:
    return dict(img=torch.stack([b['img'] for b in batch]), img_metas=[b['img_metas'] for b in batch],
                target=torch.stack([b['target'] for b in batch]))


def toy_loader(size: int = 12, batch_size: int = 4, sampler=None) -> DataLoader:
    return DataLoader(ToyDataset(size), batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                      collate_fn=toy_collate, num_workers=0)
