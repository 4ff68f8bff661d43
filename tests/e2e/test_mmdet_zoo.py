"""mmdetection v2.28.2's own config files train unchanged through tools/train.py (issue 11).

The configs come from the real wheels on the package registry (``helpers.zoo``; skipped offline),
are copied unchanged into a temporary folder with a tiny COCO-format set and a fake torch hub
cache of random weights with the right key names, and go through tools/train.py in this process
for one epoch of one image (one iteration for the 90k schedules) at about 1/12 of their image
scale, evaluation included. The default run trains one config per variant (``REPRESENTATIVE``);
``MIXPREC_ZOO_ALL=1`` trains all of them (84 files and v2.18's three fp16 files; about 10 min on 2 cores).
"""
import json
import os

import pytest
import torch
import torchvision

from helpers.tiny import ROOT
from helpers.zoo import check_tool, mmdet_configs
from mixprec.cli import run_cli

REPRESENTATIVE = [
    'faster_rcnn/faster_rcnn_r50_fpn_1x_coco.py',  # the three baselines
    'mask_rcnn/mask_rcnn_r50_fpn_1x_coco.py',
    'retinanet/retinanet_r50_fpn_1x_coco.py',
    'fp16/faster_rcnn_r50_fpn_fp16_1x_coco.py',  # v2.18's fp16 folder
    'fp16/mask_rcnn_r50_fpn_fp16_1x_coco.py',
    'fp16/retinanet_r50_fpn_fp16_1x_coco.py',
    'retinanet/retinanet_r18_fpn_1x_coco.py',  # another depth
    'faster_rcnn/faster_rcnn_r50_caffe_fpn_1x_coco.py',  # caffe ResNet, open-mmlab:// weights
    'faster_rcnn/faster_rcnn_r50_caffe_c4_1x_coco.py',  # C4 shared head
    'faster_rcnn/faster_rcnn_r50_caffe_dc5_1x_coco.py',  # dilated C5
    'faster_rcnn/faster_rcnn_x101_32x4d_fpn_1x_coco.py',  # ResNeXt
    'faster_rcnn/faster_rcnn_r50_fpn_giou_1x_coco.py',  # IoU-family loss on decoded boxes
    'faster_rcnn/faster_rcnn_r50_fpn_ohem_1x_coco.py',  # OHEM sampler
    'faster_rcnn/faster_rcnn_r50_fpn_soft_nms_1x_coco.py',  # soft-NMS at test
    'faster_rcnn/faster_rcnn_r50_fpn_tnr-pretrain_1x_coco.py',  # https:// pretrained weights
    'faster_rcnn/faster_rcnn_r50_fpn_mstrain_3x_coco.py',  # multi-scale range, RepeatDataset
    'faster_rcnn/faster_rcnn_r50_caffe_fpn_mstrain_1x_coco-person.py',  # class subset, https:// load_from
    'retinanet/retinanet_r50_fpn_90k_coco.py',  # IterBasedRunner
    'mask_rcnn/mask_rcnn_r50_fpn_poly_1x_coco.py',  # polygon masks
]


@pytest.fixture(scope='module')
def zoo_sources():
    return mmdet_configs()


@pytest.fixture(scope='module')
def zoo(zoo_sources, tmp_path_factory):
    configs, fp16 = zoo_sources
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield check_tool().Zoo(configs, str(tmp_path_factory.mktemp('zoo')), fp16)
    torch.set_num_threads(threads)


def _names():
    if os.environ.get('MIXPREC_ZOO_ALL') != '1':
        return REPRESENTATIVE
    try:
        configs, fp16 = mmdet_configs()
    except pytest.skip.Exception:  # offline: the fixture skips each test with the reason
        return REPRESENTATIVE
    return check_tool().list_configs(configs, fp16)


