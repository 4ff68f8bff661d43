"""Every shipped config reads, passes the training checks and builds its detector."""
import glob
import os

import pytest
import torch

from mixprec.config import check_train_config, load_config
from mixprec.models import build_detector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p)


def test_the_three_detectors_have_reference_fp32_fp16_and_shapes_configs():
    names = {os.path.relpath(p, os.path.join(ROOT, 'configs')) for p in CONFIGS}
    for model in ('faster_rcnn', 'mask_rcnn', 'retinanet'):
        assert f'{model}/{model}_r50_fpn_1x_coco.py' in names
        assert f'fp16/{model}_r50_fpn_fp16_1x_coco.py' in names
        assert f'fp16/{model}_r50_fpn_fp16_dynamic_1x_coco.py' in names
        assert any(n.startswith(f'shapes/{model}_') for n in names)


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_builds(path):
    cfg = load_config(path)
    check_train_config(cfg, path)
    if '/fp16/' in path:
        assert cfg.fp16.loss_scale in (512.0, 'dynamic')
        twin = load_config(path.replace('/fp16/', '/' + os.path.basename(path).split('_r50')[0] + '/')
                           .replace('_fp16_dynamic', '').replace('_fp16', ''))
        assert cfg.model == twin.model and cfg.optimizer == twin.optimizer and 'fp16' not in twin
    cfg.model.backbone.init_cfg = None  # no ImageNet weights on this machine
    torch.manual_seed(0)
    assert build_detector(cfg.model).training
