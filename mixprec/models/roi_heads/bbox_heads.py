"""The R-CNN box head: shared fully connected layers, a classifier and a class-specific regressor."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixprec.fp16 import auto_fp16, force_fp32
from mixprec.models.losses import accuracy
from mixprec.models.task_modules.bbox_ops import check_gt_labels, multiclass_nms
from mixprec.registry import MODELS, TASK_UTILS, ConfigError


@MODELS.register_module()
class ConvFCBBoxHead(nn.Module):
    """Box head of mmdetection v2's ConvFCBBoxHead family, with shared fully connected layers.

    RoI features [k, C, s, s] are flattened and go through ``num_shared_fcs`` Linear + ReLU layers
    (``shared_fcs.i``), then ``fc_cls`` (num_classes + 1 scores, background last) and ``fc_reg``
    (4 deltas per class, or 4 when ``reg_class_agnostic``).

    Args:
        num_shared_fcs: number of shared Linear layers.
        in_channels: channels of the RoI features.
        roi_feat_size: side of the RoI features.
        fc_out_channels: width of the shared layers.
        num_classes: number of object classes C.
        bbox_coder: config of the box coder (DeltaXYWHBBoxCoder, stds [0.1, 0.1, 0.2, 0.2]).
        with_avg_pool: average-pool the [s, s] RoI features to one value per channel first.
        reg_class_agnostic: one box regression for all classes.
        loss_cls: classification loss config (softmax CrossEntropyLoss).
        loss_bbox: regression loss config (default mmdet v2's: SmoothL1Loss, beta 1.0).
        reg_decoded_bbox: regress decoded boxes against the gt boxes in absolute coordinates
            (for the IoU-family losses) instead of deltas against encoded targets.
    """

    def __init__(self, num_shared_fcs: int = 2, in_channels: int = 256, roi_feat_size: int = 7,
                 fc_out_channels: int = 1024, num_classes: int = 80,
                 bbox_coder: Optional[dict] = None, reg_class_agnostic: bool = False,
                 loss_cls: Optional[dict] = None, loss_bbox: Optional[dict] = None,
                 reg_decoded_bbox: bool = False, with_avg_pool: bool = False) -> None:
        super().__init__()
        self.reg_decoded_bbox = reg_decoded_bbox
        if bbox_coder is None:
            bbox_coder = dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                              target_stds=[0.1, 0.1, 0.2, 0.2])
        if loss_cls is None:
            loss_cls = dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)
        if loss_bbox is None:
            loss_bbox = dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0)
        self.num_classes = num_classes
        self.reg_class_agnostic = reg_class_agnostic
        self.bbox_coder = TASK_UTILS.build(bbox_coder)
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_bbox = MODELS.build(loss_bbox)
        self.fp16_enabled = False

        self.with_avg_pool = with_avg_pool
        if with_avg_pool:
            self.avg_pool = nn.AvgPool2d(roi_feat_size)
        widths = [in_channels * (1 if with_avg_pool else roi_feat_size * roi_feat_size)]
        widths += [fc_out_channels] * num_shared_fcs
        self.shared_fcs = nn.ModuleList(nn.Linear(widths[i], widths[i + 1]) for i in range(num_shared_fcs))
        self.fc_cls = nn.Linear(widths[-1], num_classes + 1)
        self.fc_reg = nn.Linear(widths[-1], 4 if reg_class_agnostic else 4 * num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform shared layers, normal(0, 0.01) classifier, normal(0, 0.001) regressor."""
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_reg.bias)

    @auto_fp16()
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """[k, C, s, s] RoI features -> ([k, C + 1] class scores, [k, 4 * C] (or [k, 4]) deltas)."""
        if self.with_avg_pool:
            x = self.avg_pool(x) if x.numel() > 0 else x.mean(dim=(-2, -1), keepdim=True)
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)

    def get_targets(self, sampling_results: Sequence,
                    rcnn_train_cfg: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Classification and regression targets of the sampled RoIs of a batch.

        The RoIs of image i are its positives then its negatives (``bbox2roi`` of the sampling
        results' ``bboxes``); the targets follow that order, images one after another.

        Args:
            sampling_results: per image, a SamplingResult (pos_bboxes, neg_bboxes, pos_gt_bboxes,
                pos_gt_labels).
            rcnn_train_cfg: the ``rcnn`` train config; ``pos_weight`` (<= 0 means 1).

        Returns:
            labels [n] int64 (background = C), label_weights [n], bbox_targets [n, 4] (deltas of
            each positive to its gt, for the regression of its gt class; the gt box itself with
            ``reg_decoded_bbox``), bbox_weights [n, 4].
        """
        pos_weight = rcnn_train_cfg.get('pos_weight', -1)
        pos_weight = 1.0 if pos_weight <= 0 else float(pos_weight)
        labels, is_pos, label_weights = [], [], []
        for res in sampling_results:
            num_pos, num_neg = res.pos_bboxes.size(0), res.neg_bboxes.size(0)
            device = res.pos_bboxes.device
            labels.append(torch.cat([res.pos_gt_labels.long(),
                                     torch.full((num_neg,), self.num_classes, dtype=torch.long, device=device)]))
            is_pos.append(torch.cat([torch.ones(num_pos, dtype=torch.bool, device=device),
                                     torch.zeros(num_neg, dtype=torch.bool, device=device)]))
            label_weights.append(torch.cat([torch.full((num_pos,), pos_weight, device=device),
                                            torch.ones(num_neg, device=device)]))
        labels, is_pos, label_weights = torch.cat(labels), torch.cat(is_pos), torch.cat(label_weights)
        check_gt_labels(labels[is_pos], self.num_classes, type(self).__name__)
        pos_bboxes = torch.cat([res.pos_bboxes for res in sampling_results]).float()
        pos_gt_bboxes = torch.cat([res.pos_gt_bboxes for res in sampling_results]).float()
        bbox_targets = pos_bboxes.new_zeros((labels.size(0), 4))
        bbox_weights = pos_bboxes.new_zeros((labels.size(0), 4))
        if pos_bboxes.size(0) > 0:
            bbox_targets[is_pos] = (pos_gt_bboxes if self.reg_decoded_bbox
                                    else self.bbox_coder.encode(pos_bboxes, pos_gt_bboxes))
            bbox_weights[is_pos] = 1.0
        return labels, label_weights, bbox_targets, bbox_weights

    @force_fp32(apply_to=('cls_score', 'bbox_pred'))
    def loss(self, cls_score: Tensor, bbox_pred: Tensor, labels: Tensor, label_weights: Tensor,
             bbox_targets: Tensor, bbox_weights: Tensor, rois: Optional[Tensor] = None,
             reduction_override: Optional[str] = None) -> dict[str, Tensor]:
        """R-CNN losses.

        ``loss_cls`` is averaged over the sampled RoIs (those with a positive label weight);
        ``loss_bbox`` is the loss of the positives' predictions for their gt class, summed and
        divided by the number of sampled RoIs; ``acc`` is the classification accuracy (percent).
        With ``reg_decoded_bbox`` the deltas are decoded against the RoIs (unclipped) first.
        ``reduction_override='none'`` gives per-RoI ``loss_cls`` [n] and per-positive
        ``loss_bbox`` (the OHEM sampler ranks RoIs by them).

        Args:
            cls_score: [n, C + 1]; bbox_pred: [n, 4 * C] (or [n, 4]);
            labels, label_weights, bbox_targets, bbox_weights: from :meth:`get_targets`;
            rois: [n, 5] the sampled RoIs (needed with ``reg_decoded_bbox``).
        """
        losses = dict()
        avg_factor = max(float((label_weights > 0).sum()), 1.0)
        losses['loss_cls'] = self.loss_cls(cls_score, labels, label_weights, avg_factor=avg_factor,
                                           reduction_override=reduction_override)
        losses['acc'] = accuracy(cls_score, labels)
        pos = (labels >= 0) & (labels < self.num_classes)
        if pos.any():
            if self.reg_decoded_bbox:
                if rois is None:
                    raise ValueError('ConvFCBBoxHead.loss: reg_decoded_bbox=True needs the rois')
                bbox_pred = self.bbox_coder.decode(rois[:, 1:5], bbox_pred)
            if self.reg_class_agnostic:
                pos_pred = bbox_pred[pos]
            else:
                pos_pred = bbox_pred.view(bbox_pred.size(0), -1, 4)[pos, labels[pos]]
            losses['loss_bbox'] = self.loss_bbox(pos_pred, bbox_targets[pos], bbox_weights[pos],
                                                 avg_factor=bbox_targets.size(0),
                                                 reduction_override=reduction_override)
        else:
            losses['loss_bbox'] = bbox_pred.sum() * 0
        return losses

    @force_fp32(apply_to=('cls_score', 'bbox_pred'))
    def get_bboxes(self, rois: Tensor, cls_score: Tensor, bbox_pred: Tensor,
                   img_shape: Sequence[int], scale_factor: Optional[np.ndarray],
                   rescale: bool = False, cfg: Optional[dict] = None) -> tuple[Tensor, Tensor]:
        """Detections of one image.

        Args:
            rois: [n, 5] RoIs of the image; cls_score: [n, C + 1]; bbox_pred: [n, 4 * C] or [n, 4].
            img_shape: (h, w, ...) of the resized, unpadded image; boxes are clipped to it.
            scale_factor: [4] (w, h, w, h) resize factors; boxes are divided by them when rescale.
            cfg: the ``rcnn`` test config (score_thr, nms, max_per_img); None returns the raw
                decoded boxes and scores.

        Returns:
            det_bboxes [k, 5] (x1, y1, x2, y2, score) and det_labels [k] int64.
        """
        scores = F.softmax(cls_score, dim=-1)
        bboxes = self.bbox_coder.decode(rois[:, 1:5], bbox_pred, max_shape=tuple(img_shape[:2]))
        if rescale and bboxes.size(0) > 0:
            factor = bboxes.new_tensor(np.asarray(scale_factor, dtype=np.float32))
            bboxes = (bboxes.view(bboxes.size(0), -1, 4) / factor).view(bboxes.size(0), -1)
        if cfg is None:
            return bboxes, scores
        return multiclass_nms(bboxes, scores, cfg['score_thr'], cfg['nms'], cfg['max_per_img'])


@MODELS.register_module()
class Shared2FCBBoxHead(ConvFCBBoxHead):
    """:class:`ConvFCBBoxHead` with two shared 1024-wide layers (Faster / Mask R-CNN's box head)."""

    def __init__(self, fc_out_channels: int = 1024, **kwargs) -> None:
        super().__init__(num_shared_fcs=2, fc_out_channels=fc_out_channels, **kwargs)


@MODELS.register_module()
class BBoxHead(ConvFCBBoxHead):
    """mmdetection v2's plain BBoxHead: ``fc_cls`` and ``fc_reg`` straight on the RoI features
    (``with_avg_pool=True``: on their channel means; the C4 detectors' head, [k, 2048, 7, 7] -> 2048).

    ``with_cls`` / ``with_reg`` must stay True (a head without one of its two outputs is not implemented).
    """

    def __init__(self, with_avg_pool: bool = False, with_cls: bool = True, with_reg: bool = True, **kwargs) -> None:
        if not (with_cls and with_reg):
            raise ConfigError(f'BBoxHead: with_cls={with_cls}, with_reg={with_reg} is not implemented (both True only)')
        for key in ('num_shared_fcs', 'fc_out_channels'):
            if key in kwargs:
                raise ConfigError(f'BBoxHead has no shared fully connected layers; {key} is not an argument of it')
        super().__init__(num_shared_fcs=0, with_avg_pool=with_avg_pool, **kwargs)
