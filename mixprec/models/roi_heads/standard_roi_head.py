"""The second stage of Faster / Mask R-CNN: box head on sampled proposals, optional mask head."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from mixprec.models.task_modules.bbox_ops import bbox2result, bbox2roi
from mixprec.registry import MODELS, TASK_UTILS


@MODELS.register_module()
class StandardRoIHead(nn.Module):
    """R-CNN head: per image assign and sample proposals, pool their features, classify and
    regress them (and predict masks of the positives); at test, detect and paste masks.

    Args:
        bbox_roi_extractor: config of the box RoI extractor (7x7).
        bbox_head: config of the box head.
        mask_roi_extractor: config of the mask RoI extractor (14x14); None shares the box one.
        mask_head: config of the mask head; None for Faster R-CNN.
        train_cfg: the ``rcnn`` train config: assigner, sampler, pos_weight (and mask_size).
        test_cfg: the ``rcnn`` test config: score_thr, nms, max_per_img (and mask_thr_binary).
    """

    def __init__(self, bbox_roi_extractor: dict, bbox_head: dict,
                 mask_roi_extractor: Optional[dict] = None, mask_head: Optional[dict] = None,
                 train_cfg: Optional[dict] = None, test_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg
        self.bbox_roi_extractor = MODELS.build(bbox_roi_extractor)
        self.bbox_head = MODELS.build(bbox_head)
        if mask_head is not None:
            self.mask_roi_extractor = (MODELS.build(mask_roi_extractor) if mask_roi_extractor is not None
                                       else self.bbox_roi_extractor)
            self.mask_head = MODELS.build(mask_head)
        if train_cfg is not None:
            self.bbox_assigner = TASK_UTILS.build(train_cfg['assigner'])
            # loss-based samplers (OHEMSampler) rank boxes with this head, as in mmdetection v2
            sampler_cls = TASK_UTILS.get(train_cfg['sampler'].get('type'))
            context = dict(context=self) if getattr(sampler_cls, 'needs_context', False) else None
            self.bbox_sampler = TASK_UTILS.build(train_cfg['sampler'], default_args=context)

    @property
    def with_mask(self) -> bool:
        return hasattr(self, 'mask_head')

    def _bbox_forward(self, x: Sequence[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        """[k, 5] RoIs -> ([k, C + 1] scores, [k, 4C] deltas)."""
        feats = self.bbox_roi_extractor(x[:self.bbox_roi_extractor.num_inputs], rois)
        return self.bbox_head(feats)

    def _mask_forward(self, x: Sequence[Tensor], rois: Tensor) -> Tensor:
        """[k, 5] RoIs -> [k, C, 28, 28] mask logits."""
        feats = self.mask_roi_extractor(x[:self.mask_roi_extractor.num_inputs], rois)
        return self.mask_head(feats)

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
        cls_score, bbox_pred = self._bbox_forward(x, rois)
        targets = self.bbox_head.get_targets(sampling_results, self.train_cfg)
        losses = self.bbox_head.loss(cls_score, bbox_pred, *targets, rois=rois)

        if self.with_mask:
            pos_rois = bbox2roi([res.pos_bboxes for res in sampling_results])
            mask_pred = self._mask_forward(x, pos_rois)
            mask_targets = self.mask_head.get_targets(sampling_results, gt_masks, self.train_cfg)
            pos_labels = torch.cat([res.pos_gt_labels for res in sampling_results])
            losses.update(self.mask_head.loss(mask_pred, mask_targets, pos_labels))
        return losses

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
