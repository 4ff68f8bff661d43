"""ResNet and ResNeXt backbones with torchvision's / mmdetection v2's parameter names.

One family with plain arguments: ``style`` puts the stride on the 3x3 ('pytorch') or on the first
1x1 conv ('caffe'), ``strides``/``dilations`` per stage give the DC5 variant, ``groups`` and
``base_width`` (:class:`ResNeXt`) widen and group the bottleneck. :func:`make_res_layer` builds one
stage; the C4 RoI head reuses it as its shared head.
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import torch.utils.checkpoint as cp
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mixprec.checkpoint import extract_state_dict, load_file, load_state_dict
from mixprec.registry import MODELS, ConfigError

from ..layers import build_norm_layer

logger = logging.getLogger(__name__)

STYLES = ('pytorch', 'caffe')


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); the first carries the stride and the dilation.

    ``style`` is accepted and has no effect, as in mmdetection (there is no 1x1 conv to move the
    stride to); ``groups`` must be 1 and ``width`` None (no ResNeXt basic block).
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None, style: str = 'pytorch',
                 norm_cfg: Optional[dict] = None, with_cp: bool = False, groups: int = 1,
                 width: Optional[int] = None) -> None:
        super().__init__()
        if groups != 1 or width is not None:
            raise ConfigError('BasicBlock (ResNet-18/34) has no groups / bottleneck width; use depth >= 50')
        norm_cfg = norm_cfg or dict(type='BN')
        self.with_cp = with_cp
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, planes, postfix='1')
        self.add_module(self.norm1_name, norm1)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.norm2_name, norm2 = build_norm_layer(norm_cfg, planes, postfix='2')
        self.add_module(self.norm2_name, norm2)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def norm1(self) -> nn.Module:
        return getattr(self, self.norm1_name)

    @property
    def norm2(self) -> nn.Module:
        return getattr(self, self.norm2_name)

    @property
    def last_norm(self) -> nn.Module:
        return self.norm2

    def conv_norm_pairs(self) -> list[tuple[str, str]]:
        """Each norm is applied to its conv's output and to nothing else (BatchNorm folding)."""
        return [('conv1', self.norm1_name), ('conv2', self.norm2_name)]

    def _residual(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.norm1(self.conv1(x)))
        return self.norm2(self.conv2(out)) + identity

    def forward(self, x: Tensor) -> Tensor:
        """[B, inplanes, H, W] -> [B, planes, H / stride, W / stride]."""
        if self.with_cp and x.requires_grad:
            return self.relu(cp.checkpoint(self._residual, x, use_reentrant=False))
        return self.relu(self._residual(x))


