"""mmdetection v2's inference API: ``init_detector``, ``inference_detector``, ``show_result_pyplot``.

``init_detector`` builds the detector of a config for testing (weights from a checkpoint, wrapped
for fp16/bf16 as training wrapped it when the config has ``fp16``); ``inference_detector`` runs it
on image files or BGR arrays through the config's test pipeline.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from mixprec.checkpoint import load_checkpoint
from mixprec.config import Config, cpu_winograd, load_config
from mixprec.data import COCO_CLASSES, collate
from mixprec.data.pipelines import Compose
from mixprec.engine.runner import move_to_device
from mixprec.fp16 import resolve_dtype, wrap_fp16_model
from mixprec.models import build_detector, place_model
from mixprec.registry import ConfigError

ImageInput = Union[str, Path, np.ndarray]


def _without_pretrained(model_cfg: dict) -> dict:
    """The checkpoint brings every weight: drop the backbone's pretrained init (no torchvision file needed)."""
    model_cfg = dict(model_cfg)
    if isinstance(model_cfg.get('backbone'), dict):
        model_cfg['backbone'] = dict(model_cfg['backbone'], init_cfg=None)
    model_cfg.pop('pretrained', None)
    return model_cfg


def _device(device: Union[None, str, torch.device]) -> torch.device:
    if device is None:
        return torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f'device {device!r}: expected "cpu", "cuda" or "cuda:N"') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f'device {device}: CUDA is not available here (use --device cpu)')
    return device


def init_detector(config: Union[str, Path, Config], checkpoint: Optional[str] = None,
                  device: Union[None, str, torch.device] = None, cfg_options: Optional[dict] = None,
                  trusted: bool = False, classes: Optional[Sequence[str]] = None, strict: bool = False) -> nn.Module:
    """A detector in eval mode on ``device`` (default ``cuda:0`` when there is a GPU, else the CPU).

    ``config``: a config file or a :class:`Config` (``cfg_options`` merged into it). With a
    ``checkpoint``, ``model.CLASSES`` is its ``meta.CLASSES``, else ``classes``, else COCO's with a
    warning (as mmdetection v2). With ``fp16`` in the config the model is wrapped as in training.
    The config is kept as ``model.cfg`` for :func:`inference_detector`.
    """
    if isinstance(config, (str, Path)):
        config = load_config(str(config), cfg_options)
    elif isinstance(config, Config):
        if cfg_options:
            config = copy.deepcopy(config)
            config.merge_from_dict(cfg_options)
    else:
        raise ConfigError(f'init_detector: config must be a file name or a Config, got {type(config).__name__}')
    device = _device(device)
    model = build_detector(_without_pretrained(config.model))
    ckpt: dict = {}
    if checkpoint is not None:
        ckpt = load_checkpoint(model, checkpoint, map_location='cpu', strict=strict, trusted=trusted)
    fp16_cfg = config.get('fp16')
    if fp16_cfg is not None:
        dtype = resolve_dtype(fp16_cfg.get('dtype', 'float16'), device)
        if dtype is not torch.float32:  # 'auto' declines mixed precision where it does not pay
            wrap_fp16_model(model, dtype=dtype, mode=fp16_cfg.get('mode', 'master'),
                            fp32_modules=fp16_cfg.get('fp32_modules'))
    names = (ckpt.get('meta') or {}).get('CLASSES') or classes
    if names is None and checkpoint is not None:
        warnings.warn(f"{checkpoint}: no meta['CLASSES'] in the checkpoint, using COCO's class names")
        names = COCO_CLASSES
    model.CLASSES = tuple(names or getattr(model, 'CLASSES', None) or ())
    model.cfg = config
    return place_model(model, device, winograd=cpu_winograd(config, config.filename or 'config')).eval()


def _array_sample(img: np.ndarray) -> dict:
    """What LoadImageFromFile gives for a BGR ``[H, W, 3]`` array already in memory."""
    if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3):
        raise ConfigError(f'inference_detector: an image array must be BGR [H, W, 3], got shape '
                          f'{getattr(img, "shape", None)}')
    return dict(img=img, filename=None, ori_filename=None, img_shape=img.shape, ori_shape=img.shape,
                img_fields=['img'])


def _test_pipelines(cfg: Config) -> tuple[Compose, Compose]:
    """The config's test pipeline for files, and the same without its loading step for arrays."""
    steps = list(cfg.data.test.pipeline)
    if not steps or steps[0].get('type') != 'LoadImageFromFile':
        raise ConfigError('data.test.pipeline: inference_detector needs LoadImageFromFile as the first step, '
                          f'got {steps[0] if steps else "an empty pipeline"}')
    return Compose(steps), Compose(steps[1:])


@torch.no_grad()
def inference_detector(model: nn.Module, imgs: Union[ImageInput, Sequence[ImageInput]]):
    """Results of ``model`` (from :func:`init_detector`) for one image or a list of them.

    ``imgs``: a file path, a BGR ``[H, W, 3]`` uint8 array (as ``mmcv.imread`` gives), or a list or
    tuple of them. Returns one result (per-class ``[n, 5]`` arrays, with masks for Mask R-CNN) for
    one image, a list of results for a list, boxes in the original image's pixels.
    """
    cfg = getattr(model, 'cfg', None)
    if cfg is None:
        raise ConfigError('inference_detector: the model has no .cfg; build it with init_detector')
    batch = isinstance(imgs, (list, tuple))
    items = list(imgs) if batch else [imgs]
    if not items:
        return []
    from_file, from_array = _test_pipelines(cfg)
    samples = []
    for img in items:
        if isinstance(img, np.ndarray):
            samples.append(from_array(_array_sample(img)))
        else:
            samples.append(from_file(dict(img_info=dict(filename=str(img)), img_prefix=None)))
    device = next(model.parameters()).device
    data = move_to_device(collate(samples), device)
    results = model(return_loss=False, rescale=True, **data)
    return results if batch else results[0]


def show_result_pyplot(model: nn.Module, img: ImageInput, result, score_thr: float = 0.3, title: str = 'result',
                       wait_time: float = 0, palette=None, out_file: Optional[str] = None) -> None:
    """Draw ``result`` on ``img`` and show it in a window, or write it to ``out_file`` (mmdetection v2)."""
    model = getattr(model, 'module', model)
    model.show_result(img, result, score_thr=score_thr, show=True, wait_time=wait_time, win_name=title,
                      bbox_color=palette, text_color=(200, 200, 200), mask_color=palette, out_file=out_file)
