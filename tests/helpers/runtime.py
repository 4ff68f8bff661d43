"""tools/train.py in-process on tiny shapes configs, and a user hook module that records the fp32 weights."""
from __future__ import annotations

import os
import sys

import torch

from helpers.tiny import write_tiny_config
from helpers.tool_runs import load_tool

FASTER = 'configs/shapes/faster_rcnn_r18_fpn_bf16_shapes.py'
# a parameter in half in master mode, a norm parameter (fp32 there), a buffer
KEYS = ['roi_head.bbox_head.fc_cls.weight', 'backbone.bn1.weight', 'backbone.bn1.running_mean']

_RECORDER = '''"""A user's hook module (imported through custom_imports): records weights as a user would."""
from mixprec.engine import Hook
from mixprec.fp16 import Fp16OptimizerHook
from mixprec.registry import HOOKS

RECORDS = {}


def fp32_state(runner):
    module = getattr(runner.model, 'module', runner.model)
    for hook in runner.hooks:
        if isinstance(hook, Fp16OptimizerHook):
            return hook.fp32_state_dict(module)
    return {k: v.detach().float().clone() for k, v in module.state_dict().items()}


@HOOKS.register_module(force=True)  # several test modules define it
class WeightRecorderHook(Hook):
    """fp32 values (masters under the fp16 hook) and the model's own tensors of ``keys``."""

    priority = 60

    def __init__(self, keys):
        self.keys = keys
        RECORDS.clear()
        RECORDS.update(iters=[], model_iters=[], epoch_start=[])

    def _take(self, runner):
        state = fp32_state(runner)
        module = getattr(runner.model, 'module', runner.model)
        raw = module.state_dict()
        return ({k: state[k].clone() for k in self.keys}, {k: raw[k].detach().clone() for k in self.keys})

    def before_run(self, runner):
        RECORDS['init'] = self._take(runner)[0]

    def after_train_iter(self, runner):
        fp32, raw = self._take(runner)
        RECORDS['iters'].append(fp32)
        RECORDS['model_iters'].append(raw)

    def before_train_epoch(self, runner):
        RECORDS['epoch_start'].append(self._take(runner))
'''


def write_recorder(folder: str, name: str) -> str:
    """Write the user module ``folder/name.py``; put ``folder`` on sys.path before importing it."""
    with open(os.path.join(folder, f'{name}.py'), 'w') as f:
        f.write(_RECORDER)
    return name


def recorder_cfg(module: str) -> str:
    return (f"custom_imports = dict(imports=[{module!r}], allow_failed_imports=False)\n"
            f"recorder = dict(type='WeightRecorderHook', keys={KEYS!r})\n")


def load_train_tool():
    return load_tool('tools/train.py')


def train(folder: str, extra: str, *args: str, epochs: int = 2, base: str = FASTER, **tiny):
    """tools/train.py's main() on a tiny config (4 images, 2 iterations an epoch); returns (runner, work dir)."""
    config = write_tiny_config(folder, base=base, epochs=epochs, num_train=tiny.pop('num_train', 4), num_val=2,
                               img_size=64, extra=extra, **tiny)
    work_dir = os.path.join(folder, 'work')
    threads = torch.get_num_threads()
    try:
        runner = load_train_tool().main([config, '--work-dir', work_dir, '--seed', '0', *args])
    finally:
        torch.set_num_threads(threads)
    return runner, work_dir


def hand_ema(records: dict, key: str, momentum_at, iters: int) -> torch.Tensor:
    """The EMA of ``key`` after ``iters`` iterations, in float64 from the recorded fp32 values."""
    ema = records['init'][key].double()
    for it in range(iters):
        m = momentum_at(it)
        ema = (1 - m) * ema + m * records['iters'][it][key].double()
    return ema


def user_module(name: str):
    return sys.modules[name]
