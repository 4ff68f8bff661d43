"""Backbone, neck, dense heads and RetinaNet: key names, shapes, initial losses, post-processing."""
import math
import os

import numpy as np
import pytest
import torch
import torchvision
from mmengine import Config

import mixprec.models  # noqa: F401  (registers the models)
from mixprec.checkpoint import CheckpointError
from mixprec.registry import MODELS
from helpers import precision
from helpers.tiny import ROOT

pytestmark = pytest.mark.usefixtures('one_thread')


CONFIG_DIR = os.path.join(ROOT, 'configs')
BN_KEYS = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')


def _bn(prefix, channels):
    return {f'{prefix}.{k}': (() if k == 'num_batches_tracked' else (channels,)) for k in BN_KEYS}


def resnet50_expected_keys(prefix=''):
    """torchvision's ResNet-50 names and shapes, written out from the architecture (no fc)."""
    keys = {f'{prefix}conv1.weight': (64, 3, 7, 7), **_bn(f'{prefix}bn1', 64)}
    inplanes = 64
    for stage, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f'{prefix}layer{stage}.{b}'
            keys[f'{p}.conv1.weight'] = (planes, inplanes if b == 0 else planes * 4, 1, 1)
            keys.update(_bn(f'{p}.bn1', planes))
            keys[f'{p}.conv2.weight'] = (planes, planes, 3, 3)
            keys.update(_bn(f'{p}.bn2', planes))
            keys[f'{p}.conv3.weight'] = (planes * 4, planes, 1, 1)
            keys.update(_bn(f'{p}.bn3', planes * 4))
            if b == 0:
                keys[f'{p}.downsample.0.weight'] = (planes * 4, inplanes, 1, 1)
                keys.update(_bn(f'{p}.downsample.1', planes * 4))
        inplanes = planes * 4
    return keys


def retinanet_expected_keys():
    keys = resnet50_expected_keys('backbone.')
    for i, c in enumerate((512, 1024, 2048)):
        keys[f'neck.lateral_convs.{i}.conv.weight'] = (256, c, 1, 1)
        keys[f'neck.lateral_convs.{i}.conv.bias'] = (256,)
    for i in range(5):
        keys[f'neck.fpn_convs.{i}.conv.weight'] = (256, 2048 if i == 3 else 256, 3, 3)
        keys[f'neck.fpn_convs.{i}.conv.bias'] = (256,)
    for branch in ('cls_convs', 'reg_convs'):
        for i in range(4):
            keys[f'bbox_head.{branch}.{i}.conv.weight'] = (256, 256, 3, 3)
            keys[f'bbox_head.{branch}.{i}.conv.bias'] = (256,)
    keys['bbox_head.retina_cls.weight'] = (720, 256, 3, 3)
    keys['bbox_head.retina_cls.bias'] = (720,)
    keys['bbox_head.retina_reg.weight'] = (36, 256, 3, 3)
    keys['bbox_head.retina_reg.bias'] = (36,)
    return keys


