"""Base of the anchor-based dense heads: anchors, target assignment, losses, box decoding."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mixprec.fp16 import auto_fp16, force_fp32
from mixprec.models.task_modules.bbox_ops import check_gt_labels
from mixprec.ops import batched_nms
from mixprec.registry import MODELS, TASK_UTILS, ConfigError, required

# Losses that weigh every anchor themselves, so no sampling happens (mmdetection's rule).
_NO_SAMPLING_LOSSES = ('FocalLoss', 'GHMC', 'QualityFocalLoss')


def flatten_level(x: Tensor, channels: int) -> Tensor:
    """[B, A * channels, H, W] -> [B, H * W * A, channels]: row ``(y * W + x) * A + a``."""
    return x.permute(0, 2, 3, 1).reshape(x.size(0), -1, channels)


class AnchorHead(nn.Module):
    """Shared machinery of RPNHead and RetinaHead (mmdetection v2's AnchorHead).

    Subclasses build their layers, initialise them, and implement ``forward_single(x) ->
    (cls_score [B, A * cls_out_channels, H, W], bbox_pred [B, A * 4, H, W])``.

    Training targets: per image, anchors outside the image's padded area are dropped, the rest are
    assigned with ``train_cfg['assigner']`` and sampled with ``train_cfg['sampler']`` (a
    PseudoSampler when the classification loss is a focal loss). Background label is
    ``num_classes``. Losses are normalised by ``sum over images of max(1, num_pos)``, plus the same
    for negatives when sampling.

    Args:
        num_classes: foreground classes (1 for the RPN).
        in_channels: channels of every input level.
        feat_channels: channels of the hidden convs.
        anchor_generator, bbox_coder: TASK_UTILS configs.
        loss_cls, loss_bbox: MODELS configs; ``loss_cls['use_sigmoid']`` picks sigmoid scores
            (``cls_out_channels = num_classes``) over softmax (``num_classes + 1``).
        train_cfg: ``assigner``, ``sampler`` (optional), ``allowed_border``, ``pos_weight``.
        test_cfg: post-processing settings, see the subclasses' ``get_bboxes``.
        reg_decoded_bbox: regress decoded boxes against the gt boxes in absolute coordinates
            (for the IoU-family losses) instead of deltas against encoded targets.
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int, anchor_generator: dict,
                 bbox_coder: dict, loss_cls: dict, loss_bbox: dict, train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None, reg_decoded_bbox: bool = False) -> None:
        super().__init__()
        self.reg_decoded_bbox = reg_decoded_bbox
        self.fp16_enabled = False
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.use_sigmoid_cls = bool(loss_cls.get('use_sigmoid', False))
        self.cls_out_channels = num_classes if self.use_sigmoid_cls else num_classes + 1
        self.sampling = loss_cls['type'] not in _NO_SAMPLING_LOSSES
        self.anchor_generator = TASK_UTILS.build(anchor_generator)
        if len(set(self.anchor_generator.num_base_anchors)) != 1:
            raise ConfigError('AnchorHead needs the same number of anchors at every level')
        self.num_anchors = self.anchor_generator.num_base_anchors[0]
        self.bbox_coder = TASK_UTILS.build(bbox_coder)
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_bbox = MODELS.build(loss_bbox)
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg
        if train_cfg is not None:
            self.assigner = TASK_UTILS.build(required(train_cfg, 'assigner', f'{type(self).__name__} train_cfg'))
            sampler_cfg = train_cfg.get('sampler') if self.sampling else None
            self.sampler = TASK_UTILS.build(sampler_cfg or dict(type='PseudoSampler'))
            if getattr(self.sampler, 'add_gt_as_proposals', False):
                raise ConfigError('dense heads sample anchors only: set the sampler\'s add_gt_as_proposals=False')

    def forward_single(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @auto_fp16(apply_to=('feats', ))
    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level ``cls_score [B, A * cls_out_channels, H, W]`` and ``bbox_pred [B, A * 4, H, W]``."""
        cls_scores, bbox_preds = [], []
        for x in feats:
            cls_score, bbox_pred = self.forward_single(x)
            cls_scores.append(cls_score)
            bbox_preds.append(bbox_pred)
        return cls_scores, bbox_preds

    def get_anchors(self, featmap_sizes: list[tuple[int, int]], img_metas: list[dict],
                    device: torch.device) -> tuple[list[Tensor], Tensor]:
        """Anchors per level [H_l * W_l * A, 4] (shared by the images) and valid flags [B, N]."""
        anchors = self.anchor_generator.grid_priors(featmap_sizes, device=device)
        valid = [torch.cat(self.anchor_generator.valid_flags(featmap_sizes, meta['pad_shape'][:2], device))
                 for meta in img_metas]
        return anchors, torch.stack(valid)

    def _targets_single(self, anchors: Tensor, valid: Tensor, gt_bboxes: Tensor,
                        gt_bboxes_ignore: Optional[Tensor], gt_labels: Optional[Tensor],
                        img_meta: dict) -> tuple[Tensor, Tensor, Tensor, Tensor, int, int]:
        """Targets of one image for all N anchors (see :meth:`get_targets`)."""
        allowed_border = self.train_cfg.get('allowed_border', -1)
        inside = valid
        if allowed_border >= 0:
            img_h, img_w = img_meta['img_shape'][:2]
            inside = valid & (anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border) \
                & (anchors[:, 2] < img_w + allowed_border) & (anchors[:, 3] < img_h + allowed_border)
        inside_inds = torch.nonzero(inside, as_tuple=False).squeeze(1)
        candidates = anchors[inside_inds]
        assign_result = self.assigner.assign(candidates, gt_bboxes, gt_bboxes_ignore,
                                             None if self.sampling else gt_labels)
        sampling = self.sampler.sample(assign_result, candidates, gt_bboxes)

        num_anchors = anchors.size(0)
        labels = anchors.new_full((num_anchors,), self.num_classes, dtype=torch.long)
        label_weights = anchors.new_zeros(num_anchors)
        bbox_targets = anchors.new_zeros((num_anchors, 4))
        bbox_weights = anchors.new_zeros((num_anchors, 4))
        pos = inside_inds[sampling.pos_inds]
        neg = inside_inds[sampling.neg_inds]
        if pos.numel() > 0:
            bbox_targets[pos] = (sampling.pos_gt_bboxes.to(bbox_targets) if self.reg_decoded_bbox
                                 else self.bbox_coder.encode(sampling.pos_bboxes, sampling.pos_gt_bboxes))
            bbox_weights[pos] = 1.0
            if gt_labels is not None:
                check_gt_labels(gt_labels, self.num_classes, type(self).__name__)
                labels[pos] = gt_labels[sampling.pos_assigned_gt_inds].long()
            else:
                labels[pos] = 0
            pos_weight = self.train_cfg.get('pos_weight', -1)
            label_weights[pos] = 1.0 if pos_weight <= 0 else pos_weight
        label_weights[neg] = 1.0
        return labels, label_weights, bbox_targets, bbox_weights, pos.numel(), neg.numel()

    def get_targets(self, anchors: Tensor, valid_flags: Tensor, gt_bboxes_list: list[Tensor],
                    img_metas: list[dict], gt_bboxes_ignore_list: Optional[list[Tensor]] = None,
                    gt_labels_list: Optional[list[Tensor]] = None) -> tuple[Tensor, Tensor, Tensor, Tensor, int, int]:
        """Classification and regression targets of a batch.

        Args:
            anchors: [N, 4] all levels concatenated; valid_flags: [B, N].

        Returns:
            labels [B, N] (``num_classes`` = background), label_weights [B, N],
            bbox_targets [B, N, 4] (encoded deltas, or gt boxes with ``reg_decoded_bbox``),
            bbox_weights [B, N, 4],
            num_total_pos, num_total_neg (sums over images of max(1, count)).
        """
        num_imgs = len(img_metas)
        if gt_bboxes_ignore_list is None:
            gt_bboxes_ignore_list = [None] * num_imgs
        if gt_labels_list is None:
            gt_labels_list = [None] * num_imgs
        results = [self._targets_single(anchors, valid_flags[i], gt_bboxes_list[i], gt_bboxes_ignore_list[i],
                                        gt_labels_list[i], img_metas[i]) for i in range(num_imgs)]
        labels, label_weights, bbox_targets, bbox_weights, num_pos, num_neg = zip(*results)
        return (torch.stack(labels), torch.stack(label_weights), torch.stack(bbox_targets),
                torch.stack(bbox_weights), sum(max(n, 1) for n in num_pos), sum(max(n, 1) for n in num_neg))

    @force_fp32(apply_to=('cls_scores', 'bbox_preds'))
    def loss(self, cls_scores: list[Tensor], bbox_preds: list[Tensor], gt_bboxes: list[Tensor],
             gt_labels: Optional[list[Tensor]], img_metas: list[dict],
             gt_bboxes_ignore: Optional[list[Tensor]] = None) -> dict[str, list[Tensor]]:
        """``dict(loss_cls=[per level], loss_bbox=[per level])``; with ``reg_decoded_bbox`` the
        predicted deltas are decoded against their anchors (unclipped) before the box loss."""
        featmap_sizes = [tuple(s.shape[-2:]) for s in cls_scores]
        device = cls_scores[0].device
        level_anchors, valid_flags = self.get_anchors(featmap_sizes, img_metas, device)
        anchors = torch.cat(level_anchors)
        labels, label_weights, bbox_targets, bbox_weights, num_pos, num_neg = self.get_targets(
            anchors, valid_flags, gt_bboxes, img_metas, gt_bboxes_ignore, gt_labels)
        avg_factor = num_pos + num_neg if self.sampling else num_pos

        losses_cls, losses_bbox = [], []
        start = 0
        for cls_score, bbox_pred, level in zip(cls_scores, bbox_preds, level_anchors):
            end = start + level.size(0)
            losses_cls.append(self.loss_cls(
                flatten_level(cls_score, self.cls_out_channels).reshape(-1, self.cls_out_channels),
                labels[:, start:end].reshape(-1), label_weights[:, start:end].reshape(-1),
                avg_factor=avg_factor))
            level_pred = flatten_level(bbox_pred, 4).reshape(-1, 4)
            if self.reg_decoded_bbox:
                level_pred = self.bbox_coder.decode(level.repeat(len(img_metas), 1), level_pred)
            losses_bbox.append(self.loss_bbox(
                level_pred, bbox_targets[:, start:end].reshape(-1, 4),
                bbox_weights[:, start:end].reshape(-1, 4), avg_factor=avg_factor))
            start = end
        return dict(loss_cls=losses_cls, loss_bbox=losses_bbox)

    def forward_train(self, x: Sequence[Tensor], img_metas: list[dict], gt_bboxes: list[Tensor],
                      gt_labels: Optional[list[Tensor]] = None,
                      gt_bboxes_ignore: Optional[list[Tensor]] = None, proposal_cfg: Optional[dict] = None):
        """Losses, and with ``proposal_cfg`` also the detections/proposals of the batch (mmdet v2)."""
        cls_scores, bbox_preds = self(x)
        losses = self.loss(cls_scores, bbox_preds, gt_bboxes, gt_labels, img_metas,
                           gt_bboxes_ignore=gt_bboxes_ignore)
        if proposal_cfg is None:
            return losses
        return losses, self.get_bboxes(cls_scores, bbox_preds, img_metas, cfg=proposal_cfg)

    def get_bboxes(self, cls_scores: list[Tensor], bbox_preds: list[Tensor], img_metas: list[dict],
                   cfg: Optional[dict] = None, rescale: bool = False) -> list:
        raise NotImplementedError

    def simple_test(self, feats: Sequence[Tensor], img_metas: list[dict], rescale: bool = False) -> list:
        """Per image the output of :meth:`get_bboxes` with ``test_cfg``."""
        cls_scores, bbox_preds = self(feats)
        return self.get_bboxes(cls_scores, bbox_preds, img_metas, rescale=rescale)


def scale_factors(img_metas: list[dict], like: Tensor) -> Tensor:
    """[B, 4] (w, h, w, h) resize factors of the images."""
    factors = [np.broadcast_to(np.asarray(m['scale_factor'], dtype=np.float32).reshape(-1), (4,))
               for m in img_metas]
    return like.new_tensor(np.stack(factors))


def img_shapes(img_metas: list[dict]) -> list[tuple[int, int]]:
    """(h, w) of each resized, unpadded image."""
    return [tuple(m['img_shape'][:2]) for m in img_metas]


def nms_per_image(boxes: Tensor, scores: Tensor, idxs: Tensor, keep_mask: Tensor, nms_cfg: dict,
                  max_num: int) -> tuple[Tensor, Tensor]:
    """NMS within ``idxs`` groups over the rows of ``keep_mask``; (dets [k, 5], idxs [k]), k <= max_num."""
    boxes, scores, idxs = boxes[keep_mask], scores[keep_mask], idxs[keep_mask]
    dets, keep = batched_nms(boxes, scores, idxs, nms_cfg, max_num=max_num)
    return dets, idxs[keep]
