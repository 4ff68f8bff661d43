"""Normalization layers from config and the conv(-norm)(-ReLU) block with mmcv's key names."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from mixprec.registry import ConfigError

_NORM_TYPES = {'BN': ('bn', nn.BatchNorm2d), 'SyncBN': ('bn', nn.SyncBatchNorm), 'GN': ('gn', nn.GroupNorm)}


def build_norm_layer(cfg: dict, num_features: int, postfix: str = '') -> tuple[str, nn.Module]:
    """``(name, layer)`` for ``dict(type='BN' | 'SyncBN' | 'GN', requires_grad=True, ...)``.

    The name is 'bn' (BN, SyncBN) or 'gn' (GN) plus ``postfix``, as in mmcv, so ResNet's BN layers
    are ``bn1, bn2, ...`` like torchvision's. GN needs ``num_groups``; other keys (eps, momentum)
    go to the layer.
    """
    cfg = dict(cfg)
    norm_type = cfg.pop('type', None)
    if norm_type not in _NORM_TYPES:
        raise ConfigError(f'norm_cfg type must be one of {sorted(_NORM_TYPES)}, got {norm_type!r}')
    requires_grad = cfg.pop('requires_grad', True)
    abbr, layer_cls = _NORM_TYPES[norm_type]
    if norm_type == 'GN':
        if 'num_groups' not in cfg:
            raise ConfigError('norm_cfg type GN needs num_groups')
        layer = layer_cls(num_channels=num_features, **cfg)
    else:
        layer = layer_cls(num_features, **cfg)
    for param in layer.parameters():
        param.requires_grad = requires_grad
    return f'{abbr}{postfix}', layer


class ConvModule(nn.Module):
    """Conv2d, optional norm, optional ReLU, keyed ``conv``, ``bn``/``gn`` like mmcv's ConvModule.

    Args:
        bias: 'auto' means a bias only without a norm layer.
        norm_cfg: see :func:`build_norm_layer`; None for no norm.
        act_cfg: ``dict(type='ReLU')`` or None for no activation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, bias='auto', norm_cfg: Optional[dict] = None,
                 act_cfg: Optional[dict] = None, inplace: bool = True) -> None:
        super().__init__()
        if act_cfg is not None and act_cfg.get('type') != 'ReLU':
            raise ConfigError(f"ConvModule supports act_cfg=dict(type='ReLU') or None, got {act_cfg!r}")
        use_bias = norm_cfg is None if bias == 'auto' else bool(bias)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, bias=use_bias)
        self.norm_name = None
        if norm_cfg is not None:
            self.norm_name, norm = build_norm_layer(norm_cfg, out_channels)
            self.add_module(self.norm_name, norm)
        self.activate = nn.ReLU(inplace=inplace) if act_cfg is not None else None

    @property
    def norm(self) -> Optional[nn.Module]:
        return getattr(self, self.norm_name) if self.norm_name is not None else None

    def conv_norm_pairs(self) -> list[tuple[str, str]]:
        """The norm is applied to the conv's output and to nothing else (BatchNorm folding,
        :func:`mixprec.models.fast_conv.fold_batchnorms`)."""
        return [('conv', self.norm_name)] if self.norm_name is not None else []

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm_name is not None:
            x = self.norm(x)
        if self.activate is not None:
            x = self.activate(x)
        return x
