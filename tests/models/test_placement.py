"""Where a model runs decides its layout and BatchNorm folding once, for fp32 and mixed precision alike
(``place_model``, ``folds_with_trainable_gamma``), so that their speed and memory ratios are about
precision alone. CUDA is not here: the meta device stands for a device other than the CPU."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mixprec.models import place_model
from mixprec.models.fast_conv import folds_with_trainable_gamma


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ConvTranspose2d(8, 4, 2, stride=2),
                         nn.Conv2d(4, 4, 1), nn.Linear(4, 2))


@pytest.mark.parametrize('device', ['cpu', 'meta'])
def test_place_model_stores_convolutions_channels_last_on_every_device(device):
    model = _net()
    assert place_model(model, device) is model
    for module in (model[0], model[2], model[3]):
        assert module.weight.device.type == device
        assert module.weight.is_contiguous(memory_format=torch.channels_last), module
    assert model[4].weight.is_contiguous()


def test_folding_a_norm_whose_gamma_trains_is_decided_per_device_not_per_precision():
    for dtype in (torch.float16, torch.bfloat16):
        assert not folds_with_trainable_gamma('cpu', dtype) and not folds_with_trainable_gamma('cuda', dtype)
    assert folds_with_trainable_gamma('cpu', torch.float32)
    assert not folds_with_trainable_gamma('cuda', torch.float32)  # as fp16 there
    assert not folds_with_trainable_gamma('meta', torch.float32)


@pytest.mark.parametrize('dtype, gamma_trains, folded', [
    (torch.float32, True, True), (torch.bfloat16, True, False),
    (torch.float32, False, True), (torch.bfloat16, False, True)])
def test_a_placed_conv_and_norm_on_the_cpu_follow_the_decision(dtype, gamma_trains, folded):
    torch.manual_seed(0)
    pair = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    reference = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    reference.load_state_dict(pair.state_dict())
    place_model(pair, 'cpu')
    pair[0].to(dtype)
    pair.eval()
    pair[1].weight.requires_grad_(gamma_trains)
    x = torch.randn(1, 3, 8, 8, dtype=dtype, requires_grad=True)
    out = pair(x)
    assert (type(out.grad_fn).__name__ == '_ScaledConvBackward') == folded, out.grad_fn
    torch.testing.assert_close(out.float(), reference.eval()(x.float()), rtol=2e-2, atol=2e-2)
