"""lr_config / momentum_config policies of mmcv 1.x through the runner: the values the optimizer holds
at each iteration against the policies' formulas written out here by hand."""
import logging
import math

import pytest
import torch

from helpers.toy import ToyModel, toy_loader
from mixprec.engine import Hook, Runner
from mixprec.engine.optimizer import build_optimizer
from mixprec.registry import ConfigError

BASE = 0.05
ITERS_PER_EPOCH = 3   # toy_loader(12, batch 4)


class Recorder(Hook):
    """Each group's lr and momentum (``momentum`` or ``betas[0]``) at every iteration."""

    priority = 95

    def __init__(self):
        self.lrs, self.moms = [], []

    def after_train_iter(self, runner):
        groups = runner.optimizer.param_groups
        self.lrs.append([g['lr'] for g in groups])
        self.moms.append([g['momentum'] if 'momentum' in g else g['betas'][0] for g in groups])


def run(lr_config=None, momentum_config=None, max_epochs=None, max_iters=None, optimizer=None):
    torch.manual_seed(0)
    model = ToyModel()
    optimizer = build_optimizer(model, optimizer or dict(type='SGD', lr=BASE, momentum=0.9, weight_decay=1e-4))
    runner = Runner(model, optimizer, max_epochs=max_epochs, max_iters=max_iters,
                    logger=logging.getLogger('mixprec.test'))
    runner.register_training_hooks(lr_config, dict(), None, None, momentum_config=momentum_config)
    recorder = Recorder()
    runner.register_hook(recorder)
    runner.run(toy_loader(12, 4))
    return recorder


def lrs(recorder, group=0):
    return [values[group] for values in recorder.lrs]


def moms(recorder, group=0):
    return [values[group] for values in recorder.moms]


def cos_anneal(start, end, pct, weight=1.0):
    return end + 0.5 * weight * (start - end) * (1 + math.cos(math.pi * pct))


