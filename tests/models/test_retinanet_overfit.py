"""RetinaNet overfits a handful of synthetic images and then finds their boxes (AP50 > 0.9)."""
import numpy as np
import pytest
import torch

import mixprec.models  # noqa: F401  (registers the models)
from helpers.cpu import skip_unless_native_bf16
from mixprec.fp16 import wrap_fp16_model
from mixprec.models.task_modules import bbox_overlaps
from mixprec.registry import MODELS

NUM_CLASSES = 3
COLOURS = torch.tensor([[2.0, -1.0, -1.0], [-1.0, 2.0, -1.0], [-1.0, -1.0, 2.0]])  # class -> RGB offset


def synthetic_batch(num_imgs=4, size=128, seed=0):
    """Noise images with 1-3 axis-aligned rectangles; the class is the rectangle's colour."""
    gen = torch.Generator().manual_seed(seed)
    imgs = torch.randn(num_imgs, 3, size, size, generator=gen) * 0.5
    gt_bboxes, gt_labels = [], []
    for i in range(num_imgs):
        boxes, labels = [], []
        count = int(torch.randint(1, 4, (1,), generator=gen))
        for _ in range(100):
            if len(boxes) == count:
                break
            w, h = (int(v) for v in torch.randint(24, 64, (2,), generator=gen))
            x1 = int(torch.randint(0, size - w, (1,), generator=gen))
            y1 = int(torch.randint(0, size - h, (1,), generator=gen))
            box = torch.tensor([[x1, y1, x1 + w, y1 + h]], dtype=torch.float32)
            if boxes and bbox_overlaps(box, torch.cat(boxes)).max() > 0.1:
                continue
            label = int(torch.randint(0, NUM_CLASSES, (1,), generator=gen))
            imgs[i, :, y1:y1 + h, x1:x1 + w] += COLOURS[label][:, None, None]
            boxes.append(box)
            labels.append(label)
        gt_bboxes.append(torch.cat(boxes))
        gt_labels.append(torch.tensor(labels))
    metas = [dict(img_shape=(size, size, 3), pad_shape=(size, size, 3), ori_shape=(size, size, 3),
                  scale_factor=np.ones(4, dtype=np.float32), flip=False) for _ in range(num_imgs)]
    return imgs, metas, gt_bboxes, gt_labels


def ap50(results, gt_bboxes, gt_labels):
    """Mean over classes of the all-point interpolated AP at IoU 0.5 (VOC/COCO style matching)."""
    aps = []
    for c in range(NUM_CLASSES):
        dets = [(i, d) for i, res in enumerate(results) for d in res[c]]
        dets.sort(key=lambda x: -x[1][4])
        gts = {i: gt_bboxes[i][gt_labels[i] == c] for i in range(len(results))}
        num_gt = sum(len(g) for g in gts.values())
        if num_gt == 0:
            continue
        used = {i: torch.zeros(len(g), dtype=torch.bool) for i, g in gts.items()}
        tp = []
        for i, d in dets:
            if len(gts[i]) == 0:
                tp.append(0)
                continue
            ious = bbox_overlaps(torch.from_numpy(d[None, :4]), gts[i])[0]
            ious[used[i]] = -1
            best = int(ious.argmax())
            hit = ious[best] >= 0.5
            used[i][best] |= bool(hit)
            tp.append(int(hit))
        tp = np.array(tp, dtype=np.float64)
        recall = np.concatenate([[0.], np.cumsum(tp) / num_gt, [1.]])
        precision = np.concatenate([[1.], np.cumsum(tp) / np.arange(1, len(tp) + 1), [0.]])
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        aps.append(float(np.sum((recall[1:] - recall[:-1]) * precision[1:])))
    return float(np.mean(aps))


def build_model():
    return MODELS.build(dict(
        type='RetinaNet',
        backbone=dict(type='ResNet', depth=18, base_channels=16, out_indices=(1, 2, 3), frozen_stages=-1,
                      norm_eval=False),
        neck=dict(type='FPN', in_channels=[32, 64, 128], out_channels=64, add_extra_convs='on_input', num_outs=5),
        bbox_head=dict(type='RetinaHead', num_classes=NUM_CLASSES, in_channels=64, stacked_convs=2, feat_channels=64),
        train_cfg=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                                     ignore_iof_thr=-1), allowed_border=-1, pos_weight=-1),
        test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5),
                      max_per_img=100)))


def overfit(model, iters):
    imgs, metas, gt_bboxes, gt_labels = synthetic_batch()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9,
                                weight_decay=1e-4)
    model.train()
    for _ in range(iters):
        losses = model(imgs, metas, gt_bboxes=gt_bboxes, gt_labels=gt_labels)
        loss = sum(sum(v) for v in losses.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        results = model(return_loss=False, img=[imgs], img_metas=[metas])
    return ap50(results, gt_bboxes, gt_labels), loss.item()


def test_ap50_of_ground_truth_is_one():
    _, _, gt_bboxes, gt_labels = synthetic_batch()
    results = [[np.concatenate([b[l == c].numpy(), np.ones((int((l == c).sum()), 1))], axis=1).astype(np.float32)
                for c in range(NUM_CLASSES)] for b, l in zip(gt_bboxes, gt_labels)]
    assert ap50(results, gt_bboxes, gt_labels) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize('precision', ['fp32', 'bf16-autocast'])
def test_retinanet_overfits_synthetic_boxes(precision, one_thread):
    if precision != 'fp32':
        skip_unless_native_bf16('bf16-autocast overfitting')
    torch.manual_seed(0)
    model = build_model()
    if precision == 'bf16-autocast':
        wrap_fp16_model(model, dtype=torch.bfloat16, mode='autocast')
    score, loss = overfit(model, iters=100)
    assert score > 0.9, f'{precision}: AP50 {score:.3f} after overfitting (last loss {loss:.3f})'
