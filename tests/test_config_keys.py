"""The top-level key rule (mixprec.config.check_top_level_keys) through tools/train.py, on mmdet v2.28's
own configs, and the deprecated spellings of mmdet v2 (compat_cfg)."""
import glob
import os
import warnings

import pytest

from helpers.runtime import train
from helpers.tiny import ROOT
from mixprec.config import Config, check_top_level_keys, compat_cfg
from mixprec.registry import ConfigError

MMDET_CONFIGS = '/tmp/mmdet228/mmdet/.mim/configs'


@pytest.mark.skipif(not os.path.isdir(MMDET_CONFIGS), reason='the mmdetection 2.28 wheel is not unpacked')
@pytest.mark.parametrize('family', ['faster_rcnn', 'mask_rcnn', 'retinanet'])
def test_no_mmdet_config_is_refused_for_a_helper_variable(family):
    paths = sorted(glob.glob(os.path.join(MMDET_CONFIGS, family, '*.py')))
    assert len(paths) > 10
    for path in paths:
        check_top_level_keys(Config.fromfile(path), path)


def test_shipped_configs_pass():
    paths = sorted(glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True))
    for path in [p for p in paths if '_base_' not in p]:
        check_top_level_keys(Config.fromfile(path), path)


def refused(text: str) -> str:
    cfg = Config.fromstring('model = dict(type="X")\ndata_root = "data/"\n'
                            'data = dict(train=dict(ann_file=data_root + "a.json"))\n' + text, '.py')
    with pytest.raises(ConfigError) as info:
        check_top_level_keys(cfg, 'cfg.py')
    return str(info.value)


def test_rule_refuses_misspellings_unsupported_and_unused_keys():
    assert refused('lr_confg = dict(step=[8])\n') == "cfg.py: unknown config key 'lr_confg': did you mean 'lr_config'?"
    assert 'did you mean \'workflow\'' in refused("workflows = [('train', 1)]\n")
    assert refused('grad_config = dict()\n') == "cfg.py: unknown config key 'grad_config': mixprec does not act on it"
    assert refused("device = 'cuda'\n").startswith("cfg.py: config key 'device' is not supported: mixprec picks")
    assert "config key 'samples_per_gpu' is not supported: it belongs in data" in refused('samples_per_gpu = 4\n')
    assert refused('max_epochs = 7\n') == ("cfg.py: config key 'max_epochs' is not a key mixprec acts on, and its "
                                           "value is used by none of them (a misspelling, a setting in the wrong "
                                           "place, or an unsupported key)")


def test_rule_accepts_helper_variables_that_are_used():
    text = ('depth = 50\nmodel = dict(type="X", norm=dict(type="BN", requires_grad=True, eps=1e-3), depth=depth)\n'
            'norm_cfg = dict(type="BN", requires_grad=True)\nimg_norm_cfg = dict(mean=[1, 2], std=[3])\n'
            'scales = (480, 512)\ndata_root = "data/coco/"\n'
            'data = dict(train=dict(ann_file=data_root + "a.json", pipeline=[dict(type="Normalize", **img_norm_cfg), '
            'dict(type="Resize", img_scale=[(1333, s) for s in scales])]))\n')
    check_top_level_keys(Config.fromstring(text, '.py'), 'cfg.py')


def test_misspelled_key_stops_train_py_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"tiny\.py: unknown config key 'lr_confg': did you mean 'lr_config'\?"):
        train(str(tmp_path), 'lr_confg = dict(step=[1])\n')
    assert not os.path.exists(os.path.join(str(tmp_path), 'work', 'epoch_1.pth'))


def test_cfg_options_are_checked_against_the_file_as_written():
    """--cfg-options may rewrite the section that uses a helper (the helper stays accepted), but a
    top-level key it names must be a runtime key or one of the file's."""
    cfg = Config.fromstring('model = dict(type="X")\ndata_root = "data/"\n'
                            'data = dict(train=dict(ann_file=data_root + "a.json"))\n', '.py')
    check_top_level_keys(cfg, 'cfg.py', {'data.train.ann_file': 'other.json', 'lr_config.step': [1]})
    with pytest.raises(ConfigError, match=r"--cfg-options lr_confg\.step: unknown config key 'lr_confg': "
                                          r"did you mean 'lr_config'\?"):
        check_top_level_keys(cfg, 'cfg.py', {'lr_confg.step': [1]})


def test_misspelled_cfg_option_stops_train_py(tmp_path):
    with pytest.raises(ConfigError, match=r"--cfg-options optimzer\.lr=0\.1|unknown config key 'optimzer'"):
        train(str(tmp_path), '', '--cfg-options', 'optimzer.lr=0.1')
    assert not os.path.exists(os.path.join(str(tmp_path), 'work', 'epoch_1.pth'))


def test_compat_cfg_deprecated_spellings():
    cfg = Config(dict(data=dict(imgs_per_gpu=3, samples_per_gpu=2), total_epochs=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        compat_cfg(cfg, 'cfg.py')
    messages = [str(w.message) for w in caught]
    assert cfg.data.samples_per_gpu == 3 and 'imgs_per_gpu' not in cfg.data
    assert any('"imgs_per_gpu"=3 is used in this experiment' in m for m in messages)
    assert cfg.runner == dict(type='EpochBasedRunner', max_epochs=4)
    with pytest.raises(ConfigError, match=r'total_epochs \(4\) and runner\.max_epochs \(12\) differ'):
        compat_cfg(Config(dict(total_epochs=4, runner=dict(max_epochs=12))), 'cfg.py')
    with pytest.raises(ConfigError, match='train_cfg is given both at the top level and in model'):
        compat_cfg(Config(dict(train_cfg=dict(a=1), model=dict(train_cfg=dict(a=2)))), 'cfg.py')


@pytest.mark.skipif(not os.path.isdir(MMDET_CONFIGS), reason='the mmdetection 2.28 wheel is not unpacked')
def test_mmdet_default_runtime_is_acted_on():
    """Every key of mmdet v2.28's default_runtime.py is a runtime key, and each of its hooks builds."""
    import mixprec.engine  # noqa: F401  (registers the hooks)
    from mixprec.config import RUNTIME_KEYS
    from mixprec.registry import HOOKS
    cfg = Config.fromfile(os.path.join(MMDET_CONFIGS, '_base_', 'default_runtime.py'))
    assert set(cfg) <= RUNTIME_KEYS
    hooks = [HOOKS.build(h) for h in cfg.custom_hooks + cfg.log_config.hooks]
    assert [type(h).__name__ for h in hooks] == ['NumClassCheckHook', 'TextLoggerHook']
