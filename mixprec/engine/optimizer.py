"""Optimizers from config: ``optimizer = dict(type='SGD', lr=..., paramwise_cfg=..., constructor=...)``.

``DefaultOptimizerConstructor`` builds the param groups as mmcv 1.x's did: without
``paramwise_cfg`` one group with all of ``model.parameters()``; with it, one group per parameter,
walking modules depth-first (a module's own parameters, then its children), where

- a frozen parameter (``requires_grad=False``) is a group of its own with the optimizer's defaults;
- with ``bypass_duplicate``, a parameter already in a group (shared modules) is skipped with a warning;
- the longest ``custom_keys`` key contained in ``'{module prefix}.{param name}'`` (ties: alphabetical
  first) sets ``lr = base_lr * lr_mult`` and ``weight_decay = base_wd * decay_mult`` and the other
  rules are skipped;
- otherwise ``bias_lr_mult`` scales the lr of biases outside norm layers and deformable convs,
  ``dcn_offset_lr_mult`` the lr of a deformable conv's ``conv_offset``, and the weight decay is
  scaled by ``norm_decay_mult`` (norm layers), else ``dwconv_decay_mult`` (depthwise convs), else
  ``bias_decay_mult`` (biases outside deformable convs).

Other constructors register in ``OPTIMIZER_BUILDERS``: a class built with ``optimizer_cfg`` and
``paramwise_cfg`` whose call on the model returns the optimizer.
"""
from __future__ import annotations

import copy
import logging
import warnings
from typing import Optional

import torch
from torch import nn

from mixprec.registry import OPTIMIZER_BUILDERS, OPTIMIZERS, ConfigError

logger = logging.getLogger(__name__)

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm,
               nn.LayerNorm)
#: Class names of deformable convolutions (mmcv.ops, torchvision.ops); their offset conv is
#: ``conv_offset``. mixprec itself ships none.
DCN_CLASS_NAMES = ('DeformConv2d', 'DeformConv2dPack', 'ModulatedDeformConv2d', 'ModulatedDeformConv2dPack')
PARAMWISE_KEYS = ('custom_keys', 'bias_lr_mult', 'bias_decay_mult', 'norm_decay_mult', 'dwconv_decay_mult',
                  'dcn_offset_lr_mult', 'bypass_duplicate')
CUSTOM_KEY_OPTIONS = ('lr_mult', 'decay_mult')
DECAY_MULTS = ('bias_decay_mult', 'norm_decay_mult', 'dwconv_decay_mult')


def is_dcn(module: nn.Module) -> bool:
    return type(module).__name__ in DCN_CLASS_NAMES


