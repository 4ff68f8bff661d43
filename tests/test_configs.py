"""Every shipped config reads, passes the training checks and builds its detector."""
import glob
import os

import pytest
import torch

from mixprec.config import check_train_config, load_config
from mixprec.models import build_detector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p and '/common/' not in p)


def test_the_three_detectors_have_reference_fp32_fp16_and_shapes_configs():
    names = {os.path.relpath(p, os.path.join(ROOT, 'configs')) for p in CONFIGS}
    for model in ('faster_rcnn', 'mask_rcnn', 'retinanet'):
        assert f'{model}/{model}_r50_fpn_1x_coco.py' in names
        assert f'fp16/{model}_r50_fpn_fp16_1x_coco.py' in names
        assert f'fp16/{model}_r50_fpn_fp16_dynamic_1x_coco.py' in names
        assert any(n.startswith(f'shapes/{model}_') for n in names)


def fp32_twin(path):
    """configs/fp16/<family>_..._fp16[_dynamic]_... -> configs/<family>/<family>_..._..."""
    name = os.path.basename(path)
    family = next(f for f in ('faster_rcnn', 'mask_rcnn', 'retinanet') if name.startswith(f))
    return os.path.join(ROOT, 'configs', family, name.replace('_fp16_dynamic', '').replace('_fp16', ''))


def test_every_fp16_config_has_an_fp32_twin_and_back():
    fp16 = {p for p in CONFIGS if '/fp16/' in p}
    twins = {fp32_twin(p) for p in fp16}
    assert twins <= set(CONFIGS)
    detectors = {p for p in CONFIGS if '/shapes/' not in p and '/fp16/' not in p}
    assert detectors == twins, sorted(detectors ^ twins)


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_builds(path):
    cfg = load_config(path)
    check_train_config(cfg, path)
    if '/fp16/' in path:
        assert cfg.fp16.loss_scale in (512.0, 'dynamic')
        twin = load_config(fp32_twin(path))
        assert cfg.model == twin.model and cfg.optimizer == twin.optimizer and 'fp16' not in twin
        return  # the same model as its twin's, which that twin's test builds
    cfg.model.backbone.init_cfg = None  # no ImageNet weights on this machine
    if cfg.model.get('roi_head', {}).get('shared_head'):  # C4: res5 of the same ImageNet file
        cfg.model.roi_head.shared_head.init_cfg = None
    torch.manual_seed(0)
    assert build_detector(cfg.model).training
