"""End to end on generated files: config pipelines through build_dataloader give contract batches."""
import numpy as np
import pytest
import torch

from mixprec.data import build_dataloader, build_dataset

NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
TRAIN = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
         dict(type='Resize', img_scale=(128, 96), keep_ratio=True), dict(type='RandomFlip', flip_ratio=0.5),
         dict(type='Normalize', **NORM), dict(type='Pad', size_divisor=32), dict(type='DefaultFormatBundle'),
         dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks', 'gt_bboxes_ignore'])]
TEST = [dict(type='LoadImageFromFile'),
        dict(type='MultiScaleFlipAug', img_scale=(128, 96), flip=True,
             transforms=[dict(type='Resize', keep_ratio=True), dict(type='RandomFlip'), dict(type='Normalize', **NORM),
                         dict(type='Pad', size_divisor=32), dict(type='ImageToTensor', keys=['img']),
                         dict(type='Collect', keys=['img'])])]


@pytest.fixture(scope='module')
def cfg(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes')) + '/'
    return dict(type='ShapesDataset', data_root=root, auto_create=dict(num_train=8, num_val=3, img_size=64, seed=4))


def test_train_batches_follow_the_contract(cfg):
    ds = build_dataset(dict(cfg, ann_file='annotations/instances_train.json', img_prefix='train/', pipeline=TRAIN))
    loader = build_dataloader(ds, samples_per_gpu=2, workers_per_gpu=0, seed=0)
    np.random.seed(0)
    flips = set()
    for batch in loader:
        assert batch['img'].dtype == torch.float32 and batch['img'].shape[0] == 2
        H, W = batch['img'].shape[-2:]
        assert H % 32 == 0 and W % 32 == 0
        for meta, boxes, labels, masks in zip(batch['img_metas'], batch['gt_bboxes'], batch['gt_labels'],
                                              batch['gt_masks']):
            flips.add(meta['flip'])
            assert meta['batch_input_shape'] == (H, W)
            assert masks.dtype == torch.uint8 and tuple(masks.shape[1:]) == meta['pad_shape'][:2]
            assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1, 2}
            h, w = meta['img_shape'][:2]
            assert max(h, w) <= 128 and min(h, w) <= 96 and (max(h, w) == 128 or min(h, w) == 96)
            for box, mask in zip(boxes.numpy(), masks.numpy()):
                ys, xs = np.nonzero(mask)
                # the box rescaled/flipped with the image still frames the rescaled/flipped mask
                assert np.abs([xs.min() - box[0], ys.min() - box[1], xs.max() + 1 - box[2],
                               ys.max() + 1 - box[3]]).max() <= 2.5
    assert flips == {True, False}


def test_test_batches_list_augmentations(cfg):
    ds = build_dataset(dict(cfg, ann_file='annotations/instances_val.json', img_prefix='val/', pipeline=TEST,
                            test_mode=True))
    loader = build_dataloader(ds, samples_per_gpu=2, workers_per_gpu=0, shuffle=False)
    batches = list(loader)
    assert [len(b['img_metas'][0]) for b in batches] == [2, 1]
    first = batches[0]
    assert len(first['img']) == 2 and [m['flip'] for m in first['img_metas'][1]] == [True, True]
    assert [m['ori_filename'] for m in first['img_metas'][0]] == ['000000.png', '000001.png']


def test_worker_loader_is_reproducible_for_a_seed(cfg):
    ds = build_dataset(dict(cfg, ann_file='annotations/instances_train.json', img_prefix='train/', pipeline=TRAIN))

    def run():
        loader = build_dataloader(ds, samples_per_gpu=2, workers_per_gpu=1, seed=3)
        return [(m['ori_filename'], m['flip']) for b in loader for m in b['img_metas']], len(loader.sampler)

    first, size = run()
    assert run()[0] == first and len(first) == size >= len(ds)
