"""Thin helpers that build model parts from config dicts through the registries."""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import nn

from mixprec.fp16 import convs_to_channels_last
from mixprec.registry import MODELS, TASK_UTILS


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


def place_model(model: nn.Module, device: Union[str, torch.device]) -> nn.Module:
    """``model.to(device)`` with the convolution weights stored channels_last, on every device.

    Decided per device, the same for fp32 and mixed precision there, so that a comparison of the two
    is about precision alone (the fp16 hook's master mode stores the weights channels_last anyway):

    - CPU: channels_last, as oneDNN's convolutions work in that layout: the whole network then runs
      and returns it without a layout conversion per call. A frozen BatchNorm whose gamma trains is
      folded into its convolution in fp32, not in half precision (numerics; see
      ``backbones.layers.folds_with_trainable_gamma``): the one difference left there.
    - CUDA (and other devices): channels_last, as cuDNN's tensor-core convolutions (fp16, bf16 and
      TF32) work in NHWC; such a norm is not folded in any precision, as mmdetection runs it.
    """
    model = model.to(device)
    convs_to_channels_last(model)
    return model