class Bottleneck(BasicBlock):
    """1x1 -> 3x3 (``groups``) -> 1x1 expanding ``planes`` by 4 (ResNet-50+ and ResNeXt).

    The stride sits on the 3x3 conv ('pytorch' style) or on the first 1x1 conv ('caffe' style).
    ``width`` is the channel count of the inner convs (``planes`` when None).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None, style: str = 'pytorch',
                 norm_cfg: Optional[dict] = None, with_cp: bool = False, groups: int = 1,
                 width: Optional[int] = None) -> None:
        nn.Module.__init__(self)
        if style not in STYLES:
            raise ConfigError(f'ResNet style must be one of {STYLES}, got {style!r}')
        norm_cfg = norm_cfg or dict(type='BN')
        width = planes if width is None else width
        conv1_stride, conv2_stride = (1, stride) if style == 'pytorch' else (stride, 1)
        self.with_cp = with_cp
        self.conv1 = nn.Conv2d(inplanes, width, 1, stride=conv1_stride, bias=False)
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, width, postfix='1')
        self.add_module(self.norm1_name, norm1)
        self.conv2 = nn.Conv2d(width, width, 3, stride=conv2_stride, padding=dilation, dilation=dilation,
                               groups=groups, bias=False)
        self.norm2_name, norm2 = build_norm_layer(norm_cfg, width, postfix='2')
        self.add_module(self.norm2_name, norm2)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.norm3_name, norm3 = build_norm_layer(norm_cfg, planes * self.expansion, postfix='3')
        self.add_module(self.norm3_name, norm3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def norm3(self) -> nn.Module:
        return getattr(self, self.norm3_name)

    @property
    def last_norm(self) -> nn.Module:
        return self.norm3

    def conv_norm_pairs(self) -> list[tuple[str, str]]:
        return super().conv_norm_pairs() + [('conv3', self.norm3_name)]

    def _residual(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.relu(self.norm2(self.conv2(out)))
        return self.norm3(self.conv3(out)) + identity


ARCH_SETTINGS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def bottleneck_width(planes: int, groups: int, base_width: int, base_channels: int) -> Optional[int]:
    """Inner width of a ResNeXt bottleneck (mmdetection's formula); None (= planes) for groups 1.

    floor(planes * base_width / base_channels) * groups, e.g. 32x4d, stage 1: 64 * 4 / 64 * 32 = 128.
    """
    if groups == 1:
        return None
    return math.floor(planes * (base_width / base_channels)) * groups


def make_res_layer(block: type, inplanes: int, planes: int, num_blocks: int, stride: int = 1,
                   dilation: int = 1, style: str = 'pytorch', norm_cfg: Optional[dict] = None,
                   with_cp: bool = False, groups: int = 1, width: Optional[int] = None) -> nn.Sequential:
    """One ResNet stage: ``num_blocks`` blocks, the first with ``stride`` and a 1x1 conv + norm
    ``downsample`` (keys ``0.downsample.0/1``) when the stride or the channels change."""
    norm_cfg = norm_cfg or dict(type='BN')
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
            build_norm_layer(norm_cfg, planes * block.expansion)[1])
    common = dict(dilation=dilation, style=style, norm_cfg=norm_cfg, with_cp=with_cp, groups=groups, width=width)
    layers = [block(inplanes, planes, stride, downsample=downsample, **common)]
    layers += [block(planes * block.expansion, planes, 1, **common) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers)


def init_resnet_weights(module: nn.Module, zero_init_residual: bool = False) -> None:
    """mmdetection's random init: kaiming-normal (fan_out) convs, unit norms, optionally each block's
    last norm at gamma = 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (_BatchNorm, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in module.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.last_norm.weight)


def pretrained_checkpoint(owner: str, init_cfg: Optional[dict], pretrained: Optional[str]) -> Optional[dict]:
    """The ``Pretrained`` init config from ``init_cfg`` or the deprecated ``pretrained`` string.

    Returns None (random init) or ``dict(checkpoint=..., prefix=...)``.
    """
    if pretrained is not None and init_cfg is not None:
        raise ConfigError(f'{owner}: give pretrained or init_cfg, not both')
    if pretrained is not None:
        if not isinstance(pretrained, str):
            raise ConfigError(f'{owner}: pretrained must be a checkpoint name (str) or None, got {pretrained!r}')
        return dict(checkpoint=pretrained, prefix=None)
    if init_cfg is None:
        return None
    cfg = dict(init_cfg) if isinstance(init_cfg, dict) else None
    if cfg is None or cfg.pop('type', None) != 'Pretrained' or 'checkpoint' not in cfg:
        raise ConfigError(f"{owner}: init_cfg must be dict(type='Pretrained', checkpoint=...) or None, got {init_cfg!r}")
    checkpoint, prefix = cfg.pop('checkpoint'), cfg.pop('prefix', None)
    cfg.pop('map_location', None)
    if cfg:
        raise ConfigError(f'{owner}: init_cfg keys {sorted(cfg)} are not supported (Pretrained takes checkpoint, prefix)')
    return dict(checkpoint=checkpoint, prefix=prefix)


def load_pretrained(module: nn.Module, checkpoint: str, prefix: Optional[str] = None,
                    keep: Optional[str] = None, unused: tuple[str, ...] = ()) -> dict:
    """Load ``checkpoint`` into ``module`` (mmcv's ``Pretrained`` init: no key conversion, not strict).

    ``prefix`` keeps the keys under it and strips it (mmcv's ``prefix``); without one, a whole
    detector's checkpoint gives its ``backbone.`` keys. ``keep`` keeps only keys starting with it
    (the shared head takes ``layer4.`` from a backbone file). The classifier ``fc.`` and the keys
    under ``unused`` (stages a C4 backbone does not build) are dropped.
    Returns the load report (missing / unexpected / mismatched keys).
    """
    state = extract_state_dict(load_file(checkpoint), checkpoint)
    if prefix is None and any(k.startswith('backbone.') for k in state):
        prefix = 'backbone.'
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items()
             if not k.startswith(('fc.', *unused)) and (keep is None or k.startswith(keep))}
    return load_state_dict(module, state, strict=False, logger=logger, source=checkpoint)


