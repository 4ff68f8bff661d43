"""Faster R-CNN and Mask R-CNN: state-dict names of the reference models, training losses and
test-time results of tiny models, mixed precision."""

import functools

import numpy as np
import pytest
import torch
import torchvision
from mmengine import Config

import mixprec.models  # noqa: F401  (registers every model part)
from mixprec.registry import MODELS
from helpers import precision
from helpers.detectors import CONFIGS, model_cfg, tiny_batch, tiny_cfg, total_loss

pytestmark = pytest.mark.usefixtures('one_thread')


def neck_and_head_shapes(kind: str) -> dict:
    """mmdetection v2 names and shapes of everything after the backbone (80 COCO classes)."""
    shapes = {}
    for i, c in enumerate([256, 512, 1024, 2048]):
        shapes[f'neck.lateral_convs.{i}.conv.weight'] = (256, c, 1, 1)
        shapes[f'neck.lateral_convs.{i}.conv.bias'] = (256,)
        shapes[f'neck.fpn_convs.{i}.conv.weight'] = (256, 256, 3, 3)
        shapes[f'neck.fpn_convs.{i}.conv.bias'] = (256,)
    shapes.update({
        'rpn_head.rpn_conv.weight': (256, 256, 3, 3), 'rpn_head.rpn_conv.bias': (256,),
        'rpn_head.rpn_cls.weight': (3, 256, 1, 1), 'rpn_head.rpn_cls.bias': (3,),
        'rpn_head.rpn_reg.weight': (12, 256, 1, 1), 'rpn_head.rpn_reg.bias': (12,),
        'roi_head.bbox_head.shared_fcs.0.weight': (1024, 12544),
        'roi_head.bbox_head.shared_fcs.0.bias': (1024,),
        'roi_head.bbox_head.shared_fcs.1.weight': (1024, 1024),
        'roi_head.bbox_head.shared_fcs.1.bias': (1024,),
        'roi_head.bbox_head.fc_cls.weight': (81, 1024), 'roi_head.bbox_head.fc_cls.bias': (81,),
        'roi_head.bbox_head.fc_reg.weight': (320, 1024), 'roi_head.bbox_head.fc_reg.bias': (320,),
    })
    if kind == 'mask':
        for i in range(4):
            shapes[f'roi_head.mask_head.convs.{i}.conv.weight'] = (256, 256, 3, 3)
            shapes[f'roi_head.mask_head.convs.{i}.conv.bias'] = (256,)
        shapes.update({
            'roi_head.mask_head.upsample.weight': (256, 256, 2, 2),
            'roi_head.mask_head.upsample.bias': (256,),
            'roi_head.mask_head.conv_logits.weight': (80, 256, 1, 1),
            'roi_head.mask_head.conv_logits.bias': (80,),
        })
    return shapes


@pytest.mark.parametrize('kind', ['faster', 'mask'])
def test_reference_model_state_dict_matches_mmdetection_v2(kind):
    expected = {f'backbone.{k}': tuple(v.shape) for k, v in torchvision.models.resnet50().state_dict().items()
                if not k.startswith('fc.')}
    expected.update(neck_and_head_shapes(kind))
    model = MODELS.build(model_cfg(kind))
    assert type(model).__name__ == {'faster': 'FasterRCNN', 'mask': 'MaskRCNN'}[kind]
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(expected) - set(actual)) == []
    assert sorted(set(actual) - set(expected)) == []
    assert actual == expected


def test_reference_configs_carry_the_design_values():
    faster, mask = (Config.fromfile(CONFIGS[k]).model for k in ('faster', 'mask'))
    assert faster.train_cfg.rcnn.assigner.match_low_quality is False
    assert mask.train_cfg.rcnn.assigner.match_low_quality is True
    assert mask.train_cfg.rcnn.mask_size == 28 and mask.test_cfg.rcnn.mask_thr_binary == 0.5
    for cfg in (faster, mask):
        assert cfg.roi_head.bbox_head.bbox_coder.target_stds == [0.1, 0.1, 0.2, 0.2]
        assert cfg.train_cfg.rcnn.sampler.num == 512 and cfg.train_cfg.rcnn.sampler.pos_fraction == 0.25
        assert cfg.test_cfg.rcnn == dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5),
                                         max_per_img=100, **({'mask_thr_binary': 0.5} if cfg is mask else {}))
        assert cfg.backbone.init_cfg == dict(type='Pretrained', checkpoint='torchvision://resnet50')
    assert mask.roi_head.mask_roi_extractor.roi_layer.output_size == 14