@OPTIMIZER_BUILDERS.register_module()
class DefaultOptimizerConstructor:
    """Builds ``optimizer_cfg['type']`` from ``torch.optim`` (or OPTIMIZERS) over the model's param groups.

    Args:
        optimizer_cfg: the ``optimizer`` section without ``paramwise_cfg`` and ``constructor``.
        paramwise_cfg: the per-parameter rules (module docstring); None for one plain group.
    """

    def __init__(self, optimizer_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        if not isinstance(optimizer_cfg, dict):
            raise ConfigError(f'optimizer must be a dict, got {type(optimizer_cfg).__name__}')
        if paramwise_cfg is not None and not isinstance(paramwise_cfg, dict):
            raise ConfigError(f'optimizer.paramwise_cfg must be None or a dict, got {paramwise_cfg!r}')
        self.optimizer_cfg = dict(optimizer_cfg)
        self.paramwise_cfg = dict(paramwise_cfg or {})
        self.base_lr = optimizer_cfg.get('lr')
        self.base_wd = optimizer_cfg.get('weight_decay')
        self._validate()

    def _validate(self) -> None:
        cfg = self.paramwise_cfg
        unknown = [k for k in cfg if k not in PARAMWISE_KEYS]
        if unknown:
            raise ConfigError(f'optimizer.paramwise_cfg: unknown key {unknown[0]!r}; known: {", ".join(PARAMWISE_KEYS)}')
        custom_keys = cfg.get('custom_keys', {})
        if not isinstance(custom_keys, dict):
            raise ConfigError(f'optimizer.paramwise_cfg.custom_keys must be a dict of dicts, got {custom_keys!r}')
        for key, options in custom_keys.items():
            if not isinstance(options, dict) or any(k not in CUSTOM_KEY_OPTIONS for k in options):
                raise ConfigError(f'optimizer.paramwise_cfg.custom_keys[{key!r}] must be a dict of '
                                  f'{" and/or ".join(CUSTOM_KEY_OPTIONS)}, got {options!r}')
            if 'decay_mult' in options and self.base_wd is None:
                raise ConfigError(f'optimizer.paramwise_cfg.custom_keys[{key!r}].decay_mult needs '
                                  f'optimizer.weight_decay to be set')
        for key in DECAY_MULTS:
            if key in cfg and self.base_wd is None:
                raise ConfigError(f'optimizer.paramwise_cfg.{key} needs optimizer.weight_decay to be set')
        if cfg and self.base_lr is None and ('custom_keys' in cfg or 'bias_lr_mult' in cfg
                                             or 'dcn_offset_lr_mult' in cfg):
            raise ConfigError('optimizer.paramwise_cfg: lr multipliers need optimizer.lr to be set')

    def __call__(self, model: nn.Module) -> torch.optim.Optimizer:
        model = getattr(model, 'module', model)
        cfg = dict(self.optimizer_cfg)
        if not self.paramwise_cfg:
            cfg['params'] = model.parameters()
            return OPTIMIZERS.build(cfg)
        if 'dcn_offset_lr_mult' in self.paramwise_cfg and not any(is_dcn(m) for m in model.modules()):
            logger.warning('optimizer.paramwise_cfg.dcn_offset_lr_mult: the model has no deformable '
                           'convolution, so it changes no parameter')
        groups: list[dict] = []
        self.add_params(groups, model)
        cfg['params'] = groups
        return OPTIMIZERS.build(cfg)

    def add_params(self, groups: list[dict], module: nn.Module, prefix: str = '',
                   is_dcn_module: bool = False) -> None:
        """Append one group per parameter of ``module`` and (recursively) of its children.

        ``is_dcn_module``: ``module`` is a child of a deformable convolution (its ``conv_offset``).
        """
        cfg = self.paramwise_cfg
        custom_keys = cfg.get('custom_keys', {})
        sorted_keys = sorted(sorted(custom_keys), key=len, reverse=True)
        is_norm = isinstance(module, NORM_LAYERS)
        is_dwconv = isinstance(module, nn.Conv2d) and module.in_channels == module.groups
        for name, param in module.named_parameters(recurse=False):
            group = {'params': [param]}
            if not param.requires_grad:
                groups.append(group)
                continue
            if cfg.get('bypass_duplicate', False) and any(param is p for g in groups for p in g['params']):
                warnings.warn(f'{prefix}.{name} is a duplicate; it is skipped since bypass_duplicate=True')
                continue
            key = next((k for k in sorted_keys if k in f'{prefix}.{name}'), None)
            if key is not None:
                group['lr'] = self.base_lr * custom_keys[key].get('lr_mult', 1.)
                if self.base_wd is not None:
                    group['weight_decay'] = self.base_wd * custom_keys[key].get('decay_mult', 1.)
            else:
                self._apply_rules(group, name, prefix, module, is_norm, is_dwconv, is_dcn_module)
            groups.append(group)
        child_is_dcn = is_dcn(module)
        for child_name, child in module.named_children():
            self.add_params(groups, child, f'{prefix}.{child_name}' if prefix else child_name, child_is_dcn)

    def _apply_rules(self, group: dict, name: str, prefix: str, module: nn.Module, is_norm: bool,
                     is_dwconv: bool, is_dcn_module: bool) -> None:
        cfg = self.paramwise_cfg
        if name == 'bias' and not (is_norm or is_dcn_module):
            group['lr'] = self.base_lr * cfg.get('bias_lr_mult', 1.)
        if 'conv_offset' in prefix and is_dcn_module and isinstance(module, nn.Conv2d):
            group['lr'] = self.base_lr * cfg.get('dcn_offset_lr_mult', 1.)
        if self.base_wd is None:
            return
        if is_norm:
            group['weight_decay'] = self.base_wd * cfg.get('norm_decay_mult', 1.)
        elif is_dwconv:
            group['weight_decay'] = self.base_wd * cfg.get('dwconv_decay_mult', 1.)
        elif name == 'bias' and not is_dcn_module:
            group['weight_decay'] = self.base_wd * cfg.get('bias_decay_mult', 1.)


def build_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """mmcv 1.x's ``build_optimizer``: ``cfg['constructor']`` (default DefaultOptimizerConstructor)
    built with the rest of ``cfg`` and its ``paramwise_cfg``, then called on ``model``."""
    optimizer_cfg = copy.deepcopy(dict(cfg))
    constructor = optimizer_cfg.pop('constructor', 'DefaultOptimizerConstructor')
    paramwise_cfg = optimizer_cfg.pop('paramwise_cfg', None)
    builder = OPTIMIZER_BUILDERS.build(dict(type=constructor, optimizer_cfg=optimizer_cfg,
                                            paramwise_cfg=paramwise_cfg))
    return builder(model)