def test_step_int_with_min_lr_by_epoch():
    rec = run(dict(policy='step', step=1, gamma=0.5, min_lr=0.01), max_epochs=4)
    per_epoch = [0.05, 0.025, 0.0125, 0.01]          # 0.05 * 0.5 ** 3 = 0.00625 floored at 0.01
    assert lrs(rec) == pytest.approx([per_epoch[k // 3] for k in range(12)], rel=1e-12)


def test_warmup_ending_mid_epoch_by_epoch():
    rec = run(dict(policy='step', step=[2], warmup='linear', warmup_iters=4, warmup_ratio=0.1), max_epochs=3)
    expected = [0.05 * (1 - (1 - k / 4) * 0.9) for k in range(4)] + [0.05] * 2 + [0.005] * 3
    assert lrs(rec) == pytest.approx(expected, rel=1e-12)


def test_step_list_by_iter_with_constant_warmup():
    rec = run(dict(policy='step', step=[4, 7], gamma=0.1, by_epoch=False, warmup='constant', warmup_iters=2,
                   warmup_ratio=0.2), max_iters=9)
    regular = [0.05] * 4 + [0.005] * 3 + [0.0005] * 2
    expected = [0.05 * 0.2, 0.05 * 0.2] + regular[2:]
    assert lrs(rec) == pytest.approx(expected, rel=1e-12)


def test_step_by_epoch_vs_by_iter():
    by_epoch = run(dict(policy='step', step=[2]), max_epochs=3)
    by_iter = run(dict(policy='step', step=[2], by_epoch=False), max_epochs=3)
    assert lrs(by_epoch) == pytest.approx([0.05] * 6 + [0.005] * 3)
    assert lrs(by_iter) == pytest.approx([0.05] * 2 + [0.005] * 7)


def test_exp_inv_poly_by_iter():
    exp = run(dict(policy='exp', gamma=0.9, by_epoch=False), max_iters=6)
    assert lrs(exp) == pytest.approx([0.05 * 0.9 ** k for k in range(6)], rel=1e-12)
    inv = run(dict(policy='inv', gamma=0.1, power=0.5, by_epoch=False), max_iters=6)
    assert lrs(inv) == pytest.approx([0.05 / math.sqrt(1 + 0.1 * k) for k in range(6)], rel=1e-12)
    poly = run(dict(policy='poly', power=2., min_lr=1e-3, by_epoch=False), max_iters=10)
    assert lrs(poly) == pytest.approx([0.049 * (1 - k / 10) ** 2 + 1e-3 for k in range(10)], rel=1e-12)


def test_exp_by_epoch_with_exp_warmup_by_epoch():
    rec = run(dict(policy='exp', gamma=0.5, warmup='exp', warmup_iters=1, warmup_by_epoch=True, warmup_ratio=0.01),
              max_epochs=3)
    expected = []
    for k in range(9):
        regular = 0.05 * 0.5 ** (k // 3)
        expected.append(regular * 0.01 ** (1 - k / 3) if k < 3 else regular)
    assert lrs(rec) == pytest.approx(expected, rel=1e-12)


def test_cosine_annealing_ratio_by_epoch_and_min_lr_by_iter():
    rec = run(dict(policy='CosineAnnealing', min_lr_ratio=0.1), max_epochs=4)
    per_epoch = [0.005 + 0.5 * 0.045 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert lrs(rec) == pytest.approx([per_epoch[k // 3] for k in range(12)], rel=1e-12)
    rec = run(dict(policy='CosineAnnealing', min_lr=0.001, by_epoch=False, warmup='linear', warmup_iters=3,
                   warmup_ratio=0.1), max_iters=8)
    expected = []
    for k in range(8):
        regular = 0.001 + 0.5 * 0.049 * (1 + math.cos(math.pi * k / 8))
        expected.append(regular * (1 - (1 - k / 3) * 0.9) if k < 3 else regular)
    assert lrs(rec) == pytest.approx(expected, rel=1e-12)


def test_flat_cosine_annealing():
    rec = run(dict(policy='FlatCosineAnnealing', start_percent=0.5, min_lr=0., by_epoch=False), max_iters=10)
    expected = [0.05 if k < 5 else 0.025 * (1 + math.cos(math.pi * (k - 5) / 5)) for k in range(10)]
    assert lrs(rec) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_cosine_restart():
    rec = run(dict(policy='CosineRestart', periods=[4, 6], restart_weights=[1, 0.5], min_lr=0.001, by_epoch=False),
              max_iters=10)
    expected = [0.001 + 0.5 * 0.049 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    expected += [0.001 + 0.5 * 0.5 * 0.049 * (1 + math.cos(math.pi * (k - 4) / 6)) for k in range(4, 10)]
    assert lrs(rec) == pytest.approx(expected, rel=1e-12)


def test_cyclic_two_cycles_with_gamma_and_linear_anneal():
    # 10 iterations, 2 cycles of 5: up for int(0.4 * 5) = 2 iterations, then down for 3
    rec = run(dict(policy='cyclic', target_ratio=(10, 1e-4), cyclic_times=2, step_ratio_up=0.4, gamma=0.5,
                   anneal_strategy='linear'), max_iters=10)
    expected = []
    for k in range(10):
        cycle, cur = divmod(k, 5)
        scale = 0.5 ** cycle
        peak = 0.05 * (1 - scale + 10 * scale)
        if cur < 2:
            expected.append(0.05 + (peak - 0.05) * cur / 2)
        else:
            expected.append(peak + (0.05 * 1e-4 - peak) * (cur - 2) / 3)
    assert lrs(rec) == pytest.approx(expected, rel=1e-12)
    assert lrs(rec)[2] == pytest.approx(0.5) and lrs(rec)[7] == pytest.approx(0.275)   # the two peaks


def test_cyclic_lr_with_cyclic_momentum():
    rec = run(dict(policy='cyclic', target_ratio=(10, 1e-4), cyclic_times=1, step_ratio_up=0.4),
              dict(policy='cyclic', target_ratio=(0.85 / 0.95, 1), cyclic_times=1, step_ratio_up=0.4),
              max_iters=10, optimizer=dict(type='SGD', lr=BASE, momentum=0.95))
    up = 4
    expected_lr = [cos_anneal(0.05, 0.5, k / up) if k < up else cos_anneal(0.5, 0.05e-4, (k - up) / 6)
                   for k in range(10)]
    expected_mom = [cos_anneal(0.95, 0.85, k / up) if k < up else cos_anneal(0.85, 0.95, (k - up) / 6)
                    for k in range(10)]
    assert lrs(rec) == pytest.approx(expected_lr, rel=1e-12)
    assert moms(rec) == pytest.approx(expected_mom, rel=1e-12)


def test_one_cycle_lr_and_momentum_on_adam_betas():
    rec = run(dict(policy='OneCycle', max_lr=0.5), dict(policy='OneCycle'), max_iters=10,
              optimizer=dict(type='Adam', lr=BASE, betas=(0.9, 0.999)))
    initial, low = 0.5 / 25, 0.5 / 25 / 1e4
    # phase ends at pct_start * total - 1 = 2 and total - 1 = 9
    expected_lr = [cos_anneal(initial, 0.5, k / 2) if k <= 2 else cos_anneal(0.5, low, (k - 2) / 7)
                   for k in range(10)]
    expected_mom = [cos_anneal(0.95, 0.85, k / 2) if k <= 2 else cos_anneal(0.85, 0.95, (k - 2) / 7)
                    for k in range(10)]
    assert lrs(rec) == pytest.approx(expected_lr, rel=1e-12)
    assert moms(rec) == pytest.approx(expected_mom, rel=1e-12)


def test_one_cycle_three_phase_linear_with_total_steps():
    rec = run(dict(policy='OneCycle', max_lr=0.2, total_steps=20, pct_start=0.25, anneal_strategy='linear',
                   div_factor=10, final_div_factor=100, three_phase=True), max_iters=12)
    initial = 0.02
    # phase ends: 0.25 * 20 - 1 = 4, 2 * 0.25 * 20 - 2 = 8, 20 - 1 = 19
    expected = []
    for k in range(12):
        if k <= 4:
            expected.append(initial + (0.2 - initial) * k / 4)
        elif k <= 8:
            expected.append(0.2 + (initial - 0.2) * (k - 4) / 4)
        else:
            expected.append(initial + (initial / 100 - initial) * (k - 8) / 11)
    assert lrs(rec) == pytest.approx(expected, rel=1e-12)


def test_step_and_cosine_momentum():
    rec = run(None, dict(policy='step', step=[2], gamma=0.5, min_momentum=0.5), max_epochs=3)
    assert moms(rec) == pytest.approx([0.9] * 6 + [0.5] * 3)     # 0.45 floored at 0.5
    rec = run(None, dict(policy='CosineAnnealing', min_momentum_ratio=0.5, by_epoch=False), max_iters=6)
    assert moms(rec) == pytest.approx([cos_anneal(0.9, 0.45, k / 6) for k in range(6)], rel=1e-12)


def test_momentum_warmup_divides_the_momentum():
    rec = run(None, dict(policy='step', step=[3], gamma=0.5, by_epoch=False, warmup='linear', warmup_iters=2,
                         warmup_ratio=0.9), max_iters=5, optimizer=dict(type='SGD', lr=BASE, momentum=0.8))
    expected = [0.8 / (1 - (1 - k / 2) * 0.1) for k in range(2)] + [0.8, 0.4, 0.4]
    assert moms(rec) == pytest.approx(expected, rel=1e-12)


def test_paramwise_groups_keep_their_lr_ratio():
    optimizer = dict(type='SGD', lr=BASE, momentum=0.9, weight_decay=1e-4,
                     paramwise_cfg=dict(custom_keys={'fc': dict(lr_mult=0.1)}))
    rec = run(dict(policy='poly', power=1., min_lr=0., by_epoch=False, warmup='linear', warmup_iters=2,
                   warmup_ratio=0.5), max_iters=6, optimizer=optimizer)
    assert len(rec.lrs[0]) == 6      # conv.w, conv.b, bn.w, bn.b, fc.w, fc.b

    def expected(base):
        return [base * (1 - k / 6) * ((1 - (1 - k / 2) * 0.5) if k < 2 else 1) for k in range(6)]

    for group in range(4):
        assert lrs(rec, group) == pytest.approx(expected(0.05), rel=1e-12)
    for group in (4, 5):
        assert lrs(rec, group) == pytest.approx(expected(0.005), rel=1e-12)


@pytest.mark.parametrize('config, words', [
    (dict(policy='sawtooth'), ["'sawtooth'", 'Step']),
    (dict(policy='step', stepz=[2]), ["'stepz'", 'step']),
    (dict(policy='CosineAnnealing'), ['min_lr', 'min_lr_ratio']),
    (dict(policy='step', step=[3, 2]), ['lr_config.step']),
    (dict(policy='cyclic', by_epoch=True), ['by_epoch']),
    (dict(policy='OneCycle', max_lr=0.1, pct_start=1.5), ['pct_start']),
    (dict(policy='step', step=2, warmup='cosine', warmup_iters=3), ['warmup', "'cosine'"]),
    ({'step': [8, 11]}, ['policy']),
])
def test_bad_lr_config_is_one_line(config, words):
    with pytest.raises(ConfigError) as info:
        run(config, max_iters=3)
    message = str(info.value)
    assert '\n' not in message and all(w in message for w in words), message


def test_bad_momentum_config_is_one_line():
    with pytest.raises(ConfigError, match="momentum_config.policy 'poly'"):
        run(None, dict(policy='poly'), max_iters=3)
    with pytest.raises(ConfigError, match='Adagrad has neither momentum nor betas'):
        run(None, dict(policy='cyclic'), max_iters=3, optimizer=dict(type='Adagrad', lr=BASE))


def test_resumed_run_continues_each_groups_schedule(tmp_path):
    """Resumed from epoch 1, the per-group lrs and momenta go on as in the uninterrupted run
    (each group's ``initial_lr`` / ``initial_momentum`` travel in the optimizer's state)."""
    lr_config = dict(policy='CosineRestart', periods=[4, 5], restart_weights=[1, 0.5], min_lr_ratio=0.1,
                     by_epoch=False)
    momentum_config = dict(policy='CosineAnnealing', min_momentum_ratio=0.5, by_epoch=False)
    optimizer = dict(type='SGD', lr=BASE, momentum=0.9, paramwise_cfg=dict(custom_keys={'fc': dict(lr_mult=0.1)}))

    def make(work_dir):
        torch.manual_seed(0)
        model = ToyModel()
        runner = Runner(model, build_optimizer(model, optimizer), work_dir=str(work_dir), max_epochs=3,
                        logger=logging.getLogger('mixprec.test'))
        runner.register_training_hooks(lr_config, dict(), dict(interval=1), None, momentum_config=momentum_config)
        recorder = Recorder()
        runner.register_hook(recorder)
        return runner, recorder

    runner, full = make(tmp_path / 'full')
    runner.run(toy_loader(12, 4))
    runner, resumed = make(tmp_path / 'resumed')
    runner.resume(str(tmp_path / 'full' / 'epoch_1.pth'))
    runner.run(toy_loader(12, 4))
    assert len(resumed.lrs) == 6
    assert resumed.lrs == full.lrs[3:]
    assert resumed.moms == full.moms[3:]
    assert full.lrs[5][5] == pytest.approx(0.1 * full.lrs[5][0])
