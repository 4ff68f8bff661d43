"""``place_model``'s two passes (``mixprec.models.fast_conv``): done once and logged, routing and folding the
benchmark detectors as measured before the passes existed; a folded norm passes through only the output its
own conv folded it into, in its own thread; whole-model copies stay folded, a conv copied or pickled alone
does not fold a hidden norm."""
import copy
import io
import logging
import os
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.tool_runs import load_tool
from mixprec.models import place_model
from mixprec.models.backbones.resnet import ResNet
from mixprec.models.fast_conv import fold_batchnorms, use_fast_convs
from mixprec.models.layers import ConvModule
from mixprec.ops import winograd
from helpers.weights import randomise_


def count_calls(monkeypatch, owner, name: str) -> list:
    calls = []
    real = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def frozen_pair(channels: int = 8) -> nn.Sequential:
    torch.manual_seed(0)
    return randomise_(nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(channels))).eval()


def two_layers(pair: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The pair computed by hand, with PyTorch's formulas."""
    conv, bn = pair
    return F.batch_norm(F.conv2d(x, conv.weight, None, 1, 1), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                        False, 0.0, bn.eps)


# (Winograd convolutions called in one training forward at 256 x 256, batch 2) as measured with the code that
# chose routes and folds at every call, before the passes existed; the same code's bf16 forward ran 42 of the
# 53 BatchNorms as layers (their gammas train), and its fp32 forward none
@pytest.mark.slow
@pytest.mark.parametrize('name, winograd_calls', [('faster_rcnn', 7), ('mask_rcnn', 11), ('retinanet', 13)])
def test_benchmark_detectors_route_and_fold_as_before(name, winograd_calls, monkeypatch, caplog, one_thread):
    bench = load_tool(os.path.join('tools', 'analysis_tools', 'benchmark_detectors.py'))
    args = bench.parse_args(['--size', '256', '256'])
    torch.manual_seed(0)
    model = bench.build_ours(args, name)
    with caplog.at_level(logging.INFO, logger='mixprec.models.fast_conv'):
        place_model(model, 'cpu')
    assert [r.getMessage().split(':')[0] for r in caplog.records] == ['BatchNorm folding', 'fp32 CPU convolutions']
    assert caplog.records[0].getMessage().startswith('BatchNorm folding: 53 BatchNorms fold into the convolution')
    assert 'cpu_winograd=True' in caplog.records[1].getMessage()
    assert fold_batchnorms(model) == 53  # idempotent
    data = bench.ours_inputs(bench.make_batch(args, torch.device('cpu'), name == 'mask_rcnn'))
    winograd_calls_seen = count_calls(monkeypatch, winograd, 'conv3x3')
    norm_layers = count_calls(monkeypatch, torch.nn.modules.batchnorm.F, 'batch_norm')
    model.train()
    model(**dict(data, img_metas=[dict(m) for m in data['img_metas']]))
    assert len(winograd_calls_seen) == winograd_calls and norm_layers == []
    with torch.autocast('cpu', dtype=torch.bfloat16):
        model(**dict(data, img_metas=[dict(m) for m in data['img_metas']]))
    assert len(winograd_calls_seen) == winograd_calls and len(norm_layers) == 42


def test_routes_follow_the_shapes_and_group_norms_do_not_fold():
    module = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.Conv2d(128, 128, 3, padding=1, stride=2),
                           nn.Conv2d(128, 64, 1), nn.Conv2d(128, 8, 1), nn.Conv2d(128, 128, 3, padding=1,
                                                                                   padding_mode='reflect'))
    assert use_fast_convs(module) == {'winograd': 1, 'onednn': 1, 'pytorch': 2}
    assert type(module[4]) is nn.Conv2d  # reflect padding: left as PyTorch's module
    assert use_fast_convs(module, winograd=False) == {'onednn': 1, 'pytorch': 3}
    gn = ConvModule(8, 8, 3, padding=1, norm_cfg=dict(type='GN', num_groups=2))
    assert fold_batchnorms(gn) == 0 and type(gn.gn) is nn.GroupNorm


