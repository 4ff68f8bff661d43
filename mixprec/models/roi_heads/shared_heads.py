"""The C4 RoI head's shared head: one ResNet stage run on each RoI's features (mmdetection v2's ResLayer)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mixprec.fp16 import auto_fp16
from mixprec.models.backbones.resnet import (ARCH_SETTINGS, init_resnet_weights, load_pretrained, make_res_layer,
                                             pretrained_checkpoint)
from mixprec.registry import MODELS, ConfigError


@MODELS.register_module()
class ResLayer(nn.Module):
    """Stage ``stage`` (0-based) of a ResNet-``depth``, keyed ``layer{stage + 1}.*`` as in the backbone.

    The C4 detectors pool 14x14 RoIs from C4 (stride 16, 1024 channels) and run layer4 (stride 2)
    on them: [k, 1024, 14, 14] -> [k, 2048, 7, 7].

    Args:
        depth: ResNet depth (block type and block count of the stage).
        stage: stage index; its input has base_channels * 2**(stage - 1) * expansion channels.
        stride, dilation: of the stage's first block / of its 3x3 convs.
        style: 'pytorch' or 'caffe' (stride on the first 1x1 conv).
        norm_cfg: norm layers, ``dict(type='BN', requires_grad=...)``.
        norm_eval: keep the BatchNorms in eval mode during training.
        with_cp: gradient checkpointing of each block.
        base_channels: width of the ResNet's layer1 (64 in mmdetection; smaller for CPU tests).
        init_cfg / pretrained: ``dict(type='Pretrained', checkpoint=...)`` / a checkpoint name; a backbone
            file gives its ``layer{stage + 1}.`` keys. Without one: kaiming convs, unit norms (no
            zero-init residual, as mmdetection v2).
        dcn: only None (deformable convs are not implemented).
    """

    def __init__(self, depth: int, stage: int = 3, stride: int = 2, dilation: int = 1, style: str = 'pytorch',
                 norm_cfg: Optional[dict] = None, norm_eval: bool = True, with_cp: bool = False,
                 base_channels: int = 64, dcn: Optional[dict] = None, pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__()
        if depth not in ARCH_SETTINGS:
            raise ConfigError(f'ResLayer depth must be one of {sorted(ARCH_SETTINGS)}, got {depth!r}')
        if not 0 <= stage <= 3:
            raise ConfigError(f'ResLayer stage must be 0..3, got {stage!r}')
        if dcn is not None:
            raise ConfigError(f'ResLayer: dcn={dcn!r} is not implemented (only dcn=None)')
        self.stage = stage
        self.norm_eval = norm_eval
        self.fp16_enabled = False
        block, stage_blocks = ARCH_SETTINGS[depth]
        planes = base_channels * 2 ** stage
        inplanes = base_channels * 2 ** (stage - 1) * block.expansion if stage > 0 else base_channels
        self.layer_name = f'layer{stage + 1}'
        self.add_module(self.layer_name, make_res_layer(
            block, inplanes, planes, stage_blocks[stage], stride, dilation, style,
            norm_cfg or dict(type='BN', requires_grad=True), with_cp))
        self.out_channels = planes * block.expansion
        self.pretrained = pretrained_checkpoint('ResLayer', init_cfg, pretrained)
        self.init_weights()

    def init_weights(self) -> None:
        """Load the stage from the configured checkpoint, or kaiming init."""
        if self.pretrained is not None:
            load_pretrained(self, self.pretrained['checkpoint'], self.pretrained['prefix'], keep=f'{self.layer_name}.')
            return
        init_resnet_weights(self)

    @auto_fp16()
    def forward(self, x: Tensor) -> Tensor:
        """[k, C_in, s, s] RoI features -> [k, out_channels, s / stride, s / stride]."""
        return getattr(self, self.layer_name)(x)

    def train(self, mode: bool = True) -> 'ResLayer':
        """Switch mode, keeping the BatchNorms in eval with ``norm_eval``."""
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self