LOSS_KEYS = ['loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'acc', 'loss_bbox']


@pytest.mark.parametrize('kind', ['faster', 'mask'])
def test_forward_train_gives_finite_losses_and_gradients(kind):
    torch.manual_seed(0)
    model = MODELS.build(tiny_cfg(kind))
    model.train()
    batch = tiny_batch(with_masks=kind == 'mask')
    losses = model(**batch)
    assert sorted(losses) == sorted(LOSS_KEYS + (['loss_mask'] if kind == 'mask' else []))
    for key, value in losses.items():
        for v in (value if isinstance(value, list) else [value]):
            assert v.ndim == 0 and torch.isfinite(v), key
    total_loss(losses).backward()
    head = model.roi_head.bbox_head
    assert head.fc_cls.weight.grad.abs().sum() > 0 and head.shared_fcs[0].weight.grad is not None
    if kind == 'mask':
        assert model.roi_head.mask_head.conv_logits.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('kind', ['faster', 'mask'])
def test_simple_test_result_format(kind):
    torch.manual_seed(0)
    model = MODELS.build(tiny_cfg(kind)).eval()
    batch = tiny_batch(with_masks=False)
    with torch.no_grad():
        results = model(img=[batch['img']], img_metas=[batch['img_metas']], return_loss=False, rescale=True)
    assert len(results) == 2
    for result, meta in zip(results, batch['img_metas']):
        bbox_results = result[0] if kind == 'mask' else result
        assert len(bbox_results) == 3
        assert all(r.dtype == np.float32 and r.ndim == 2 and r.shape[1] == 5 for r in bbox_results)
        dets = np.concatenate(bbox_results)
        assert 0 < len(dets) <= 100
        h, w = meta['ori_shape'][:2]
        assert dets[:, [0, 2]].max() <= w and dets[:, [1, 3]].max() <= h  # mapped to the original
        assert dets[:, 4].min() > 0.05
        if kind == 'mask':
            segm_results = result[1]
            assert [len(s) for s in segm_results] == [len(b) for b in bbox_results]
            masks = [m for s in segm_results for m in s]
            assert all(m.shape == (h, w) and m.dtype == np.bool_ for m in masks)


@functools.lru_cache(maxsize=None)
def fp32_reference(kind: str) -> tuple:
    """A tiny model with spread-out classifiers and fixed proposals, its batch, fp32 losses and results."""
    torch.manual_seed(0)
    model = precision.spread_classifiers(MODELS.build(tiny_cfg(kind)))
    batch = tiny_batch(with_masks=kind == 'mask')
    precision.fix_proposals(model, precision.random_proposals(batch['img_metas'], 100))
    return model, batch, precision.losses_of(model, batch), precision.detections_of(model, batch)


@pytest.mark.parametrize('mode', ['master', 'autocast'])
@pytest.mark.parametrize('kind', ['faster', 'mask'])
def test_bf16_matches_fp32(kind, mode):
    """Same weights: bf16 losses within 1e-2 of fp32's, detections box for box (IoU > 0.99, scores
    within 1e-2, as many distinct scores), masks of matched detections nearly equal."""
    reference, batch, ref_losses, ref_results = fp32_reference(kind)
    model = precision.mixed_copy(reference, torch.bfloat16, mode)
    assert model.roi_head.bbox_roi_extractor.fp16_enabled and model.roi_head.bbox_head.fp16_enabled
    model.train()
    torch.manual_seed(0)
    loss = total_loss(model(**batch))
    assert loss.dtype == torch.float32
    loss.backward()
    precision.assert_losses_close(ref_losses, precision.losses_of(model, batch), rtol=1e-2)
    results = precision.detections_of(model, batch)
    pairs = precision.assert_detections_match(ref_results, results)
    assert len(pairs) >= 150
    if kind == 'mask':  # pixels of the matched detections' masks (tiny masks flip a border pixel)
        inter = union = 0
        for img, cls, i, j in pairs:
            a, b = ref_results[img][1][cls][i], results[img][1][cls][j]
            inter, union = inter + (a & b).sum(), union + (a | b).sum()
        assert union > 5000 and inter / union > 0.97, (inter, union)


def test_mask_rcnn_without_detections_gives_empty_masks():
    torch.manual_seed(0)
    cfg = tiny_cfg('mask')
    cfg['test_cfg']['rcnn']['score_thr'] = 1.0  # nothing passes
    model = MODELS.build(cfg).eval()
    batch = tiny_batch(with_masks=False)
    with torch.no_grad():
        results = model(img=batch['img'], img_metas=batch['img_metas'], return_loss=False)
    for bbox_results, segm_results in results:
        assert all(len(b) == 0 for b in bbox_results)
        assert segm_results == [[], [], []]


def test_image_without_objects_trains_and_image_without_proposals_tests():
    torch.manual_seed(0)
    model = MODELS.build(tiny_cfg('mask'))
    batch = tiny_batch(with_masks=True)
    batch['gt_bboxes'][0] = torch.zeros(0, 4)
    batch['gt_labels'][0] = torch.zeros(0, dtype=torch.long)
    batch['gt_masks'][0] = torch.zeros(0, 96, 128, dtype=torch.uint8)
    loss = total_loss(model(**batch))
    assert torch.isfinite(loss)
    loss.backward()
    model.eval()
    with torch.no_grad():
        feats = model.extract_feat(batch['img'])
        proposals = [torch.zeros(0, 5), torch.tensor([[0., 0., 50., 50., 0.9]])]
        results = model.roi_head.simple_test(feats, proposals, batch['img_metas'])
    assert [sum(len(c) for c in bbox_results) for bbox_results, _ in results][0] == 0
    assert all(len(b) == len(s) for b, s in zip(*results[1]))
