"""Detector results (docs/contracts.md) to COCO result json files."""
from __future__ import annotations

import json
from typing import Union

import numpy as np
import pycocotools.mask as mask_utils


def xyxy2xywh(box: np.ndarray) -> list[float]:
    """[x1, y1, x2, y2, ...] to COCO [x, y, w, h] as Python floats."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    return [x1, y1, x2 - x1, y2 - y1]


def _rle_for_json(segm: Union[dict, np.ndarray]) -> dict:
    if isinstance(segm, np.ndarray):
        rle = mask_utils.encode(np.asfortranarray(segm.astype(np.uint8)))
    else:
        rle = dict(segm)
    if isinstance(rle['counts'], bytes):
        rle['counts'] = rle['counts'].decode('ascii')
    return rle


def det2json(dataset, results: list) -> list[dict]:
    """Box results (per image: C arrays [n, 5]) to COCO dicts with original category ids."""
    out = []
    for idx, per_class in enumerate(results):
        img_id = dataset.img_ids[idx]
        for label, boxes in enumerate(per_class):
            cat_id = dataset.cat_ids[label]
            for box in np.asarray(boxes).reshape(-1, 5):
                out.append({'image_id': img_id, 'bbox': xyxy2xywh(box), 'score': float(box[4]),
                            'category_id': cat_id})
    return out


def segm2json(dataset, results: list) -> tuple[list[dict], list[dict]]:
    """Mask results (per image: (C box arrays, C lists of RLE dicts or bool [h, w] arrays)) to box and
    segm dicts; a mask's score is its box's score (or the given mask scores when segm is a pair)."""
    bbox_json, segm_json = [], []
    for idx, (det, seg) in enumerate(results):
        img_id = dataset.img_ids[idx]
        mask_scores = seg[1] if isinstance(seg, tuple) else None
        segms = seg[0] if isinstance(seg, tuple) else seg
        for label, boxes in enumerate(det):
            cat_id = dataset.cat_ids[label]
            boxes = np.asarray(boxes).reshape(-1, 5)
            if len(segms[label]) != len(boxes):
                raise ValueError(f'image {idx}, class {label}: {len(boxes)} boxes but {len(segms[label])} masks')
            for i, box in enumerate(boxes):
                bbox_json.append({'image_id': img_id, 'bbox': xyxy2xywh(box), 'score': float(box[4]),
                                  'category_id': cat_id})
                score = float(mask_scores[label][i]) if mask_scores is not None else float(box[4])
                segm_json.append({'image_id': img_id, 'bbox': xyxy2xywh(box), 'score': score,
                                  'category_id': cat_id, 'segmentation': _rle_for_json(segms[label][i])})
    return bbox_json, segm_json


def proposal2json(dataset, results: list) -> list[dict]:
    """Proposals (per image one array [n, 5]) to COCO dicts with category_id 1."""
    out = []
    for idx, boxes in enumerate(results):
        img_id = dataset.img_ids[idx]
        for box in np.asarray(boxes).reshape(-1, 5):
            out.append({'image_id': img_id, 'bbox': xyxy2xywh(box), 'score': float(box[4]), 'category_id': 1})
    return out


def results2json(dataset, results: list, outfile_prefix: str) -> dict[str, str]:
    """Write ``{prefix}.bbox.json`` (and ``.segm.json`` for mask results, ``.proposal.json`` for
    proposals); returns ``{'bbox': path, 'proposal': path, 'segm': path}`` for those written."""
    files: dict[str, str] = {}
    if len(results) == 0:
        payloads = {'bbox': []}
    elif isinstance(results[0], tuple):
        bbox_json, segm_json = segm2json(dataset, results)
        payloads = {'bbox': bbox_json, 'segm': segm_json}
    elif isinstance(results[0], list):
        payloads = {'bbox': det2json(dataset, results)}
    elif isinstance(results[0], np.ndarray):
        payloads = {'proposal': proposal2json(dataset, results)}
    else:
        raise TypeError(f'results2json: unknown result type {type(results[0]).__name__}; expected a list of '
                        'class arrays, a (bbox, segm) tuple or a proposal array per image')
    for metric, payload in payloads.items():
        path = f'{outfile_prefix}.{metric}.json'
        with open(path, 'w') as f:
            json.dump(payload, f)
        files[metric] = path
    if 'bbox' in files and 'proposal' not in files:
        files['proposal'] = files['bbox']
    return files