def test_the_work_folder_holds_the_unchanged_configs_and_a_coco_set(zoo, zoo_sources):
    configs, fp16 = zoo_sources
    assert len(zoo.names) == 84 + 3
    assert not any('ascend_' in n for n in zoo.names)
    for name in ('faster_rcnn/faster_rcnn_r50_fpn_1x_coco.py', '_base_/default_runtime.py', 'common/mstrain_3x_coco.py'):
        with open(os.path.join(configs, name), 'rb') as a, open(os.path.join(zoo.configs, name), 'rb') as b:
            assert a.read() == b.read()
    with open(os.path.join(fp16, 'retinanet_r50_fpn_fp16_1x_coco.py')) as f:
        assert "_base_ = '../retinanet/retinanet_r50_fpn_1x_coco.py'" in f.read()
    with open(os.path.join(zoo.work, 'data', 'coco', 'annotations', 'instances_train2017.json')) as f:
        coco = json.load(f)
    names = {c['id']: c['name'] for c in coco['categories']}
    assert len(names) == 80 and names[1] == 'person' and names[90] == 'toothbrush' and 12 not in names
    used = {names[a['category_id']] for a in coco['annotations']}
    assert used == {'person', 'bicycle', 'car'}
    assert all(isinstance(a['segmentation'], list) for a in coco['annotations'] if not a['iscrowd'])
    image = coco['images'][0]['file_name']
    assert os.path.isfile(os.path.join(zoo.work, 'data', 'coco', 'train2017', image))


def test_shrink_options_only_scale_images_batch_and_length(zoo):
    from mixprec.config import load_config
    cfg = load_config(os.path.join(zoo.configs, 'faster_rcnn/faster_rcnn_r50_fpn_mstrain_3x_coco.py'))
    options = check_tool().shrink_options(cfg, 0.08)
    assert 'data.train.dataset.pipeline.2.img_scale=[(107,51),(107,64)]' in options
    assert 'data.val.pipeline.1.img_scale=(107,64)' in options and 'runner.max_epochs=1' in options
    cfg = load_config(os.path.join(zoo.configs, 'retinanet/retinanet_r50_fpn_90k_coco.py'))
    assert 'runner.max_iters=1' in check_tool().shrink_options(cfg)


def test_fake_cached_weights_have_the_real_files_keys(zoo):
    """The fake torchvision://resnet50 holds torchvision's ResNet-50 keys and shapes (less fc)."""
    zoo.prepare('faster_rcnn/faster_rcnn_r50_fpn_1x_coco.py')
    path = os.path.join(zoo.torch_home, 'hub', 'checkpoints', 'resnet50-0676ba61.pth')
    fake = torch.load(path, weights_only=True)
    real = {k: v.shape for k, v in torchvision.models.resnet50().state_dict().items()
            if not k.startswith('fc.') and not k.endswith('num_batches_tracked')}
    assert {k: v.shape for k, v in fake.items()} == real


@pytest.mark.slow
@pytest.mark.parametrize('name', _names())
def test_upstream_config_trains(zoo, name):
    assert zoo.run(name) == 'OK'


@pytest.mark.slow
@pytest.mark.parametrize('name, pretrained', [
    ('faster_rcnn/faster_rcnn_r50_fpn_1x_coco.py', 'torchvision://resnet50'),
    ('faster_rcnn/faster_rcnn_r50_caffe_fpn_1x_coco.py', 'open-mmlab://detectron2/resnet50_caffe'),
])
def test_missing_cache_is_one_line_naming_the_path(zoo, name, pretrained, tmp_path, capsys, monkeypatch):
    """With an empty torch hub cache, tools/train.py exits 2 with one line naming where the file goes."""
    tool = check_tool()
    empty = str(tmp_path / 'empty_torch_home')
    monkeypatch.setenv('TORCH_HOME', empty)
    expected = tool.cache_path(pretrained)
    assert expected.startswith(empty)
    from mixprec.config import load_config
    argv = zoo.argv(name, load_config(os.path.join(zoo.configs, name)), str(tmp_path / 'work'))
    monkeypatch.chdir(zoo.work)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: zoo.train.main(argv))
    tool._close_file_handlers()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith('error: ') and expected in err[0], err


