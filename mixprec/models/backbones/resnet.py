"""ResNet backbone with torchvision's parameter names (mmdetection v2 'pytorch' style)."""
from __future__ import annotations

import logging
from typing import Optional, Sequence

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mixprec.checkpoint import extract_state_dict, load_file, load_state_dict
from mixprec.registry import MODELS

from .layers import build_norm_layer

logger = logging.getLogger(__name__)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); the first one carries the stride."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None, norm_cfg: Optional[dict] = None) -> None:
        super().__init__()
        norm_cfg = norm_cfg or dict(type='BN')
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, planes, postfix='1')
        self.add_module(self.norm1_name, norm1)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.norm2_name, norm2 = build_norm_layer(norm_cfg, planes, postfix='2')
        self.add_module(self.norm2_name, norm2)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.Module:
        return getattr(self, self.norm2_name)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(getattr(self, self.norm1_name)(self.conv1(x)))
        out = getattr(self, self.norm2_name)(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here: 'pytorch' style) -> 1x1 expanding by 4 (ResNet-50/101)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None, norm_cfg: Optional[dict] = None) -> None:
        super().__init__()
        norm_cfg = norm_cfg or dict(type='BN')
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, planes, postfix='1')
        self.add_module(self.norm1_name, norm1)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.norm2_name, norm2 = build_norm_layer(norm_cfg, planes, postfix='2')
        self.add_module(self.norm2_name, norm2)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.norm3_name, norm3 = build_norm_layer(norm_cfg, planes * self.expansion, postfix='3')
        self.add_module(self.norm3_name, norm3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.Module:
        return getattr(self, self.norm3_name)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(getattr(self, self.norm1_name)(self.conv1(x)))
        out = self.relu(getattr(self, self.norm2_name)(self.conv2(out)))
        out = getattr(self, self.norm3_name)(self.conv3(out))
        return self.relu(out + identity)


@MODELS.register_module()
class ResNet(nn.Module):
    """ResNet-18/34/50/101 returning the feature maps of ``out_indices`` (strides 4, 8, 16, 32).

    Parameter names are torchvision's (``conv1, bn1, layer1.0.conv1, ..., layer1.0.downsample.0/1``),
    so ``torchvision://resnet50`` and mmdetection v2 checkpoints load unchanged.

    Args:
        depth: 18, 34, 50 or 101.
        in_channels: image channels.
        base_channels: width of the stem and of layer1 (64 in the reference nets; smaller values
            give narrow nets for CPU tests).
        num_stages: residual stages used (1-4).
        strides, dilations: per stage.
        out_indices: stages whose outputs are returned.
        style: only 'pytorch' (stride on the 3x3 conv).
        frozen_stages: -1 none; 0 the stem; k the stem and layer1..layerk (no grad, eval mode).
        norm_cfg: ``dict(type='BN' | 'SyncBN' | 'GN', requires_grad=True)``.
        norm_eval: keep every BatchNorm in eval mode (frozen statistics) during training.
        zero_init_residual: last norm of each block starts at gamma = 0 (random init only).
        init_cfg: ``dict(type='Pretrained', checkpoint='torchvision://resnet50' or a path)`` or None.
        pretrained: deprecated spelling of ``init_cfg=dict(type='Pretrained', checkpoint=...)``.

    Weights are initialised in the constructor: from the checkpoint when one is configured, else
    kaiming-normal convs, unit norms and zero-init residual norms.
    """

    arch_settings = {
        18: (BasicBlock, (2, 2, 2, 2)),
        34: (BasicBlock, (3, 4, 6, 3)),
        50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
    }

    def __init__(self, depth: int, in_channels: int = 3, base_channels: int = 64, num_stages: int = 4,
                 strides: Sequence[int] = (1, 2, 2, 2), dilations: Sequence[int] = (1, 1, 1, 1),
                 out_indices: Sequence[int] = (0, 1, 2, 3), style: str = 'pytorch',
                 frozen_stages: int = -1, norm_cfg: Optional[dict] = None, norm_eval: bool = True,
                 zero_init_residual: bool = True, init_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None) -> None:
        super().__init__()
        if depth not in self.arch_settings:
            raise ValueError(f'ResNet depth must be one of {sorted(self.arch_settings)}, got {depth!r}')
        if style != 'pytorch':
            raise ValueError(f"ResNet style must be 'pytorch', got {style!r}")
        if not 1 <= num_stages <= 4:
            raise ValueError(f'ResNet num_stages must be 1..4, got {num_stages}')
        if len(strides) < num_stages or len(dilations) < num_stages:
            raise ValueError('ResNet strides and dilations need one entry per stage')
        if not out_indices or max(out_indices) >= num_stages:
            raise ValueError(f'ResNet out_indices {tuple(out_indices)} must index the {num_stages} stages')
        if pretrained is not None and init_cfg is not None:
            raise ValueError('ResNet: give pretrained or init_cfg, not both')
        if pretrained is not None:
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        if init_cfg is not None and init_cfg.get('type') != 'Pretrained':
            raise ValueError(f"ResNet init_cfg must be dict(type='Pretrained', checkpoint=...) or None, got {init_cfg!r}")
        self.depth = depth
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.zero_init_residual = zero_init_residual
        self.init_cfg = init_cfg
        norm_cfg = norm_cfg or dict(type='BN', requires_grad=True)
        block, stage_blocks = self.arch_settings[depth]

        self.conv1 = nn.Conv2d(in_channels, base_channels, 7, stride=2, padding=3, bias=False)
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, base_channels, postfix='1')
        self.add_module(self.norm1_name, norm1)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self.res_layers = []
        inplanes = base_channels
        for i in range(num_stages):
            planes = base_channels * 2 ** i
            layer = self._make_layer(block, inplanes, planes, stage_blocks[i], strides[i], dilations[i], norm_cfg)
            inplanes = planes * block.expansion
            name = f'layer{i + 1}'
            self.add_module(name, layer)
            self.res_layers.append(name)
        self.out_channels = [base_channels * 2 ** i * block.expansion for i in range(num_stages)]

        self.init_weights()
        self._freeze_stages()

    @staticmethod
    def _make_layer(block: type, inplanes: int, planes: int, num_blocks: int, stride: int,
                    dilation: int, norm_cfg: dict) -> nn.Sequential:
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                build_norm_layer(norm_cfg, planes * block.expansion)[1])
        layers = [block(inplanes, planes, stride, dilation, downsample, norm_cfg)]
        layers += [block(planes * block.expansion, planes, 1, dilation, None, norm_cfg)
                   for _ in range(1, num_blocks)]
        return nn.Sequential(*layers)

    def init_weights(self) -> None:
        """Load the configured checkpoint, or kaiming init with zero-init residuals."""
        if self.init_cfg is not None:
            self._load_pretrained(self.init_cfg['checkpoint'])
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, (_BatchNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_norm.weight)

    def _load_pretrained(self, checkpoint: str) -> None:
        """A path or ``torchvision://name``; a whole detector's checkpoint gives its ``backbone.`` keys."""
        state = extract_state_dict(load_file(checkpoint), checkpoint)
        if any(k.startswith('backbone.') for k in state):
            state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
        state = {k: v for k, v in state.items() if not k.startswith('fc.')}
        load_state_dict(self, state, strict=False, logger=logger, source=checkpoint)

    def _freeze_stages(self) -> None:
        if self.frozen_stages >= 0:
            stem = [self.conv1, getattr(self, self.norm1_name)]
            for m in stem:
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
        """x [B, C, H, W] -> feature maps of ``out_indices``, [B, out_channels[i], H / 2^(i+2), W / 2^(i+2)]."""
        x = self.maxpool(self.relu(getattr(self, self.norm1_name)(self.conv1(x))))
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
