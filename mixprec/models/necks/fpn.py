"""Feature Pyramid Network (Lin et al., 2017), mmdetection v2's FPN with its key names."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch.nn.functional as F
from torch import Tensor, nn

from mixprec.fp16 import auto_fp16
from mixprec.models.layers import ConvModule
from mixprec.registry import MODELS, ConfigError


@MODELS.register_module()
class FPN(nn.Module):
    """Top-down pathway with lateral 1x1 convs and 3x3 output convs, plus extra coarser levels.

    Args:
        in_channels: channels of each backbone output.
        out_channels: channels of every pyramid level.
        num_outs: pyramid levels returned.
        start_level, end_level: backbone outputs used (end_level inclusive, -1 = last).
        add_extra_convs: False: extra levels by ``max_pool2d(kernel 1, stride 2)`` of the last output;
            'on_input' / 'on_lateral' / 'on_output' (True = 'on_input'): 3x3 stride-2 convs, the first
            applied to the last used backbone output / lateral / pyramid output, the next ones to the
            previous extra level.
        relu_before_extra_convs: ReLU before every extra conv after the first.
        upsample_cfg: ``F.interpolate`` arguments; without ``scale_factor`` the coarser level is
            resized to the finer one's size.
        norm_cfg, act_cfg: for the lateral and output convs (None in the reference models).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int,
                 start_level: int = 0, end_level: int = -1,
                 add_extra_convs: Union[bool, str] = False, relu_before_extra_convs: bool = False,
                 upsample_cfg: Optional[dict] = None, norm_cfg: Optional[dict] = None,
                 act_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.fp16_enabled = False
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.upsample_cfg = dict(upsample_cfg) if upsample_cfg is not None else dict(mode='nearest')
        num_ins = len(self.in_channels)
        if end_level in (-1, num_ins - 1):
            self.backbone_end_level = num_ins
        elif 0 <= end_level < num_ins:
            self.backbone_end_level = end_level + 1
        else:
            raise ConfigError(f'FPN end_level must be -1 or in [0, {num_ins}), got {end_level}')
        if not 0 <= start_level < self.backbone_end_level:
            raise ConfigError(f'FPN start_level {start_level} must be below the end level')
        if num_outs < self.backbone_end_level - start_level:
            raise ConfigError(f'FPN num_outs {num_outs} is fewer than the {self.backbone_end_level - start_level} '
                             'backbone levels used')
        self.start_level = start_level
        if add_extra_convs is True:
            add_extra_convs = 'on_input'
        if add_extra_convs not in (False, 'on_input', 'on_lateral', 'on_output'):
            raise ConfigError("FPN add_extra_convs must be False, True, 'on_input', 'on_lateral' or 'on_output', "
                             f'got {add_extra_convs!r}')
        self.add_extra_convs = add_extra_convs

        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(start_level, self.backbone_end_level):
            self.lateral_convs.append(ConvModule(self.in_channels[i], out_channels, 1, norm_cfg=norm_cfg,
                                                 act_cfg=act_cfg, inplace=False))
            self.fpn_convs.append(ConvModule(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg,
                                             act_cfg=act_cfg, inplace=False))
        extra_levels = num_outs - self.backbone_end_level + start_level
        if add_extra_convs:
            for i in range(extra_levels):
                if i == 0 and add_extra_convs == 'on_input':
                    extra_in = self.in_channels[self.backbone_end_level - 1]
                else:
                    extra_in = out_channels
                self.fpn_convs.append(ConvModule(extra_in, out_channels, 3, stride=2, padding=1,
                                                 norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False))
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform convs, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @auto_fp16(apply_to=('inputs', ))
    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Backbone maps -> ``num_outs`` maps [B, out_channels, H_l, W_l], finest first."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f'FPN expects {len(self.in_channels)} inputs, got {len(inputs)}')
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        used = len(laterals)
        for i in range(used - 1, 0, -1):
            if 'scale_factor' in self.upsample_cfg:
                upsampled = F.interpolate(laterals[i], **self.upsample_cfg)
            else:
                upsampled = F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], **self.upsample_cfg)
            laterals[i - 1] = laterals[i - 1] + upsampled
        outs = [self.fpn_convs[i](laterals[i]) for i in range(used)]
        if self.num_outs > used:
            if not self.add_extra_convs:
                for _ in range(self.num_outs - used):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                if self.add_extra_convs == 'on_input':
                    source = inputs[self.backbone_end_level - 1]
                elif self.add_extra_convs == 'on_lateral':
                    source = laterals[-1]
                else:
                    source = outs[-1]
                outs.append(self.fpn_convs[used](source))
                for i in range(used + 1, self.num_outs):
                    prev = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                    outs.append(self.fpn_convs[i](prev))
        return tuple(outs)
