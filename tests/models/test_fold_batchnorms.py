"""A BatchNorm with frozen statistics folded into its convolution (``fold_batchnorms``, the pass that
``place_model`` runs): the same numbers and gradients as the two layers, less memory kept for backward,
and the two layers again wherever folding would change behaviour (statistics that train, forward and
backward hooks, global ones too, a user's conv or norm subclass with its own forward)."""
import pytest
import torch
from torch import nn

from mixprec.fp16 import wrap_fp16_model
from mixprec.models.backbones.resnet import ResNet
from mixprec.models.fast_conv import fold_batchnorms, use_fast_convs
from mixprec.models.layers import ConvModule
from helpers.weights import randomise_


def small_resnet(**kwargs) -> ResNet:
    """A ResNet-50 as the model code builds it: no pass has run, every norm is a layer of its own."""
    torch.manual_seed(0)
    return randomise_(ResNet(50, base_channels=8, **dict(dict(frozen_stages=1, norm_eval=True), **kwargs)).train())


def folded(model: nn.Module) -> nn.Module:
    fold_batchnorms(model)
    return model


def outputs_and_grads(model: nn.Module, x: torch.Tensor, upstream: list) -> tuple[list, dict]:
    outs = model(x)
    sum((o * u.to(o.dtype)).sum() for o, u in zip(outs, upstream)).backward()
    return [o.detach() for o in outs], {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for backward during one forward."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


def hook_every_norm(model: nn.Module) -> list:
    calls = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(lambda mod, args, out: calls.append(mod))
    return calls


def test_folded_resnet_equals_conv_then_norm_in_float64_with_less_memory():
    x = torch.randn(2, 3, 160, 128, dtype=torch.float64)
    model = folded(small_resnet().double())
    unfolded = small_resnet().double()
    calls = hook_every_norm(unfolded)
    upstream = [torch.randn(o.shape, dtype=torch.float64) for o in model(x)]
    outs, grads = outputs_and_grads(model, x, upstream)
    ref_outs, ref_grads = outputs_and_grads(unfolded, x, upstream)
    assert len(calls) == sum(isinstance(m, nn.BatchNorm2d) for m in unfolded.modules())
    for out, ref in zip(outs, ref_outs):
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    assert grads.keys() == ref_grads.keys() and any(k.endswith('bn2.weight') for k in grads)
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, rtol=1e-9, atol=1e-12, msg=name)
    # the folded layers keep only the convolutions' inputs (and small weights) for backward
    assert saved_bytes(model, x) < 0.75 * saved_bytes(unfolded, x)


