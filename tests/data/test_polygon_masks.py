"""Polygon masks (``LoadAnnotations(poly2mask=False)``, mmdetection v2's PolygonMasks): the
transforms move the polygons as the bitmap path moves the pixels, and the mask targets rasterised
from polygons per RoI equal the bitmap path's up to rasterisation."""
import copy

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from mixprec.data import CocoDataset, PolygonMasks, collate, make_shapes_dataset
from mixprec.models.task_modules.mask_ops import mask_target_single
from mixprec.registry import MODELS

from helpers.detectors import tiny_cfg, total_loss

pytestmark = pytest.mark.usefixtures('one_thread')

SQUARE = PolygonMasks([[np.array([0., 0., 10., 0., 10., 10., 0., 10.])]], 20, 30)


def test_polygon_ops_hand_values():
    resized = SQUARE.resize(40, 15)  # x * 0.5, y * 2
    np.testing.assert_allclose(resized.masks[0][0], [0, 0, 5, 0, 5, 20, 0, 20])
    assert (resized.height, resized.width) == (40, 15)
    np.testing.assert_allclose(SQUARE.flip('horizontal').masks[0][0], [30, 0, 20, 0, 20, 10, 30, 10])
    np.testing.assert_allclose(SQUARE.flip('diagonal').masks[0][0], [30, 20, 20, 20, 20, 10, 30, 10])
    padded = SQUARE.pad(32, 32)
    assert (padded.height, padded.width) == (32, 32) and np.array_equal(padded.masks[0][0], SQUARE.masks[0][0])
    np.testing.assert_allclose(SQUARE.masks[0][0], [0, 0, 10, 0, 10, 10, 0, 10])  # ops copy
    # targets: a RoI equal to the square is all ones; a RoI twice as wide holds it in its left half
    full = SQUARE.crop_and_resize(np.array([[0., 0., 10., 10.], [0., 0., 20., 10.]]), 4, np.array([0, 0]))
    assert full[0].tolist() == [[1] * 4] * 4
    assert full[1].tolist() == [[1, 1, 0, 0]] * 4


def pipeline(poly: bool, flip: bool):
    return [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True,
                                                  poly2mask=not poly),
            dict(type='Resize', img_scale=(100, 70), keep_ratio=True),
            dict(type='RandomFlip', flip_ratio=1.0 if flip else 0.0),
            dict(type='Normalize', mean=[0, 0, 0], std=[1, 1, 1], to_rgb=True),
            dict(type='Pad', size_divisor=32), dict(type='DefaultFormatBundle'),
            dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks'])]


def mask_iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.fixture(scope='module')
def shapes_json(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes'))
    return root, make_shapes_dataset(root, num_train=6, num_val=1, img_size=64, seed=1)['train']


@pytest.mark.parametrize('flip', [False, True])
def test_polygon_pipeline_matches_bitmap_pipeline(shapes_json, flip):
    root, ann = shapes_json
    kw = dict(ann_file=ann, img_prefix=root + '/train/', classes=('circle', 'square', 'triangle'))
    polys = CocoDataset(pipeline=pipeline(True, flip), **kw)
    bitmaps = CocoDataset(pipeline=pipeline(False, flip), **kw)
    ious = []
    for i in range(len(polys)):
        p, b = polys[i], bitmaps[i]
        masks = p['gt_masks']
        assert isinstance(masks, PolygonMasks)
        assert (masks.height, masks.width) == tuple(b['gt_masks'].shape[1:]) == tuple(p['img_metas']['pad_shape'][:2])
        raster = masks.to_ndarray()
        ious += [mask_iou(r, m) for r, m in zip(raster, b['gt_masks'].numpy())]
    # resizing polygons vs nearest-neighbour bitmaps differs only along the edges
    assert np.mean(ious) > 0.85 and min(ious) > 0.6
    batch = collate([polys[0], polys[1]])
    assert all(isinstance(m, PolygonMasks) for m in batch['gt_masks'])


def test_polygon_mask_targets_equal_bitmap_targets_up_to_rasterisation(shapes_json):
    root, ann = shapes_json
    kw = dict(ann_file=ann, img_prefix=root + '/train/', classes=('circle', 'square', 'triangle'))
    polys = CocoDataset(pipeline=pipeline(True, False), **kw)
    bitmaps = CocoDataset(pipeline=pipeline(False, False), **kw)
    g = torch.Generator().manual_seed(0)
    ious = []
    for i in range(len(polys)):
        p, b = polys[i], bitmaps[i]
        gt = b['gt_bboxes']
        # RoIs around each gt box, jittered
        rois = gt.repeat(3, 1) + torch.randn(3 * len(gt), 4, generator=g) * 2
        inds = torch.arange(len(gt)).repeat(3)
        t_poly = mask_target_single(rois, inds, p['gt_masks'], 28)
        t_bit = mask_target_single(rois, inds, b['gt_masks'], 28)
        assert t_poly.shape == t_bit.shape and t_poly.dtype == torch.float32
        assert set(t_poly.unique().tolist()) <= {0.0, 1.0}
        ious += [mask_iou(x.numpy(), y.numpy()) for x, y in zip(t_poly, t_bit)]
    assert np.mean(ious) > 0.9 and min(ious) > 0.7


def test_rle_segmentation_becomes_exact_polygons():
    mask = np.zeros((20, 20), np.uint8)
    mask[3:9, 4:15] = 1
    mask[9:14, 4:7] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    polys = PolygonMasks.from_coco([rle], 20, 20)
    assert np.array_equal(polys.to_ndarray()[0], mask)
    ring = np.zeros((20, 20), np.uint8)
    ring[2:12, 2:12] = 1
    ring[5:8, 5:8] = 0
    with pytest.warns(UserWarning, match='holes'):
        filled = PolygonMasks.from_coco([mask_utils.encode(np.asfortranarray(ring))], 20, 20)
    assert filled.to_ndarray()[0].sum() == 100


def test_mask_rcnn_trains_on_polygon_masks(shapes_json):
    root, ann = shapes_json
    data = CocoDataset(pipeline=pipeline(True, False), ann_file=ann, img_prefix=root + '/train/',
                       classes=('circle', 'square', 'triangle'))
    batch = collate([data[0], data[1]])
    torch.manual_seed(0)
    model = MODELS.build(tiny_cfg('mask', num_classes=3))
    model.train()
    kw = {k: batch[k] for k in ('gt_bboxes', 'gt_labels', 'gt_masks')}
    losses = model(batch['img'], copy.deepcopy(batch['img_metas']), **kw)
    assert torch.isfinite(losses['loss_mask']) and losses['loss_mask'] > 0
    total_loss(losses).backward()
