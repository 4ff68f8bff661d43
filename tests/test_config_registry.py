"""Config inheritance and overrides through mmengine.Config; registry errors; config checks."""
import subprocess
import sys
import os

import pytest

from mixprec.config import check_train_config, load_config
from mixprec.registry import HOOKS, MODELS, OPTIMIZERS, ConfigError, Registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_base_inheritance_delete_and_cfg_options(tmp_path):
    write(tmp_path / '_base_' / 'a.py', "model = dict(type='A', depth=50, neck=dict(type='FPN', out=256))\n"
                                        "optimizer = dict(type='SGD', lr=0.02, momentum=0.9)\nsteps = [8, 11]\n")
    child = write(tmp_path / 'child.py', "_base_ = ['./_base_/a.py']\n"
                                         "model = dict(neck=dict(_delete_=True, type='PAFPN'))\n"
                                         "optimizer = dict(lr=0.01)\n")
    cfg = load_config(child, {'optimizer.momentum': 0.5, 'steps': [3, 4], 'model.depth': 18})
    assert cfg.model.neck == dict(type='PAFPN')
    assert cfg.model.type == 'A' and cfg.model.depth == 18
    assert cfg.optimizer == dict(type='SGD', lr=0.01, momentum=0.5)
    assert cfg.steps == [3, 4]


def test_schedule_1x_values():
    cfg = load_config(os.path.join(ROOT, 'configs/_base_/schedules/schedule_1x.py'))
    assert cfg.optimizer == dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001)
    assert cfg.lr_config == dict(policy='step', warmup='linear', warmup_iters=500, warmup_ratio=0.001, step=[8, 11])
    assert cfg.runner.max_epochs == 12


@pytest.mark.parametrize('text, expected', [
    ("x = dict(\n", r'line 1.*syntax error'),
    ("_base_ = './missing_base.py'\n", r'missing_base\.py'),
])
def test_bad_config_files_give_one_line(tmp_path, text, expected):
    path = write(tmp_path / 'bad.py', text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path)
    assert '\n' not in str(info.value) and 'bad.py' in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match='does not exist'):
        load_config(str(tmp_path / 'nope.py'))


def test_unknown_type_names_registry_and_closest():
    with pytest.raises(ConfigError) as info:
        OPTIMIZERS.build(dict(type='SDG', params=[]))
    msg = str(info.value)
    assert "'SDG' is not in the optimizers registry" in msg and 'SGD' in msg


def test_bad_argument_names_class_and_argument():
    reg = Registry('things')

    @reg.register_module()
    class Thing:
        def __init__(self, size, colour='red'):
            self.size = size

    with pytest.raises(ConfigError, match=r"things: Thing got an unexpected argument 'color'; it takes: colour, size"):
        reg.build(dict(type='Thing', size=1, color='blue'))
    with pytest.raises(ConfigError, match=r"Thing.*missing 1 required positional argument: 'size'"):
        reg.build(dict(type='Thing'))
    assert reg.build(dict(type='Thing', size=3)).size == 3


def test_registries_exist_and_hooks_registered():
    import mixprec.engine  # noqa: F401  registers the hooks
    for name in ('OptimizerHook', 'StepLrUpdaterHook', 'CheckpointHook', 'TextLoggerHook', 'JsonLoggerHook',
                 'EvalHook', 'DistEvalHook', 'DistSamplerSeedHook', 'IterTimerHook'):
        assert name in HOOKS, name
    assert 'Adam' in OPTIMIZERS and 'SGD' in OPTIMIZERS
    assert isinstance(MODELS, Registry)


@pytest.mark.parametrize('override, expected', [
    ({'optimizer.lr': '0.02'}, r"optimizer.lr must be a number, got str '0.02'"),
    ({'runner.max_epochs': 1.5}, r'runner.max_epochs must be an integer'),
    ({'data.samples_per_gpu': 0}, r'data.samples_per_gpu must be >= 1'),
    ({'fp16.loss_scale': 'dynamc'}, r"fp16.loss_scale must be a number, 'dynamic' or a dict"),
])
def test_wrong_value_types_are_named(tmp_path, override, expected):
    path = write(tmp_path / 'c.py', "model = dict(type='X')\ndata = dict(samples_per_gpu=2, train=dict(type='D'))\n"
                                    "optimizer = dict(type='SGD', lr=0.02)\nrunner = dict(max_epochs=2)\n"
                                    "fp16 = dict(loss_scale=512.)\n")
    cfg = load_config(path, override)
    with pytest.raises(ConfigError, match=expected):
        check_train_config(cfg, path)


def test_train_tool_bad_config_exits_2_with_one_line(tmp_path):
    path = write(tmp_path / 'c.py', "model = dict(type='NoSuchDetector')\n"
                                    "data = dict(samples_per_gpu=2, workers_per_gpu=0, train=dict(type='D'))\n"
                                    "optimizer = dict(type='SGD', lr=0.02)\nrunner = dict(max_epochs=2)\n")
    work = tmp_path / 'work'
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools/train.py'), path, '--work-dir', str(work)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count('\n') == 0, proc.stderr
    assert "'NoSuchDetector' is not in the models registry" in proc.stderr
    assert all(f.endswith('.log') for f in os.listdir(work))
