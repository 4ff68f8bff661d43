"""fp32 3x3 convolutions as Winograd F(4x4, 3x3) (``mixprec.ops.winograd``): the direct convolution's
values and gradients to float rounding, in every block layout and at sizes that are not whole tiles,
and reached from the layers, heads and folded norms exactly where it applies and the switch allows."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixprec.config import Config, cpu_winograd
from mixprec.models import place_model
from mixprec.models.fast_conv import fold_batchnorms, use_fast_convs
from mixprec.models.layers import ConvModule
from mixprec.ops import conv as conv_ops
from mixprec.ops import winograd
from mixprec.registry import ConfigError


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.double() - reference).norm() / reference.norm()).item()


def float64_reference(x, weight, bias, upstream):
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    out = F.conv2d(x64, w64, b64, padding=1)
    grads = torch.autograd.grad(out, [x64, w64, b64], upstream.double())
    return out, grads


@pytest.mark.parametrize('block', ['all', 'image', 'two rows', 'row'])
@pytest.mark.parametrize('shape', [(2, 24, 16, 13, 17), (3, 16, 24, 12, 8), (1, 8, 8, 5, 4)])
def test_winograd_equals_the_direct_convolution_values_and_gradients(monkeypatch, block, shape):
    """All images in one block, an image a block, two tile rows and one tile row a block; maps of
    whole tiles and not; C_in above, below and equal to C_out: within 2e-5 of float64 where fp32's
    direct convolution is within ~3e-7 (the transforms' coefficients cost a few bits)."""
    n, c_in, c_out, h, w = shape
    tiles_h, row = -(-h // 4), 36 * -(-w // 4) * max(c_in, c_out)
    block_floats = {'all': 1 << 20, 'image': row * tiles_h, 'two rows': row * 2, 'row': row}[block]
    monkeypatch.setattr(winograd, '_BLOCK_FLOATS', block_floats)
    blocks = list(winograd._Blocks(n, h, w, max(c_in, c_out)))
    assert len(blocks) == {'all': 1, 'image': n, 'two rows': n * -(-tiles_h // 2), 'row': n * tiles_h}[block]
    torch.manual_seed(sum(shape))
    x = torch.randn(n, c_in, h, w).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(c_out, c_in, 3, 3).requires_grad_()
    bias = torch.randn(c_out).requires_grad_()
    upstream = torch.randn(n, c_out, h, w)
    out = winograd.conv3x3(x, weight, bias)
    grads = torch.autograd.grad(out, [x, weight, bias], upstream)
    ref_out, ref_grads = float64_reference(x, weight, bias, upstream)
    assert out.shape == (n, c_out, h, w) and out.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(out, ref_out) < 2e-5
    for name, grad, ref in zip(('x', 'weight', 'bias'), grads, ref_grads):
        assert grad.shape == ref.shape, name
        assert relative_error(grad, ref) < 2e-5, name
    assert (out - ref_out).abs().max() / ref_out.abs().max() < 1e-4


def test_the_output_is_a_tensor_of_its_own_that_in_place_ops_may_change():
    x = torch.randn(1, 8, 8, 8, requires_grad=True)
    weight = torch.randn(8, 8, 3, 3, requires_grad=True)
    out = F.relu_(winograd.conv3x3(x, weight, None))  # ReLU(inplace=True) after a conv, as ConvModule does
    out.sum().backward()
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    F.relu(F.conv2d(x64, w64, padding=1)).sum().backward()
    assert relative_error(x.grad, x64.grad) < 2e-5 and relative_error(weight.grad, w64.grad) < 2e-5
    with torch.no_grad():
        assert not winograd.conv3x3(x, weight, None).requires_grad


def test_winograd_applies_only_to_wide_fp32_stride_1_3x3_convolutions_on_large_enough_maps():
    x = torch.randn(2, 128, 32, 32).contiguous(memory_format=torch.channels_last)
    w = torch.randn(128, 128, 3, 3)
    args = ((1, 1), (1, 1), (1, 1), 1)
    assert winograd.applies(x, w, *args)
    assert winograd.applies(x.contiguous(), w.contiguous(memory_format=torch.channels_last), *args)
    # an NCHW model gets NCHW outputs from the direct convolution: it keeps them
    assert not winograd.applies(x.contiguous(), w, *args)
    assert F.conv2d(x.contiguous(), w, padding=1).is_contiguous()
    assert not winograd.applies(x.bfloat16(), w.bfloat16(), *args)
    assert not winograd.applies(x.double(), w.double(), *args)
    assert not winograd.applies(x, w, (2, 2), (1, 1), (1, 1), 1)
    assert not winograd.applies(x, w, (1, 1), (2, 2), (2, 2), 1)
    assert not winograd.applies(x, w, (1, 1), (0, 0), (1, 1), 1)
    assert not winograd.applies(x, torch.randn(128, 1, 3, 3), (1, 1), (1, 1), (1, 1), 128)
    assert not winograd.applies(x, torch.randn(128, 128, 1, 1), (1, 1), (0, 0), (1, 1), 1)
    narrow, small = (t.contiguous(memory_format=torch.channels_last) for t in (x[:, :64], x[:1, :, :16, :16]))
    assert not winograd.applies(narrow, torch.randn(128, 64, 3, 3), *args)  # narrow: transforms dominate
    assert not winograd.applies(small, w, *args)  # 256 outputs: too few tiles


def test_the_config_switches_winograd_off_and_rejects_other_values(monkeypatch):
    calls = count_winograd_calls(monkeypatch)
    x = torch.randn(2, 128, 32, 32).contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(128, 128, 3, padding=1)
    place_model(conv, 'cpu', winograd=cpu_winograd(Config(dict(cpu_winograd=False)), 'cfg.py'))
    assert conv.route == 'pytorch'
    conv(x)
    assert calls == []
    place_model(conv, 'cpu', winograd=cpu_winograd(Config(dict()), 'cfg.py'))  # the default: on
    assert conv.route == 'winograd'
    conv(x)
    assert calls == [(128, 128, 3, 3)]
    with pytest.raises(ConfigError, match=r"^cfg\.py: cpu_winograd must be True or False, got str 'off'$"):
        cpu_winograd(Config(dict(cpu_winograd='off')), 'cfg.py')
    with pytest.raises(TypeError, match="winograd must be True or False, got 0"):
        use_fast_convs(conv, winograd=0)


def count_winograd_calls(monkeypatch) -> list:
    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, 'conv3x3', lambda x, w, b: calls.append(tuple(w.shape)) or real(x, w, b))
    return calls


def count_winograd_backward_calls(monkeypatch) -> list:
    calls = []
    real = winograd.conv3x3_backward
    monkeypatch.setattr(winograd, 'conv3x3_backward', lambda *args: calls.append(1) or real(*args))
    return calls


def test_conv_module_rpn_style_and_hooked_convs_reach_winograd_only_where_it_applies(monkeypatch):
    calls = count_winograd_calls(monkeypatch)
    torch.manual_seed(1)
    x = torch.randn(1, 128, 40, 36).contiguous(memory_format=torch.channels_last).requires_grad_()
    module = ConvModule(128, 128, 3, padding=1)  # an FPN output conv
    module(x)
    assert calls == []  # a model the pass has not seen runs PyTorch's convolutions
    assert use_fast_convs(module) == {'winograd': 1}
    out = module(x)
    ref = F.conv2d(x.double(), module.conv.weight.double(), module.conv.bias.double(), padding=1)
    assert calls == [(128, 128, 3, 3)] and relative_error(out, ref) < 2e-5
    plain = nn.Conv2d(128, 128, 3, padding=1)  # the RPN conv, RetinaNet's outputs, the mask head's convs
    use_fast_convs(plain)
    assert relative_error(plain(x), F.conv2d(x.double(), plain.weight.double(), plain.bias.double(), padding=1)) < 2e-5
    assert len(calls) == 2
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert module(x).dtype == torch.bfloat16
    strided = ConvModule(128, 128, 3, stride=2, padding=1)
    assert use_fast_convs(strided) == {'pytorch': 1}
    strided(x)
    assert len(calls) == 2
    seen = []
    plain.register_forward_hook(lambda mod, args, output: seen.append(output))
    out = plain(x)  # a user's forward hook sees its module run, and the output it returned
    assert len(calls) == 3 and len(seen) == 1 and seen[0] is out


def test_folded_frozen_norm_goes_through_winograd_forward_and_backward(monkeypatch):
    """ResNet's conv2 + bn2 in fp32 training with frozen statistics: the folded convolution's
    forward and backward both run as Winograd and match conv + norm in float64."""
    calls = count_winograd_calls(monkeypatch)
    backward_calls = count_winograd_backward_calls(monkeypatch)
    torch.manual_seed(2)
    conv = nn.Conv2d(128, 128, 3, padding=1, bias=False)
    norm = nn.BatchNorm2d(128).eval()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-1, 1)
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)
    x = torch.randn(1, 128, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
    upstream = torch.randn(1, 128, 32, 32)
    pair = nn.Sequential(conv, norm)  # as ResNet's downsample, or a declared conv -> norm pair
    assert fold_batchnorms(pair) == 1 and use_fast_convs(pair) == {'winograd': 1}
    out = pair(x)
    grads = torch.autograd.grad(out, [x, conv.weight, norm.weight, norm.bias], upstream)
    assert calls == [(128, 128, 3, 3)] and backward_calls == [1]  # inside the fold's own autograd Function
    conv64, norm64 = copy.deepcopy(conv).double(), copy.deepcopy(norm).double()
    x64 = x.detach().double().requires_grad_()
    ref = norm64(conv64(x64))
    ref_grads = torch.autograd.grad(ref, [x64, conv64.weight, norm64.weight, norm64.bias], upstream.double())
    assert relative_error(out, ref) < 2e-5
    for grad, ref_grad in zip(grads, ref_grads):
        assert relative_error(grad, ref_grad) < 2e-5
    # a gradient penalty through the fold: differentiable again, PyTorch's backward inside
    grad_x, = torch.autograd.grad(pair(x).pow(2).sum(), x, create_graph=True)
    assert backward_calls == [1]
    penalty = torch.autograd.grad(grad_x.pow(2).sum(), [conv.weight, norm.weight])
    grad64, = torch.autograd.grad(norm64(conv64(x64)).pow(2).sum(), x64, create_graph=True)
    ref_penalty = torch.autograd.grad(grad64.pow(2).sum(), [conv64.weight, norm64.weight])
    for grad, ref_grad in zip(penalty, ref_penalty):
        assert relative_error(grad, ref_grad) < 1e-4


def test_scratch_buffer_is_reused_across_calls():
    x = torch.randn(1, 16, 24, 24)
    w = torch.randn(16, 16, 3, 3)
    winograd.conv3x3(x, w, None)
    buffer = winograd._SCRATCH.buffer
    winograd.conv3x3(x, w, None)
    assert winograd._SCRATCH.buffer is buffer
    assert buffer.numel() >= winograd._MAPPED_FLOATS


def test_fp32_conv2d_outside_the_cpu_float32_case_is_pytorch_s(monkeypatch):
    calls = count_winograd_calls(monkeypatch)
    x = torch.randn(1, 128, 32, 32, dtype=torch.float64)
    w = torch.randn(128, 128, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(conv_ops.conv2d(x, w, None, (1, 1), (1, 1), (1, 1), 1, route='winograd'),
                               F.conv2d(x, w, padding=1), rtol=0, atol=0)
    assert calls == []


def test_a_scratch_buffer_first_made_under_inference_mode_still_serves_training(monkeypatch):
    monkeypatch.setattr(winograd._SCRATCH, 'buffer', None)
    x = torch.randn(1, 8, 12, 12)
    weight = torch.randn(8, 8, 3, 3, requires_grad=True)
    with torch.inference_mode():  # evaluation in a user's loop, before any training step
        winograd.conv3x3(x, weight, None)
    winograd.conv3x3(x, weight, None).sum().backward()
    w64 = weight.detach().double().requires_grad_()
    F.conv2d(x.double(), w64, padding=1).sum().backward()
    assert relative_error(weight.grad, w64.grad) < 2e-5


def test_double_backward_through_a_winograd_convolution(monkeypatch):
    calls = count_winograd_calls(monkeypatch)
    backward_calls = count_winograd_backward_calls(monkeypatch)
    torch.manual_seed(0)
    x = torch.randn(1, 128, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(128, 128, 3, 3, requires_grad=True)
    out = conv_ops.conv2d(x, weight, None, (1, 1), (1, 1), (1, 1), 1, route='winograd')
    assert calls == [(128, 128, 3, 3)]
    torch.autograd.grad(out.sum(), x, retain_graph=True)
    assert backward_calls == [1]  # a plain backward stays in the Winograd domain
    grad_x, = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)  # a gradient penalty
    assert backward_calls == [1]  # ... a differentiable one is PyTorch's
    grad_x.pow(2).sum().backward()
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    grad64, = torch.autograd.grad(F.conv2d(x64, w64, padding=1).pow(2).sum(), x64, create_graph=True)
    grad64.pow(2).sum().backward()
    assert relative_error(grad_x, grad64) < 2e-5
    assert relative_error(weight.grad, w64.grad) < 1e-4
