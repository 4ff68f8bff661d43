"""mmcv 1.7.2 and mixprec side by side on the same inputs, in one process (run by ``helpers.mmcv1``).

``python mmcv1_side_by_side.py MMCV_ROOT OUT.pt`` with mmcv 1.7.2 (under MMCV_ROOT) and mixprec on
the path. Every scenario runs mmcv's code and ours on identical inputs and returns plain data
(tensors, strings, numbers, lists, dicts) under ``'mmcv'`` and ``'ours'``; the assertions are in
``tests/fp16/test_mmcv1_compat.py``. The runners are mmcv's own ``EpochBasedRunner`` and
``IterBasedRunner``; they sleep 1-2 s around each epoch for their loggers, which nothing here needs,
so their ``time.sleep`` is a no-op.
"""
from __future__ import annotations

import inspect
import logging
import os
import sys
import tempfile
import traceback
from collections import OrderedDict, namedtuple
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

MMCV_ROOT, OUT = sys.argv[1], sys.argv[2]
IMPORT_FAILED = 3  # exit status when mmcv 1.7.2 itself cannot be imported

try:
    import mmcv
    from mmcv.runner import build_runner, epoch_based_runner, iter_based_runner
    import mmcv.runner as mmcv_runner
    from mmcv.runner import fp16_utils as mmcv_fp16
except ImportError as exc:  # a package mmcv 1.7.2 needs is missing here: the caller skips
    print(f'mmcv 1.7.2 cannot be imported here: {type(exc).__name__}: {exc}')
    sys.exit(IMPORT_FAILED)

import mixprec.engine as ours_engine  # noqa: E402
import mixprec.fp16 as ours_fp16  # noqa: E402
from mixprec.registry import HOOKS as OURS_HOOKS  # noqa: E402

if mmcv.__version__ != '1.7.2' or not os.path.abspath(mmcv.__file__).startswith(os.path.abspath(MMCV_ROOT)):
    sys.exit(f'expected mmcv 1.7.2 from {MMCV_ROOT}, imported {mmcv.__version__} from {mmcv.__file__}')
epoch_based_runner.time = iter_based_runner.time = SimpleNamespace(sleep=lambda seconds: None)

SIDES = {'mmcv': (mmcv_fp16, mmcv_runner), 'ours': (ours_fp16, ours_engine)}
Pair = namedtuple('Pair', 'a b')


# ---------------------------------------------------------------------------------------- helpers
def describe(obj):
    """A comparable picture of ``obj``: types, dtypes and values, recursively."""
    if isinstance(obj, torch.Tensor):
        return ('tensor', str(obj.dtype), obj.detach().double().flatten().tolist())
    if isinstance(obj, np.ndarray):
        return ('ndarray', str(obj.dtype), obj.tolist())
    if isinstance(obj, nn.Module):
        return ('module', type(obj).__name__)
    if isinstance(obj, dict):
        return (type(obj).__name__, {k: describe(v) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [describe(v) for v in obj])
    return (type(obj).__name__, repr(obj))


def outcome(fn, *args, **kwargs):
    try:
        return describe(fn(*args, **kwargs))
    except Exception as exc:  # the exception's type is what is compared
        return ('raises', type(exc).__name__)


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def fresh_logger(name: str) -> tuple[logging.Logger, ListHandler]:
    logger = logging.getLogger(f'side-by-side.{name}')
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = ListHandler()
    logger.addHandler(handler)
    return logger, handler


def make_runner(kind: str, model: nn.Module, name: str, optimizer=None, **kwargs):
    """A genuine mmcv 1.7.2 runner (``kind``: EpochBasedRunner | IterBasedRunner)."""
    logger, handler = fresh_logger(name)
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-3)
    runner = build_runner(dict(type=kind, **kwargs), default_args=dict(
        model=model, optimizer=optimizer, work_dir=tempfile.mkdtemp(dir=os.getcwd()), logger=logger,
        meta=dict()))
    return runner, handler


def masters(runner) -> list:
    return [p.detach().clone() for g in runner.optimizer.param_groups for p in g['params']]


def history(runner, key: str) -> list:
    return [float(v) for v in runner.log_buffer.val_history.get(key, [])]


def hook_order(runner) -> list:
    return [(type(h).__name__, h.priority) for h in runner.hooks]


