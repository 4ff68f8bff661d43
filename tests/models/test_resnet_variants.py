"""ResNet / ResNeXt variants (caffe style, DC5, C4 shared head) against torchvision's networks, mmdetection
v2's key names and shapes, and their pretrained files resolved from the torch hub cache."""
import copy
import logging

import pytest
import torch
import torchvision
from torchvision.models.resnet import Bottleneck as TvBottleneck

import mixprec.models  # noqa: F401  (registers every model part)
from helpers.cpu import learning_modes_for_auto
from mixprec.checkpoint import CheckpointError
from mixprec.fp16 import Fp16OptimizerHook
from mixprec.registry import MODELS, ConfigError
from helpers.detectors import tiny_cfg, total_loss, train_with_hook
from helpers.fp16 import make_runner
from helpers.shapes import box_ap50, make_shapes, mask_ap50, shapes_metas
from helpers.weights import randomise_

pytestmark = pytest.mark.usefixtures('one_thread')

FROZEN_BN = dict(type='BN', requires_grad=False)


def shapes_of(module: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def tv_shapes(module: torch.nn.Module, drop: tuple = ('fc.',), prefix: str = '') -> dict:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items() if not k.startswith(drop)}


def assert_same_network(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal up to fp32 rounding, measured against the output's scale: our frozen norms are folded
    into the convolutions (W * s, then one convolution) where torchvision applies them after."""
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))


def tv_stage_outputs(net: torchvision.models.ResNet, x: torch.Tensor, stages: int = 4) -> list:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    outs = []
    for i in range(stages):
        x = getattr(net, f'layer{i + 1}')(x)
        outs.append(x)
    return outs


def move_strides_to_conv1(net: torchvision.models.ResNet) -> None:
    """By hand, the caffe layout: the first block of each stage strides in its 1x1 conv1."""
    for i in range(1, 5):
        block = getattr(net, f'layer{i}')[0]
        block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)


@pytest.mark.parametrize('style', ['pytorch', 'caffe'])
def test_resnet50_styles_equal_torchvision_with_the_same_weights(style):
    reference = randomise_(torchvision.models.resnet50()).eval()
    if style == 'caffe':
        move_strides_to_conv1(reference)
    model = MODELS.build(dict(type='ResNet', depth=50, style=style, norm_cfg=FROZEN_BN, init_cfg=None)).eval()
    model.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith('fc.')})
    strided = model.layer2[0]
    assert (strided.conv1.stride, strided.conv2.stride) == (((1, 1), (2, 2)) if style == 'pytorch' else ((2, 2), (1, 1)))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours, theirs = model(x), tv_stage_outputs(reference, x)
    assert [tuple(o.shape) for o in ours] == [(1, 256, 16, 24), (1, 512, 8, 12), (1, 1024, 4, 6), (1, 2048, 2, 3)]
    for a, b in zip(ours, theirs):
        assert_same_network(a, b)
    if style == 'caffe':  # the two layouts really differ on the same weights
        pytorch_style = MODELS.build(dict(type='ResNet', depth=50, init_cfg=None)).eval()
        pytorch_style.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert not torch.allclose(pytorch_style(x)[1], ours[1], atol=1e-3)


def test_dc5_and_c4_backbones_equal_hand_built_torchvision_nets():
    """DC5: layer4 keeps stride 16 and dilates every 3x3 conv by 2 (mmdetection's ``dilations``;
    torchvision's ``replace_stride_with_dilation`` leaves layer4's first block undilated)."""
    reference = randomise_(torchvision.models.resnet50(), seed=1).eval()
    move_strides_to_conv1(reference)
    reference.layer4[0].conv1.stride = (1, 1)
    reference.layer4[0].downsample[0].stride = (1, 1)
    for block in reference.layer4:
        block.conv2.dilation, block.conv2.padding = (2, 2), (2, 2)
    weights = {k: v for k, v in reference.state_dict().items() if not k.startswith('fc.')}
    dc5 = MODELS.build(dict(type='ResNet', depth=50, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), out_indices=(3, ),
                            frozen_stages=1, norm_cfg=FROZEN_BN, style='caffe', init_cfg=None)).eval()
    dc5.load_state_dict(weights)
    c4 = MODELS.build(dict(type='ResNet', depth=50, num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1),
                           out_indices=(2, ), frozen_stages=1, norm_cfg=FROZEN_BN, style='caffe', init_cfg=None)).eval()
    assert not any(k.startswith('layer4.') for k in c4.state_dict())
    c4.load_state_dict({k: v for k, v in weights.items() if not k.startswith('layer4.')})
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        theirs = tv_stage_outputs(reference, x)
        (out_dc5, ), (out_c4, ) = dc5(x), c4(x)
    assert out_dc5.shape == (1, 2048, 6, 4) and out_c4.shape == (1, 1024, 6, 4)
    assert_same_network(out_dc5, theirs[3])
    assert_same_network(out_c4, theirs[2])


def test_resnext50_equals_torchvision_resnext50_32x4d():
    reference = randomise_(torchvision.models.resnext50_32x4d(), seed=2).eval()
    model = MODELS.build(dict(type='ResNeXt', depth=50, groups=32, base_width=4, init_cfg=None)).eval()
    assert shapes_of(model) == tv_shapes(reference)
    model.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith('fc.')})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), tv_stage_outputs(reference, x)):
            assert_same_network(a, b)


@pytest.mark.parametrize('arch, width', [
    (dict(type='ResNet', depth=101), 64), (dict(type='ResNet', depth=152), 64),
    (dict(type='ResNeXt', depth=101, groups=32, base_width=4), 128),
    (dict(type='ResNeXt', depth=101, groups=64, base_width=4), 256),
    (dict(type='ResNeXt', depth=101, groups=32, base_width=8), 256)], ids=['r101', 'r152', 'x101_32x4d', 'x101_64x4d', 'x101_32x8d'])
def test_deep_variants_have_torchvision_names_and_shapes(arch, width):
    """Built on the meta device: names and shapes only. torchvision's ResNet(groups, width_per_group)
    is the independent reference (x101_32x4d has no torchvision preset)."""
    layers = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[arch['depth']]
    with torch.device('meta'):
        model = MODELS.build(dict(arch, init_cfg=None))
        reference = torchvision.models.ResNet(TvBottleneck, layers, groups=arch.get('groups', 1),
                                              width_per_group=arch.get('base_width', 64))
    assert shapes_of(model) == tv_shapes(reference)
    assert model.layer1[0].conv2.weight.shape == (width, width // arch.get('groups', 1), 3, 3)


def c4_model_cfg(mask: bool, tiny: bool = False, num_classes: int = 80) -> dict:
    """The model section of mmdetection v2.28's faster/mask_rcnn_r50_caffe_c4 configs (``tiny``:
    base width 8, for CPU training)."""
    base = 8 if tiny else 64
    c4, c5 = base * 16, base * 32
    pretrained = None if tiny else dict(type='Pretrained', checkpoint='open-mmlab://detectron2/resnet50_caffe')
    cfg = dict(
        type='MaskRCNN' if mask else 'FasterRCNN',
        backbone=dict(type='ResNet', depth=50, base_channels=base, num_stages=3, strides=(1, 2, 2),
                      dilations=(1, 1, 1), out_indices=(2, ), frozen_stages=1, norm_cfg=FROZEN_BN, norm_eval=True,
                      style='caffe', init_cfg=pretrained),
        rpn_head=dict(type='RPNHead', in_channels=c4, feat_channels=c4,
                      anchor_generator=dict(type='AnchorGenerator', scales=[2, 4, 8, 16, 32], ratios=[0.5, 1.0, 2.0],
                                            strides=[16]),
                      bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0] * 4, target_stds=[1.0] * 4),
                      loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
                      loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
        roi_head=dict(
            type='StandardRoIHead',
            shared_head=dict(type='ResLayer', depth=50, stage=3, stride=2, dilation=1, style='caffe',
                             norm_cfg=FROZEN_BN, norm_eval=True, base_channels=base,
                             init_cfg=None if mask else pretrained),
            bbox_roi_extractor=dict(type='SingleRoIExtractor', out_channels=c4, featmap_strides=[16],
                                    roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0)),
            bbox_head=dict(type='BBoxHead', with_avg_pool=True, roi_feat_size=7, in_channels=c5,
                           num_classes=num_classes, reg_class_agnostic=False,
                           bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.] * 4,
                                           target_stds=[0.1, 0.1, 0.2, 0.2]),
                           loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                           loss_bbox=dict(type='L1Loss', loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                                   match_low_quality=True, ignore_iof_thr=-1),
                     sampler=dict(type='RandomSampler', num=256, pos_fraction=0.5, neg_pos_ub=-1,
                                  add_gt_as_proposals=False),
                     allowed_border=-1, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=12000, max_per_img=2000, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                                    match_low_quality=False, ignore_iof_thr=-1),
                      sampler=dict(type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1,
                                   add_gt_as_proposals=True),
                      pos_weight=-1, debug=False)),
        test_cfg=dict(rpn=dict(nms_pre=6000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
                      rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)))
    if mask:
        cfg['roi_head'].update(mask_roi_extractor=None, mask_head=dict(
            type='FCNMaskHead', num_convs=0, in_channels=c5, conv_out_channels=base * 4, num_classes=num_classes,
            loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0)))
        cfg['train_cfg']['rcnn']['mask_size'] = 14
        cfg['test_cfg']['rcnn']['mask_thr_binary'] = 0.5
    return cfg


def c4_expected_shapes(mask: bool) -> dict:
    """mmdetection v2 names and shapes of the C4 detectors, from torchvision's ResNet-50 names."""
    resnet = torchvision.models.resnet50()
    shapes = tv_shapes(resnet, drop=('fc.', 'layer4.'), prefix='backbone.')
    shapes.update(tv_shapes(resnet.layer4, drop=(), prefix='roi_head.shared_head.layer4.'))
    shapes.update({
        'rpn_head.rpn_conv.weight': (1024, 1024, 3, 3), 'rpn_head.rpn_conv.bias': (1024,),
        'rpn_head.rpn_cls.weight': (15, 1024, 1, 1), 'rpn_head.rpn_cls.bias': (15,),
        'rpn_head.rpn_reg.weight': (60, 1024, 1, 1), 'rpn_head.rpn_reg.bias': (60,),
        'roi_head.bbox_head.fc_cls.weight': (81, 2048), 'roi_head.bbox_head.fc_cls.bias': (81,),
        'roi_head.bbox_head.fc_reg.weight': (320, 2048), 'roi_head.bbox_head.fc_reg.bias': (320,)})
    if mask:
        shapes.update({'roi_head.mask_head.upsample.weight': (2048, 256, 2, 2), 'roi_head.mask_head.upsample.bias': (256,),
                       'roi_head.mask_head.conv_logits.weight': (80, 256, 1, 1),
                       'roi_head.mask_head.conv_logits.bias': (80,)})
    return shapes


