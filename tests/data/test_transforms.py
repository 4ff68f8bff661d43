"""Each pipeline transform against hand-computed outputs."""
import cv2
import numpy as np
import pytest
import torch

from mixprec.data.pipelines import (Collect, Compose, DefaultFormatBundle, ImageToTensor, LoadAnnotations,
                                    LoadImageFromFile, MultiScaleFlipAug, Normalize, Pad, RandomFlip, Resize)
from mixprec.registry import ConfigError


def _results(h=40, w=70):
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[5, 10] = (10, 20, 30)
    masks = np.zeros((1, h, w), dtype=np.uint8)
    masks[0, 5, 10] = 1
    return dict(img=img, img_shape=img.shape, ori_shape=img.shape, img_fields=['img'],
                gt_bboxes=np.array([[10, 5, 20, 15]], dtype=np.float32),
                gt_bboxes_ignore=np.zeros((0, 4), dtype=np.float32),
                bbox_fields=['gt_bboxes', 'gt_bboxes_ignore'], gt_masks=masks, mask_fields=['gt_masks'])


def test_resize_keep_ratio_hand_values():
    # scale = min(100 / 70, 60 / 40) = 1.428571; w = int(70 * s + .5) = 100, h = int(40 * s + .5) = 57
    out = Resize(img_scale=(100, 60), keep_ratio=True)(_results())
    assert out['img'].shape == (57, 100, 3) and out['img_shape'] == (57, 100, 3)
    assert out['pad_shape'] == (57, 100, 3)
    sf = np.array([100 / 70, 57 / 40, 100 / 70, 57 / 40], dtype=np.float32)
    assert out['scale_factor'].dtype == np.float32
    np.testing.assert_array_equal(out['scale_factor'], sf)
    np.testing.assert_allclose(out['gt_bboxes'], [[10 * sf[0], 5 * sf[1], 20 * sf[0], 15 * sf[1]]], rtol=1e-6)
    assert out['gt_masks'].shape == (1, 57, 100) and out['gt_masks'].dtype == np.uint8


def test_resize_coco_scale_is_min_of_long_and_short_ratios():
    # 500 x 375 landscape to (1333, 800): min(1333 / 500, 800 / 375) = 2.1333 -> 1067 x 800
    results = dict(img=np.zeros((375, 500, 3), np.uint8), img_fields=['img'])
    out = Resize(img_scale=(1333, 800))(results)
    assert out['img_shape'] == (800, 1067, 3)
    # 200 x 1000 tall: min(1333 / 1000, 800 / 200) = 1.333 -> 267 x 1333
    out = Resize(img_scale=(1333, 800))(dict(img=np.zeros((1000, 200, 3), np.uint8), img_fields=['img']))
    assert out['img_shape'] == (1333, 267, 3)


def test_resize_without_keep_ratio_and_clipping():
    results = _results()
    results['gt_bboxes'] = np.array([[60, 30, 80, 50]], dtype=np.float32)
    out = Resize(img_scale=(100, 60), keep_ratio=False)(results)
    assert out['img_shape'] == (60, 100, 3)
    np.testing.assert_allclose(out['scale_factor'], [100 / 70, 1.5, 100 / 70, 1.5])
    np.testing.assert_allclose(out['gt_bboxes'], [[60 * 100 / 70, 45, 100, 60]], rtol=1e-6)


def test_resize_multiscale_modes():
    np.random.seed(0)
    scales = {Resize(img_scale=[(100, 60), (120, 80)], multiscale_mode='range')._random_scale() for _ in range(50)}
    assert all(100 <= s[0] <= 120 and 60 <= s[1] <= 80 for s in scales) and len(scales) > 5
    values = {Resize(img_scale=[(100, 60), (120, 80)], multiscale_mode='value')._random_scale() for _ in range(50)}
    assert values == {(100, 60), (120, 80)}
    ratios = [Resize(img_scale=(100, 60), ratio_range=(0.5, 1.5))._random_scale() for _ in range(50)]
    assert all(50 <= s[0] <= 150 and 30 <= s[1] <= 90 for s in ratios)
    with pytest.raises(ConfigError, match='multiscale_mode'):
        Resize(img_scale=(100, 60), multiscale_mode='bogus')


@pytest.mark.parametrize('direction, box, pixel', [
    ('horizontal', [50, 5, 60, 15], (5, 59)),
    ('vertical', [10, 25, 20, 35], (34, 10)),
    ('diagonal', [50, 25, 60, 35], (34, 59)),
])
def test_flip_boxes_masks_and_image(direction, box, pixel):
    out = RandomFlip(flip_ratio=1.0, direction=direction)(_results())
    assert out['flip'] is True and out['flip_direction'] == direction
    np.testing.assert_array_equal(out['gt_bboxes'], [box])
    assert out['gt_masks'][0, pixel[0], pixel[1]] == 1 and out['gt_masks'].sum() == 1
    assert tuple(out['img'][pixel]) == (10, 20, 30)