# ---------------------------------------------------------------------------------------- cast_tensor_type
def cast_cases() -> dict:
    f32 = lambda *v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    nested = lambda: {'img': f32(1.5, -2.25), 'labels': torch.tensor([3, 1]),  # noqa: E731
                      'metas': [{'scale': 2.0, 'name': 'a.jpg'}],
                      'pair': (f32(0.1).half(), f32(3.0)), 'arr': np.ones(2), 'none': None}
    return {
        'float32 -> int32 tensor': (lambda: f32(5.), torch.float32, torch.int32),
        'str passes': (lambda: 'tensor', str, str),
        'ndarray passes': (lambda: np.array([5.]), np.ndarray, np.ndarray),
        'dict float32 -> int32': (lambda: dict(a=f32(1.), b=f32(2.)), torch.float32, torch.int32),
        'list float32 -> int32': (lambda: [f32(1.), f32(2.)], torch.float32, torch.int32),
        'int with None': (lambda: 5, None, None),
        'nested float32 -> float16': (nested, torch.float32, torch.float16),
        'nested float16 -> float32': (nested, torch.float16, torch.float32),
        'OrderedDict float16 -> float32': (lambda: OrderedDict(x=f32(1., 2.).half(), y=f32(4.)),
                                           torch.float16, torch.float32),
        'int64 source is cast': (lambda: [torch.tensor([7, 8]), f32(1.)], torch.int64, torch.float32),
        'src == dst': (lambda: [f32(1.), f32(2.).half()], torch.float32, torch.float32),
        'module passes': (lambda: nn.Linear(2, 2), torch.float32, torch.float16),
        'tensor with src None': (lambda: f32(1.), None, torch.float16),
        'float64 untouched by float32 src': (lambda: torch.tensor([1.], dtype=torch.float64),
                                             torch.float32, torch.float16),
    }


def scenario_cast() -> dict:
    return {name: {side: outcome(fns.cast_tensor_type, make(), src, dst) for side, (fns, _) in SIDES.items()}
            for name, (make, src, dst) in cast_cases().items()}


# ---------------------------------------------------------------------------------------- decorators
class Plain:
    """Not an nn.Module."""

    fp16_enabled = False


DECORATOR_CASES = {
    # name: (decorator, its arguments, owner, positional call, (x, y, z) dtypes)
    'auto all args': ('auto_fp16', {}, 'module', True, ('float32', 'float32', 'float32')),
    'auto apply_to x': ('auto_fp16', {'apply_to': ('x',)}, 'module', True, ('float32', 'float32', 'float32')),
    'auto apply_to x,y keywords': ('auto_fp16', {'apply_to': ('x', 'y')}, 'module', False,
                                   ('float32', 'float32', 'float32')),
    'auto out_fp32': ('auto_fp16', {'apply_to': ('x', 'y'), 'out_fp32': True}, 'module', False,
                      ('float16', 'float32', 'float32')),
    'auto int and nested': ('auto_fp16', {}, 'module', True, ('list', 'int64', 'float64')),
    'force all args': ('force_fp32', {}, 'module', True, ('float16', 'float16', 'float16')),
    'force apply_to x': ('force_fp32', {'apply_to': ('x',)}, 'module', True, ('float16', 'float16', 'float16')),
    'force apply_to x,y keywords': ('force_fp32', {'apply_to': ('x', 'y')}, 'module', False,
                                    ('float16', 'float16', 'float16')),
    'force out_fp16': ('force_fp32', {'apply_to': ('x', 'y'), 'out_fp16': True}, 'module', False,
                       ('float32', 'float16', 'float16')),
    'auto on a plain object': ('auto_fp16', {}, 'plain', True, ('float32', 'float32', 'float32')),
    'force on a plain object': ('force_fp32', {}, 'plain', True, ('float16', 'float16', 'float16')),
    'auto supported_types': ('auto_fp16', {'supported_types': (Plain,)}, 'plain', True,
                             ('float32', 'float32', 'float32')),
    'auto supported_types refuses a module': ('auto_fp16', {'supported_types': (Plain,)}, 'module', True,
                                              ('float32', 'float32', 'float32')),
}


def _input(kind: str, value: float):
    if kind == 'list':
        return [torch.full((2,), value), torch.full((1,), value).half()]
    return torch.full((2,), value, dtype=getattr(torch, kind))


