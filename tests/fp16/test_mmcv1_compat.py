"""Compatibility with mmcv 1.x: mixprec against mmcv 1.7.2 itself, side by side on the same inputs.

mmcv 1.7.2's fp16 utilities, optimizer hooks and runners run from its sdist in a subprocess
(``helpers.mmcv1``; skipped with the reason where the package registry cannot be reached); our
``cast_tensor_type``, decorators and hooks run beside them, our hooks inside mmcv's own
``EpochBasedRunner`` / ``IterBasedRunner``. The tests at the end need no mmcv: they cover what mmcv
does not do (our hooks without ``log_vars``, detection in the cumulative hook) and our runner's
registration.
"""
import logging
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from helpers.fp16 import TinyNet, batches, make_runner, net_loss, run
from helpers.mmcv1 import ROOT, run_side_by_side
from helpers.toy import ToyModel
from mixprec.engine import GradientCumulativeOptimizerHook, Hook, OptimizerHook, Runner
from mixprec.engine.hooks import NonFiniteLossError
from mixprec.fp16 import Fp16OptimizerHook, GradientCumulativeFp16OptimizerHook
from mixprec.registry import HOOKS, ConfigError


class SideBySide:
    """The scenarios' results; a scenario that raised in the subprocess fails its tests with the
    traceback."""

    def __init__(self, results: dict) -> None:
        self.results = results

    def __getitem__(self, scenario: str) -> dict:
        result = self.results[scenario]
        if 'error' in result:
            pytest.fail(f'scenario {scenario!r} raised in the mmcv 1.7.2 process:\n{result["error"]}')
        return result


@pytest.fixture(scope='module')
def side(tmp_path_factory):
    return SideBySide(run_side_by_side(str(tmp_path_factory.mktemp('mmcv1'))))


def differing(cases: dict) -> list:
    return [f'{name}: mmcv {case["mmcv"]} / ours {case["ours"]}' for name, case in cases.items()
            if case['mmcv'] != case['ours']]


def test_cast_tensor_type_matches_mmcv(side):
    cases = side['cast']
    assert not differing(cases)
    assert cases['float32 -> int32 tensor']['ours'] == ('tensor', 'torch.int32', [5.])
    nested = cases['nested float32 -> float16']['ours'][1]
    assert nested['img'][1] == 'torch.float16' and nested['labels'][1] == 'torch.int64'
    assert nested['pair'][1][0][1] == 'torch.float16'  # half stays half, float32 becomes half
    assert cases['int64 source is cast']['ours'][1][0][1] == 'torch.float32'


def test_decorators_match_mmcv(side):
    cases = side['decorators']
    assert not differing(cases)
    for name in ('auto on a plain object', 'force on a plain object', 'auto supported_types refuses a module'):
        for enabled in (False, True):
            assert cases[f'{name} / fp16_enabled={enabled}']['ours'] == ('raises', 'TypeError')
    x, y, z = cases['auto apply_to x,y keywords / fp16_enabled=True']['ours'][1]
    assert (x[1], y[1], z[1]) == ('torch.float16', 'torch.float16', 'torch.float32')
    x, y, z = cases['force out_fp16 / fp16_enabled=True']['ours'][1]
    assert (x[1], y[1], z[1]) == ('torch.float16', 'torch.float16', 'torch.float16')
    assert cases['auto supported_types / fp16_enabled=True']['ours'][1][0][1] == 'torch.float16'


def test_detect_anomalous_params_names_what_mmcv_names(side):
    expected = {0: ['conv2.bias', 'conv2.weight', 'conv3.bias', 'conv3.weight'], 1: ['conv3.bias', 'conv3.weight']}
    for use, flagged in expected.items():
        case = side['detect'][f'loss from output {use}']
        mmcv, ours = case['mmcv'], case['ours']
        assert mmcv['flagged'] == ours['flagged'] == flagged
        assert mmcv['errors'] == ours['errors'] == 2 * len(flagged)  # one line per parameter, per iteration
        assert all(torch.equal(mmcv['params'][k], ours['params'][k]) for k in mmcv['params'])
        assert mmcv['grad_norm'] == ours['grad_norm'] and len(ours['grad_norm']) == 2


