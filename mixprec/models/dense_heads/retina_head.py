"""RetinaNet head (Lin et al., 2017), mmdetection v2's RetinaHead."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from mixprec.fp16 import force_fp32
from mixprec.models.layers import ConvModule
from mixprec.registry import MODELS, ConfigError

from .anchor_head import AnchorHead, flatten_level, img_shapes, nms_per_image, scale_factors


@MODELS.register_module()
class RetinaHead(AnchorHead):
    """Two towers of ``stacked_convs`` 3x3 conv + ReLU (``cls_convs.i.conv``, ``reg_convs.i.conv``),
    then ``retina_cls`` (A * C channels, sigmoid) and ``retina_reg`` (A * 4 channels).

    Defaults are the reference RetinaNet values: 9 anchors per location (octave base scale 4, 3
    scales per octave, ratios 0.5/1/2, strides 8..128), focal loss (gamma 2, alpha 0.25), L1 box
    loss. ``test_cfg``: ``score_thr``, ``nms_pre``, ``nms``, ``max_per_img``.
    """

    def __init__(self, num_classes: int, in_channels: int, stacked_convs: int = 4, feat_channels: int = 256,
                 anchor_generator: Optional[dict] = None, bbox_coder: Optional[dict] = None,
                 loss_cls: Optional[dict] = None, loss_bbox: Optional[dict] = None,
                 norm_cfg: Optional[dict] = None, train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None, init_cfg: Optional[dict] = None,
                 reg_decoded_bbox: bool = False) -> None:
        if init_cfg is not None:
            raise ConfigError('RetinaHead initialises itself (normal std 0.01, prior 0.01); init_cfg must be None')
        super().__init__(
            num_classes=num_classes, in_channels=in_channels, feat_channels=feat_channels,
            anchor_generator=anchor_generator or dict(type='AnchorGenerator', octave_base_scale=4,
                                                      scales_per_octave=3, ratios=[0.5, 1.0, 2.0],
                                                      strides=[8, 16, 32, 64, 128]),
            bbox_coder=bbox_coder or dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                                          target_stds=[1.0, 1.0, 1.0, 1.0]),
            loss_cls=loss_cls or dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
            loss_bbox=loss_bbox or dict(type='L1Loss', loss_weight=1.0),
            train_cfg=train_cfg, test_cfg=test_cfg, reg_decoded_bbox=reg_decoded_bbox)
        if not self.use_sigmoid_cls:
            raise ConfigError('RetinaHead needs a sigmoid classification loss (use_sigmoid=True)')
        self.stacked_convs = stacked_convs
        relu = dict(type='ReLU')
        self.cls_convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, padding=1,
                       norm_cfg=norm_cfg, act_cfg=relu) for i in range(stacked_convs))
        self.reg_convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, padding=1,
                       norm_cfg=norm_cfg, act_cfg=relu) for i in range(stacked_convs))
        self.retina_cls = nn.Conv2d(feat_channels, self.num_anchors * self.cls_out_channels, 3, padding=1)
        self.retina_reg = nn.Conv2d(feat_channels, self.num_anchors * 4, 3, padding=1)
        self.init_weights()

    def init_weights(self, prior_prob: float = 0.01) -> None:
        """Every conv normal(0, 0.01) with zero bias; ``retina_cls`` bias so that sigmoid = prior."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.retina_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward_single(self, x: Tensor) -> tuple[Tensor, Tensor]:
        cls_feat = x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        reg_feat = x
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        return self.retina_cls(cls_feat), self.retina_reg(reg_feat)

    @force_fp32(apply_to=('cls_scores', 'bbox_preds'))
    def get_bboxes(self, cls_scores: list[Tensor], bbox_preds: list[Tensor], img_metas: list[dict],
                   cfg: Optional[dict] = None, rescale: bool = False) -> list[tuple[Tensor, Tensor]]:
        """Detections per image: ``(dets [k, 5] (x1, y1, x2, y2, score), labels [k])``.

        Per level, (anchor, class) pairs scoring above ``score_thr`` are ranked and the top
        ``nms_pre`` decoded (clipped to the image); all levels then go through class-aware NMS and
        the best ``max_per_img`` are kept. ``rescale`` maps boxes to the original image.
        """
        cfg = cfg if cfg is not None else self.test_cfg
        num_imgs = cls_scores[0].size(0)
        featmap_sizes = [tuple(s.shape[-2:]) for s in cls_scores]
        level_anchors = self.anchor_generator.grid_priors(featmap_sizes, device=cls_scores[0].device)
        score_thr = cfg.get('score_thr', 0.0)
        nms_pre = cfg.get('nms_pre', -1)
        num_classes = self.cls_out_channels
        boxes, scores, labels, valid = [], [], [], []
        for cls_score, bbox_pred, priors in zip(cls_scores, bbox_preds, level_anchors):
            pair_scores = flatten_level(cls_score, num_classes).reshape(num_imgs, -1).sigmoid()
            pair_scores = pair_scores.masked_fill(pair_scores <= score_thr, -1.0)
            num_keep = pair_scores.size(1) if nms_pre <= 0 else min(nms_pre, pair_scores.size(1))
            top_scores, top_inds = pair_scores.topk(num_keep, dim=1)
            anchor_inds = torch.div(top_inds, num_classes, rounding_mode='floor')
            deltas = torch.gather(flatten_level(bbox_pred, 4), 1, anchor_inds[..., None].expand(-1, -1, 4))
            boxes.append(self.bbox_coder.decode(priors[anchor_inds], deltas, max_shape=img_shapes(img_metas)))
            scores.append(top_scores)
            labels.append(top_inds % num_classes)
            valid.append(top_scores > score_thr)
        boxes = torch.cat(boxes, dim=1)
        if rescale:
            boxes = boxes / scale_factors(img_metas, boxes)[:, None, :]
        scores, labels, valid = torch.cat(scores, dim=1), torch.cat(labels, dim=1), torch.cat(valid, dim=1)
        return [nms_per_image(boxes[i], scores[i], labels[i], valid[i], cfg['nms'], cfg.get('max_per_img', -1))
                for i in range(num_imgs)]