def _decorated(fns, decorator: str, args: dict, owner: str):
    base = nn.Module if owner == 'module' else Plain

    class Example(base):
        @getattr(fns, decorator)(**args)
        def forward(self, x, y=None, z=None):
            return x, y, z

    return Example()


def scenario_decorators() -> dict:
    results = {}
    for name, (decorator, args, owner, positional, kinds) in DECORATOR_CASES.items():
        for enabled in (False, True):
            entry = {}
            for side, (fns, _) in SIDES.items():
                obj = _decorated(fns, decorator, args, owner)
                obj.fp16_enabled = enabled
                x, y, z = (_input(k, v) for k, v in zip(kinds, (1.5, -2., 3.25)))
                entry[side] = (outcome(obj.forward, x, y, z) if positional else outcome(obj.forward, x, y=y, z=z))
            results[f'{name} / fp16_enabled={enabled}'] = entry
    return results


# ---------------------------------------------------------------------------------------- detect_anomalous_params
class ThreeConvs(nn.Module):
    """conv1 -> conv2; conv3 unused. ``train_step``'s loss is built from output ``use``."""

    def __init__(self, use: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
        self.conv3 = nn.Conv2d(1, 2, 3, padding=1)
        self.use = use

    def forward(self, x):
        x1 = self.conv1(x)
        return x1, self.conv2(x1)

    def train_step(self, x, optimizer, **kwargs):
        return dict(loss=self(x)[self.use].sum(), num_samples=x.shape[0])


def scenario_detect() -> dict:
    data = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    results = {}
    for use in (0, 1):
        entry = {}
        for side, (_, names) in SIDES.items():
            model = ThreeConvs(use)
            runner, handler = make_runner('EpochBasedRunner', model, f'detect-{side}-{use}', max_epochs=1)
            runner.register_hook(names.OptimizerHook(grad_clip=dict(max_norm=2), detect_anomalous_params=True))
            runner.run([DataLoader(data, batch_size=1)], [('train', 1)])
            errors = [r.getMessage() for r in handler.records if r.levelno == logging.ERROR]
            entry[side] = {'flagged': sorted({n for n, _ in model.named_parameters() for m in errors if n in m}),
                           'errors': len(errors), 'params': {k: v.clone() for k, v in model.state_dict().items()},
                           'grad_norm': history(runner, 'grad_norm')}
        results[f'loss from output {use}'] = entry
    return results


# ---------------------------------------------------------------------------------------- fp32 hooks in mmcv runners
class Toy(nn.Module):
    """mmcv's own toy for its optimizer-hook tests (``train_step`` returns only loss and num_samples),
    with a squared loss, so that the gradients depend on the weights."""

    def __init__(self, poison_iter: int = -1) -> None:
        super().__init__()
        self.fp16_enabled = False
        self.fc = nn.Linear(3, 2)
        nn.init.constant_(self.fc.weight, 1.)
        nn.init.constant_(self.fc.bias, 1.)
        self.poison_iter, self.calls = poison_iter, 0

    def forward(self, x):
        return self.fc(x)

    def train_step(self, x, optimizer, **kwargs):
        loss = self(x).pow(2).mean()
        if self.calls == self.poison_iter:
            loss = loss * float('nan')
        self.calls += 1
        return dict(loss=loss, num_samples=x.shape[0])


def _data(n: int) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(2))


FP32_CASES = {
    # name: (runner kind, runner args, samples, batch size, hook name, hook args, register_training_hooks)
    'epoch OptimizerHook': ('EpochBasedRunner', {'max_epochs': 2}, 6, 3, 'OptimizerHook', {}, False),
    'epoch GradientCumulativeOptimizerHook': ('EpochBasedRunner', {'max_epochs': 1}, 6, 1,
                                              'GradientCumulativeOptimizerHook', {'cumulative_iters': 3}, True),
    'iter GradientCumulativeOptimizerHook': ('IterBasedRunner', {'max_iters': 8}, 8, 1,
                                             'GradientCumulativeOptimizerHook', {'cumulative_iters': 3}, False),
}