def test_a_folded_norm_normalises_every_tensor_but_its_conv_s_output(monkeypatch):
    pair = frozen_pair()
    fold_batchnorms(pair)
    conv, bn = pair
    x, other = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(pair(x), two_layers(pair, x))
    out = conv(x)  # folded: the norm is already applied ...
    torch.testing.assert_close(out, two_layers(pair, x))
    expected = F.batch_norm(other, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    torch.testing.assert_close(bn(other), expected)  # ... but another tensor is normalised
    torch.testing.assert_close(bn(out + 0), F.batch_norm(out, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                                         False, 0.0, bn.eps))
    bn.train()  # statistics that train: no folding, the two layers run
    calls = count_calls(monkeypatch, torch.nn.modules.batchnorm.F, 'batch_norm')
    pair(x)
    assert len(calls) == 1


def test_a_conv_replaced_in_its_owner_folds_nothing_any_more():
    pair = frozen_pair()
    fold_batchnorms(pair)
    old = pair[0]
    pair[0] = nn.Conv2d(8, 8, 3, padding=1, bias=False)  # a layer swapped in after the pass
    x = torch.randn(1, 8, 6, 6)
    torch.testing.assert_close(old(x), F.conv2d(x, old.weight, None, 1, 1))  # used elsewhere: a plain conv
    torch.testing.assert_close(pair(x), two_layers(pair, x))


class ShiftedNorm(nn.BatchNorm2d):
    def forward(self, x):
        return super().forward(x) + 1


@pytest.mark.parametrize('norm_class', [nn.BatchNorm2d, ShiftedNorm])
def test_a_norm_swapped_in_after_the_pass_is_not_folded_into_the_linked_conv(norm_class):
    pair = frozen_pair()
    fold_batchnorms(pair)
    new = norm_class(8).eval()
    new.load_state_dict(pair[1].state_dict())
    with torch.no_grad():
        new.running_var.mul_(2)
    pair[1] = new
    x = torch.randn(1, 8, 6, 6)
    expected = two_layers(pair, x) + (1 if norm_class is ShiftedNorm else 0)
    torch.testing.assert_close(pair(x), expected)


class DoubledBetween(nn.Sequential):
    """A Sequential subclass with a forward of its own: its children's data flow is not Sequential's."""

    def forward(self, x):
        return self[1](2 * self[0](x))


def test_only_a_plain_sequential_declares_its_conv_norm_children():
    torch.manual_seed(0)
    seq = randomise_(DoubledBetween(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))).eval()
    assert fold_batchnorms(seq) == 0
    x = torch.randn(1, 8, 6, 6)
    conv, bn = seq
    expected = F.batch_norm(2 * F.conv2d(x, conv.weight, None, 1, 1), bn.running_mean, bn.running_var, bn.weight,
                            bn.bias, False, 0.0, bn.eps)
    torch.testing.assert_close(seq(x), expected)


def test_threads_sharing_a_model_each_get_their_own_fold():
    """Thread A's conv folds, thread B's conv and norm run, then A's norm: each norm sees its own output."""
    pair = frozen_pair()
    fold_batchnorms(pair)
    conv, bn = pair
    inputs = [torch.randn(1, 8, 6, 6), torch.randn(1, 8, 6, 6)]
    results, a_convolved, b_done = {}, threading.Event(), threading.Event()

    def thread_a():
        out = conv(inputs[0])
        a_convolved.set()
        b_done.wait(30)
        results['a'] = bn(out)

    def thread_b():
        a_convolved.wait(30)
        results['b'] = bn(conv(inputs[1]))
        b_done.set()

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    torch.testing.assert_close(results['a'], two_layers(pair, inputs[0]))
    torch.testing.assert_close(results['b'], two_layers(pair, inputs[1]))


def test_copies_fold_with_their_own_norm_and_a_lone_conv_folds_nothing(monkeypatch):
    torch.manual_seed(0)
    model = randomise_(ResNet(18, base_channels=8, frozen_stages=1)).eval()
    place_model(model, 'cpu')
    x = torch.randn(1, 3, 32, 32)
    expected = model(x)
    twin = copy.deepcopy(model)
    calls = count_calls(monkeypatch, torch.nn.modules.batchnorm.F, 'batch_norm')
    for out, ref in zip(twin(x), expected):
        torch.testing.assert_close(out, ref)
    assert calls == []  # the copy folds ...
    with torch.no_grad():
        twin.layer4[1].bn2.running_var.mul_(4)
    assert not torch.allclose(twin(x)[-1], expected[-1])  # ... its own norms
    torch.testing.assert_close(model(x)[-1], expected[-1])
    pair = frozen_pair()
    fold_batchnorms(pair)
    lone = copy.deepcopy(pair[0])
    torch.testing.assert_close(lone(x[:, :1].expand(1, 8, 32, 32)), F.conv2d(x[:, :1].expand(1, 8, 32, 32),
                                                                            pair[0].weight, None, 1, 1))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # a whole pickled module (not a checkpoint)
    calls.clear()
    for out, ref in zip(loaded(x), expected):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)  # conv + norm against the fold: rounding
    assert len(calls) == 20  # unlinked: every norm runs, until the pass runs again
    calls.clear()
    assert fold_batchnorms(loaded) == 20
    loaded(x)
    assert calls == []
