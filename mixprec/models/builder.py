"""Thin helpers that build model parts from config dicts through the registries."""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import nn

from mixprec.fp16 import convs_to_channels_last
from mixprec.registry import MODELS, TASK_UTILS

from .fast_conv import fold_batchnorms, use_fast_convs


def build_backbone(cfg: dict) -> nn.Module:
    return MODELS.build(cfg)


def build_neck(cfg: dict) -> nn.Module:
    return MODELS.build(cfg)


def build_head(cfg: dict) -> nn.Module:
    return MODELS.build(cfg)


def build_loss(cfg: dict) -> nn.Module:
    return MODELS.build(cfg)


def build_task_util(cfg: dict, default_args: Optional[dict] = None) -> Any:
    """Anchor generators, box coders, assigners and samplers."""
    return TASK_UTILS.build(cfg, default_args)


def build_detector(cfg: dict, train_cfg: Optional[dict] = None, test_cfg: Optional[dict] = None) -> nn.Module:
    """Build a detector from ``cfg`` (train_cfg / test_cfg normally live inside ``cfg``).

    The detector initialises its weights in its constructor (``init_weights()``), so the result is
    ready to train; build it after ``torch.manual_seed`` for reproducible weights.
    """
    defaults = {}
    if train_cfg is not None:
        defaults['train_cfg'] = train_cfg
    if test_cfg is not None:
        defaults['test_cfg'] = test_cfg
    return MODELS.build(cfg, default_args=defaults or None)


def place_model(model: nn.Module, device: Union[str, torch.device], winograd: bool = True) -> nn.Module:
    """``model.to(device)``, then the passes that keep its numbers and make it faster, each logged:
    BatchNorms fold into their convolutions while frozen (:func:`fold_batchnorms`), the convolution
    weights are stored channels_last, and on the CPU the convolutions get their fast routes
    (:func:`use_fast_convs`; ``winograd`` is the config's ``cpu_winograd``).

    Decided per device, the same for fp32 and mixed precision there, so that a comparison of the two
    is about precision alone (the fp16 hook's master mode stores the weights channels_last anyway):

    - CPU: oneDNN's convolutions work in channels_last, so the whole network runs and returns that
      layout without a conversion per call. A frozen BatchNorm whose gamma trains is folded in fp32,
      not in half precision (:func:`folds_with_trainable_gamma`): the one difference left there.
    - CUDA (and other devices): channels_last, as cuDNN's tensor-core convolutions (fp16, bf16, TF32)
      work in NHWC; such a norm is not folded in any precision, as mmdetection runs it.
    """
    model = model.to(device)
    fold_batchnorms(model)
    convs_to_channels_last(model)
    if torch.device(device).type == 'cpu':
        use_fast_convs(model, winograd)
    return model