_UNSUPPORTED = dict(deep_stem=False, avg_down=False, conv_cfg=None, dcn=None, plugins=None)


@MODELS.register_module()
class ResNet(nn.Module):
    """ResNet-18/34/50/101/152 returning the feature maps of ``out_indices`` (mmdetection v2's ResNet).

    Parameter names are torchvision's (``conv1, bn1, layer1.0.conv1, ..., layer1.0.downsample.0/1``),
    so ``torchvision://resnet50``, the ``open-mmlab://`` caffe files and mmdetection v2 checkpoints
    load unchanged.

    Args:
        depth: 18, 34, 50, 101 or 152.
        in_channels: image channels.
        stem_channels: width of the 7x7 stem conv (default ``base_channels``).
        base_channels: width of layer1 (64 in the reference nets; smaller for CPU tests).
        num_stages: residual stages built (1-4); C4 heads use 3.
        strides, dilations: per stage, one entry per built stage (DC5: (1, 2, 2, 1), (1, 1, 1, 2)).
        out_indices: stages whose outputs are returned.
        style: 'pytorch' (stride on the 3x3 conv) or 'caffe' (stride on the first 1x1 conv).
        frozen_stages: -1 none; 0 the stem; k the stem and layer1..layerk (no grad, eval mode).
        norm_cfg: ``dict(type='BN' | 'SyncBN' | 'GN', requires_grad=True)``; requires_grad=False
            freezes every norm's affine parameters (the caffe configs).
        norm_eval: keep every BatchNorm in eval mode (frozen statistics) during training.
        with_cp: gradient checkpointing of each block (recompute in backward, less memory).
        zero_init_residual: last norm of each block starts at gamma = 0 (random init only).
        init_cfg: ``dict(type='Pretrained', checkpoint=NAME, prefix=None)`` or None; NAME is a path,
            ``torchvision://``, ``open-mmlab://``, ``mmcls://`` or an ``https://`` URL (see
            :func:`mixprec.checkpoint.resolve_checkpoint_path`).
        pretrained: deprecated spelling of ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
        deep_stem, avg_down, conv_cfg, dcn, stage_with_dcn, plugins: mmdetection's other variants;
            only their defaults are accepted (any other value is refused with one line).

    Weights are initialised in the constructor: from the checkpoint when one is configured, else
    kaiming-normal convs, unit norms and zero-init residual norms.
    """

    arch_settings = ARCH_SETTINGS

    def __init__(self, depth: int, in_channels: int = 3, stem_channels: Optional[int] = None,
                 base_channels: int = 64, num_stages: int = 4, strides: Sequence[int] = (1, 2, 2, 2),
                 dilations: Sequence[int] = (1, 1, 1, 1), out_indices: Sequence[int] = (0, 1, 2, 3),
                 style: str = 'pytorch', frozen_stages: int = -1, norm_cfg: Optional[dict] = None,
                 norm_eval: bool = True, with_cp: bool = False, zero_init_residual: bool = True,
                 init_cfg: Optional[dict] = None, pretrained: Optional[str] = None,
                 deep_stem: bool = False, avg_down: bool = False, conv_cfg: Optional[dict] = None,
                 dcn: Optional[dict] = None, stage_with_dcn: Sequence[bool] = (False, False, False, False),
                 plugins: Optional[list] = None) -> None:
        super().__init__()
        name = type(self).__name__
        self._refuse_variants(name, dict(deep_stem=deep_stem, avg_down=avg_down, conv_cfg=conv_cfg, dcn=dcn,
                                         plugins=plugins), stage_with_dcn)
        if depth not in self.arch_settings:
            raise ConfigError(f'{name} depth must be one of {sorted(self.arch_settings)}, got {depth!r}')
        if style not in STYLES:
            raise ConfigError(f'{name} style must be one of {STYLES}, got {style!r}')
        if not 1 <= num_stages <= 4:
            raise ConfigError(f'{name} num_stages must be 1..4, got {num_stages}')
        if len(strides) != num_stages or len(dilations) != num_stages:
            raise ConfigError(f'{name} strides {tuple(strides)} and dilations {tuple(dilations)} need one entry '
                              f'for each of the {num_stages} stages')
        if not out_indices or max(out_indices) >= num_stages:
            raise ConfigError(f'{name} out_indices {tuple(out_indices)} must index the {num_stages} stages')
        self.pretrained = pretrained_checkpoint(name, init_cfg, pretrained)
        self.depth = depth
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.zero_init_residual = zero_init_residual
        norm_cfg = norm_cfg or dict(type='BN', requires_grad=True)
        stem_channels = base_channels if stem_channels is None else stem_channels
        block, stage_blocks = self.arch_settings[depth]

        self.conv1 = nn.Conv2d(in_channels, stem_channels, 7, stride=2, padding=3, bias=False)
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, stem_channels, postfix='1')
        self.add_module(self.norm1_name, norm1)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self.res_layers = []
        inplanes = stem_channels
        for i in range(num_stages):
            planes = base_channels * 2 ** i
            layer = make_res_layer(block, inplanes, planes, stage_blocks[i], strides[i], dilations[i], style,
                                   norm_cfg, with_cp, **self._block_args(planes, base_channels))
            inplanes = planes * block.expansion
            self.add_module(f'layer{i + 1}', layer)
            self.res_layers.append(f'layer{i + 1}')
        self.out_channels = [base_channels * 2 ** i * block.expansion for i in range(num_stages)]

        self.init_weights()
        self._freeze_stages()

    @staticmethod
    def _refuse_variants(name: str, variants: dict, stage_with_dcn: Sequence[bool]) -> None:
        """Refuse mmdetection ResNet arguments that this family does not implement (one line)."""
        for key, value in variants.items():
            if value != _UNSUPPORTED[key]:
                raise ConfigError(f'{name}: {key}={value!r} is not implemented (only {key}={_UNSUPPORTED[key]!r})')
        if any(stage_with_dcn):
            raise ConfigError(f'{name}: stage_with_dcn={tuple(stage_with_dcn)!r} is not implemented (no DCN)')

    def _block_args(self, planes: int, base_channels: int) -> dict:
        """Extra block arguments of a stage (ResNeXt's groups and width)."""
        return {}

    def init_weights(self) -> None:
        """Load the configured checkpoint, or kaiming init with zero-init residuals."""
        if self.pretrained is not None:
            unused = tuple(f'layer{i}.' for i in range(len(self.res_layers) + 1, 5))
            load_pretrained(self, self.pretrained['checkpoint'], self.pretrained['prefix'], unused=unused)
            return
        init_resnet_weights(self, self.zero_init_residual)

    @property
    def norm1(self) -> nn.Module:
        return getattr(self, self.norm1_name)

    def conv_norm_pairs(self) -> list[tuple[str, str]]:
        """The stem's norm is applied to its conv's output and to nothing else (BatchNorm folding)."""
        return [('conv1', self.norm1_name)]

    def _freeze_stages(self) -> None:
        if self.frozen_stages >= 0:
            for m in (self.conv1, self.norm1):
                m.eval()
                for param in m.parameters():
                    param.requires_grad = False
        for i in range(1, self.frozen_stages + 1):
            layer = getattr(self, f'layer{i}')
            layer.eval()
            for param in layer.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'ResNet':
        """Switch mode, keeping frozen stages (and, with ``norm_eval``, every BatchNorm) in eval."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """x [B, C, H, W] -> feature maps of ``out_indices``, [B, out_channels[i], H / s_i, W / s_i]
        with s_i = 4 * strides[0] * ... * strides[i]."""
        x = self.maxpool(self.relu(self.norm1(self.conv1(x))))
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)


@MODELS.register_module()
class ResNeXt(ResNet):
    """ResNeXt-50/101/152: :class:`ResNet` whose bottlenecks have ``groups`` grouped 3x3 convs of
    width floor(planes * base_width / base_channels) * groups (x101 32x4d: groups 32, base_width 4).

    Same key names as ResNet (``layer1.0.conv2.weight`` [width, width / groups, 3, 3]), so the
    ``open-mmlab://resnext101_*`` and torchvision ``resnext*`` files load unchanged.
    ``zero_init_residual`` defaults to False: mmdetection v2's random init never zeroes ResNeXt's
    last norms (its check names ResNet's block class only).
    """

    arch_settings = {k: v for k, v in ARCH_SETTINGS.items() if v[0] is Bottleneck}

    def __init__(self, groups: int = 1, base_width: int = 4, zero_init_residual: bool = False, **kwargs) -> None:
        self.groups = groups
        self.base_width = base_width
        super().__init__(zero_init_residual=zero_init_residual, **kwargs)

    def _block_args(self, planes: int, base_channels: int) -> dict:
        return dict(groups=self.groups, width=bottleneck_width(planes, self.groups, self.base_width, base_channels))
