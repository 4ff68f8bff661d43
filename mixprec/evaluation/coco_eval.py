"""COCO evaluation of detector results through COCOeval, returning mmdetection v2 keys.

The evaluator is faster-coco-eval's C++ ``COCOeval_faster`` when that package is installed (the
``eval`` extra; same matching and the same 12 numbers, several times faster), else pycocotools'
Python ``COCOeval``. ``MIXPREC_COCO_EVAL=pycocotools`` (or ``backend='pycocotools'``) forces the
fallback; ``faster_coco_eval`` requires the package.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import os
import os.path as osp
import tempfile
from collections import OrderedDict
from typing import Optional, Sequence, Union

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .logging_utils import LoggerLike, ascii_table, print_log
from .recall import eval_recalls
from .results_json import results2json

METRICS = ('bbox', 'segm', 'proposal', 'proposal_fast')
STAT_INDEX = {'mAP': 0, 'mAP_50': 1, 'mAP_75': 2, 'mAP_s': 3, 'mAP_m': 4, 'mAP_l': 5, 'AR@100': 6,
              'AR@300': 7, 'AR@1000': 8, 'AR_s@1000': 9, 'AR_m@1000': 10, 'AR_l@1000': 11}
DET_ITEMS = ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')
PROPOSAL_ITEMS = ('AR@100', 'AR@300', 'AR@1000', 'AR_s@1000', 'AR_m@1000', 'AR_l@1000')
BACKENDS = ('auto', 'faster_coco_eval', 'pycocotools')
BACKEND_ENV = 'MIXPREC_COCO_EVAL'


def resolve_backend(backend: Optional[str] = None) -> str:
    """``'faster_coco_eval'`` or ``'pycocotools'``: the argument, else ``$MIXPREC_COCO_EVAL``, else
    faster-coco-eval when it is installed."""
    name = backend or os.environ.get(BACKEND_ENV) or 'auto'
    if name not in BACKENDS:
        source = f'{BACKEND_ENV}={name!r}' if backend is None else f'backend={name!r}'
        raise ValueError(f'{source}: expected one of {BACKENDS}')
    installed = importlib.util.find_spec('faster_coco_eval') is not None
    if name == 'faster_coco_eval' and not installed:
        raise ImportError('COCO evaluation backend faster_coco_eval: the package is not installed '
                          '(pip install faster-coco-eval, or pip install mixprec[eval])')
    if name == 'auto':
        return 'faster_coco_eval' if installed else 'pycocotools'
    return name


def _coco_api(backend: str) -> tuple[type, type]:
    """(COCO class, COCOeval class) of ``backend``; the ground truth is rebuilt in the backend's
    own COCO class (faster-coco-eval reads its own index)."""
    if backend == 'faster_coco_eval':
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster

        def make_eval(coco_gt, coco_det, iou_type):
            return COCOeval_faster(coco_gt, coco_det, iou_type, print_function=print)
        return FasterCOCO, make_eval
    return COCO, COCOeval


def format_results(dataset, results: list, jsonfile_prefix: Optional[str] = None):
    """Write result json files under ``jsonfile_prefix`` (or a temp dir, returned so the caller can
    clean it up): ``(files_by_metric, tmp_dir_or_None)``."""
    if not isinstance(results, list):
        raise TypeError(f'results must be a list (one entry per image), got {type(results).__name__}')
    if len(results) != len(dataset):
        raise ValueError(f'{len(results)} results for a dataset of {len(dataset)} images')
    tmp_dir = None
    if jsonfile_prefix is None:
        tmp_dir = tempfile.TemporaryDirectory()
        jsonfile_prefix = osp.join(tmp_dir.name, 'results')
    return results2json(dataset, results, jsonfile_prefix), tmp_dir


def _load_predictions(coco_gt, path: str, iou_type: str, coco_cls: type = COCO):
    with open(path) as f:
        predictions = json.load(f)
    if iou_type == 'segm':
        for p in predictions:
            p.pop('bbox', None)
    if not predictions:
        empty = coco_cls()
        empty.dataset = {'images': copy.deepcopy(coco_gt.dataset['images']),
                         'categories': copy.deepcopy(coco_gt.dataset['categories']), 'annotations': []}
        with contextlib.redirect_stdout(io.StringIO()):
            empty.createIndex()
        return empty
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(predictions)


def _classwise_table(coco_gt: COCO, coco_eval: COCOeval, cat_ids: Sequence[int]) -> str:
    precisions = coco_eval.eval['precision']
    cells = []
    for idx, cat_id in enumerate(cat_ids):
        p = precisions[:, :, idx, 0, -1]
        p = p[p > -1]
        ap = float(np.mean(p)) if p.size else float('nan')
        cells += [coco_gt.loadCats(cat_id)[0]['name'], f'{ap:0.3f}']
    columns = min(6, len(cells))
    cells += [''] * (-len(cells) % columns)
    header = ['category', 'AP'] * (columns // 2)
    return ascii_table([header] + [cells[i:i + columns] for i in range(0, len(cells), columns)])


def fast_recall(dataset, results: list, proposal_nums: Sequence[int], iou_thrs, logger: LoggerLike = None) -> dict:
    """``AR@n`` from :func:`eval_recalls` against the non-crowd boxes of ``dataset.get_ann_info``."""
    gts = [dataset.get_ann_info(i)['bboxes'] for i in range(len(dataset))]
    proposals = [r if isinstance(r, np.ndarray) else np.concatenate(r[0] if isinstance(r, tuple) else r)
                 for r in results]
    recalls = eval_recalls(gts, proposals, proposal_nums, iou_thrs)
    ar = recalls.mean(axis=1)
    print_log(ascii_table([['', *map(str, np.round(np.asarray(iou_thrs), 2))]] +
                          [[str(n), *(f'{v:.3f}' for v in row)] for n, row in zip(proposal_nums, recalls)]), logger)
    return {f'AR@{n}': float(f'{v:.4f}') for n, v in zip(proposal_nums, ar)}


def evaluate_coco(dataset, results: list, metric: Union[str, Sequence[str]] = 'bbox', logger: LoggerLike = None,
                  jsonfile_prefix: Optional[str] = None, classwise: bool = False,
                  proposal_nums: Sequence[int] = (100, 300, 1000), iou_thrs=None,
                  metric_items: Union[str, Sequence[str], None] = None, backend: Optional[str] = None) -> dict:
    """Evaluate ``results`` against ``dataset.coco`` (images ``dataset.img_ids``, categories ``dataset.cat_ids``).

    Returns mmdetection v2's keys rounded to 3 decimals: ``{metric}_mAP ... {metric}_mAP_l`` and
    ``{metric}_mAP_copypaste`` for 'bbox'/'segm', ``AR@100 ... AR_l@1000`` for 'proposal',
    ``AR@n`` (mean recall over ``iou_thrs``, greedy matching) for 'proposal_fast'.
    COCOeval's table is logged; with ``classwise`` also the per-class AP table. Empty results give
    COCOeval's values (0 where there is ground truth, -1 where there is none), not an error.
    ``backend``: see :func:`resolve_backend`.
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise KeyError(f'metric {unknown[0]!r} is not supported; choose from {METRICS}')
    if iou_thrs is None:
        iou_thrs = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
    if isinstance(metric_items, str):
        metric_items = [metric_items]
    coco_cls, coco_eval_cls = _coco_api(resolve_backend(backend))
    result_files, tmp_dir = format_results(dataset, results, jsonfile_prefix)
    coco_gt = dataset.coco
    if coco_cls is not COCO and any(m != 'proposal_fast' for m in metrics):
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = coco_cls(copy.deepcopy(dataset.coco.dataset))
    eval_results: dict = OrderedDict()
    try:
        for name in metrics:
            print_log(f'Evaluating {name}...', logger)
            if name == 'proposal_fast':
                eval_results.update(fast_recall(dataset, results, proposal_nums, iou_thrs, logger))
                continue
            iou_type = 'bbox' if name == 'proposal' else name
            if name not in result_files:
                raise KeyError(f'metric {name!r}: the results hold no {name} entries '
                               f'(have {sorted(result_files)})')
            coco_det = _load_predictions(coco_gt, result_files[name], iou_type, coco_cls)
            coco_eval = coco_eval_cls(coco_gt, coco_det, iou_type)
            coco_eval.params.catIds = list(dataset.cat_ids)
            coco_eval.params.imgIds = list(dataset.img_ids)
            coco_eval.params.maxDets = list(proposal_nums)
            coco_eval.params.iouThrs = np.asarray(iou_thrs)
            if name == 'proposal':
                coco_eval.params.useCats = 0
            with contextlib.redirect_stdout(io.StringIO()):
                coco_eval.evaluate()
                coco_eval.accumulate()
            summary = io.StringIO()
            with contextlib.redirect_stdout(summary):
                coco_eval.summarize()
            print_log('\n' + summary.getvalue(), logger)
            if name == 'proposal':
                for item in metric_items or PROPOSAL_ITEMS:
                    eval_results[item] = float(f'{coco_eval.stats[STAT_INDEX[item]]:.3f}')
                continue
            if classwise:
                print_log('\n' + _classwise_table(coco_gt, coco_eval, dataset.cat_ids), logger)
            for item in metric_items or DET_ITEMS:
                eval_results[f'{name}_{item}'] = float(f'{coco_eval.stats[STAT_INDEX[item]]:.3f}')
            ap = coco_eval.stats[:6]
            eval_results[f'{name}_mAP_copypaste'] = ' '.join(f'{v:.3f}' for v in ap)
    finally:
        if tmp_dir is not None:
            tmp_dir.cleanup()
    return eval_results
