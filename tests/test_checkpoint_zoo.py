"""Pretrained names (torchvision://, open-mmlab://, mmcls://, URLs) resolve to the torch hub cache as
mmcv 1.x did, never downloading; the tables agree with mmcv's (mmengine's hub/ copies of them)."""
import json
import os

import mmengine
import pytest
import torch

from mixprec import model_zoo
from mixprec.checkpoint import CheckpointError, load_checkpoint, load_file, resolve_checkpoint_path

HUB = os.path.join(os.path.dirname(mmengine.__file__), 'hub')


@pytest.mark.parametrize('table, json_name', [
    (model_zoo.OPEN_MMLAB, 'openmmlab.json'), (model_zoo.MMCLS, 'mmcls.json'),
    (model_zoo.TORCHVISION, 'torchvision_0.12.json')])
def test_tables_agree_with_mmcvs_json_files(table, json_name):
    with open(os.path.join(HUB, json_name)) as f:
        reference = json.load(f)
    assert {k: reference[k] for k in table} == table
    with open(os.path.join(HUB, 'deprecated.json')) as f:
        deprecated = json.load(f)
    assert all(deprecated[k] == v for k, v in model_zoo.OPEN_MMLAB_DEPRECATED.items())


def test_every_pretrained_name_of_the_v2_detector_configs_is_known():
    """The names used by mmdetection v2.28's faster_rcnn/, mask_rcnn/ and retinanet/ configs."""
    names = ['open-mmlab://detectron2/resnet50_caffe', 'open-mmlab://detectron2/resnet101_caffe',
             'open-mmlab://detectron2/resnext101_32x8d', 'open-mmlab://resnext101_32x4d',
             'open-mmlab://resnext101_64x4d', 'torchvision://resnet18', 'torchvision://resnet50',
             'torchvision://resnet101']
    for name in names:
        with pytest.raises(CheckpointError, match='is missing and this machine cannot download it'):
            resolve_checkpoint_path(name)


@pytest.mark.parametrize('name, basename', [
    ('torchvision://resnet50', 'resnet50-0676ba61.pth'),
    ('open-mmlab://detectron2/resnet50_caffe', 'resnet50_msra-5891d200.pth'),
    ('openmmlab://detectron/resnet101_caffe', 'resnet101_caffe-3ad79236.pth'),
    ('open-mmlab://resnet50_caffe', 'resnet50_caffe-788b5fa3.pth'),  # deprecated -> detectron/resnet50_caffe
    ('open-mmlab://msra/hrnetv2_w32', 'hrnetv2_w32-dc9eeb4f.pth'),
    ('open-mmlab://resnext101_64x4d', 'resnext101_64x4d-ee2c6f71.pth'),
    ('mmcls://resnext101_32x8d', 'resnext101_32x8d_b32x8_imagenet_20210506-23a247d5.pth'),
    ('https://download.openmmlab.com/mmdetection/v2.0/faster_rcnn/x/faster_rcnn_x_20200504-30042637.pth?dl=1',
     'faster_rcnn_x_20200504-30042637.pth')])
def test_names_resolve_to_the_torch_hub_cache(name, basename, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'th'))
    expected = tmp_path / 'th' / 'hub' / 'checkpoints' / basename
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint_path(name)
    message = str(info.value)
    assert f'{expected} is missing' in message and '\n' not in message
    expected.parent.mkdir(parents=True)
    torch.save({'w': torch.ones(1)}, expected)
    assert resolve_checkpoint_path(name) == str(expected)


def test_torch_home_defaults_to_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv('TORCH_HOME', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    with pytest.raises(CheckpointError, match=f'{tmp_path}/torch/hub/checkpoints/resnext101_32x4d-a5af3160.pth is missing'):
        resolve_checkpoint_path('open-mmlab://resnext101_32x4d')


def test_unknown_names_and_schemes_are_one_line_errors():
    with pytest.raises(CheckpointError, match=r"open-mmlab://detectron2/resnet51_caffe: unknown open-mmlab:// name "
                                              r"'detectron2/resnet51_caffe'; known: .*detectron2/resnet50_caffe"):
        resolve_checkpoint_path('open-mmlab://detectron2/resnet51_caffe')
    with pytest.raises(CheckpointError, match='s3://bucket/x.pth: unknown scheme'):
        resolve_checkpoint_path('s3://bucket/x.pth')


def test_mmcls_checkpoints_keep_only_the_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    folder = tmp_path / 'hub' / 'checkpoints'
    folder.mkdir(parents=True)
    state = {'backbone.conv1.weight': torch.ones(2), 'head.fc.weight': torch.zeros(3)}
    torch.save({'state_dict': state, 'meta': {}}, folder / 'resnet50_8xb32_in1k_20210831-ea4938fc.pth')
    loaded = load_file('mmcls://resnet50')
    assert list(loaded['state_dict']) == ['conv1.weight']


def test_load_from_url_loads_the_cached_file(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    url = 'https://download.openmmlab.com/mmdetection/v2.0/x/model_20200504-30042637.pth'
    folder = tmp_path / 'hub' / 'checkpoints'
    folder.mkdir(parents=True)
    model = torch.nn.Linear(2, 3)
    torch.save({'state_dict': {'module.weight': torch.full((3, 2), 7.0), 'module.bias': torch.zeros(3)}},
               folder / 'model_20200504-30042637.pth')
    load_checkpoint(model, url, strict=True)
    assert model.weight.eq(7).all()