def fake_hub_file(torch_home, basename: str, state: dict) -> None:
    folder = torch_home / 'hub' / 'checkpoints'
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / basename)


@pytest.mark.parametrize('mask', [False, True], ids=['faster', 'mask'])
def test_c4_detectors_have_mmdet_keys_and_load_the_detectron2_caffe_file(mask, tmp_path, monkeypatch, caplog):
    """The detectron2 caffe file (torchvision names, no num_batches_tracked, no fc) fills the backbone
    and, in Faster R-CNN C4 (the only one whose config names it), the shared head's layer4, unchanged."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    cfg = c4_model_cfg(mask)
    with pytest.raises(CheckpointError, match=f'open-mmlab://detectron2/resnet50_caffe: {tmp_path}/hub/checkpoints/'
                                              r'resnet50_msra-5891d200\.pth is missing'):
        MODELS.build(copy.deepcopy(cfg))
    file_state = {k: v for k, v in randomise_(torchvision.models.resnet50(), seed=3).state_dict().items()
                  if not k.startswith('fc.') and not k.endswith('num_batches_tracked')}
    fake_hub_file(tmp_path, 'resnet50_msra-5891d200.pth', file_state)
    with caplog.at_level(logging.WARNING):
        model = MODELS.build(cfg)
    assert not [r for r in caplog.records if 'keys' in r.getMessage()], caplog.text
    assert shapes_of(model) == c4_expected_shapes(mask)
    own = model.state_dict()
    for key, value in file_state.items():
        if key.startswith('layer4.'):
            if not mask:
                assert torch.equal(own['roi_head.shared_head.' + key], value), key
        else:
            assert torch.equal(own['backbone.' + key], value), key
    if mask:  # mmdetection v2's mask_rcnn_r50_caffe_c4 gives its shared head no init_cfg: kaiming init
        assert not torch.equal(own['roi_head.shared_head.layer4.0.conv1.weight'], file_state['layer4.0.conv1.weight'])
    frozen = [p.requires_grad for n, p in model.named_parameters() if '.bn' in n or 'downsample.1' in n]
    assert frozen and not any(frozen)
    model.train()
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_resnext_open_mmlab_file_loads_without_missing_or_unexpected_keys(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    reference = randomise_(torchvision.models.resnext50_32x4d(), seed=4)
    fake_hub_file(tmp_path, 'resnext50-32x4d-0ab1a123.pth', dict(state_dict=reference.state_dict()))
    with caplog.at_level(logging.WARNING):
        model = MODELS.build(dict(type='ResNeXt', depth=50, groups=32, base_width=4,
                                  init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://resnext50_32x4d')))
    assert not [r for r in caplog.records if 'keys' in r.getMessage()], caplog.text
    torch.testing.assert_close(model.layer3[2].conv2.weight, reference.layer3[2].conv2.weight)
    torch.testing.assert_close(model.layer4[0].downsample[1].running_var, reference.layer4[0].downsample[1].running_var)


@pytest.mark.parametrize('args, message', [
    (dict(dcn=dict(type='DCN')), r"ResNet: dcn=\{'type': 'DCN'\} is not implemented"),
    (dict(plugins=[dict(cfg=dict(type='ContextBlock'))]), 'ResNet: plugins=.* is not implemented'),
    (dict(deep_stem=True), 'ResNet: deep_stem=True is not implemented'),
    (dict(avg_down=True), 'ResNet: avg_down=True is not implemented'),
    (dict(conv_cfg=dict(type='ConvWS')), 'ResNet: conv_cfg=.* is not implemented'),
    (dict(stage_with_dcn=(False, True, True, True)), 'ResNet: stage_with_dcn=.* is not implemented'),
    (dict(style='tf'), r"ResNet style must be one of \('pytorch', 'caffe'\), got 'tf'"),
    (dict(num_stages=3), r'ResNet strides \(1, 2, 2, 2\) and dilations .* one entry for each of the 3 stages'),
    (dict(depth=200), r'ResNet depth must be one of \[18, 34, 50, 101, 152\], got 200'),
    (dict(init_cfg=dict(type='Kaiming')), "ResNet: init_cfg must be dict.type='Pretrained'"),
    (dict(type='ResNeXt', depth=18), r'ResNeXt depth must be one of \[50, 101, 152\], got 18'),
])
def test_unimplemented_resnet_arguments_are_refused_in_one_line(args, message):
    cfg = dict(dict(type='ResNet', depth=50, base_channels=8), **args)
    with pytest.raises(ConfigError, match=message) as info:
        MODELS.build(cfg)
    assert '\n' not in str(info.value)


def test_heads_refuse_what_they_do_not_implement():
    with pytest.raises(ConfigError, match='BBoxHead has no shared fully connected layers; fc_out_channels'):
        MODELS.build(dict(type='BBoxHead', with_avg_pool=True, in_channels=8, fc_out_channels=16, num_classes=2))
    with pytest.raises(ConfigError, match='BBoxHead: with_cls=True, with_reg=False is not implemented'):
        MODELS.build(dict(type='BBoxHead', with_reg=False, in_channels=8, num_classes=2))
    with pytest.raises(ConfigError, match=r'ResLayer: dcn=.* is not implemented'):
        MODELS.build(dict(type='ResLayer', depth=50, dcn=dict(type='DCN')))


def test_with_cp_recomputes_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = MODELS.build(dict(type='ResNeXt', depth=50, groups=2, base_width=4, base_channels=8, norm_eval=False))
    checkpointed = MODELS.build(dict(type='ResNeXt', depth=50, groups=2, base_width=4, base_channels=8,
                                     norm_eval=False, with_cp=True))
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        sum(o.square().mean() for o in model(x)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_bbox_head_with_avg_pool_is_two_linear_layers_on_channel_means():
    head = MODELS.build(dict(type='BBoxHead', with_avg_pool=True, roi_feat_size=7, in_channels=16, num_classes=3))
    assert shapes_of(head) == {'fc_cls.weight': (4, 16), 'fc_cls.bias': (4, ), 'fc_reg.weight': (12, 16),
                               'fc_reg.bias': (12, )}
    x = torch.randn(5, 16, 7, 7)
    cls_score, bbox_pred = head(x)
    means = x.mean(dim=(2, 3))
    torch.testing.assert_close(cls_score, means @ head.fc_cls.weight.T + head.fc_cls.bias)
    torch.testing.assert_close(bbox_pred, means @ head.fc_reg.weight.T + head.fc_reg.bias)
    empty_scores, _ = head(x[:0])
    assert empty_scores.shape == (0, 4)


def few_rois(cfg: dict) -> dict:
    """CPU-sized proposal and RoI counts (64 sampled RoIs per image, 300 proposals), and batch
    statistics in the norms (a random net with the configs' frozen identity BN learns too slowly)."""
    for part in (cfg['backbone'], cfg['roi_head'].get('shared_head', {})):
        part.update(norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False)
    cfg['train_cfg']['rpn_proposal'].update(nms_pre=1000, max_per_img=300)
    cfg['train_cfg']['rcnn']['sampler']['num'] = 64
    cfg['test_cfg']['rpn'].update(nms_pre=1000, max_per_img=100)
    return cfg


def tiny_variant_cfg(variant: str) -> dict:
    """Shrunk detectors of each variant, 2 classes: C4 Faster / Mask R-CNN, DC5 Faster R-CNN (caffe,
    frozen BN as in their configs) and a ResNeXt-50 (4 groups) FPN Faster R-CNN."""
    if variant in ('c4_faster', 'c4_mask'):
        return few_rois(c4_model_cfg(mask=variant == 'c4_mask', tiny=True, num_classes=2))
    if variant == 'dc5_faster':
        cfg = few_rois(c4_model_cfg(mask=False, tiny=True, num_classes=2))
        cfg['backbone'].update(num_stages=4, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), out_indices=(3, ))
        cfg['rpn_head'].update(in_channels=256, feat_channels=256)
        roi_head = cfg['roi_head']
        del roi_head['shared_head']
        roi_head['bbox_roi_extractor'].update(out_channels=256, roi_layer=dict(type='RoIAlign', output_size=7,
                                                                               sampling_ratio=0))
        roi_head['bbox_head'] = dict(roi_head['bbox_head'], type='Shared2FCBBoxHead', in_channels=256, fc_out_channels=64)
        del roi_head['bbox_head']['with_avg_pool']
        return cfg
    cfg = tiny_cfg('faster', num_classes=2)
    cfg['backbone'] = dict(type='ResNeXt', depth=50, groups=4, base_width=4, base_channels=16, frozen_stages=1,
                           norm_cfg=dict(type='BN', requires_grad=True), style='pytorch', init_cfg=None)
    cfg['neck']['in_channels'] = [64, 128, 256, 512]
    return cfg


