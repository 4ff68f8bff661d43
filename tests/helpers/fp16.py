"""Shared pieces of the fp16 tests: a small decorated conv net and a minimal runner."""
from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mixprec.fp16 import auto_fp16, force_fp32


class TinyNet(nn.Module):
    """conv-BN-ReLU, conv-GN-ReLU, global pool, fc: [B, 3, 8, 8] -> logits [B, 4]."""

    def __init__(self, norm: str = 'bn') -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8) if norm == 'bn' else nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.gn2 = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, 4)
        self.fp16_enabled = False

    @auto_fp16(apply_to=('img',))
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(img)))
        x = F.relu(self.gn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))

    @force_fp32(apply_to=('logits',))
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)


class LogBuffer:
    def __init__(self) -> None:
        self.history: list[tuple[dict, int]] = []

    def update(self, values: dict, count: int = 1) -> None:
        self.history.append((dict(values), count))

    def last(self, key: str):
        return [v for v, _ in self.history if key in v][-1][key]


def make_runner(model: nn.Module, optimizer: torch.optim.Optimizer,
                max_iters: Optional[int] = None, meta: Optional[dict] = None) -> SimpleNamespace:
    return SimpleNamespace(model=model, optimizer=optimizer, outputs={}, log_buffer=LogBuffer(),
                           iter=0, meta={} if meta is None else meta, max_iters=max_iters,
                           logger=logging.getLogger('fp16-test'))


def batches(n: int, batch_size: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 3, 8, 8, generator=g), torch.randint(0, 4, (batch_size,), generator=g))
            for _ in range(n)]


def net_loss(model: nn.Module, img: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    module = model.module if hasattr(model, 'module') else model
    return module.loss(model(img), labels)


def plain_loss(model: nn.Module, img: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(img), labels)


def run(runner, hook, data, loss_fn=net_loss) -> None:
    """Drive ``hook`` the way the runner does for each (img, labels) in ``data``."""
    for img, labels in data:
        hook.before_train_iter(runner)
        runner.outputs = {'loss': loss_fn(runner.model, img, labels), 'num_samples': len(img)}
        hook.after_train_iter(runner)
        runner.iter += 1


def fp32_reference(model: nn.Module, data, lr: float = 0.1, momentum: float = 0.9,
                   max_norm: Optional[float] = None, loss_fn=net_loss) -> nn.Module:
    """Plain fp32 SGD on ``model`` (modified in place) over ``data``; the ground truth."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for img, labels in data:
        opt.zero_grad()
        loss_fn(model, img, labels).backward()
        if max_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        opt.step()
    return model
