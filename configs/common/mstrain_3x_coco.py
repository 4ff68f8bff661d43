# The 3x multi-scale schedule of mmdetection v2 (configs/common/mstrain_3x_coco.py): shorter side drawn
# from 640..800 at training, the train set repeated 3 times per epoch, 12 such epochs (36 COCO epochs).
_base_ = ['../_base_/datasets/coco_detection.py', '../_base_/schedules/schedule_1x.py',
          '../_base_/default_runtime.py']
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', img_scale=[(1333, 640), (1333, 800)], multiscale_mode='range', keep_ratio=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels']),
]
data = dict(
    train=dict(
        _delete_=True,
        type='RepeatDataset',
        times=3,
        dataset=dict(
            type='CocoDataset',
            ann_file='data/coco/annotations/instances_train2017.json',
            img_prefix='data/coco/train2017/',
            pipeline=train_pipeline)))
lr_config = dict(step=[9, 11])
