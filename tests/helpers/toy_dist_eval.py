"""Run by the distributed evaluation tests (one process per rank): ``train_detector`` on a small
conv net in float16 master mode with DDP on gloo, one epoch, validating at its end.

    python toy_dist_eval.py WORK_DIR   (environment: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)

EVAL_CFG (JSON) is the config's ``evaluation``; FAIL_TEST_RANK=r makes rank r raise while testing.
Each rank writes ``probe_rank<r>.json``: whether the DDP wrapper that ``train_detector`` built was
replaced (the fp16 hook rebuilds it) and is gone by the first iteration. Rank 0's dataset writes the
results it evaluated to ``evaluated.json``, and after the run rank 0 writes a one-process test of the
final model to ``single.json``.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import weakref

import numpy as np
import torch
import torch.nn.functional as F
from mmengine import Config
from torch import nn

from helpers.toy import ToyDataset
from mixprec.apis.train import train_detector
from mixprec.cli import run_cli
from mixprec.data import build_dataloader
from mixprec.engine import Hook, get_dist_info, init_dist, single_gpu_test
from mixprec.fp16 import auto_fp16, force_fp32
from mixprec.registry import DATASETS, HOOKS


class HalfToy(nn.Module):
    """conv-BN-ReLU, pool, fc regression with ``@auto_fp16`` / ``@force_fp32`` (runs in master mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 1)
        self.fp16_enabled = False

    @auto_fp16(apply_to=('img',))
    def predict(self, img: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(img))).mean((2, 3))).squeeze(1)

    @force_fp32(apply_to=('pred',))
    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, target)

    def forward(self, img, img_metas, target=None, return_loss=True, **kwargs):
        if return_loss:
            return dict(loss_reg=self.loss(self.predict(img), torch.stack(target)))
        failing = os.environ.get('FAIL_TEST_RANK')
        if failing is not None and int(failing) == get_dist_info()[0]:
            raise RuntimeError(f'injected test failure on rank {failing}')
        return [float(p) for p in self.predict(img)]


@DATASETS.register_module()
class ToyEvalDataset(ToyDataset):
    """ToyDataset with ``evaluate`` (mean squared error of the predictions) that records its input."""

    CLASSES = ('value',)

    def __init__(self, size: int, out: str, **kwargs) -> None:
        super().__init__(size)
        self.out = out

    def evaluate(self, results: list, logger=None, metric: str = 'mse') -> dict:
        with open(os.path.join(self.out, 'evaluated.json'), 'w') as f:
            json.dump(results, f)
        targets = [2.0 + 10 * float(img.mean()) for img in self.images]
        return {metric: float(np.mean((np.array(results) - np.array(targets)) ** 2))}


@HOOKS.register_module()
class FirstWrapperProbe(Hook):
    """Remembers (weakly) the model the run starts with; at the first iteration records whether it was
    replaced and is gone (after a garbage collection, and before it)."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.ref = None

    def before_run(self, runner) -> None:
        self.ref = weakref.ref(runner.model)

    def before_train_iter(self, runner) -> None:
        if self.ref is None:
            return
        alive_before_gc = self.ref() is not None
        gc.collect()
        first = self.ref()
        record = dict(replaced=first is not runner.model, alive_before_gc=alive_before_gc, alive=first is not None)
        with open(os.path.join(self.out, f'probe_rank{runner.rank}.json'), 'w') as f:
            json.dump(record, f)
        self.ref = first = None


def main() -> None:
    work_dir = sys.argv[1]
    torch.set_num_threads(1)
    init_dist('pytorch', timeout_s=int(os.environ.get('DIST_TIMEOUT_S', 1800)))
    rank, _ = get_dist_info()
    torch.manual_seed(0)
    cfg = Config(dict(
        work_dir=work_dir, seed=0, gpu_ids=[0],
        runner=dict(type='EpochBasedRunner', max_epochs=1),
        data=dict(samples_per_gpu=2, workers_per_gpu=0, val=dict(type='ToyEvalDataset', size=6, out=work_dir)),
        optimizer=dict(type='SGD', lr=0.01, momentum=0.9), optimizer_config=dict(grad_clip=None),
        fp16=dict(dtype='float16', mode='master'),
        lr_config=dict(policy='fixed'), checkpoint_config=dict(interval=1),
        log_config=dict(interval=1, hooks=[dict(type='TextLoggerHook')]),
        custom_hooks=[dict(type='FirstWrapperProbe', out=work_dir, priority='HIGHEST')],
        evaluation=json.loads(os.environ.get('EVAL_CFG', '{}'))))
    runner = train_detector(HalfToy(), ToyDataset(8), cfg, distributed=True, validate=True)
    if rank == 0:
        loader = build_dataloader(ToyEvalDataset(6, work_dir), 2, 0, shuffle=False)
        with open(os.path.join(work_dir, 'single.json'), 'w') as f:
            json.dump(single_gpu_test(runner.model.module, loader, progress=False), f)


if __name__ == '__main__':
    run_cli(main)
