"""Base detector: the train / test dispatch shared by every detector."""
from __future__ import annotations

from typing import Optional, Sequence, Union

from torch import Tensor, nn

from mixprec.fp16 import auto_fp16
from mixprec.registry import ConfigError


class BaseDetector(nn.Module):
    """``forward(img, img_metas, return_loss=True, **kwargs)`` dispatches to ``forward_train``
    (a dict of losses) or ``forward_test`` (per image results, see docs/contracts.md).

    Subclasses build ``backbone`` (and optionally ``neck``) and implement ``forward_train`` and
    ``simple_test``. Every part initialises its own weights in its constructor, so a detector is
    ready once built; build it after ``torch.manual_seed`` for reproducible weights.

    Attributes:
        CLASSES: class names, set by the tools from the dataset or checkpoint meta.
        fp16_enabled: set by ``wrap_fp16_model``; the image is then cast to half on entry.
    """

    CLASSES: Optional[Sequence[str]] = None

    def __init__(self, init_cfg: Optional[dict] = None) -> None:
        super().__init__()
        if init_cfg is not None:
            raise ConfigError('detectors initialise their parts themselves; the detector init_cfg must be None '
                             '(use the backbone init_cfg for pretrained weights)')
        self.fp16_enabled = False

    @property
    def with_neck(self) -> bool:
        return getattr(self, 'neck', None) is not None

    def extract_feat(self, img: Tensor) -> tuple[Tensor, ...]:
        """img [B, 3, H, W] -> feature maps (the neck's outputs when there is a neck)."""
        x = self.backbone(img)
        if self.with_neck:
            x = self.neck(x)
        return x

    def forward_train(self, img: Tensor, img_metas: list[dict], **kwargs) -> dict:
        raise NotImplementedError

    def simple_test(self, img: Tensor, img_metas: list[dict], rescale: bool = True) -> list:
        raise NotImplementedError

    def aug_test(self, imgs: list[Tensor], img_metas: list[list[dict]], rescale: bool = True) -> list:
        raise NotImplementedError(f'{type(self).__name__} has no test-time augmentation; '
                                  'use a test pipeline with one scale and no flip')

    def forward_test(self, imgs: Union[Tensor, list[Tensor]], img_metas: Union[list[dict], list[list[dict]]],
                     rescale: bool = True, **kwargs) -> list:
        """Per image results. ``imgs`` is a list over augmentations of [B, 3, H, W] (with
        ``img_metas`` a list over augmentations of lists of dicts) or a plain Tensor."""
        if isinstance(imgs, Tensor):
            imgs, img_metas = [imgs], [img_metas]
        if len(imgs) != len(img_metas):
            raise ValueError(f'{len(imgs)} augmentations of images but {len(img_metas)} of img_metas')
        for img, metas in zip(imgs, img_metas):
            if img.size(0) != len(metas):
                raise ValueError(f'batch of {img.size(0)} images but {len(metas)} img_metas')
            for meta in metas:
                meta['batch_input_shape'] = tuple(img.shape[-2:])
        if len(imgs) == 1:
            return self.simple_test(imgs[0], img_metas[0], rescale=rescale, **kwargs)
        return self.aug_test(imgs, img_metas, rescale=rescale, **kwargs)

    def show_result(self, img, result, score_thr: float = 0.3, **kwargs):
        """Draw ``result`` on ``img`` with this detector's CLASSES (see :func:`mixprec.visualization.show_result`)."""
        from mixprec.visualization import show_result
        return show_result(img, result, self.CLASSES or (), score_thr=score_thr, **kwargs)

    @auto_fp16(apply_to=('img', ))
    def forward(self, img: Union[Tensor, list[Tensor]], img_metas: Union[list[dict], list[list[dict]]],
                return_loss: bool = True, **kwargs):
        """Training: losses (``dict`` of scalar Tensors or lists of them); test: per image results."""
        if return_loss:
            for meta in img_metas:
                meta['batch_input_shape'] = tuple(img.shape[-2:])
            return self.forward_train(img, img_metas, **kwargs)
        return self.forward_test(img, img_metas, **kwargs)
