"""Region Proposal Network head (Ren et al., 2015), mmdetection v2's RPNHead."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixprec.fp16 import force_fp32
from mixprec.registry import MODELS, ConfigError

from .anchor_head import AnchorHead, flatten_level, img_shapes, nms_per_image, scale_factors


@MODELS.register_module()
class RPNHead(AnchorHead):
    """A shared 3x3 conv + ReLU (``rpn_conv``), then objectness (``rpn_cls``, A channels with a
    sigmoid) and deltas (``rpn_reg``, 4A channels), at every pyramid level.

    Defaults are the reference Faster/Mask R-CNN values: anchors scale 8, ratios (0.5, 1, 2),
    strides (4 .. 64); sigmoid CE and L1 losses. ``train_cfg`` / ``test_cfg`` are the detector's
    ``rpn`` parts; proposals follow DESIGN.md §6 (see :meth:`get_bboxes`).
    """

    def __init__(self, in_channels: int, feat_channels: int = 256, anchor_generator: Optional[dict] = None,
                 bbox_coder: Optional[dict] = None, loss_cls: Optional[dict] = None,
                 loss_bbox: Optional[dict] = None, train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None, init_cfg: Optional[dict] = None,
                 reg_decoded_bbox: bool = False) -> None:
        if init_cfg is not None:
            raise ConfigError('RPNHead initialises itself (normal std 0.01); init_cfg must be None')
        super().__init__(
            num_classes=1, in_channels=in_channels, feat_channels=feat_channels,
            anchor_generator=anchor_generator or dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0],
                                                      strides=[4, 8, 16, 32, 64]),
            bbox_coder=bbox_coder or dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                                          target_stds=[1.0, 1.0, 1.0, 1.0]),
            loss_cls=loss_cls or dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
            loss_bbox=loss_bbox or dict(type='L1Loss', loss_weight=1.0),
            train_cfg=train_cfg, test_cfg=test_cfg, reg_decoded_bbox=reg_decoded_bbox)
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, self.num_anchors * self.cls_out_channels, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, self.num_anchors * 4, 1)
        self.init_weights()

    def init_weights(self) -> None:
        """Every conv normal(0, 0.01), zero bias."""
        for conv in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward_single(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.rpn_conv(x), inplace=True)
        return self.rpn_cls(x), self.rpn_reg(x)

    @force_fp32(apply_to=('cls_scores', 'bbox_preds'))
    def loss(self, cls_scores: list[Tensor], bbox_preds: list[Tensor], gt_bboxes: list[Tensor],
             gt_labels: Optional[list[Tensor]], img_metas: list[dict],
             gt_bboxes_ignore: Optional[list[Tensor]] = None) -> dict[str, list[Tensor]]:
        """``dict(loss_rpn_cls=[per level], loss_rpn_bbox=[per level])``; gt labels are not used."""
        losses = super().loss(cls_scores, bbox_preds, gt_bboxes, None, img_metas, gt_bboxes_ignore)
        return dict(loss_rpn_cls=losses['loss_cls'], loss_rpn_bbox=losses['loss_bbox'])

    @force_fp32(apply_to=('cls_scores', 'bbox_preds'))
    def get_bboxes(self, cls_scores: list[Tensor], bbox_preds: list[Tensor], img_metas: list[dict],
                   cfg: Optional[dict] = None, rescale: bool = False) -> list[Tensor]:
        """Proposals per image, [n, 5] (x1, y1, x2, y2, objectness) in the resized image.

        Per level the top ``nms_pre`` anchors by objectness are decoded (clipped to the image);
        boxes with w or h <= ``min_bbox_size`` are dropped; NMS runs within each level (``nms``);
        the best ``max_per_img`` survivors of all levels are kept. ``rescale`` divides the boxes by
        the resize factor. ``cfg`` defaults to ``test_cfg``.
        """
        cfg = cfg if cfg is not None else self.test_cfg
        num_imgs = cls_scores[0].size(0)
        featmap_sizes = [tuple(s.shape[-2:]) for s in cls_scores]
        level_anchors = self.anchor_generator.grid_priors(featmap_sizes, device=cls_scores[0].device)
        nms_pre = cfg.get('nms_pre', -1)
        scores, deltas, anchors, level_ids = [], [], [], []
        for level, (cls_score, bbox_pred, priors) in enumerate(zip(cls_scores, bbox_preds, level_anchors)):
            if self.use_sigmoid_cls:
                level_scores = flatten_level(cls_score, 1).squeeze(-1).sigmoid()
            else:
                level_scores = flatten_level(cls_score, 2).softmax(dim=-1)[..., 0]
            level_deltas = flatten_level(bbox_pred, 4)
            num_keep = level_scores.size(1) if nms_pre <= 0 else min(nms_pre, level_scores.size(1))
            top_scores, top_inds = level_scores.topk(num_keep, dim=1)
            scores.append(top_scores)
            deltas.append(torch.gather(level_deltas, 1, top_inds[..., None].expand(-1, -1, 4)))
            anchors.append(priors[top_inds])
            level_ids.append(top_inds.new_full((num_keep,), level))
        scores = torch.cat(scores, dim=1)
        proposals = self.bbox_coder.decode(torch.cat(anchors, dim=1), torch.cat(deltas, dim=1),
                                           max_shape=img_shapes(img_metas))
        widths = proposals[..., 2] - proposals[..., 0]
        heights = proposals[..., 3] - proposals[..., 1]
        min_size = cfg.get('min_bbox_size', 0)
        large_enough = (widths > min_size) & (heights > min_size)
        if rescale:
            proposals = proposals / scale_factors(img_metas, proposals)[:, None, :]
        level_ids = torch.cat(level_ids)
        return [nms_per_image(proposals[i], scores[i], level_ids, large_enough[i], cfg['nms'],
                              cfg.get('max_per_img', -1))[0]
                for i in range(num_imgs)]

    def simple_test_rpn(self, x: Sequence[Tensor], img_metas: list[dict]) -> list[Tensor]:
        """Test-time proposals per image, [n, 5] in the resized image."""
        cls_scores, bbox_preds = self(x)
        return self.get_bboxes(cls_scores, bbox_preds, img_metas)
