"""Config errors against bugs: a value a constructor refuses is one ConfigError line naming the file, the section
and the value; an exception from inside a constructor is a bug and reaches the user with its traceback."""
import os
import traceback

import pytest
from torch import nn

from helpers.runtime import train
from helpers.tiny import ROOT
from mixprec.apis.train import config_section
from mixprec.config import Config
from mixprec.data.errors import DataError
from mixprec.models import build_detector
from mixprec.registry import MODELS, ConfigError, Registry


class Buggy(nn.Module):
    """A backbone whose constructor has a bug (a TypeError of its own, not the config's)."""

    def __init__(self, depth: int = 18, **kwargs) -> None:
        super().__init__()
        self.depth = depth + 'layers'


def test_config_section_names_file_and_section_and_lets_bugs_through():
    with pytest.raises(ConfigError, match=r"^cfg\.py: model: 'ResNot' is not in the models registry; closest: ResNet"):
        with config_section('cfg.py', 'model'):
            MODELS.build(dict(type='ResNot'))
    with pytest.raises(TypeError, match=r'unsupported operand') as info:
        with config_section('cfg.py', 'model'):
            Registry('things').build(dict(type=Buggy, depth=18))
    assert any(frame.name == '__init__' and frame.filename == __file__
               for frame in traceback.extract_tb(info.value.__traceback__))
    for error in (KeyError('anchor'), ValueError('shape mismatch'), DataError('a.json: no images')):
        with pytest.raises(type(error)) as info:
            with config_section('cfg.py', 'data.train'):
                raise error
        assert info.value is error


def test_registry_refuses_a_missing_argument_but_not_a_constructor_s_own_type_error():
    things = Registry('things')
    things.register_module(module=Buggy)
    with pytest.raises(TypeError, match='unsupported operand'):
        things.build(dict(type='Buggy'))

    @things.register_module()
    class Needs:
        def __init__(self, size: int) -> None:
            self.size = size

    with pytest.raises(ConfigError, match=r"^things: Needs: .*missing 1 required positional argument: 'size'$"):
        things.build(dict(type='Needs'))


def test_a_detector_without_its_heads_train_cfg_section_is_one_line():
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', '_base_', 'models', 'faster_rcnn_r50_fpn.py'))
    model = cfg.model.to_dict()
    model['backbone']['init_cfg'] = None
    del model['train_cfg']['rcnn']
    with pytest.raises(ConfigError, match=r"^model\.train_cfg needs 'rcnn'; its keys are \['rpn', 'rpn_proposal'\]$"):
        build_detector(model)


@pytest.mark.parametrize('option, message', [
    ('model.neck.start_level=7', r"^\S*tiny\.py: model: FPN start_level 7 must be below the end level$"),
    ('fp16.mode=half', r"^\S*tiny\.py: lr_config/optimizer_config/fp16/.*: Fp16OptimizerHook: mode must be "
                                   r"one of \('master', 'autocast'\), got 'half'$"),
])
def test_train_py_turns_a_refused_value_into_one_line(tmp_path, option, message):
    with pytest.raises(ConfigError, match=message):
        train(str(tmp_path), '', '--cfg-options', option)


def test_train_py_shows_a_constructor_bug_with_its_traceback(tmp_path):
    MODELS.register_module(name='BuggyBackbone', force=True, module=Buggy)
    with pytest.raises(TypeError, match='unsupported operand'):
        train(str(tmp_path), '', '--cfg-options', 'model.backbone.type=BuggyBackbone')
