"""Evaluation: detector results to COCO json, and COCOeval with mmdetection v2's metric keys."""
from .coco_eval import evaluate_coco, fast_recall, format_results
from .logging_utils import ascii_table, print_log
from .recall import bbox_overlaps, eval_recalls
from .results_json import det2json, proposal2json, results2json, segm2json, xyxy2xywh

__all__ = ['evaluate_coco', 'fast_recall', 'format_results', 'bbox_overlaps', 'eval_recalls', 'ascii_table',
           'print_log', 'det2json', 'proposal2json', 'results2json', 'segm2json', 'xyxy2xywh']
