"""Building a detector for testing: weights from a checkpoint, wrapped for fp16 as in training."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from mixprec.checkpoint import load_checkpoint
from mixprec.config import Config
from mixprec.fp16 import resolve_dtype, wrap_fp16_model
from mixprec.models import build_detector


def _without_pretrained(model_cfg: dict) -> dict:
    """The checkpoint brings every weight: drop the backbone's pretrained init (no torchvision file needed)."""
    model_cfg = dict(model_cfg)
    if isinstance(model_cfg.get('backbone'), dict):
        model_cfg['backbone'] = dict(model_cfg['backbone'], init_cfg=None)
    model_cfg.pop('pretrained', None)
    return model_cfg


def init_detector(cfg: Config, checkpoint: Optional[str] = None, device: Optional[torch.device] = None,
                  trusted: bool = False, classes: Optional[tuple] = None) -> nn.Module:
    """A detector in eval mode on ``device``; with ``cfg.fp16`` it is wrapped as training wrapped it."""
    device = device or torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    model = build_detector(_without_pretrained(cfg.model))
    fp16_cfg = cfg.get('fp16')
    ckpt: dict = {}
    if checkpoint is not None:
        ckpt = load_checkpoint(model, checkpoint, map_location='cpu', trusted=trusted)
    if fp16_cfg is not None:
        dtype = resolve_dtype(fp16_cfg.get('dtype', 'float16'), device.type)
        wrap_fp16_model(model, dtype=dtype, mode=fp16_cfg.get('mode', 'master'),
                        fp32_modules=fp16_cfg.get('fp32_modules'))
    model.CLASSES = tuple(ckpt.get('meta', {}).get('CLASSES') or classes or getattr(model, 'CLASSES', ()) or ())
    return model.to(device).eval()
