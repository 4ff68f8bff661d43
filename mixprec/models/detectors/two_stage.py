"""Two-stage detectors: backbone, neck, RPN proposals, then an RoI head."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from mixprec.registry import MODELS, required

from .base import BaseDetector


@MODELS.register_module()
class TwoStageDetector(BaseDetector):
    """Backbone + neck + RPN head + RoI head (mmdetection v2's TwoStageDetector).

    ``train_cfg`` / ``test_cfg`` hold ``rpn``, ``rpn_proposal`` (train only) and ``rcnn``; the
    ``rpn`` parts go to the RPN head, ``rcnn`` to the RoI head, ``rpn_proposal`` (or, without it,
    the test ``rpn`` config) drives the training proposals.

    Args:
        backbone, neck, rpn_head, roi_head: configs of the parts.
        train_cfg, test_cfg: see above.
        pretrained: checkpoint of the backbone (deprecated spelling of the backbone's
            ``init_cfg=dict(type='Pretrained', checkpoint=...)``).
        init_cfg: passed to :class:`BaseDetector`.
    """

    def __init__(self, backbone: dict, neck: Optional[dict] = None, rpn_head: Optional[dict] = None,
                 roi_head: Optional[dict] = None, train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None, pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        backbone = dict(backbone)
        if pretrained is not None:
            backbone['init_cfg'] = dict(type='Pretrained', checkpoint=pretrained)
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg
        self.backbone = MODELS.build(backbone)
        if neck is not None:
            self.neck = MODELS.build(neck)
        if rpn_head is not None:
            self.rpn_head = MODELS.build(dict(rpn_head, **self._part_cfgs('rpn')))
        if roi_head is not None:
            self.roi_head = MODELS.build(dict(roi_head, **self._part_cfgs('rcnn')))

    def _part_cfgs(self, part: str) -> dict:
        """``train_cfg`` / ``test_cfg`` of a head: the detector's ``part`` ('rpn' or 'rcnn') sections."""
        return {key: None if cfg is None else required(cfg, part, f'model.{key}')
                for key, cfg in (('train_cfg', self.train_cfg), ('test_cfg', self.test_cfg))}

    @property
    def with_rpn(self) -> bool:
        return hasattr(self, 'rpn_head')

    def forward_train(self, img: Tensor, img_metas: list[dict], gt_bboxes: list[Tensor],
                      gt_labels: list[Tensor], gt_bboxes_ignore: Optional[list[Tensor]] = None,
                      gt_masks: Optional[list[Tensor]] = None,
                      proposals: Optional[list[Tensor]] = None) -> dict[str, Tensor]:
        """Losses of a training batch (see docs/contracts.md for the inputs).

        Returns:
            ``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``acc``, ``loss_bbox``
            (and ``loss_mask``).
        """
        x = self.extract_feat(img)
        losses = dict()
        if self.with_rpn:
            proposal_cfg = self.train_cfg.get('rpn_proposal', self.test_cfg['rpn'])
            rpn_losses, proposal_list = self.rpn_head.forward_train(
                x, img_metas, gt_bboxes, gt_labels=None, gt_bboxes_ignore=gt_bboxes_ignore,
                proposal_cfg=proposal_cfg)
            losses.update(rpn_losses)
        else:
            proposal_list = proposals
        losses.update(self.roi_head.forward_train(x, img_metas, proposal_list, gt_bboxes, gt_labels,
                                                  gt_bboxes_ignore, gt_masks))
        return losses

    def simple_test(self, img: Tensor, img_metas: list[dict], proposals: Optional[list[Tensor]] = None,
                    rescale: bool = True) -> list:
        """Per image results in the original image's coordinates when ``rescale``."""
        x = self.extract_feat(img)
        if proposals is None:
            proposals = self.rpn_head.simple_test_rpn(x, img_metas)
        return self.roi_head.simple_test(x, proposals, img_metas, rescale=rescale)
