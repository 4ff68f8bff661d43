"""The Mask R-CNN mask head: a small FCN on 14x14 RoI features predicting 28x28 masks per class."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixprec.fp16 import auto_fp16, force_fp32
from mixprec.models.task_modules.mask_ops import mask_target, paste_masks_in_image
from mixprec.registry import MODELS


class ConvReLU(nn.Module):
    """3x3 convolution + ReLU, named ``conv`` as mmcv's ConvModule so checkpoints load."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x))


@MODELS.register_module()
class FCNMaskHead(nn.Module):
    """FCN mask head: ``num_convs`` 3x3 convs (``convs.i.conv``) + ReLU, a 2x ConvTranspose2d ``upsample`` + ReLU,
    and a 1x1 ``conv_logits`` with one mask channel per class.

    Args:
        num_convs: number of 3x3 convs.
        in_channels: channels of the RoI features.
        conv_out_channels: channels of the convs and of the upsampling.
        num_classes: number of object classes C.
        class_agnostic: predict one mask for all classes.
        loss_mask: config of the loss, ``CrossEntropyLoss(use_mask=True)``.
    """

    def __init__(self, num_convs: int = 4, in_channels: int = 256,
                 conv_out_channels: int = 256, num_classes: int = 80, class_agnostic: bool = False,
                 loss_mask: Optional[dict] = None) -> None:
        super().__init__()
        if loss_mask is None:
            loss_mask = dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0)
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.loss_mask = MODELS.build(loss_mask)
        self.fp16_enabled = False
        channels = [in_channels] + [conv_out_channels] * num_convs
        self.convs = nn.ModuleList(ConvReLU(channels[i], channels[i + 1]) for i in range(num_convs))
        self.upsample = nn.ConvTranspose2d(channels[-1], conv_out_channels, 2, stride=2)
        self.conv_logits = nn.Conv2d(conv_out_channels, 1 if class_agnostic else num_classes, 1)
        self.init_weights()

    def init_weights(self) -> None:
        """Kaiming-normal (fan_out, relu) weights and zero biases, as mmdetection v2."""
        for module in [c.conv for c in self.convs] + [self.upsample, self.conv_logits]:
            nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
            nn.init.zeros_(module.bias)

    @auto_fp16()
    def forward(self, x: Tensor) -> Tensor:
        """[k, C_in, s, s] RoI features -> [k, num_classes, 2s, 2s] mask logits."""
        for conv in self.convs:
            x = conv(x)
        x = F.relu(self.upsample(x))
        return self.conv_logits(x)

    def get_targets(self, sampling_results: Sequence, gt_masks: Sequence[Tensor],
                    rcnn_train_cfg: dict) -> Tensor:
        """[sum n_pos, mask_size, mask_size] binary targets of the positive RoIs of a batch."""
        return mask_target([res.pos_bboxes for res in sampling_results],
                           [res.pos_assigned_gt_inds for res in sampling_results],
                           gt_masks, rcnn_train_cfg['mask_size'])

    @force_fp32(apply_to=('mask_pred',))
    def loss(self, mask_pred: Tensor, mask_targets: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Per-pixel binary cross-entropy on the gt class channel of each positive RoI.

        Args:
            mask_pred: [n, C, m, m] logits; mask_targets: [n, m, m]; labels: [n] gt classes.
        """
        if mask_pred.size(0) == 0:
            return dict(loss_mask=mask_pred.sum() * 0)
        if self.class_agnostic:
            labels = torch.zeros_like(labels)
        return dict(loss_mask=self.loss_mask(mask_pred, mask_targets, labels))

    def get_seg_masks(self, mask_pred: Tensor, det_bboxes: Tensor, det_labels: Tensor,
                      img_shape: Sequence[int], mask_thr_binary: float = 0.5) -> list[list]:
        """Paste the predicted masks of one image's detections into the image.

        Args:
            mask_pred: [n, C, m, m] logits.
            det_bboxes: [n, 4+] boxes in the coordinates of the output image.
            det_labels: [n] classes.
            img_shape: (h, w, ...) of the output image.
            mask_thr_binary: probability threshold.

        Returns:
            per class, a list of [h, w] bool numpy masks (in the order of the detections).
        """
        num = mask_pred.size(0)
        channels = torch.zeros_like(det_labels) if self.class_agnostic else det_labels
        probs = mask_pred[torch.arange(num, device=mask_pred.device), channels].float().sigmoid()
        masks = paste_masks_in_image(probs, det_bboxes[:, :4], img_shape[:2], mask_thr_binary)
        masks = masks.cpu().numpy()
        cls_segms = [[] for _ in range(self.num_classes)]
        for mask, label in zip(masks, det_labels.tolist()):
            cls_segms[label].append(mask)
        return cls_segms