def test_fp32_hooks_in_mmcv_runners_equal_mmcv_hooks(side):
    """Our OptimizerHook and GradientCumulativeOptimizerHook inside mmcv's runners (whose train_step
    returns only loss and num_samples) update the weights bit for bit as mmcv's own hooks do."""
    steps = {'epoch OptimizerHook': 4, 'epoch GradientCumulativeOptimizerHook': 2,
             'iter GradientCumulativeOptimizerHook': 3}
    for name, case in side['fp32_hooks'].items():
        mmcv, ours = case['mmcv'], case['ours']
        for key in mmcv['params']:
            assert torch.equal(mmcv['params'][key], ours['params'][key]), (name, key)
            assert not torch.equal(ours['params'][key], torch.ones_like(ours['params'][key])), (name, key)
        assert mmcv['grad_norm'] == ours['grad_norm'] and len(ours['grad_norm']) == steps[name], name
        assert mmcv['hooks'] == ours['hooks'], name
    order = side['fp32_hooks']['epoch GradientCumulativeOptimizerHook']['ours']['hooks']
    assert ('GradientCumulativeOptimizerHook', 40) in order  # register_training_hooks: ABOVE_NORMAL


def test_nonfinite_loss_without_log_vars_is_skipped(side):
    """mmcv's hook applies a NaN loss (the weights become NaN); ours, reading no log_vars, checks
    the loss itself and skips the step, which leaves exactly mmcv's run without that batch."""
    case = side['nonfinite_loss']
    assert all(torch.isnan(v).all() for v in case['mmcv']['params'].values())
    for key, value in case['ours']['params'].items():
        assert torch.equal(value, case['mmcv without the batch'][key]), key
    assert case['ours']['warnings'] == ['iter 2: non-finite loss terms loss; step skipped (1 in a row)']


@pytest.mark.parametrize('decorators', ['mmcv', 'ours'])
@pytest.mark.parametrize('kind', ['epoch', 'iter'])
def test_fp16_hooks_in_mmcv_runners(side, kind, decorators):
    """mmcv's own contract for its fp16 hooks (3 iterations of one sample accumulated = one step
    over the 3 samples), with our hooks in mmcv's runners, on a model decorated with mmcv's
    ``auto_fp16`` or ours; and the fp32 masters near mmcv's fp32 GradientCumulativeOptimizerHook."""
    runs = side['fp16_hooks']
    cumulative = runs[f'{kind} cumulative / {decorators} decorator']
    plain = runs[f'{kind} plain / {decorators} decorator']
    reference = runs[f'mmcv fp32 reference / {"EpochBasedRunner" if kind == "epoch" else "IterBasedRunner"}']
    for got, same, ref in zip(cumulative['masters'], plain['masters'], reference['masters']):
        moved = (ref - 1).abs().max()
        assert moved > 1e-3  # the weights did move from their initial 1.0
        assert (got - same).abs().max() < 2e-3 * moved
        assert (got - ref).abs().max() < 2e-3 * moved
    steps = 2 if kind == 'epoch' else 3
    for result in (cumulative, plain):
        assert result['model_dtype'] == 'torch.float16' and result['meta_fp16'] == 'master'
        assert set(result['loss_scale']) == {512.} and set(result['skipped']) == {0.}
        assert len(result['grad_norm']) == steps and not result['warnings']
    assert [len(cumulative['loss_scale']), len(plain['loss_scale'])] == [{'epoch': 6, 'iter': 8}[kind], steps]
    priority = dict(cumulative['hooks'])['GradientCumulativeFp16OptimizerHook']
    assert priority == (40 if kind == 'epoch' else 50)  # register_training_hooks vs register_hook
    assert dict(plain['hooks'])['Fp16OptimizerHook'] == 50