TRAIN_CASES = [pytest.param(v, m, marks=pytest.mark.slow if v.startswith('c4') else (), id=f'{v}-{m}-float16')
               for v, m in (('dc5_faster', 'master'), ('dc5_faster', 'autocast'), ('c4_faster', 'master'),
                            ('c4_mask', 'autocast'), ('x50_fpn_faster', 'master'))]


@pytest.mark.parametrize('variant, mode', TRAIN_CASES)
def test_variant_trains_on_shapes_under_the_fp16_hook(variant, mode):
    """Ten float16 steps (static loss scale 512) on two shapes images: finite fp32 losses, no skipped
    step, the loss falls; then a test pass.

    float16 on the CPU is slow, so each variant runs one mode (DC5 both); bfloat16 runs every variant in
    both modes in :func:`test_variant_finds_its_training_shapes`, which also checks what they learn."""
    torch.manual_seed(0)
    model = MODELS.build(tiny_variant_cfg(variant))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    runner = make_runner(model, torch.optim.SGD(params, lr=0.02, momentum=0.9))
    hook = Fp16OptimizerHook(loss_scale=512., dtype='float16', mode=mode, grad_clip=dict(max_norm=35, norm_type=2))
    hook.before_run(runner)
    img, boxes, labels, masks = make_shapes(num_images=2, size=96 if variant == 'c4_mask' else 128, seed=1)
    metas = shapes_metas(img)
    targets = dict(gt_bboxes=boxes, gt_labels=labels)
    if variant == 'c4_mask':
        targets['gt_masks'] = masks
    history = []
    for step in range(10):
        losses = runner.model(img, copy.deepcopy(metas), **targets)
        loss = total_loss(losses)
        assert loss.dtype is torch.float32 and torch.isfinite(loss), (step, losses)
        history.append(loss.item())
        runner.outputs = dict(loss=loss)
        runner.iter = step
        hook.after_train_iter(runner)
    assert runner.log_buffer.last('skipped_steps') == 0
    assert sum(history[-3:]) < 0.9 * sum(history[:3]), history
    runner.model.eval()
    with torch.no_grad():
        results = runner.model(img, copy.deepcopy(metas), return_loss=False)
    assert len(results) == 2


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['master', 'autocast'])
@pytest.mark.parametrize('variant', ['c4_faster', 'c4_mask', 'dc5_faster', 'x50_fpn_faster'])
def test_variant_finds_its_training_shapes(variant, mode):
    """60 SGD steps through the Fp16OptimizerHook with dtype='auto' (bf16 where the CPU computes it
    natively, else the plain fp32 step) on four shapes images: box (and mask) AP50 on them above 0.5
    (0.90 to 0.99 measured for this seed in bf16; room left for other CPUs' rounding, which sends these
    short from-scratch runs down other paths)."""
    learning_modes_for_auto(mode)
    img, boxes, labels, masks = make_shapes()
    targets = dict(gt_bboxes=boxes, gt_labels=labels)
    if variant == 'c4_mask':
        targets['gt_masks'] = masks
    history, results = train_with_hook(tiny_variant_cfg(variant), mode, targets, img, shapes_metas(img), iters=60,
                                       dtype='auto', unfreeze=False)
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    if variant == 'c4_mask':
        assert mask_ap50(results, masks, labels) > 0.5
        results = [r[0] for r in results]
    assert box_ap50(results, boxes, labels) > 0.5
