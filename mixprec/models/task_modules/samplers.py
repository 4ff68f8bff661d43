"""Choose which assigned boxes take part in the loss."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mixprec.registry import TASK_UTILS, ConfigError

from .assigners import AssignResult


class SamplingResult:
    """Positive and negative boxes picked by a sampler.

    Attributes:
        pos_inds [P], neg_inds [Q]: indices into ``bboxes`` as the sampler saw them (gt boxes first
            when they were added as proposals).
        pos_bboxes [P, 4], neg_bboxes [Q, 4], pos_gt_bboxes [P, 4], pos_gt_labels [P] or None,
        pos_assigned_gt_inds [P] (0-based gt index), pos_is_gt [P] uint8, num_gts.
        bboxes: [P + Q, 4], positives first.
    """

    def __init__(self, pos_inds: Tensor, neg_inds: Tensor, bboxes: Tensor, gt_bboxes: Tensor,
                 assign_result: AssignResult, gt_flags: Tensor) -> None:
        self.pos_inds = pos_inds
        self.neg_inds = neg_inds
        self.pos_bboxes = bboxes[pos_inds]
        self.neg_bboxes = bboxes[neg_inds]
        self.pos_is_gt = gt_flags[pos_inds]
        self.num_gts = gt_bboxes.shape[0]
        self.pos_assigned_gt_inds = assign_result.gt_inds[pos_inds] - 1
        if gt_bboxes.numel() == 0:
            self.pos_gt_bboxes = gt_bboxes.new_zeros((0, 4))
        else:
            self.pos_gt_bboxes = gt_bboxes.view(-1, 4)[self.pos_assigned_gt_inds]
        self.pos_gt_labels = (assign_result.labels[pos_inds]
                              if assign_result.labels is not None else None)

    @property
    def bboxes(self) -> Tensor:
        return torch.cat([self.pos_bboxes, self.neg_bboxes])

    def __repr__(self) -> str:
        return (f'SamplingResult(num_pos={self.pos_inds.numel()}, num_neg={self.neg_inds.numel()}, '
                f'num_gts={self.num_gts})')


@TASK_UTILS.register_module()
class RandomSampler:
    """Sample ``num`` boxes, at most ``num * pos_fraction`` positives, the rest negatives.

    Random choices use ``torch.randperm`` (torch's global generator), so runs are reproducible
    under ``torch.manual_seed``. Indices are returned sorted.

    Args:
        num: boxes per image.
        pos_fraction: upper bound of the positive share.
        neg_pos_ub: negatives at most ``neg_pos_ub * max(1, num_pos)`` (-1: no bound).
        add_gt_as_proposals: prepend the gt boxes to the candidates.
    """

    def __init__(self, num: int, pos_fraction: float, neg_pos_ub: float = -1,
                 add_gt_as_proposals: bool = True) -> None:
        self.num = num
        self.pos_fraction = pos_fraction
        self.neg_pos_ub = neg_pos_ub
        self.add_gt_as_proposals = add_gt_as_proposals

    needs_context = False

    @staticmethod
    def random_choice(gallery: Tensor, num: int) -> Tensor:
        perm = torch.randperm(gallery.numel(), device=gallery.device)[:num]
        return gallery[perm]

    def _sample(self, candidates: Tensor, num_expected: int, bboxes: Tensor, labels: Optional[Tensor],
                feats: Optional[list] = None) -> Tensor:
        """Indices of at most ``num_expected`` of the ``candidates`` (bool [N]) rows, at random.

        ``bboxes`` [N, 4], ``labels`` [N] (None for negatives) and ``feats`` serve loss-based
        subclasses (:class:`OHEMSampler`)."""
        inds = torch.nonzero(candidates, as_tuple=False).squeeze(1)
        if inds.numel() > num_expected:
            inds = self.random_choice(inds, num_expected)
        return inds

    def sample(self, assign_result: AssignResult, bboxes: Tensor, gt_bboxes: Tensor,
               gt_labels: Optional[Tensor] = None, feats: Optional[list] = None) -> SamplingResult:
        """Sample from ``bboxes`` [N, 4] (extra columns dropped); may modify ``assign_result``.

        ``feats``: per level [1, C, H, W] features of this image, for loss-based samplers."""
        bboxes = bboxes.view(-1, bboxes.size(-1))[:, :4]
        gt_flags = bboxes.new_zeros((bboxes.shape[0],), dtype=torch.uint8)
        if self.add_gt_as_proposals and len(gt_bboxes) > 0:
            if gt_labels is None:
                raise ValueError(f'{type(self).__name__} with add_gt_as_proposals needs gt_labels')
            bboxes = torch.cat([gt_bboxes[:, :4].to(bboxes.dtype), bboxes], dim=0)
            assign_result.add_gt_(gt_labels)
            gt_flags = torch.cat([gt_flags.new_ones(gt_bboxes.shape[0]), gt_flags])

        num_expected_pos = int(self.num * self.pos_fraction)
        pos_inds = self._sample(assign_result.gt_inds > 0, num_expected_pos, bboxes, assign_result.labels,
                                feats).unique()
        num_expected_neg = self.num - pos_inds.numel()
        if self.neg_pos_ub >= 0:
            num_expected_neg = min(num_expected_neg, int(self.neg_pos_ub * max(1, pos_inds.numel())))
        neg_inds = self._sample(assign_result.gt_inds == 0, num_expected_neg, bboxes, None, feats).unique()
        return SamplingResult(pos_inds, neg_inds, bboxes, gt_bboxes, assign_result, gt_flags)


@TASK_UTILS.register_module()
class OHEMSampler(RandomSampler):
    """Online hard example mining (Shrivastava et al., 2016), mmdetection v2's OHEMSampler.

    Where more positives (or negatives) are available than wanted, those with the highest
    classification loss of the current R-CNN box head are kept (positives against their gt label,
    negatives against background), computed without gradient on this image's features.

    Args:
        context: the RoI head (``_bbox_forward(feats, rois)`` and ``bbox_head``), passed by it.
        loss_key: the loss that ranks the boxes; only 'loss_cls' (the box head's classification
            loss, as mmdetection computes it with ``bbox_pred=None``).
        num, pos_fraction, neg_pos_ub, add_gt_as_proposals: as :class:`RandomSampler`.
    """

    needs_context = True

    def __init__(self, num: int, pos_fraction: float, context, neg_pos_ub: float = -1,
                 add_gt_as_proposals: bool = True, loss_key: str = 'loss_cls') -> None:
        super().__init__(num, pos_fraction, neg_pos_ub, add_gt_as_proposals)
        if loss_key != 'loss_cls':
            raise ConfigError(f"OHEMSampler: loss_key must be 'loss_cls', got {loss_key!r}")
        self.context = context
        self.loss_key = loss_key

    def hard_mining(self, inds: Tensor, num_expected: int, bboxes: Tensor, labels: Tensor,
                    feats: list) -> Tensor:
        """The ``num_expected`` of ``inds`` whose boxes [k, 4] have the largest loss for ``labels`` [k]."""
        with torch.no_grad():
            rois = torch.cat([bboxes.new_zeros((bboxes.size(0), 1)), bboxes], dim=1)
            cls_score = self.context._bbox_forward(feats, rois)[0].float()
            bbox_head = self.context.bbox_head
            loss = bbox_head.loss_cls(cls_score, labels, cls_score.new_ones(cls_score.size(0)),
                                      reduction_override='none')
            topk = loss.topk(num_expected).indices
        return inds[topk]

    def _sample(self, candidates: Tensor, num_expected: int, bboxes: Tensor, labels: Optional[Tensor],
                feats: Optional[list] = None) -> Tensor:
        inds = torch.nonzero(candidates, as_tuple=False).squeeze(1)
        if inds.numel() <= num_expected:
            return inds
        if feats is None:
            raise ValueError('OHEMSampler.sample needs the image\'s feats')
        if labels is None:
            mined_labels = inds.new_full((inds.numel(),), self.context.bbox_head.num_classes)
        else:
            mined_labels = labels[inds].long()
        return self.hard_mining(inds, num_expected, bboxes[inds], mined_labels, feats)


@TASK_UTILS.register_module()
class PseudoSampler:
    """Every positive and every negative, no sampling (RetinaNet)."""

    def sample(self, assign_result: AssignResult, bboxes: Tensor, gt_bboxes: Tensor,
               gt_labels: Optional[Tensor] = None) -> SamplingResult:
        pos_inds = torch.nonzero(assign_result.gt_inds > 0, as_tuple=False).squeeze(1)
        neg_inds = torch.nonzero(assign_result.gt_inds == 0, as_tuple=False).squeeze(1)
        bboxes = bboxes[:, :4]
        gt_flags = bboxes.new_zeros((bboxes.shape[0],), dtype=torch.uint8)
        return SamplingResult(pos_inds, neg_inds, bboxes, gt_bboxes, assign_result, gt_flags)
