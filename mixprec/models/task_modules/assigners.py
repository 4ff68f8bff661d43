"""Assign each anchor / proposal to a ground-truth box or to the background."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from mixprec.registry import TASK_UTILS

from .bbox_ops import bbox_overlaps


class AssignResult:
    """Outcome of an assignment for N boxes against ``num_gts`` ground truths.

    Attributes:
        num_gts: number of ground-truth boxes.
        gt_inds: [N] long; 0 = negative, -1 = ignored, k + 1 = matched to gt k.
        max_overlaps: [N] IoU with the best gt.
        labels: [N] long class of the matched gt, -1 where unmatched; None without gt labels.
    """

    def __init__(self, num_gts: int, gt_inds: Tensor, max_overlaps: Tensor,
                 labels: Optional[Tensor] = None) -> None:
        self.num_gts = num_gts
        self.gt_inds = gt_inds
        self.max_overlaps = max_overlaps
        self.labels = labels

    @property
    def num_preds(self) -> int:
        return self.gt_inds.numel()

    def add_gt_(self, gt_labels: Tensor) -> None:
        """Prepend the gt boxes themselves as perfect matches (gt i -> index i, IoU 1)."""
        self_inds = torch.arange(1, len(gt_labels) + 1, dtype=torch.long, device=gt_labels.device)
        self.gt_inds = torch.cat([self_inds, self.gt_inds])
        self.max_overlaps = torch.cat([self.max_overlaps.new_ones(len(gt_labels)), self.max_overlaps])
        if self.labels is not None:
            self.labels = torch.cat([gt_labels, self.labels])

    def __repr__(self) -> str:
        return (f'AssignResult(num_gts={self.num_gts}, num_preds={self.num_preds}, '
                f'num_pos={int((self.gt_inds > 0).sum())}, num_neg={int((self.gt_inds == 0).sum())})')


@TASK_UTILS.register_module()
class MaxIoUAssigner:
    """mmdetection v2's max-IoU assignment.

    1. Every box starts ignored (-1).
    2. Boxes whose best IoU is in [0, neg_iou_thr) (or within a (lo, hi) tuple) become negative (0).
    3. Boxes whose best IoU is >= pos_iou_thr are assigned to that gt.
    4. With ``match_low_quality``, each gt whose best IoU is >= min_pos_iou claims the boxes
       reaching that IoU (all of them with ``gt_max_assign_all``, else the first); a later gt
       overrides an earlier one.
    Boxes overlapping an ignore region (IoF > ``ignore_iof_thr``) get IoU -1 with every gt, so
    they stay ignored.
    """

    def __init__(self, pos_iou_thr: float, neg_iou_thr: Union[float, tuple[float, float]],
                 min_pos_iou: float = .0, gt_max_assign_all: bool = True,
                 ignore_iof_thr: float = -1, ignore_wrt_candidates: bool = True,
                 match_low_quality: bool = True) -> None:
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.gt_max_assign_all = gt_max_assign_all
        self.ignore_iof_thr = ignore_iof_thr
        self.ignore_wrt_candidates = ignore_wrt_candidates
        self.match_low_quality = match_low_quality

    def assign(self, bboxes: Tensor, gt_bboxes: Tensor, gt_bboxes_ignore: Optional[Tensor] = None,
               gt_labels: Optional[Tensor] = None) -> AssignResult:
        """Assign ``bboxes`` [N, 4] (extra columns ignored) to ``gt_bboxes`` [K, 4]."""
        bboxes = bboxes[:, :4].float()
        gt_bboxes = gt_bboxes[:, :4].float()
        overlaps = bbox_overlaps(gt_bboxes, bboxes)
        if (self.ignore_iof_thr > 0 and gt_bboxes_ignore is not None
                and gt_bboxes_ignore.numel() > 0 and bboxes.numel() > 0):
            gt_bboxes_ignore = gt_bboxes_ignore[:, :4].float()
            if self.ignore_wrt_candidates:
                ignore_max = bbox_overlaps(bboxes, gt_bboxes_ignore, mode='iof').max(dim=1).values
            else:
                ignore_max = bbox_overlaps(gt_bboxes_ignore, bboxes, mode='iof').max(dim=0).values
            overlaps[:, ignore_max > self.ignore_iof_thr] = -1
        return self.assign_wrt_overlaps(overlaps, gt_labels)

    def assign_wrt_overlaps(self, overlaps: Tensor, gt_labels: Optional[Tensor] = None) -> AssignResult:
        """Assign from a [K, N] gt-by-box overlap matrix."""
        num_gts, num_bboxes = overlaps.shape
        device = overlaps.device
        assigned = torch.full((num_bboxes,), -1, dtype=torch.long, device=device)
        if num_gts == 0 or num_bboxes == 0:
            max_overlaps = overlaps.new_zeros((num_bboxes,))
            if num_gts == 0:
                assigned.fill_(0)
            labels = None if gt_labels is None else torch.full(
                (num_bboxes,), -1, dtype=torch.long, device=device)
            return AssignResult(num_gts, assigned, max_overlaps, labels)

        max_overlaps, argmax_overlaps = overlaps.max(dim=0)
        gt_max_overlaps, gt_argmax_overlaps = overlaps.max(dim=1)

        if isinstance(self.neg_iou_thr, (tuple, list)):
            lo, hi = self.neg_iou_thr
            assigned[(max_overlaps >= lo) & (max_overlaps < hi)] = 0
        else:
            assigned[(max_overlaps >= 0) & (max_overlaps < self.neg_iou_thr)] = 0

        pos = max_overlaps >= self.pos_iou_thr
        assigned[pos] = argmax_overlaps[pos] + 1

        if self.match_low_quality:
            eligible = gt_max_overlaps >= self.min_pos_iou
            if self.gt_max_assign_all:
                claims = (overlaps == gt_max_overlaps[:, None]) & eligible[:, None]
            else:
                claims = torch.zeros_like(overlaps, dtype=torch.bool)
                claims[torch.arange(num_gts, device=device), gt_argmax_overlaps] = eligible
            gt_ids = torch.arange(1, num_gts + 1, device=device)[:, None]
            claimer = (claims.long() * gt_ids).max(dim=0).values
            assigned = torch.where(claimer > 0, claimer, assigned)

        labels = None
        if gt_labels is not None:
            labels = torch.full((num_bboxes,), -1, dtype=torch.long, device=device)
            matched = assigned > 0
            labels[matched] = gt_labels[assigned[matched] - 1].long()
        return AssignResult(num_gts, assigned, max_overlaps, labels)