def shapes_of(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_resnet50_keys_are_torchvision_keys():
    model = MODELS.build(dict(type='ResNet', depth=50))
    assert shapes_of(model) == resnet50_expected_keys()
    reference = {k: tuple(v.shape) for k, v in torchvision.models.resnet50().state_dict().items()
                 if not k.startswith('fc.')}
    assert shapes_of(model) == reference


def test_retinanet_r50_state_dict_matches_mmdet_v2():
    cfg = Config.fromfile(os.path.join(CONFIG_DIR, 'retinanet', 'retinanet_r50_fpn_1x_coco.py'))
    assert cfg.model.backbone.init_cfg == dict(type='Pretrained', checkpoint='torchvision://resnet50')
    assert cfg.optimizer.lr == 0.01
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    assert shapes_of(model) == retinanet_expected_keys()


def test_resnet_pretrained_missing_file_and_plain_path(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    with pytest.raises(CheckpointError, match=r'torchvision://resnet50: .*resnet50-0676ba61\.pth is missing'):
        MODELS.build(dict(type='ResNet', depth=50, init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')))
    reference = torchvision.models.resnet18()
    path = tmp_path / 'r18.pth'
    torch.save(reference.state_dict(), path)
    model = MODELS.build(dict(type='ResNet', depth=18, init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    torch.testing.assert_close(model.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    torch.testing.assert_close(model.bn1.running_var, reference.bn1.running_var)


def test_resnet_init_freeze_and_norm_eval():
    torch.manual_seed(0)
    model = MODELS.build(dict(type='ResNet', depth=18, base_channels=8, frozen_stages=1, norm_eval=True))
    torch.manual_seed(0)
    again = MODELS.build(dict(type='ResNet', depth=18, base_channels=8, frozen_stages=1, norm_eval=True))
    for (k, v), w in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(v, w), k
    assert all(block.bn2.weight.eq(0).all() for layer in (model.layer1, model.layer4) for block in layer)
    assert model.bn1.weight.eq(1).all()
    assert not model.conv1.weight.requires_grad and not model.layer1[0].conv1.weight.requires_grad
    assert model.layer2[0].conv1.weight.requires_grad and model.layer2[0].bn1.weight.requires_grad
    model.train()
    assert model.training and model.layer2.training
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 8, 16, 24), (1, 16, 8, 12), (1, 32, 4, 6), (1, 64, 2, 3)]
    gn = MODELS.build(dict(type='ResNet', depth=18, base_channels=8, norm_cfg=dict(type='GN', num_groups=4),
                           out_indices=(3, )))
    assert 'gn1.weight' in gn.state_dict() and gn(torch.randn(1, 3, 32, 32))[0].shape == (1, 64, 1, 1)


def test_fpn_max_pool_p6_and_extra_convs_on_input():
    fpn = MODELS.build(dict(type='FPN', in_channels=[8, 16, 32, 64], out_channels=8, num_outs=5))
    assert not any(k.startswith('fpn_convs.4') for k in fpn.state_dict())
    feats = [torch.randn(1, c, 32 // 2 ** i, 48 // 2 ** i) for i, c in enumerate([8, 16, 32, 64])]
    outs = fpn(feats)
    assert [tuple(o.shape[-2:]) for o in outs] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    torch.testing.assert_close(outs[4], outs[3][:, :, ::2, ::2])
    retina = MODELS.build(dict(type='FPN', in_channels=[8, 16, 32, 64], out_channels=8, start_level=1,
                               add_extra_convs='on_input', num_outs=5))
    assert retina.fpn_convs[3].conv.weight.shape == (8, 64, 3, 3)
    outs = retina(feats)
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    expected_p6 = retina.fpn_convs[3](feats[3])
    torch.testing.assert_close(outs[3], expected_p6)


RPN_TRAIN = dict(
    assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                  match_low_quality=True, ignore_iof_thr=-1),
    sampler=dict(type='RandomSampler', num=256, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False),
    allowed_border=-1, pos_weight=-1, debug=False)
RPN_TEST = dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0)


def _metas(n, h, w, scale=1.0):
    return [dict(img_shape=(h, w, 3), pad_shape=(h, w, 3), ori_shape=(round(h / scale), round(w / scale), 3),
                 scale_factor=np.full(4, scale, dtype=np.float32)) for _ in range(n)]


def _rpn_feats(batch, h, w, channels=8):
    return [torch.randn(batch, channels, h // s, w // s) for s in (4, 8, 16, 32, 64)]


def test_untrained_rpn_cls_loss_is_ln2_and_names():
    torch.manual_seed(0)
    head = MODELS.build(dict(type='RPNHead', in_channels=8, feat_channels=8, train_cfg=RPN_TRAIN, test_cfg=RPN_TEST))
    assert set(head.state_dict()) == {'rpn_conv.weight', 'rpn_conv.bias', 'rpn_cls.weight', 'rpn_cls.bias',
                                      'rpn_reg.weight', 'rpn_reg.bias'}
    assert head.rpn_cls.weight.shape[0] == 3 and head.rpn_reg.weight.shape[0] == 12
    feats = _rpn_feats(2, 256, 256)
    gts = [torch.tensor([[10., 10., 90., 120.]]), torch.tensor([[100., 50., 200., 100.], [0., 0., 40., 40.]])]
    losses, proposals = head.forward_train(feats, _metas(2, 256, 256), gts, proposal_cfg=RPN_TEST)
    assert set(losses) == {'loss_rpn_cls', 'loss_rpn_bbox'} and len(losses['loss_rpn_cls']) == 5
    assert sum(losses['loss_rpn_cls']).item() == pytest.approx(math.log(2), abs=2e-3)
    assert torch.isfinite(sum(losses['loss_rpn_bbox']))
    assert len(proposals) == 2 and proposals[0].shape[1] == 5 and proposals[0].shape[0] <= 1000


def test_rpn_proposal_limits():
    torch.manual_seed(0)
    head = MODELS.build(dict(type='RPNHead', in_channels=8, feat_channels=8, test_cfg=RPN_TEST))
    feats = _rpn_feats(2, 128, 192)
    metas = _metas(2, 128, 180)
    one_per_level = head.get_bboxes(*head(feats), metas, cfg=dict(RPN_TEST, nms_pre=1))
    assert [p.shape[0] for p in one_per_level] == [5, 5]
    limited = head.get_bboxes(*head(feats), metas, cfg=dict(RPN_TEST, max_per_img=7))
    for p in limited:
        assert p.shape == (7, 5)
        assert (p[1:, 4] <= p[:-1, 4]).all()
        assert p[:, 0].min() >= 0 and p[:, 2].max() <= 180 and p[:, 3].max() <= 128
    assert torch.equal(head.simple_test_rpn(feats, metas)[0], head.get_bboxes(*head(feats), metas)[0])


def _tiny_retinanet(num_classes=3, **test_overrides):
    test_cfg = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5),
                    max_per_img=100)
    test_cfg.update(test_overrides)
    return MODELS.build(dict(
        type='RetinaNet',
        backbone=dict(type='ResNet', depth=18, base_channels=16, out_indices=(1, 2, 3), frozen_stages=1),
        neck=dict(type='FPN', in_channels=[32, 64, 128], out_channels=32, start_level=0,
                  add_extra_convs='on_input', num_outs=5),
        bbox_head=dict(type='RetinaHead', num_classes=num_classes, in_channels=32, stacked_convs=2, feat_channels=32),
        train_cfg=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                                     ignore_iof_thr=-1), allowed_border=-1, pos_weight=-1, debug=False),
        test_cfg=test_cfg))


def retina_losses_by_hand(model, img, metas, gts, labels):
    """Per-level focal and L1 losses from the assigner's output and the head's raw outputs.

    Focal loss (torchvision's sigmoid_focal_loss, alpha 0.25, gamma 2) over the anchors the assigner
    made positive or negative, L1 between the positives' deltas and their encoded targets; both
    summed and divided by the batch's positive count (mmdetection v2's RetinaNet normalisation).
    """
    head = model.bbox_head
    with torch.no_grad():
        cls_scores, bbox_preds = head(model.extract_feat(img))
    sizes = [tuple(c.shape[-2:]) for c in cls_scores]
    level_anchors = head.anchor_generator.grid_priors(sizes)
    anchors = torch.cat(level_anchors)
    level_of = torch.cat([torch.full((len(a),), i) for i, a in enumerate(level_anchors)])
    cls_sums, bbox_sums, num_pos = torch.zeros(5), torch.zeros(5), 0
    for i, meta in enumerate(metas):
        valid = torch.cat(head.anchor_generator.valid_flags(sizes, meta['pad_shape'][:2]))
        inds = valid.nonzero().squeeze(1)
        gt_inds = head.assigner.assign(anchors[inds], gts[i], None, labels[i]).gt_inds
        cls = torch.cat([c[i].permute(1, 2, 0).reshape(-1, 3) for c in cls_scores])[inds]
        reg = torch.cat([b[i].permute(1, 2, 0).reshape(-1, 4) for b in bbox_preds])[inds]
        pos, counted = gt_inds > 0, gt_inds >= 0
        target = torch.zeros_like(cls)
        target[pos, labels[i][gt_inds[pos] - 1]] = 1.0
        focal = torchvision.ops.sigmoid_focal_loss(cls, target, alpha=0.25, gamma=2.0, reduction='none').sum(1)
        cls_sums.index_add_(0, level_of[inds][counted], focal[counted])
        deltas = head.bbox_coder.encode(anchors[inds][pos], gts[i][gt_inds[pos] - 1])
        bbox_sums.index_add_(0, level_of[inds][pos], (reg[pos] - deltas).abs().sum(1))
        num_pos += max(int(pos.sum()), 1)
    assert num_pos >= 6  # several positives per image, so a wrong normaliser shows
    return cls_sums / num_pos, bbox_sums / num_pos


def test_retinanet_train_and_test_contract():
    torch.manual_seed(0)
    model = _tiny_retinanet()
    img = torch.randn(2, 3, 128, 160)
    metas = _metas(2, 128, 150, scale=2.0)
    gts = [torch.tensor([[10., 20., 60., 90.]]), torch.tensor([[30., 30., 100., 80.], [0., 0., 20., 20.]])]
    labels = [torch.tensor([0]), torch.tensor([1, 2])]
    model.train()
    losses = model(img, metas, gt_bboxes=gts, gt_labels=labels)
    assert set(losses) == {'loss_cls', 'loss_bbox'} and len(losses['loss_cls']) == 5
    total = sum(sum(v) for v in losses.values())
    expected_cls, expected_bbox = retina_losses_by_hand(model, img, metas, gts, labels)
    torch.testing.assert_close(torch.stack(losses['loss_cls']), expected_cls, rtol=2e-4, atol=1e-7)
    torch.testing.assert_close(torch.stack(losses['loss_bbox']), expected_bbox, rtol=2e-4, atol=1e-7)
    total.backward()
    assert model.bbox_head.retina_cls.weight.grad is not None

    model.eval()
    model.bbox_head.retina_cls.bias.data.fill_(3.0)
    with torch.no_grad():
        results = model(return_loss=False, rescale=True, img=[img], img_metas=[metas])
    assert len(results) == 2 and len(results[0]) == 3
    for per_class in results[0]:
        assert per_class.dtype == np.float32 and per_class.shape[1] == 5
    dets = np.concatenate(results[0])
    assert 0 < len(dets) <= 100
    assert dets[:, 2].max() <= 75 + 1e-3 and dets[:, 3].max() <= 64 + 1e-3
    plain = model(return_loss=False, img=img, img_metas=metas)
    np.testing.assert_allclose(np.concatenate(plain[0]), dets)
    with pytest.raises(NotImplementedError):
        model(return_loss=False, img=[img, img], img_metas=[metas, metas])


def test_retina_post_processing_limits():
    torch.manual_seed(0)
    head = _tiny_retinanet(num_classes=4).bbox_head
    metas = _metas(1, 128, 128)
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    cls_scores = [torch.full((1, 9 * 4, h, w), 5.0) for h, w in sizes]
    bbox_preds = [torch.zeros(1, 9 * 4, h, w) for h, w in sizes]
    (dets, labels), = head.get_bboxes(cls_scores, bbox_preds, metas, cfg=dict(head.test_cfg, max_per_img=7))
    assert dets.shape == (7, 5) and labels.shape == (7,)
    (dets, labels), = head.get_bboxes(cls_scores, bbox_preds, metas,
                                      cfg=dict(head.test_cfg, nms_pre=2, max_per_img=1000))
    assert dets.shape[0] <= 10
    quiet = [torch.full_like(s, -5.0) for s in cls_scores]
    (dets, labels), = head.get_bboxes(quiet, bbox_preds, metas)
    assert dets.shape == (0, 5) and labels.shape == (0,)
    # the class of a pair follows channel = anchor_idx * C + c
    one = [torch.full_like(s, -9.0) for s in cls_scores]
    one[4][0, 2 * 4 + 3, 0, 0] = 4.0
    (dets, labels), = head.get_bboxes(one, bbox_preds, metas)
    assert labels.tolist() == [3]
    anchor = head.anchor_generator.grid_priors(sizes)[4][2]
    torch.testing.assert_close(dets[0, :4], anchor.clamp(min=0, max=128))


@pytest.mark.parametrize('mode', ['master', 'autocast'])
def test_retinanet_bf16_matches_fp32(mode):
    """Same weights: bf16 losses within 1e-2 of fp32's, detections box for box (IoU > 0.99; scores
    within 2e-2: bf16 logits of the spread-out classifier carry about 1e-2 of error themselves).
    NMS is off: among the dense head's overlapping boxes of near-equal scores, bf16 noise would
    change which one survives."""
    torch.manual_seed(0)
    reference = precision.spread_classifiers(_tiny_retinanet(nms=dict(type='nms', iou_threshold=1.0)))
    img = torch.randn(2, 3, 96, 128)
    batch = dict(img=img, img_metas=_metas(2, 96, 128, scale=2.0),
                 gt_bboxes=[torch.tensor([[10., 20., 60., 90.]]), torch.tensor([[30., 10., 120., 80.]])],
                 gt_labels=[torch.tensor([1]), torch.tensor([2])])
    model = precision.mixed_copy(reference, torch.bfloat16, mode)
    losses = precision.losses_of(model, batch)
    precision.assert_losses_close(precision.losses_of(reference, batch), losses, rtol=1e-2)
    model.train()
    train_losses = model(**batch)
    assert all(v.dtype == torch.float32 for value in train_losses.values() for v in value)
    sum(sum(v) for v in train_losses.values()).backward()
    pairs = precision.assert_detections_match(precision.detections_of(reference, batch),
                                              precision.detections_of(model, batch), score_tol=2e-2,
                                              min_distinct=0.6)
    assert len(pairs) >= 40