def test_norms_that_train_their_statistics_are_not_folded():
    model = folded(small_resnet(norm_eval=False))
    before = model.layer2[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert not torch.equal(model.layer2[0].bn1.running_mean, before)
    model.eval()
    after = model.layer2[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(model.layer2[0].bn1.running_mean, after)


def test_conv_module_with_bn_folds_in_eval_and_half_models_stay_close(monkeypatch):
    torch.manual_seed(1)
    module = randomise_(ConvModule(4, 6, 3, padding=1, norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU'))).eval()
    x = torch.randn(2, 4, 10, 10)
    expected = torch.relu(module.bn(module.conv(x)))
    assert fold_batchnorms(module) == 1
    calls = count_batch_norm_calls(monkeypatch)
    torch.testing.assert_close(module(x), expected)
    assert calls == []
    # master mode: bf16 convolution weights, fp32 norm; the folded weight is rounded once to bf16
    model = folded(small_resnet())
    ref = model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    wrap_fp16_model(model, torch.bfloat16, 'master')
    half = model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)).bfloat16())
    for out, r in zip(half, ref):
        assert out.dtype == torch.bfloat16
        assert (out.float() - r).norm() < 0.02 * r.norm()


def count_batch_norm_calls(monkeypatch) -> list:
    calls = []
    real = torch.nn.modules.batchnorm.F.batch_norm

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(torch.nn.modules.batchnorm.F, 'batch_norm', spy)
    return calls


def test_bf16_training_folds_only_norms_whose_affine_is_frozen(monkeypatch):
    """A trainable gamma in half precision would get its gradient from the half weight gradient
    (sum(grad * c) - mean * sum(grad), terms that cancel): such norms stay layers of their own; frozen
    ones (caffe-style requires_grad=False) fold, no further from fp32 than conv + norm in bf16."""
    calls = count_batch_norm_calls(monkeypatch)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    trainable = folded(small_resnet())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        trainable(x)
    frozen_stage_norms = 1 + sum(isinstance(m, nn.BatchNorm2d) for m in trainable.layer1.modules())
    assert len(calls) == sum(isinstance(m, nn.BatchNorm2d) for m in trainable.modules()) - frozen_stage_norms
    calls.clear()
    frozen_affine = dict(norm_cfg=dict(type='BN', requires_grad=False))
    model, unfolded, ref_model = folded(small_resnet(**frozen_affine)), small_resnet(**frozen_affine), small_resnet(**frozen_affine)
    upstream = [torch.randn(o.shape) for o in ref_model(x)]
    _, ref_grads = outputs_and_grads(ref_model, x, upstream)
    calls.clear()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs, grads = outputs_and_grads(model, x, upstream)
        assert calls == []
        _, bf16_grads = outputs_and_grads(unfolded, x, upstream)
    assert all(out.dtype == torch.bfloat16 for out in outs)
    errors = {name: [(g[name] - r).norm() / r.norm() for g in (grads, bf16_grads)] for name, r in ref_grads.items()}
    assert all(grads[name].dtype == torch.float32 for name in ref_grads) and len(errors) > 30
    assert sum(e[0] for e in errors.values()) < 1.2 * sum(e[1] for e in errors.values())


def test_fp32_1x1_convolutions_on_the_cpu_go_to_onednn_with_the_same_numbers(monkeypatch):
    calls = []
    real = torch.mkldnn_convolution
    monkeypatch.setattr(torch, 'mkldnn_convolution', lambda *args: calls.append(args[1].shape) or real(*args))
    torch.manual_seed(4)
    lateral = ConvModule(16, 16, 1)  # an FPN lateral: 1x1 with bias, no norm
    assert use_fast_convs(lateral) == {'onednn': 1}
    x = torch.randn(2, 16, 12, 10).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = lateral(x)
    expected = torch.nn.functional.conv2d(x, lateral.conv.weight, lateral.conv.bias)
    torch.testing.assert_close(out, expected)
    assert calls == [(16, 16, 1, 1)]
    grads = torch.autograd.grad(out.sum(), [x, lateral.conv.weight, lateral.conv.bias])
    expected_grads = torch.autograd.grad(expected.sum(), [x, lateral.conv.weight, lateral.conv.bias])
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)
    # a 3x3, a narrow 1x1 (an RPN classifier), autocast and a model without the pass keep PyTorch's own dispatch
    for module in (ConvModule(16, 8, 3, padding=1), ConvModule(16, 8, 1)):
        assert use_fast_convs(module) == {'pytorch': 1}
        module(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert lateral(x).dtype == torch.bfloat16
    ConvModule(16, 16, 1)(x)
    assert calls == [(16, 16, 1, 1)]
    # a hooked conv still runs as its module: the hook sees the output the route computed
    seen = []
    lateral.conv.register_forward_hook(lambda mod, args, output: seen.append(output))
    torch.testing.assert_close(lateral(x), expected)
    assert calls == [(16, 16, 1, 1)] * 2 and len(seen) == 1 and torch.equal(seen[0], lateral(x))


def test_backward_hooks_on_folded_and_functional_convs_still_fire():
    """Grad-CAM-style tools hook a conv's backward; folding (and the functional RPN / head convs) must
    not skip them, nor the global module hooks that profilers and debuggers register."""
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    model = folded(small_resnet().double())
    use_fast_convs(model)
    expected_outs = [o.detach() for o in model(x)]
    conv = model.layer3[0].conv2  # folded with its frozen-statistics BatchNorm when unhooked
    grads_out = []
    conv.register_full_backward_hook(lambda mod, grad_in, grad_out: grads_out.append(grad_out[0]))
    feature = {}
    conv.register_forward_hook(lambda mod, args, out: feature.update(feature or {'in': args[0], 'out': out}))
    outs = model(x)
    for out, ref in zip(outs, expected_outs):  # hooked, the model computes what it computed unhooked
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    # the forward hook saw the conv's own output, not one with its norm folded in
    torch.testing.assert_close(feature['out'], nn.functional.conv2d(feature['in'], conv.weight, None, conv.stride, 1))
    sum(o.sum() for o in outs).backward()
    assert len(grads_out) == 1 and grads_out[0].shape == feature['out'].shape
    # the hook saw the conv's own output gradient: d(sum of outputs)/d(conv output) via autograd
    model.zero_grad()
    feature.clear()
    outs = model(x)
    expected, = torch.autograd.grad(sum(o.sum() for o in outs), feature['out'])
    torch.testing.assert_close(grads_out[0], expected)

    head = nn.Conv2d(16, 16, 3, padding=1)  # the RPN conv, RetinaNet's outputs
    use_fast_convs(head)
    pre = []
    head.register_full_backward_pre_hook(lambda mod, grad_out: pre.append(grad_out[0].shape))
    head(torch.randn(1, 16, 8, 8, requires_grad=True)).sum().backward()
    assert pre == [(1, 16, 8, 8)]

    seen = []
    handle = nn.modules.module.register_module_forward_hook(lambda mod, args, out: seen.append(mod))
    try:
        model(x)
    finally:
        handle.remove()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(any(m is c for m in seen) for c in convs), 'a global forward hook missed a conv'


class DoubledConv(nn.Conv2d):
    """A user's conv with its own forward (as weight standardisation or LoRA wrappers have)."""
    calls = 0

    def forward(self, x):
        DoubledConv.calls += 1
        return 2 * super().forward(x)


class ShiftedFrozenNorm(nn.BatchNorm2d):
    calls = 0

    def forward(self, x):
        ShiftedFrozenNorm.calls += 1
        return super().forward(x) + 1


def swapped_in(model: ResNet, conv_class: type, norm_class: type) -> ResNet:
    """``model`` with layer3[0]'s conv2 and bn2 rebuilt as these classes, same parameters."""
    block = model.layer3[0]
    conv, norm = block.conv2, getattr(block, block.norm2_name)
    new_conv = conv_class(conv.in_channels, conv.out_channels, 3, stride=conv.stride, padding=1, bias=False)
    new_norm = norm_class(norm.num_features)
    new_conv.load_state_dict(conv.state_dict())
    new_norm.load_state_dict(norm.state_dict())
    block.conv2 = new_conv.double()
    setattr(block, block.norm2_name, new_norm.double().eval())
    return model


@pytest.mark.parametrize('swap', ['before the pass', 'after the pass'])
@pytest.mark.parametrize('conv_class, norm_class', [(DoubledConv, nn.BatchNorm2d), (nn.Conv2d, ShiftedFrozenNorm),
                                                    (DoubledConv, ShiftedFrozenNorm)])
def test_conv_and_norm_subclasses_keep_their_own_forward(conv_class, norm_class, swap):
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    if swap == 'before the pass':
        model = folded(swapped_in(small_resnet().double(), conv_class, norm_class))
    else:
        model = swapped_in(folded(small_resnet().double()), conv_class, norm_class)
    DoubledConv.calls = ShiftedFrozenNorm.calls = 0
    outs = model(x)
    assert DoubledConv.calls == (conv_class is DoubledConv)
    assert ShiftedFrozenNorm.calls == (norm_class is ShiftedFrozenNorm)
    # layer3's first block with its two layers run by hand, as nn.Module runs them
    block = model.layer3[0]
    stem = model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))))
    out = block.relu(block.bn1(block.conv1(stem)))
    out = nn.functional.conv2d(out, block.conv2.weight, None, block.conv2.stride, 1)
    out = 2 * out if conv_class is DoubledConv else out
    bn = getattr(block, block.norm2_name)
    out = nn.functional.batch_norm(out, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    out = out + 1 if norm_class is ShiftedFrozenNorm else out
    out = block.relu(block.bn3(block.conv3(block.relu(out))) + block.downsample(stem))
    torch.testing.assert_close(block(stem), out)
    torch.testing.assert_close(outs[2], model.layer3[1:](out))


def gradient_penalty_grads(model: nn.Module, x: torch.Tensor) -> dict:
    """Parameter gradients of ||d sum(outputs^2) / dx||^2, a double backward (as R1 / WGAN-GP take it)."""
    x = x.clone().requires_grad_()
    grad_x, = torch.autograd.grad(sum(o.pow(2).sum() for o in model(x)), x, create_graph=True)
    grad_x.pow(2).sum().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_double_backward_through_folded_convs_equals_the_two_layers():
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    model, unfolded = folded(small_resnet().double()), small_resnet().double()
    grads, ref = gradient_penalty_grads(model, x), gradient_penalty_grads(unfolded, x)
    assert grads.keys() == ref.keys() and any(k.endswith('bn2.weight') for k in grads)
    for name, value in ref.items():
        torch.testing.assert_close(grads[name], value, rtol=1e-8, atol=1e-12, msg=name)


class CountedSequential(nn.Sequential):
    calls = 0

    def forward(self, x):
        CountedSequential.calls += 1
        return super().forward(x)


def test_a_downsample_sequential_subclass_keeps_its_forward():
    model = folded(small_resnet())
    block = model.layer2[0]
    block.downsample = CountedSequential(*block.downsample)
    CountedSequential.calls = 0
    model(torch.randn(1, 3, 64, 64))
    assert CountedSequential.calls == 1
