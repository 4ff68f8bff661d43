"""Data and evaluation speed: training pipeline images/s in one worker, and COCO bbox evaluation time.

    python tools/analysis_tools/benchmark_data.py [--pipeline-images 40] [--eval-images 5000] [--dets 100]
        [--eval-backends pycocotools faster_coco_eval] [--skip-pipeline]

1. Shapes images (generated in a temp dir) through the mmdetection v2 training pipeline at
   img_scale (1333, 800), box-only and with masks, in the calling process (= one loader worker).
2. A synthetic COCO file (80 classes, --eval-images images) and a results list of --dets boxes
   per image (jittered ground truth plus random boxes), evaluated with CocoDataset.evaluate by
   each COCOeval backend in turn (wall and process CPU time; the machine may be shared).
"""
import argparse
import json
import os
import os.path as osp
import tempfile
import time

import numpy as np

from mixprec.data import COCO_CLASSES, CocoDataset, ShapesDataset, make_shapes_dataset
from mixprec.evaluation.coco_eval import BACKEND_ENV

NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)


def train_pipeline(with_mask: bool) -> list:
    keys = ['img', 'gt_bboxes', 'gt_labels'] + (['gt_masks'] if with_mask else [])
    return [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=with_mask),
            dict(type='Resize', img_scale=(1333, 800), keep_ratio=True), dict(type='RandomFlip', flip_ratio=0.5),
            dict(type='Normalize', **NORM), dict(type='Pad', size_divisor=32), dict(type='DefaultFormatBundle'),
            dict(type='Collect', keys=keys)]


def bench_pipeline(root: str, num_images: int, img_size: int) -> None:
    make_shapes_dataset(root, num_train=num_images, num_val=0, img_size=img_size, seed=0)
    for with_mask in (False, True):
        ds = ShapesDataset(osp.join(root, 'annotations/instances_train.json'), train_pipeline(with_mask),
                           img_prefix=osp.join(root, 'train'))
        ds[0]
        start = time.perf_counter()
        for i in range(len(ds)):
            sample = ds[i]
        elapsed = time.perf_counter() - start
        print(f'train pipeline ({"bbox+mask" if with_mask else "bbox"}), {img_size}px shapes -> '
              f'{tuple(sample["img"].shape[1:])}: {len(ds) / elapsed:.1f} images/s per worker '
              f'({1000 * elapsed / len(ds):.1f} ms/image)')


def synthetic_coco(num_images: int, rng: np.random.Generator) -> tuple[dict, list]:
    images, anns, gts = [], [], []
    for img_id in range(1, num_images + 1):
        w, h = 640, 480
        images.append(dict(id=img_id, file_name=f'{img_id:012d}.jpg', width=w, height=h))
        n = int(rng.integers(1, 15))
        xy = rng.uniform(0, [w - 20, h - 20], size=(n, 2))
        wh = rng.uniform(8, 200, size=(n, 2))
        wh = np.minimum(wh, [w, h] - xy)
        cats = rng.integers(1, 81, size=n)
        for (x, y), (bw, bh), c in zip(xy, wh, cats):
            anns.append(dict(id=len(anns) + 1, image_id=img_id, category_id=int(c), bbox=[x, y, bw, bh],
                             area=float(bw * bh), iscrowd=0))
        gts.append((np.concatenate([xy, xy + wh], axis=1), cats - 1))
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(COCO_CLASSES)]
    return dict(images=images, annotations=anns, categories=categories), gts


def synthetic_results(gts: list, dets: int, rng: np.random.Generator) -> list:
    results = []
    for boxes, labels in gts:
        jitter = boxes + rng.normal(0, 4, size=boxes.shape)
        extra = dets - len(boxes)
        xy = rng.uniform(0, [600, 440], size=(extra, 2))
        rand = np.concatenate([xy, xy + rng.uniform(8, 150, size=(extra, 2))], axis=1)
        all_boxes = np.concatenate([jitter, rand])
        all_labels = np.concatenate([labels, rng.integers(0, 80, size=extra)])
        scores = np.concatenate([rng.uniform(0.5, 1, len(boxes)), rng.uniform(0.05, 0.6, extra)])
        dets_arr = np.concatenate([all_boxes, scores[:, None]], axis=1).astype(np.float32)
        results.append([dets_arr[all_labels == c] for c in range(80)])
    return results


def bench_eval(root: str, num_images: int, dets: int, backends: list[str]) -> None:
    rng = np.random.default_rng(0)
    coco, gts = synthetic_coco(num_images, rng)
    path = osp.join(root, 'synthetic_coco.json')
    with open(path, 'w') as f:
        json.dump(coco, f)
    ds = CocoDataset(path, [], test_mode=True)
    results = synthetic_results(gts, dets, rng)
    times = {}
    for backend in backends:
        os.environ[BACKEND_ENV] = backend
        start, cpu = time.perf_counter(), time.process_time()
        out = ds.evaluate(results, metric='bbox', logger='silent')
        times[backend] = (time.perf_counter() - start, time.process_time() - cpu)
        print(f'bbox evaluation ({backend}), {num_images} images x {dets} boxes ({len(coco["annotations"])} GT): '
              f'{times[backend][0]:.1f} s wall, {times[backend][1]:.1f} s CPU (results2json + COCOeval '
              f'evaluate/accumulate/summarize); bbox_mAP {out["bbox_mAP"]}')
    if len(times) > 1:
        (a, ta), (b, tb) = list(times.items())[:2]
        print(f'{b} / {a}: {tb[0] / ta[0]:.3f} wall, {tb[1] / ta[1]:.3f} CPU')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--pipeline-images', type=int, default=40)
    parser.add_argument('--img-size', type=int, default=640, help='long side of the generated shapes images')
    parser.add_argument('--eval-images', type=int, default=5000)
    parser.add_argument('--dets', type=int, default=100)
    parser.add_argument('--eval-backends', nargs='+', default=['pycocotools', 'faster_coco_eval'],
                        choices=['pycocotools', 'faster_coco_eval'])
    parser.add_argument('--skip-pipeline', action='store_true')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        if not args.skip_pipeline:
            bench_pipeline(osp.join(root, 'shapes'), args.pipeline_images, args.img_size)
        bench_eval(root, args.eval_images, args.dets, args.eval_backends)


if __name__ == '__main__':
    main()