def test_flip_ratio_zero_never_flips_and_preset_flip_wins():
    out = RandomFlip(flip_ratio=0.0)(_results())
    assert out['flip'] is False and out['flip_direction'] is None
    np.testing.assert_array_equal(out['gt_bboxes'], [[10, 5, 20, 15]])
    preset = dict(_results(), flip=True, flip_direction='horizontal')
    assert RandomFlip()(preset)['gt_bboxes'][0, 0] == 50


def test_normalize_to_rgb():
    out = Normalize(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)(_results())
    # BGR (10, 20, 30) -> RGB (30, 20, 10)
    expected = [(30 - 123.675) / 58.395, (20 - 116.28) / 57.12, (10 - 103.53) / 57.375]
    np.testing.assert_allclose(out['img'][5, 10], expected, rtol=1e-5)
    assert out['img'].dtype == np.float32 and out['img_norm_cfg']['to_rgb'] is True


def test_pad_size_divisor_and_fixed_size():
    results = Resize(img_scale=(100, 60))(_results())
    out = Pad(size_divisor=32)(results)
    assert out['img'].shape == (64, 128, 3) and out['pad_shape'] == (64, 128, 3)
    assert out['img_shape'] == (57, 100, 3)
    assert out['gt_masks'].shape == (1, 64, 128) and out['gt_masks'][:, 57:].sum() == 0
    out = Pad(size=(70, 110), pad_val=3)(_results())
    assert out['img'].shape == (70, 110, 3) and out['img'][69, 109, 0] == 3 and out['gt_masks'].shape == (1, 70, 110)
    with pytest.raises(ConfigError, match='exactly one'):
        Pad()


def test_format_bundle_and_collect():
    results = Pad(size_divisor=32)(Resize(img_scale=(100, 60))(_results()))
    results['gt_labels'] = np.array([2])
    results.update(filename='f.png', ori_filename='f.png', flip=False, flip_direction=None)
    out = Collect(keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks'])(DefaultFormatBundle()(results))
    assert out['img'].shape == (3, 64, 128) and out['img'].dtype == torch.float32
    assert out['gt_bboxes'].dtype == torch.float32 and out['gt_labels'].dtype == torch.int64
    assert out['gt_masks'].dtype == torch.uint8 and out['gt_masks'].shape == (1, 64, 128)
    meta = out['img_metas']
    assert set(meta) == {'filename', 'ori_filename', 'ori_shape', 'img_shape', 'pad_shape', 'scale_factor',
                         'flip', 'flip_direction', 'img_norm_cfg'}
    assert meta['pad_shape'] == (64, 128, 3) and meta['img_norm_cfg']['to_rgb'] is False
    assert ImageToTensor(keys=['img'])(dict(img=np.zeros((4, 5, 3))))['img'].shape == (3, 4, 5)


def test_multi_scale_flip_aug_lists_augmentations():
    aug = MultiScaleFlipAug(transforms=[dict(type='Resize', keep_ratio=True), dict(type='RandomFlip'),
                                        dict(type='ImageToTensor', keys=['img']),
                                        dict(type='Collect', keys=['img'])],
                            img_scale=[(100, 60), (200, 120)], flip=True, flip_direction=['horizontal', 'vertical'])
    out = aug(_results())
    assert len(out['img']) == 6
    assert [m['flip_direction'] for m in out['img_metas']] == [None, 'horizontal', 'vertical'] * 2
    assert [tuple(i.shape) for i in out['img']][::3] == [(3, 57, 100), (3, 114, 200)]


def test_load_image_and_annotations_from_generated_files(tmp_path):
    img = np.full((40, 70, 3), 7, dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'a.png'), img)
    ann = dict(bboxes=np.array([[1, 2, 11, 12]]), labels=np.array([1]), bboxes_ignore=np.zeros((0, 4)),
               masks=[[[1, 2, 11, 2, 11, 12, 1, 12]]])
    results = dict(img_info=dict(filename='a.png', height=40, width=70), ann_info=ann, img_prefix=str(tmp_path),
                   bbox_fields=[], mask_fields=[])
    pipe = Compose([dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_mask=True)])
    out = pipe(results)
    assert out['img'].shape == (40, 70, 3) and out['ori_filename'] == 'a.png'
    assert out['filename'] == str(tmp_path / 'a.png')
    assert out['gt_bboxes'].dtype == np.float32 and out['gt_labels'].dtype == np.int64
    assert out['gt_masks'].shape == (1, 40, 70) and out['gt_masks'].sum() == 100
    assert out['gt_masks'][0, 2:12, 1:11].all()
    assert LoadImageFromFile(to_float32=True)(dict(results, img_prefix=str(tmp_path)))['img'].dtype == np.float32
    with pytest.raises(FileNotFoundError, match='nope.png'):
        LoadImageFromFile()(dict(img_info=dict(filename='nope.png'), img_prefix=str(tmp_path)))
    polys = Compose([dict(type='LoadImageFromFile'),
                     dict(type='LoadAnnotations', with_mask=True, poly2mask=False)])(
        dict(results, bbox_fields=[], mask_fields=[]))['gt_masks']
    assert np.array_equal(polys.to_ndarray(), out['gt_masks'])
