"""Synthetic shapes images held in memory (red rectangles and green discs on noise) and the AP50 of a
detector's results on them, computed here independently of mixprec's evaluation."""
import numpy as np
import torch


COLOURS = {0: (2.0, -1.0, -1.0), 1: (-1.0, 2.0, -1.0)}  # normalised RGB: red rectangles, green discs


def make_shapes(num_images: int = 4, size: int = 128, seed: int = 0):
    """Images [n, 3, size, size] with 2-4 objects each (classes alternating), one per 64 x 64 cell.

    Returns:
        img, per image gt boxes [g, 4] (tight around the mask), labels [g], masks [g, size, size] uint8.
    """
    rng = np.random.default_rng(seed)
    img = rng.normal(0.0, 0.2, size=(num_images, 3, size, size)).astype(np.float32)
    ys, xs = np.mgrid[0:size, 0:size]
    boxes, labels, masks = [], [], []
    for i in range(num_images):
        cells = rng.permutation(4)[:rng.integers(2, 5)]
        img_boxes, img_labels, img_masks = [], [], []
        for k, cell in enumerate(cells):
            cx0, cy0 = 64 * (cell % 2), 64 * (cell // 2)
            label = (k + i) % 2
            w, h = rng.integers(24, 52, size=2)
            x1, y1 = cx0 + rng.integers(4, 60 - w + 1), cy0 + rng.integers(4, 60 - h + 1)
            if label == 0:
                mask = (xs >= x1) & (xs < x1 + w) & (ys >= y1) & (ys < y1 + h)
            else:
                r = min(w, h) / 2
                mask = (xs + 0.5 - (x1 + r)) ** 2 + (ys + 0.5 - (y1 + r)) ** 2 <= r * r
            img[i][:, mask] = np.array(COLOURS[label], dtype=np.float32)[:, None]
            py, px = np.nonzero(mask)
            img_boxes.append([px.min(), py.min(), px.max() + 1, py.max() + 1])
            img_labels.append(label)
            img_masks.append(mask)
        boxes.append(torch.tensor(img_boxes, dtype=torch.float32))
        labels.append(torch.tensor(img_labels))
        masks.append(torch.from_numpy(np.stack(img_masks).astype(np.uint8)))
    return torch.from_numpy(img), boxes, labels, masks


def shapes_metas(img: torch.Tensor) -> list[dict]:
    """Meta dicts of the square, unresized and unpadded images [n, 3, s, s] of :func:`make_shapes`."""
    size = img.shape[-1]
    return [dict(img_shape=(size, size, 3), ori_shape=(size, size, 3), pad_shape=(size, size, 3),
                 scale_factor=np.ones(4, dtype=np.float32), flip=False) for _ in range(len(img))]


def average_precision_50(dets_per_image, gts_per_image, num_classes, iou):
    """Mean over classes of the all-point interpolated AP at IoU 0.5 (VOC 2010 style).

    Args:
        dets_per_image: per image, per class a list of (score, item) detections.
        gts_per_image: per image, per class a list of gt items.
        iou: ``iou(item, gt_items) -> np.ndarray`` of overlaps.
    """
    aps = []
    for c in range(num_classes):
        num_gt = sum(len(g[c]) for g in gts_per_image)
        if num_gt == 0:
            continue
        dets = sorted(((score, i, item) for i, d in enumerate(dets_per_image) for score, item in d[c]),
                      key=lambda t: -t[0])
        matched = [np.zeros(len(g[c]), dtype=bool) for g in gts_per_image]
        tp = np.zeros(len(dets))
        for k, (_, i, item) in enumerate(dets):
            gts = gts_per_image[i][c]
            if not gts:
                continue
            overlaps = iou(item, gts)
            j = int(np.argmax(overlaps))
            if overlaps[j] >= 0.5 and not matched[i][j]:
                matched[i][j] = True
                tp[k] = 1
        recall = np.concatenate([[0.0], np.cumsum(tp) / num_gt, [1.0]])
        precision = np.concatenate([[1.0], np.cumsum(tp) / np.arange(1, len(dets) + 1), [0.0]])
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        aps.append(float(np.sum((recall[1:] - recall[:-1]) * precision[1:])))
    return float(np.mean(aps))


def box_iou(box, gts):
    gts = np.asarray(gts)
    w = np.clip(np.minimum(box[2], gts[:, 2]) - np.maximum(box[0], gts[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], gts[:, 3]) - np.maximum(box[1], gts[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    return inter / (area + (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1]) - inter)


def mask_iou(mask, gts):
    return np.array([(mask & g).sum() / max((mask | g).sum(), 1) for g in gts])


def box_ap50(bbox_results, boxes, labels):
    dets = [[[(float(d[4]), d[:4]) for d in per_class] for per_class in r] for r in bbox_results]
    gts = [[b[l == c].numpy() for c in range(2)] for b, l in zip(boxes, labels)]
    gts = [[list(g) for g in per_image] for per_image in gts]
    return average_precision_50(dets, gts, 2, box_iou)


def mask_ap50(results, masks, labels):
    """Mask AP50 of Mask R-CNN ``(bbox, segm)`` results against the gt masks of :func:`make_shapes`."""
    dets = [[[(float(b[4]), m) for b, m in zip(bc, mc)] for bc, mc in zip(*r)] for r in results]
    gts = [[list(m[l == c].bool().numpy()) for c in range(2)] for m, l in zip(masks, labels)]
    return average_precision_50(dets, gts, 2, mask_iou)
