"""The second stage of Faster / Mask R-CNN: box head on sampled proposals, optional mask head."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from mixprec.models.task_modules.bbox_ops import bbox2result, bbox2roi
from mixprec.registry import MODELS, TASK_UTILS, ConfigError, required


@MODELS.register_module()
class StandardRoIHead(nn.Module):
    """R-CNN head: per image assign and sample proposals, pool their features, classify and
    regress them (and predict masks of the positives); at test, detect and paste masks.

    Args:
        bbox_roi_extractor: config of the box RoI extractor (7x7).
        bbox_head: config of the box head.
        mask_roi_extractor: config of the mask RoI extractor (14x14); None shares the box one, and
            then the mask head reads the positives' box features (after the shared head) in training.
        mask_head: config of the mask head; None for Faster R-CNN.
        shared_head: config of a head run on every pooled RoI before the box and mask heads
            (the C4 detectors' ``ResLayer``); None for FPN detectors.
        train_cfg: the ``rcnn`` train config: assigner, sampler, pos_weight (and mask_size).
        test_cfg: the ``rcnn`` test config: score_thr, nms, max_per_img (and mask_thr_binary).
        pretrained: given to the shared head as its ``pretrained`` (mmdetection v2's BaseRoIHead).
    """

    def __init__(self, bbox_roi_extractor: dict, bbox_head: dict,
                 mask_roi_extractor: Optional[dict] = None, mask_head: Optional[dict] = None,
                 shared_head: Optional[dict] = None, train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None, pretrained: Optional[str] = None) -> None:
        super().__init__()
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg
        if shared_head is not None:
            self.shared_head = MODELS.build(shared_head if pretrained is None else dict(shared_head, pretrained=pretrained))
        elif pretrained is not None:
            raise ConfigError(f'StandardRoIHead: pretrained={pretrained!r} needs a shared_head to load into')
        self.bbox_roi_extractor = MODELS.build(bbox_roi_extractor)
        self.bbox_head = MODELS.build(bbox_head)
        if mask_head is not None:
            self.share_roi_extractor = mask_roi_extractor is None
            self.mask_roi_extractor = (self.bbox_roi_extractor if self.share_roi_extractor
                                       else MODELS.build(mask_roi_extractor))
            self.mask_head = MODELS.build(mask_head)
        if train_cfg is not None:
            self.bbox_assigner = TASK_UTILS.build(required(train_cfg, 'assigner', 'StandardRoIHead train_cfg'))
            sampler = required(train_cfg, 'sampler', 'StandardRoIHead train_cfg')
            # loss-based samplers (OHEMSampler) rank boxes with this head, as in mmdetection v2
            sampler_cls = TASK_UTILS.get(sampler.get('type')) if isinstance(sampler, dict) else None
            context = dict(context=self) if getattr(sampler_cls, 'needs_context', False) else None
            self.bbox_sampler = TASK_UTILS.build(sampler, default_args=context)

    @property
    def with_mask(self) -> bool:
        return hasattr(self, 'mask_head')

    @property
    def with_shared_head(self) -> bool:
        return hasattr(self, 'shared_head')

    def _roi_feats(self, extractor: nn.Module, x: Sequence[Tensor], rois: Tensor) -> Tensor:
        """Pooled [k, C, s, s] features of [k, 5] RoIs, through the shared head when there is one."""
        feats = extractor(x[:extractor.num_inputs], rois)
        return self.shared_head(feats) if self.with_shared_head else feats

    def _bbox_forward(self, x: Sequence[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        """[k, 5] RoIs -> ([k, C + 1] scores, [k, 4C] deltas)."""
        return self.bbox_head(self._roi_feats(self.bbox_roi_extractor, x, rois))

    def _mask_forward(self, x: Sequence[Tensor], rois: Tensor) -> Tensor:
        """[k, 5] RoIs -> [k, C, 28, 28] mask logits (14x14 for the C4 head)."""
        return self.mask_head(self._roi_feats(self.mask_roi_extractor, x, rois))

    def forward_train(self, x: Sequence[Tensor], img_metas: list[dict], proposal_list: list[Tensor],
                      gt_bboxes: list[Tensor], gt_labels: list[Tensor],
                      gt_bboxes_ignore: Optional[list[Tensor]] = None,
                      gt_masks: Optional[list[Tensor]] = None) -> dict[str, Tensor]:
        """Losses of the second stage.

        Args:
            x: neck outputs, per level [B, C, H_l, W_l].
            img_metas: per image meta dicts.
            proposal_list: per image [n_i, 5] (x1, y1, x2, y2, score) proposals.
            gt_bboxes, gt_labels: per image [g_i, 4] boxes and [g_i] labels.
            gt_bboxes_ignore: per image [k_i, 4] crowd boxes (or None).
            gt_masks: per image [g_i, H, W] uint8 bitmaps (Mask R-CNN).

        Returns:
            ``loss_cls``, ``acc``, ``loss_bbox`` (and ``loss_mask``).
        """
        if gt_bboxes_ignore is None:
            gt_bboxes_ignore = [None] * len(img_metas)
        sampling_results = []
        for i, (proposals, boxes, ignore, labels) in enumerate(zip(proposal_list, gt_bboxes, gt_bboxes_ignore,
                                                                    gt_labels)):
            proposals = proposals[:, :4].detach()
            assign_result = self.bbox_assigner.assign(proposals, boxes, ignore, labels)
            extra = dict(feats=[level[i][None] for level in x]) if getattr(self.bbox_sampler, 'needs_context',
                                                                            False) else {}
            sampling_results.append(self.bbox_sampler.sample(assign_result, proposals, boxes, labels, **extra))

        rois = bbox2roi([res.bboxes for res in sampling_results])
        bbox_feats = self._roi_feats(self.bbox_roi_extractor, x, rois)
        cls_score, bbox_pred = self.bbox_head(bbox_feats)
        targets = self.bbox_head.get_targets(sampling_results, self.train_cfg)
        losses = self.bbox_head.loss(cls_score, bbox_pred, *targets, rois=rois)

        if self.with_mask:
            if self.share_roi_extractor:
                mask_pred = self.mask_head(bbox_feats[self._positive_mask(sampling_results, rois.device)])
            else:
                mask_pred = self._mask_forward(x, bbox2roi([res.pos_bboxes for res in sampling_results]))
            mask_targets = self.mask_head.get_targets(sampling_results, gt_masks, self.train_cfg)
            pos_labels = torch.cat([res.pos_gt_labels for res in sampling_results])
            losses.update(self.mask_head.loss(mask_pred, mask_targets, pos_labels))
        return losses

    @staticmethod
    def _positive_mask(sampling_results: Sequence, device: torch.device) -> Tensor:
        """[n] bool, True at the positives of the sampled RoIs (per image: positives, then negatives)."""
        return torch.cat([torch.cat([torch.ones(res.pos_bboxes.size(0), dtype=torch.bool, device=device),
                                     torch.zeros(res.neg_bboxes.size(0), dtype=torch.bool, device=device)])
                          for res in sampling_results])

    def simple_test_bboxes(self, x: Sequence[Tensor], img_metas: list[dict],
                           proposal_list: list[Tensor], rescale: bool) -> tuple[list[Tensor], list[Tensor]]:
        """Per image detections: ([k_i, 5] boxes with scores, [k_i] labels).

        The box head runs once over the proposals of every image; decoding and NMS per image.
        """
        rois = bbox2roi([p[:, :4] for p in proposal_list])
        cls_score, bbox_pred = self._bbox_forward(x, rois)
        counts = [p.size(0) for p in proposal_list]
        det_bboxes, det_labels = [], []
        for meta, img_rois, scores, deltas in zip(img_metas, rois.split(counts), cls_score.split(counts),
                                                  bbox_pred.split(counts)):
            dets, labels = self.bbox_head.get_bboxes(img_rois, scores, deltas, meta['img_shape'],
                                                     meta['scale_factor'], rescale=rescale, cfg=self.test_cfg)
            det_bboxes.append(dets)
            det_labels.append(labels)
        return det_bboxes, det_labels

    def simple_test_mask(self, x: Sequence[Tensor], img_metas: list[dict], det_bboxes: list[Tensor],
                         det_labels: list[Tensor], rescale: bool) -> list[list[list]]:
        """Per image, per class lists of bool [h, w] masks (original size when rescale)."""
        num_classes = self.mask_head.num_classes
        if all(d.size(0) == 0 for d in det_bboxes):
            return [[[] for _ in range(num_classes)] for _ in img_metas]
        boxes = []
        for meta, dets in zip(img_metas, det_bboxes):
            if rescale:
                factor = dets.new_tensor(meta['scale_factor']).view(1, -1)
                boxes.append(dets[:, :4] * factor)
            else:
                boxes.append(dets[:, :4])
        mask_pred = self._mask_forward(x, bbox2roi(boxes))
        segm_results = []
        for meta, dets, labels, preds in zip(img_metas, det_bboxes, det_labels,
                                             mask_pred.split([d.size(0) for d in det_bboxes])):
            out_shape = meta['ori_shape'] if rescale else meta['img_shape']
            segm_results.append(self.mask_head.get_seg_masks(preds, dets[:, :4], labels, out_shape,
                                                             self.test_cfg['mask_thr_binary']))
        return segm_results

    def simple_test(self, x: Sequence[Tensor], proposal_list: list[Tensor], img_metas: list[dict],
                    rescale: bool = True) -> list:
        """Per image: a list of C [n_c, 5] arrays, or (that list, per class mask lists)."""
        det_bboxes, det_labels = self.simple_test_bboxes(x, img_metas, proposal_list, rescale)
        num_classes = self.bbox_head.num_classes
        bbox_results = [bbox2result(d, l, num_classes) for d, l in zip(det_bboxes, det_labels)]
        if not self.with_mask:
            return bbox_results
        segm_results = self.simple_test_mask(x, img_metas, det_bboxes, det_labels, rescale)
        return list(zip(bbox_results, segm_results))
