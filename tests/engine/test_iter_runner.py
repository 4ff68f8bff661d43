"""Iteration-based runs as mmcv 1.x's IterBasedRunner: the 90k configs' hooks count iterations."""
import json
import logging
import os

import numpy as np
import pytest
import torch

from helpers.toy import EpochShuffleSampler, ToyModel, toy_loader
from mixprec.checkpoint import load_file
from mixprec.config import Config, check_train_config
from mixprec.engine import Hook, Runner
from mixprec.engine.hooks.logger import TextLoggerHook as TextLoggerHook
from mixprec.registry import ConfigError

SAMPLER_SEED = [dict(type='DistSamplerSeedHook')]


class LrRecorder(Hook):
    priority = 95

    def __init__(self):
        self.lrs = []

    def after_train_iter(self, runner):
        self.lrs.append(runner.current_lr())


def iter_runner(work_dir, max_iters):
    """The hooks of a 90k config (no by_epoch anywhere), at a toy scale: 3 batches per data epoch."""
    torch.manual_seed(0)
    model = ToyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    runner = Runner(model, optimizer, work_dir=str(work_dir), max_iters=max_iters,
                    logger=logging.getLogger('mixprec.test'))
    runner.register_training_hooks(
        lr_config=dict(policy='step', step=[6, 8]), optimizer_config=dict(grad_clip=None),
        checkpoint_config=dict(interval=4), log_config=dict(interval=2, hooks=[dict(type='JsonLoggerHook')]),
        custom_hooks_config=SAMPLER_SEED)
    return runner


def test_90k_style_config_counts_iterations_in_lr_checkpoints_and_logs(tmp_path):
    runner = iter_runner(tmp_path, max_iters=10)
    recorder = LrRecorder()
    runner.register_hook(recorder)
    runner.run(toy_loader(sampler=EpochShuffleSampler(12)))
    assert runner.iter == 10 and runner.epoch == 3  # three passes over the loader and one batch
    assert recorder.lrs == pytest.approx([0.05] * 6 + [0.005] * 2 + [0.0005] * 2)
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith('.pth')) == [
        'iter_10.pth', 'iter_4.pth', 'iter_8.pth', 'latest.pth']
    meta = load_file(str(tmp_path / 'iter_4.pth'))['meta']
    assert (meta['iter'], meta['epoch'], meta['inner_iter']) == (4, 1, 1)
    records = [json.loads(line) for line in open(tmp_path / f'{runner.timestamp}.log.json')]
    assert [(r['epoch'], r['iter']) for r in records] == [(1, 2), (2, 4), (2, 6), (3, 8), (4, 10)]


def test_iteration_run_resumes_mid_epoch_from_iter_checkpoint_bit_exactly(tmp_path):
    full = iter_runner(tmp_path / 'full', max_iters=10)
    np.random.seed(5)
    full.run(toy_loader(sampler=EpochShuffleSampler(12)))
    part = iter_runner(tmp_path / 'part', max_iters=4)
    np.random.seed(5)
    part.run(toy_loader(sampler=EpochShuffleSampler(12)))
    resumed = iter_runner(tmp_path / 'part', max_iters=10)
    np.random.seed(123)
    resumed.resume(str(tmp_path / 'part' / 'iter_4.pth'))
    assert (resumed.iter, resumed.epoch) == (4, 1)
    resumed.run(toy_loader(sampler=EpochShuffleSampler(12)))
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def _cfg(runner):
    return Config(dict(model=dict(type='X'), data=dict(train=dict(type='Y'), samples_per_gpu=2),
                       optimizer=dict(type='SGD', lr=0.01), runner=runner))


@pytest.mark.parametrize('runner, message', [
    (dict(type='IterBasedRunner', max_iters=90000), None),
    (dict(type='EpochBasedRunner', max_epochs=12), None),
    (dict(max_epochs=12), None),
    (dict(type='IterBasedRunner', max_epochs=12), "runner.type='IterBasedRunner' needs runner.max_iters"),
    (dict(type='EpochBasedRunner', max_iters=10), "runner.type='EpochBasedRunner' needs runner.max_epochs"),
    (dict(type='DynamicRunner', max_epochs=12), "runner.type='DynamicRunner' is not supported"),
    (dict(type='EpochBasedRunner', max_epochs=12, meta=1), 'runner.meta is not a runner option'),
])
def test_runner_types_of_mmcv_accepted_others_refused_in_one_line(runner, message):
    if message is None:
        check_train_config(_cfg(runner), 'c.py')
        return
    with pytest.raises(ConfigError) as info:
        check_train_config(_cfg(runner), 'c.py')
    assert message in str(info.value) and str(info.value).startswith('c.py: ') and '\n' not in str(info.value)


class FakeEval(Hook):
    """Hands metrics to the loggers after each iteration, as EvalHook(by_epoch=False) does."""
    priority = 70

    def after_train_iter(self, runner):
        runner.log_val({'bbox_mAP': 0.5})


def test_iteration_based_val_line_reads_iter_val_as_mmcv(tmp_path, caplog):
    runner = iter_runner(tmp_path, max_iters=2)
    runner.register_hook(TextLoggerHook(by_epoch=False))
    runner.register_hook(FakeEval())
    with caplog.at_level(logging.INFO, logger='mixprec.test'):
        runner.run(toy_loader())
    assert 'Iter(val) [2]\tbbox_mAP: 0.5000' in caplog.text and 'Epoch(val)' not in caplog.text
