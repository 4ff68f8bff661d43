"""A tiny shapes detector trained by tools/train.py until it really detects, shared by the tool tests.

The model overfits a handful of shapes images with 1-3 shapes each (val and test are the training
images), so its detections overlap the ground-truth shapes; the checkpoint carries ``meta.CLASSES``
as training saves it. ``trained_model`` trains once per pytest session (the result is kept under the
session's base temporary directory) so several test modules share one model.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import NamedTuple

from .tiny import ROOT

_TEMPLATE = '''_base_ = [{base!r}]
data_root = {data_root!r}
shapes_auto_create = dict(num_train={num_train}, num_val=1, img_size={img_size}, seed=0, min_shapes=1, max_shapes=3)
img_scale = ({img_size}, {img_size})
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', img_scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels']),
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
# the training images are the test images: the model is meant to find the shapes it saw
seen = dict(ann_file=data_root + 'annotations/instances_train.json', img_prefix=data_root + 'train/',
            auto_create=shapes_auto_create)
data = dict(
    samples_per_gpu={samples_per_gpu}, workers_per_gpu=0,
    train=dict(seen, pipeline=train_pipeline),
    val=dict(seen, pipeline=test_pipeline, test_mode=True),
    test=dict(seen, pipeline=test_pipeline, test_mode=True))
optimizer = dict(lr={lr})
optimizer_config = dict(_delete_=True, grad_clip=dict(max_norm=10, norm_type=2))
lr_config = dict(warmup_iters=10, step=[{step}])
runner = dict(_delete_=True, type='EpochBasedRunner', max_epochs={epochs})
log_config = dict(interval=1)
checkpoint_config = dict(interval={epochs})
evaluation = dict(interval={epochs}, metric=['bbox'])
'''


class Trained(NamedTuple):
    folder: str
    config: str
    work_dir: str
    checkpoint: str


def write_trained_config(folder: str, base: str = 'configs/shapes/faster_rcnn_r18_fpn_bf16_shapes.py',
                         epochs: int = 80, num_train: int = 4, img_size: int = 96, lr: float = 0.01,
                         samples_per_gpu: int = 2) -> str:
    """Write ``folder/trained.py``: ``base`` overfitting ``num_train`` shapes images under ``folder/shapes``."""
    text = _TEMPLATE.format(base=os.path.join(ROOT, base), data_root=os.path.join(folder, 'shapes') + '/',
                            num_train=num_train, img_size=img_size, lr=lr, epochs=epochs, step=epochs * 3 // 4,
                            samples_per_gpu=samples_per_gpu)
    path = os.path.join(folder, 'trained.py')
    with open(path, 'w') as f:
        f.write(text)
    return path


def train_shapes_model(folder: str, timeout: float = 600, **kwargs) -> Trained:
    """Train with ``tools/train.py`` into ``folder/work``; reuse it when ``latest.pth`` is there already."""
    work_dir = os.path.join(folder, 'work')
    checkpoint = os.path.join(work_dir, 'latest.pth')
    config = os.path.join(folder, 'trained.py')
    if os.path.exists(checkpoint):
        return Trained(folder, config, work_dir, checkpoint)
    os.makedirs(folder, exist_ok=True)
    write_trained_config(folder, **kwargs)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, 'tools/train.py', config, '--work-dir', work_dir, '--seed', '0'],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, f'training failed\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}'
    return Trained(folder, config, work_dir, checkpoint)


def trained_model(tmp_path_factory) -> Trained:
    """The session's trained model (trained on first use)."""
    return train_shapes_model(os.path.join(str(tmp_path_factory.getbasetemp()), 'trained_shapes'))