def scenario_fp32_hooks() -> dict:
    results = {}
    for name, (kind, runner_args, n, batch, hook_name, hook_args, training_hooks) in FP32_CASES.items():
        entry = {}
        for side, (_, names) in SIDES.items():
            runner, _ = make_runner(kind, Toy(), f'{name}-{side}', **runner_args)
            hook = getattr(names, hook_name)(grad_clip=dict(max_norm=0.2), **hook_args)
            if training_hooks:
                runner.register_training_hooks(
                    lr_config=dict(policy='fixed', warmup='linear', warmup_iters=4, warmup_ratio=0.1),
                    optimizer_config=hook, log_config=dict(interval=1, hooks=[dict(type='TextLoggerHook')]))
            else:
                runner.register_hook(hook)
            runner.run([DataLoader(_data(n), batch_size=batch)], [('train', 1)])
            entry[side] = {'params': {k: v.clone() for k, v in runner.model.state_dict().items()},
                           'grad_norm': history(runner, 'grad_norm'), 'hooks': hook_order(runner)}
        results[name] = entry
    return results


def scenario_nonfinite_loss() -> dict:
    """A NaN loss at the second iteration, no log_vars: mmcv's hook applies it, ours skips it."""
    entry = {}
    for side, (_, names) in SIDES.items():
        runner, handler = make_runner('EpochBasedRunner', Toy(poison_iter=1), f'nan-{side}', max_epochs=1)
        runner.register_hook(names.OptimizerHook())
        runner.run([DataLoader(_data(4), batch_size=1)], [('train', 1)])
        entry[side] = {'params': {k: v.clone() for k, v in runner.model.state_dict().items()},
                       'warnings': [r.getMessage() for r in handler.records if r.levelno == logging.WARNING]}
    clean, _ = make_runner('EpochBasedRunner', Toy(), 'nan-clean', max_epochs=1)
    clean.register_hook(mmcv_runner.OptimizerHook())
    data = _data(4)
    clean.run([DataLoader(torch.cat([data[:1], data[2:]]), batch_size=1)], [('train', 1)])
    entry['mmcv without the batch'] = {k: v.clone() for k, v in clean.model.state_dict().items()}
    return entry


# ---------------------------------------------------------------------------------------- fp16 hooks in mmcv runners
def fp16_toy(fns):
    """mmcv's fp16 toy: ``forward`` under the ``auto_fp16`` decorator of ``fns`` (mmcv's or ours)."""

    class ToyFp16(Toy):
        @fns.auto_fp16(apply_to=('x',))
        def forward(self, x):
            return self.fc(x)

    return ToyFp16()


def _fp16_run(kind, runner_args, loaders, workflow, hook, decorators, name, training_hooks=False):
    runner, handler = make_runner(kind, fp16_toy(decorators), name, **runner_args)
    if training_hooks:
        runner.register_training_hooks(lr_config=None, optimizer_config=hook,
                                       log_config=dict(interval=1, hooks=[dict(type='TextLoggerHook')]))
    else:
        runner.register_hook(hook)
    runner.run(loaders, workflow)
    return {'masters': masters(runner), 'model_dtype': str(runner.model.fc.weight.dtype),
            'loss_scale': history(runner, 'loss_scale'), 'skipped': history(runner, 'skipped_steps'),
            'grad_norm': history(runner, 'grad_norm'), 'hooks': hook_order(runner),
            'meta_fp16': runner.meta.get('fp16', {}).get('mode'),
            # float16 on a CPU is honoured with a warning that it has no fast path there; not at issue here
            'warnings': [r.getMessage() for r in handler.records
                         if r.levelno >= logging.WARNING and 'as configured, but' not in r.getMessage()]}


