"""wrap_fp16_model: half parameters, fp32 norm layers that take half inputs, fp16_enabled flags."""
import copy
import pickle

import pytest
import torch
from torch import nn

from mixprec.fp16 import wrap_fp16_model


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)
        self.register_buffer('anchor', torch.randn(3))
        self.fp16_enabled = False


NORMS = ('bn', 'gn', 'inorm', 'ln')


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, 'bfloat16'])
def test_master_dtypes(dtype):
    model = nn.Sequential(Block())
    running_mean = torch.randn(4)
    model[0].bn.running_mean.copy_(running_mean)
    wrap_fp16_model(model, dtype)
    half = torch.bfloat16 if dtype in (torch.bfloat16, 'bfloat16') else torch.float16
    block = model[0]
    assert block.conv.weight.dtype is half and block.fc.bias.dtype is half and block.anchor.dtype is half
    for name in NORMS:
        assert all(p.dtype is torch.float32 for p in getattr(block, name).parameters()), name
    # norm buffers were never rounded through half
    assert torch.equal(block.bn.running_mean, running_mean)
    assert block.bn.num_batches_tracked.dtype is torch.int64
    assert block.fp16_enabled is True and block._fp16_cfg == (half, 'master')


@pytest.mark.parametrize('name', NORMS)
def test_norms_take_half_inputs(name):
    ref = Block()
    ref.train()
    model = wrap_fp16_model(copy.deepcopy(ref), torch.bfloat16)
    norm, ref_norm = getattr(model, name), getattr(ref, name)
    x = torch.randn(2, 4, 5, 4).bfloat16()
    out = norm(x)
    assert out.dtype is torch.bfloat16
    expected = ref_norm(x.float())  # the same fp32 computation on the upcast input
    assert torch.equal(out, expected.bfloat16())
    if name == 'bn':  # BatchNorm's mixed-dtype kernel accumulates in fp32: equal up to fp32 rounding
        assert torch.allclose(norm.running_var, ref_norm.running_var, rtol=1e-6, atol=0)
        assert torch.allclose(norm.running_mean, ref_norm.running_mean, rtol=1e-6, atol=1e-8)
    assert norm(x.float()).dtype is torch.float32  # fp32 input stays fp32


def test_wrapped_model_copies_and_pickles():
    model = wrap_fp16_model(Block(), torch.float16)
    clone = copy.deepcopy(model)
    loaded = pickle.loads(pickle.dumps(model))
    x = torch.randn(1, 4, 2, 2).half()
    assert clone.bn(x).dtype is torch.float16 and loaded.gn(x).dtype is torch.float16
    wrap_fp16_model(model, torch.float16)  # idempotent: hooks are not stacked
    assert len(model.gn._forward_pre_hooks) == 1
    assert len(model.bn._forward_pre_hooks) == 0  # BatchNorm takes half inputs natively


def test_autocast_mode_keeps_fp32():
    model = wrap_fp16_model(Block(), 'float16', mode='autocast')
    assert all(p.dtype is torch.float32 for p in model.parameters())
    assert model.fp16_enabled and model._fp16_cfg == (torch.float16, 'autocast')


def test_only_modules_with_the_attribute_are_flagged():
    model = wrap_fp16_model(nn.Sequential(Block(), nn.Linear(2, 2)), torch.float16)
    assert model[0].fp16_enabled and not hasattr(model[1], 'fp16_enabled')


def test_bad_arguments():
    with pytest.raises(ValueError, match='mode'):
        wrap_fp16_model(Block(), torch.float16, mode='O2')
    with pytest.raises(ValueError, match='dtype'):
        wrap_fp16_model(Block(), torch.float32)
