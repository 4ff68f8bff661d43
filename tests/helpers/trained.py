"""A tiny shapes detector trained by tools/train.py until it really detects, shared by the tool tests.

The model overfits a handful of shapes images with 1-3 shapes each (val and test are the training
images), so its detections overlap the ground-truth shapes; the checkpoint carries ``meta.CLASSES``
as training saves it. ``trained_model`` trains once per pytest session (the result is kept under the
session's base temporary directory) so several test modules share one model.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest
import torch

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
    """The session's trained model (trained on first use; ``MIXPREC_TEST_TRAINED=DIR`` keeps it in DIR across
    sessions, for working on these tests)."""
    folder = os.environ.get('MIXPREC_TEST_TRAINED') or os.path.join(str(tmp_path_factory.getbasetemp()), 'trained_shapes')
    return train_shapes_model(folder)


def gt_instances(trained: Trained) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Per training image: (path, boxes [n, 4] x1 y1 x2 y2, labels [n] 0..C-1), crowd regions left out."""
    with open(os.path.join(trained.folder, 'shapes', 'annotations', 'instances_train.json')) as f:
        coco = json.load(f)
    label_of = {c['id']: i for i, c in enumerate(sorted(coco['categories'], key=lambda c: c['id']))}
    out = []
    for image in coco['images']:
        anns = [a for a in coco['annotations'] if a['image_id'] == image['id'] and not a['iscrowd']]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)], dtype=np.float32)
        labels = np.array([label_of[a['category_id']] for a in anns], dtype=np.int64)
        out.append((os.path.join(trained.folder, 'shapes', 'train', image['file_name']), boxes.reshape(-1, 4), labels))
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of x1 y1 x2 y2 boxes (computed here, independent of the package)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None] - inter)


def found_fraction(results: list, gts: list, score_thr: float = 0.3, iou_thr: float = 0.5) -> float:
    """Share of ground-truth shapes with a same-class detection above ``score_thr`` at IoU > ``iou_thr``."""
    found = total = 0
    for result, (_, boxes, labels) in zip(results, gts):
        for box, label in zip(boxes, labels):
            dets = result[label][result[label][:, 4] > score_thr]
            total += 1
            found += bool(len(dets)) and float(box_iou(box[None], dets[:, :4]).max()) > iou_thr
    return found / max(total, 1)


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> Trained:
    """Fixture: the session's trained model (import it into a test module)."""
    return trained_model(tmp_path_factory)


@pytest.fixture(scope='module')
def model(trained):
    """Fixture: the trained detector from ``init_detector`` on the CPU (bf16, as trained)."""
    from mixprec.apis import init_detector
    return init_detector(trained.config, trained.checkpoint, device='cpu')


@pytest.fixture(scope='module')
def reference(model, trained) -> list:
    """Fixture: per training image, the result ``inference_detector`` computes here (one thread)."""
    from mixprec.apis import inference_detector
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [inference_detector(model, path) for path, _, _ in gt_instances(trained)]
    finally:
        torch.set_num_threads(threads)
