"""auto_fp16 / force_fp32: casts in master mode, autocast in autocast mode, no-ops when disabled."""
import collections

import pytest
import torch
from torch import nn

from mixprec.fp16 import auto_fp16, cast_tensor_type, force_fp32, wrap_fp16_model

Pair = collections.namedtuple('Pair', 'a b')


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.fp16_enabled = False

    @auto_fp16(apply_to=('x', 'extra'))
    def forward(self, x, extra=None, untouched=None):
        """Returns the dtypes it saw and the output of the fc layer."""
        seen = {'x': x.dtype, 'untouched': untouched.dtype if untouched is not None else None}
        if extra is not None:
            seen['extra'] = [t.dtype for t in extra['list']] + [extra['labels'].dtype]
        return seen, self.fc(x)

    @auto_fp16(apply_to=('x',), out_fp32=True)
    def forward_out32(self, x):
        return self.fc(x)

    @force_fp32(apply_to=('scores', 'preds'))
    def loss(self, scores, preds, other=None):
        return scores.dtype, [p.dtype for p in preds], other.dtype if other is not None else None

    @force_fp32(apply_to=('scores',), out_fp16=True)
    def loss_out16(self, scores):
        return scores * 2, torch.ones(2, dtype=torch.int64)

    @force_fp32()
    def loss_all(self, a, b):
        return a.dtype, b.dtype

    @force_fp32(apply_to=('x',))
    def matmul(self, x):
        return self.fc(x)


def test_noop_without_fp16_enabled():
    head = Head()
    x = torch.randn(2, 4)
    seen, out = head(x)
    assert seen['x'] is torch.float32 and out.dtype is torch.float32
    half = torch.randn(2, 4).half()
    assert head.loss(half, [half])[0] is torch.float16  # force_fp32 did not cast either
    assert Head.forward.__name__ == 'forward' and 'dtypes' in Head.forward.__doc__


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_master_mode_casts_named_args_only(dtype):
    head = wrap_fp16_model(Head(), dtype)
    x, untouched = torch.randn(2, 4), torch.randn(2)
    extra = {'list': [torch.randn(1), torch.randn(1).double()], 'labels': torch.tensor([1, 2])}
    seen, out = head(x, extra=extra, untouched=untouched)
    assert seen['x'] is dtype
    assert seen['untouched'] is torch.float32
    # fp32 tensors inside containers cast; fp64 and int64 left alone
    assert seen['extra'] == [dtype, torch.float64, torch.int64]
    assert out.dtype is dtype
    assert head.forward_out32(torch.randn(2, 4)).dtype is torch.float32


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_master_mode_force_fp32(dtype):
    head = wrap_fp16_model(Head(), dtype)
    h = torch.randn(3).to(dtype)
    scores, preds, other = head.loss(h, preds=(h, h), other=h)
    assert scores is torch.float32 and preds == [torch.float32, torch.float32]
    assert other is dtype  # not in apply_to
    assert head.loss_all(h, h) == (torch.float32, torch.float32)
    out, ints = head.loss_out16(h)
    assert out.dtype is dtype and ints.dtype is torch.int64
    assert torch.equal(out, (h.float() * 2).to(dtype))


def test_autocast_mode():
    head = wrap_fp16_model(Head(), torch.bfloat16, mode='autocast')
    assert head.fc.weight.dtype is torch.float32
    seen, out = head(torch.randn(2, 4))
    assert seen['x'] is torch.float32  # args are not cast, autocast runs the ops in bf16
    assert out.dtype is torch.bfloat16
    assert head.forward_out32(torch.randn(2, 4)).dtype is torch.float32
    # force_fp32 leaves autocast: the linear runs in fp32 even inside an autocast region
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = head.matmul(torch.randn(2, 4).bfloat16())
        assert head.fc(torch.randn(2, 4)).dtype is torch.bfloat16
    assert y.dtype is torch.float32


def test_positional_and_keyword_args_cast_alike():
    head = wrap_fp16_model(Head(), torch.float16)
    h = torch.randn(3).half()
    assert head.loss(h, [h]) == head.loss(scores=h, preds=[h])


def test_cast_tensor_type_containers():
    """mmcv 1.x's argument order (inputs, src_type, dst_type); namedtuples keep their type and an
    unchanged container is returned as it is."""
    t = torch.randn(2)
    pair = cast_tensor_type(Pair(t, [t, 3]), torch.float32, torch.float16)
    assert isinstance(pair, Pair) and pair.a.dtype is torch.float16 and pair.b[1] == 3
    same = [torch.ones(1, dtype=torch.int64), 'x']
    assert cast_tensor_type(same, torch.float32, torch.float16) is same
    assert cast_tensor_type({'a': t}, (torch.float16,), torch.bfloat16)['a'] is t
    cast = cast_tensor_type({'a': t, 'b': t.half()}, (torch.float32, torch.float16), torch.bfloat16)
    assert cast['a'].dtype is torch.bfloat16 and cast['b'].dtype is torch.bfloat16
    assert cast_tensor_type(t, None, torch.float16) is t  # a src_type that is no dtype matches nothing