def test_defaults_and_signatures_follow_mmcv(side):
    mmcv, ours = side['defaults']['mmcv'], side['defaults']['ours']
    for key in ('fp16_hook_first_args', 'loss_scale_default', 'positional_loss_scale',
                'cumulative_fp16_positional', 'has_batch_norm', 'has_batch_norm_fp16'):
        assert mmcv[key] == ours[key], key
    assert ours['loss_scale_default'] == 512. and ours['positional_loss_scale'] == 256.
    # a documented difference: a dynamic LossScaler starts at 2**16 here, 2**32 in mmcv
    assert (mmcv['loss_scaler_init'], ours['loss_scaler_init']) == (2. ** 32, 2. ** 16)


def test_every_registered_hook_class_registers_in_mmcv_runners(side):
    classes = side['hook_classes']
    assert {'OptimizerHook', 'Fp16OptimizerHook', 'GradientCumulativeFp16OptimizerHook', 'CheckpointHook'} <= set(classes)
    assert {name for name, c in classes.items() if not c['is_mmcv_hook'] or c['has_priority']} == set()


# ----------------------------------------------------------------------------------- no mmcv needed
class ThreeConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
        self.conv3 = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        x1 = self.conv1(x)
        return x1, self.conv2(x1)


def _drive(hook, runner, losses):
    for loss in losses:
        hook.before_train_iter(runner)
        runner.outputs = {'loss': loss(), 'num_samples': 1}
        hook.after_train_iter(runner)
        runner.iter += 1