def scenario_fp16_hooks() -> dict:
    """Our fp16 hooks inside mmcv's runners, on mmcv's fp16 toy (decorated with mmcv's ``auto_fp16``
    or ours): accumulating over 3 iterations of 1 sample against one step over 3 samples, and against
    mmcv's fp32 GradientCumulativeOptimizerHook on the fp32 toy."""
    clip = dict(max_norm=0.2)
    results = {}
    for deco_side, (fns, _) in SIDES.items():
        data6, data8 = _data(6), _data(8)
        results[f'epoch cumulative / {deco_side} decorator'] = _fp16_run(
            'EpochBasedRunner', {'max_epochs': 1}, [DataLoader(data6, batch_size=1)], [('train', 1)],
            ours_fp16.GradientCumulativeFp16OptimizerHook(cumulative_iters=3, grad_clip=clip), fns,
            f'fp16-ec-{deco_side}', training_hooks=True)
        results[f'epoch plain / {deco_side} decorator'] = _fp16_run(
            'EpochBasedRunner', {'max_epochs': 1}, [DataLoader(data6, batch_size=3)], [('train', 1)],
            ours_fp16.Fp16OptimizerHook(grad_clip=clip), fns, f'fp16-ep-{deco_side}')
        results[f'iter cumulative / {deco_side} decorator'] = _fp16_run(
            'IterBasedRunner', {'max_iters': 8}, [DataLoader(data8, batch_size=1)], [('train', 1)],
            ours_fp16.GradientCumulativeFp16OptimizerHook(3, grad_clip=clip), fns, f'fp16-ic-{deco_side}')
        results[f'iter plain / {deco_side} decorator'] = _fp16_run(
            'IterBasedRunner', {'max_iters': 3},
            [DataLoader(data8[:6], batch_size=3), DataLoader(data8[6:], batch_size=2)], [('train', 2), ('train', 1)],
            ours_fp16.Fp16OptimizerHook(grad_clip=clip), fns, f'fp16-ip-{deco_side}')
    for kind, args, n in (('EpochBasedRunner', {'max_epochs': 1}, 6), ('IterBasedRunner', {'max_iters': 8}, 8)):
        runner, _ = make_runner(kind, Toy(), f'fp32-ref-{kind}', **args)
        runner.register_hook(mmcv_runner.GradientCumulativeOptimizerHook(cumulative_iters=3, grad_clip=clip))
        runner.run([DataLoader(_data(n), batch_size=1)], [('train', 1)])
        results[f'mmcv fp32 reference / {kind}'] = {'masters': masters(runner)}
    return results


# ---------------------------------------------------------------------------------------- defaults and classes
def static_scale(hook):
    """The static loss scale of an Fp16OptimizerHook, None when dynamic. mmcv's hook (torch >= 1.6)
    holds a torch GradScaler, disabled on a machine without CUDA, and keeps a static scale as the
    argument it passes to ``GradScaler.update``."""
    if hasattr(hook, '_scale_update_param'):
        return hook._scale_update_param
    return float(hook.loss_scaler.loss_scale) if hook.loss_scaler.mode == 'static' else None


class WithBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def scenario_defaults() -> dict:
    results = {}
    for side, (fns, names) in SIDES.items():
        signature = inspect.signature(names.Fp16OptimizerHook.__init__).parameters
        results[side] = {
            'fp16_hook_first_args': [n for n in signature if n != 'self'][:5],
            'loss_scale_default': static_scale(names.Fp16OptimizerHook()),
            'positional_loss_scale': static_scale(names.Fp16OptimizerHook(None, True, -1, 256.)),
            'loss_scaler_init': float(fns.LossScaler().loss_scale),
            'cumulative_fp16_positional': names.GradientCumulativeFp16OptimizerHook(3).cumulative_iters,
            'has_batch_norm': [names.GradientCumulativeOptimizerHook(cumulative_iters=2).has_batch_norm(m)
                               for m in (WithBN(), Toy())],
            'has_batch_norm_fp16': [names.GradientCumulativeFp16OptimizerHook(2).has_batch_norm(m)
                                    for m in (WithBN(), Toy())],
        }
    return results


def scenario_hook_classes() -> dict:
    """Every hook class in mixprec's registry: an mmcv 1.x ``Hook``, without a preset ``priority``."""
    return {name: {'is_mmcv_hook': issubclass(cls, mmcv_runner.Hook), 'has_priority': hasattr(cls, 'priority')}
            for name, cls in OURS_HOOKS.module_dict.items() if isinstance(cls, type)}


def main() -> None:
    """Run every scenario; one that raises is recorded as ``{'error': traceback}`` and the others
    still run."""
    results = {}
    for name, scenario in (('cast', scenario_cast), ('decorators', scenario_decorators),
                           ('detect', scenario_detect), ('fp32_hooks', scenario_fp32_hooks),
                           ('nonfinite_loss', scenario_nonfinite_loss), ('fp16_hooks', scenario_fp16_hooks),
                           ('defaults', scenario_defaults), ('hook_classes', scenario_hook_classes)):
        try:
            results[name] = scenario()
        except Exception:
            results[name] = {'error': traceback.format_exc()}
    torch.save(results, OUT)


if __name__ == '__main__':
    main()