def test_trained_needs_a_checkpoint_and_a_finite_logged_loss(tmp_path):
    trained = check_tool().trained
    line = ('2026-01-01 00:00:00,000 - mixprec - INFO - Iter [1/1]\tlr: 1.000e-05, memory: 1, '
            'loss_cls: 1.1305, loss: {}\n')
    (tmp_path / 'a.log').write_text(line.format('3.1359'))
    assert trained(str(tmp_path)) == 'no checkpoint written'
    (tmp_path / 'iter_1.pth').write_bytes(b'x')
    assert trained(str(tmp_path)) is None and not (tmp_path / 'iter_1.pth').exists()
    (tmp_path / 'a.log').write_text(line.format('nan'))
    (tmp_path / 'iter_1.pth').write_bytes(b'x')
    assert trained(str(tmp_path)).startswith('non-finite training loss')
    (tmp_path / 'a.log').write_text('Epoch(val) [1][1]\tbbox_mAP: 0.0000\n')
    (tmp_path / 'iter_1.pth').write_bytes(b'x')
    assert trained(str(tmp_path)) == 'no training loss logged'


def test_check_tool_refuses_a_folder_that_is_not_mmdet_configs(tmp_path, capsys):
    assert check_tool().main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f'error: {tmp_path} is not an mmdetection configs/ folder (no _base_/)'


OUR_NAMESAKES = [
    'faster_rcnn/faster_rcnn_r50_caffe_fpn_1x_coco.py',
    'faster_rcnn/faster_rcnn_r50_caffe_c4_1x_coco.py',
    'faster_rcnn/faster_rcnn_r50_caffe_dc5_1x_coco.py',
    'faster_rcnn/faster_rcnn_x101_32x4d_fpn_1x_coco.py',
    'mask_rcnn/mask_rcnn_x101_32x4d_fpn_1x_coco.py',
    'mask_rcnn/mask_rcnn_r50_caffe_c4_1x_coco.py',
    'mask_rcnn/mask_rcnn_r50_fpn_mstrain-poly_3x_coco.py',
    'retinanet/retinanet_x101_32x4d_fpn_1x_coco.py',
    'faster_rcnn/faster_rcnn_r50_fpn_giou_1x_coco.py',
    'faster_rcnn/faster_rcnn_r50_fpn_ohem_1x_coco.py',
    'faster_rcnn/faster_rcnn_r50_fpn_mstrain_3x_coco.py',
]


def _training_sections(path):
    from mixprec.config import load_config
    cfg = load_config(path)
    model = cfg.model.to_dict()
    if model.get('neck', 'absent') is None:  # ours says neck=None where upstream leaves it out
        del model['neck']
    return dict(model=model, train=cfg.data.train.to_dict(), val=cfg.data.val.to_dict(),
                optimizer=cfg.optimizer, lr_config=cfg.lr_config, runner=cfg.runner)


@pytest.mark.parametrize('name', OUR_NAMESAKES)
def test_our_variant_config_trains_as_the_upstream_namesake(zoo_sources, name):
    """Our configs/ (written here) resolve to the same model, data and schedule as mmdet 2.28.2's."""
    ours = _training_sections(os.path.join(ROOT, 'configs', name))
    upstream = _training_sections(os.path.join(zoo_sources[0], name))
    if name == 'mask_rcnn/mask_rcnn_r50_caffe_c4_1x_coco.py':  # ours also loads res5 (see the config)
        assert upstream['model']['roi_head']['shared_head'].get('init_cfg') is None
        upstream['model']['roi_head']['shared_head']['init_cfg'] = ours['model']['roi_head']['shared_head']['init_cfg']
    for key in ours:
        assert ours[key] == upstream[key], key


def test_our_90k_and_person_configs_match_upstream_schedule_and_subset(zoo_sources):
    from mixprec.config import load_config
    ours = load_config(os.path.join(ROOT, 'configs/faster_rcnn/faster_rcnn_r50_fpn_90k_coco.py'))
    upstream = load_config(os.path.join(zoo_sources[0], 'faster_rcnn/faster_rcnn_r50_caffe_fpn_90k_coco.py'))
    for key in ('runner', 'lr_config', 'checkpoint_config', 'evaluation'):
        assert ours[key] == upstream[key], key
    ours = load_config(os.path.join(ROOT, 'configs/faster_rcnn/faster_rcnn_r50_fpn_1x_coco-person.py'))
    upstream = load_config(os.path.join(zoo_sources[0], 'faster_rcnn/faster_rcnn_r50_caffe_fpn_mstrain_1x_coco-person.py'))
    assert ours.model.roi_head.bbox_head.num_classes == upstream.model.roi_head.bbox_head.num_classes == 1
    for split in ('train', 'val', 'test'):
        assert ours.data[split].classes == upstream.data[split].classes == ('person', )