def test_optimizer_hooks_without_log_vars(caplog):
    """No log_vars in the outputs: a finite loss steps, a non-finite one is skipped by name and
    stops the run after ``max_nonfinite_iters``, in both fp32 hooks."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(4, 3)
    good = lambda: model(x).pow(2).mean()  # noqa: E731
    bad = lambda: model(x).pow(2).mean() * float('nan')  # noqa: E731
    for hook in (OptimizerHook(max_nonfinite_iters=2), GradientCumulativeOptimizerHook(cumulative_iters=1,
                                                                                        max_nonfinite_iters=2)):
        runner = make_runner(model, torch.optim.SGD(model.parameters(), lr=0.1), max_iters=10)
        before = model.weight.detach().clone()
        _drive(hook, runner, [good])
        after_good = model.weight.detach().clone()
        assert not torch.equal(after_good, before)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            _drive(hook, runner, [bad])
        assert torch.equal(model.weight, after_good)
        assert 'non-finite loss terms loss; step skipped' in caplog.text
        with pytest.raises(NonFiniteLossError, match='2 consecutive iterations'):
            _drive(hook, runner, [bad])


@pytest.mark.parametrize('hook_cls', [OptimizerHook, GradientCumulativeOptimizerHook])
def test_detect_anomalous_params_in_both_fp32_hooks(hook_cls, caplog):
    """mmcv's option, also in the cumulative hook (mmcv's cumulative hook ignores it)."""
    model = ThreeConvs()
    x = torch.randn(1, 1, 3, 3)
    kwargs = {'cumulative_iters': 2} if hook_cls is GradientCumulativeOptimizerHook else {}
    runner = make_runner(model, torch.optim.SGD(model.parameters(), lr=0.1), max_iters=2)
    with caplog.at_level(logging.ERROR):
        _drive(hook_cls(detect_anomalous_params=True, **kwargs), runner, [lambda: model(x)[0].sum()])
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f'{n} with shape {tuple(p.shape)} is not in the computational graph'
                      for n, p in model.named_parameters() if n.startswith(('conv2', 'conv3'))]
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        _drive(hook_cls(**kwargs), make_runner(model, torch.optim.SGD(model.parameters(), lr=0.1), max_iters=2),
               [lambda: model(x)[0].sum()])
    assert not caplog.records


def _masters(runner):
    return torch.cat([p.detach().flatten() for g in runner.optimizer.param_groups for p in g['params']])


def test_gradient_cumulative_fp16_hook_is_the_fp16_hook_with_cumulative_iters(caplog):
    results = []
    for cfg in (dict(type='GradientCumulativeFp16OptimizerHook', cumulative_iters=2),
                dict(type='Fp16OptimizerHook', cumulative_iters=2)):
        torch.manual_seed(0)
        model = TinyNet()
        runner = make_runner(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), max_iters=5)
        hook = HOOKS.build(dict(cfg, dtype='bfloat16', grad_clip=dict(max_norm=1.)))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            hook.before_run(runner)
        warned = 'BatchNorm layers' in caplog.text
        run(runner, hook, batches(5), loss_fn=net_loss)
        results.append((_masters(runner), warned))
    (cumulative, warned), (plain, plain_warned) = results
    assert torch.equal(cumulative, plain)
    assert warned and not plain_warned  # mmcv's BatchNorm warning, from the cumulative hook
    assert GradientCumulativeFp16OptimizerHook(4).cumulative_iters == 4  # first positional, as mmcv
    for bad in ('3', 0, True, 2.):
        with pytest.raises(ConfigError, match='cumulative_iters must be a positive int'):
            GradientCumulativeFp16OptimizerHook(bad)
    with pytest.raises(ConfigError, match="GradientCumulativeFp16OptimizerHook: unknown argument 'cumulative_iter'"):
        GradientCumulativeFp16OptimizerHook(cumulative_iter=2)
    assert GradientCumulativeFp16OptimizerHook.has_batch_norm(TinyNet())
    assert not GradientCumulativeFp16OptimizerHook.has_batch_norm(TinyNet(norm='gn'))
    assert GradientCumulativeOptimizerHook.has_batch_norm(TinyNet())


def test_runner_orders_hooks_by_default_priority(tmp_path):
    """Our hooks carry ``default_priority`` (mmcv 1.x refuses a hook with ``priority`` already set);
    our runner orders by it, while a hook's own ``priority`` attribute and an explicit argument
    still win."""

    class Declared(Hook):
        priority = 5

    model = ToyModel()
    runner = Runner(model, torch.optim.SGD(model.parameters(), lr=0.1), work_dir=str(tmp_path), max_epochs=1)
    fp16 = Fp16OptimizerHook(dtype='bfloat16')
    assert not hasattr(fp16, 'priority')
    runner.register_training_hooks(lr_config=dict(policy='step', step=[1]), optimizer_config=fp16,
                                   checkpoint_config=dict(interval=1), log_config=dict(hooks=[dict(type='TextLoggerHook')]),
                                   custom_hooks_config=[dict(type='EmptyCacheHook', priority='LOWEST')])
    runner.register_hook(Declared())
    runner.register_hook(OptimizerHook(), priority='VERY_LOW')
    assert [(type(h).__name__, h.priority) for h in runner.hooks] == [
        ('Declared', 5), ('StepLrUpdaterHook', 10), ('Fp16OptimizerHook', 30), ('CheckpointHook', 50),
        ('IterTimerHook', 80), ('TextLoggerHook', 90), ('OptimizerHook', 90), ('EmptyCacheHook', 100)]


def test_a_broken_mmcv1_install_does_not_break_mixprec(tmp_path):
    """An ``mmcv`` with mmcv 1.x's layout whose ``mmcv.runner`` fails to import: mixprec still
    imports, says so in one warning, and its hooks keep a plain base."""
    runner = tmp_path / 'mmcv' / 'runner'
    (runner / 'hooks').mkdir(parents=True)
    (tmp_path / 'mmcv' / '__init__.py').write_text('')
    (runner / '__init__.py').write_text("raise ImportError('mmcv._ext is missing')\n")
    (runner / 'hooks' / 'hook.py').write_text('')
    code = ('import logging; logging.basicConfig(); from mixprec.fp16.hook_base import HookBase; '
            'print(HookBase.__mro__[1:] == (object,))')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'True'
    assert ('mmcv 1.x found but mmcv.runner failed to import (ImportError: mmcv._ext is missing); '
            'mixprec hooks will not register in mmcv 1.x runners') in out.stderr
