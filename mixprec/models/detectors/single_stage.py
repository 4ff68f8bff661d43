"""Single-stage detectors: backbone, neck and a dense head."""
from __future__ import annotations

from typing import Optional

import numpy as np
from torch import Tensor

from mixprec.models.task_modules.bbox_ops import bbox2result
from mixprec.registry import MODELS, ConfigError

from .base import BaseDetector


@MODELS.register_module()
class SingleStageDetector(BaseDetector):
    """Backbone + neck + dense box head (mmdetection v2's SingleStageDetector).

    Args:
        backbone, neck, bbox_head: configs of the parts; ``train_cfg`` / ``test_cfg`` go to the head.
        pretrained: deprecated spelling of the backbone's
            ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
        init_cfg: must be None (parts initialise themselves).
    """

    def __init__(self, backbone: dict, neck: Optional[dict] = None, bbox_head: Optional[dict] = None,
                 train_cfg: Optional[dict] = None, test_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        if bbox_head is None:
            raise ConfigError(f'{type(self).__name__} needs a bbox_head config')
        backbone = dict(backbone)
        if pretrained is not None:
            backbone['init_cfg'] = dict(type='Pretrained', checkpoint=pretrained)
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg
        self.backbone = MODELS.build(backbone)
        if neck is not None:
            self.neck = MODELS.build(neck)
        self.bbox_head = MODELS.build(dict(bbox_head, train_cfg=train_cfg, test_cfg=test_cfg))

    def forward_train(self, img: Tensor, img_metas: list[dict], gt_bboxes: list[Tensor],
                      gt_labels: list[Tensor], gt_bboxes_ignore: Optional[list[Tensor]] = None) -> dict:
        """``loss_cls`` and ``loss_bbox``, each a list over pyramid levels."""
        x = self.extract_feat(img)
        return self.bbox_head.forward_train(x, img_metas, gt_bboxes, gt_labels, gt_bboxes_ignore)

    def simple_test(self, img: Tensor, img_metas: list[dict], rescale: bool = True) -> list[list[np.ndarray]]:
        """Per image a list of ``num_classes`` float32 arrays [n_c, 5] (x1, y1, x2, y2, score), in the
        original image's coordinates when ``rescale``."""
        x = self.extract_feat(img)
        results = self.bbox_head.simple_test(x, img_metas, rescale=rescale)
        return [bbox2result(dets, labels, self.bbox_head.num_classes) for dets, labels in results]
