"""Tiny configs on a small generated shapes dataset, for end-to-end tests of the tools."""
from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_TEMPLATE = '''_base_ = [{base!r}]
data_root = {data_root!r}
shapes_auto_create = dict(num_train={num_train}, num_val={num_val}, img_size={img_size}, seed=0)
img_scale = ({img_size}, {img_size})
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask={with_mask}),
    dict(type='Resize', img_scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys={keys!r}),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=img_scale, flip=False, transforms=[
        dict(type='Resize', keep_ratio=True),
        dict(type='RandomFlip'),
        dict(type='Normalize', **img_norm_cfg),
        dict(type='Pad', size_divisor=32),
        dict(type='ImageToTensor', keys=['img']),
        dict(type='Collect', keys=['img']),
    ]),
]
data = dict(
    samples_per_gpu={samples_per_gpu}, workers_per_gpu={workers},
    train=dict(ann_file=data_root + 'annotations/instances_train.json', img_prefix=data_root + 'train/',
               auto_create=shapes_auto_create, pipeline=train_pipeline),
    val=dict(ann_file=data_root + 'annotations/instances_val.json', img_prefix=data_root + 'val/',
             auto_create=shapes_auto_create, pipeline=test_pipeline, test_mode=True),
    test=dict(ann_file=data_root + 'annotations/instances_val.json', img_prefix=data_root + 'val/',
              auto_create=shapes_auto_create, pipeline=test_pipeline, test_mode=True))
runner = dict(_delete_=True, type='EpochBasedRunner', max_epochs={epochs})
lr_config = dict(warmup_iters=2)
log_config = dict(interval=1)
checkpoint_config = dict(interval=1)
evaluation = dict(interval={epochs}, metric={metrics!r})
'''


def write_tiny_config(folder: str, base: str = 'configs/shapes/mask_rcnn_r18_fpn_bf16_shapes.py', epochs: int = 2,
                      num_train: int = 8, num_val: int = 4, img_size: int = 96, samples_per_gpu: int = 2,
                      workers: int = 0, extra: str = '') -> str:
    """Write ``folder/tiny.py`` inheriting ``base`` with a small shapes dataset under ``folder/shapes/``."""
    mask = 'mask_rcnn' in base
    text = _TEMPLATE.format(
        base=os.path.join(ROOT, base), data_root=os.path.join(folder, 'shapes') + '/', num_train=num_train,
        num_val=num_val, img_size=img_size, with_mask=mask, samples_per_gpu=samples_per_gpu, workers=workers,
        keys=['img', 'gt_bboxes', 'gt_labels'] + (['gt_masks'] if mask else []), epochs=epochs,
        metrics=['bbox', 'segm'] if mask else ['bbox'])
    path = os.path.join(folder, 'tiny.py')
    with open(path, 'w') as f:
        f.write(text + extra)
    return path
