"""Every ``torch._foreach_*`` call of the fp16 hook (master and autocast modes), of its running-statistics
guard and of the EMA hook gets lists whose tensors share one dtype and device, and after each step the
model's parameters equal their masters cast to their dtypes.

On CUDA, ``_foreach_copy_`` took its multi-tensor fast path for destinations of mixed dtypes in a range
of PyTorch releases, choosing the kernel from the first destination (fixed upstream in PR 173531): half
bytes landed in fp32 BatchNorm storage. The CPU copies tensor by tensor, so these tests wrap every
``torch._foreach_*`` function: a call with a mixed list is recorded, and ``_foreach_copy_`` with mixed
destinations does what that fast path did, so its consequences show in the numbers too.
"""
from __future__ import annotations

import pytest
import torch

from helpers.fp16 import TinyNet, batches, make_runner, net_loss
from mixprec.engine.hooks.ema import ExpMomentumEMAHook
from mixprec.fp16 import Fp16OptimizerHook
from mixprec.fp16.flat import homogeneous_groups

FOREACH = sorted(n for n in dir(torch) if n.startswith(('_foreach_', '_amp_foreach_')))


def _kinds(value) -> set:
    return {(t.device, t.dtype) for t in value if isinstance(t, torch.Tensor)}


def _first_kind_copy(dsts, srcs) -> None:
    """The pre-fix CUDA fast path: every source converted to the first destination's dtype and its
    bytes written into each destination's storage."""
    first = dsts[0].dtype
    for dst, src in zip(dsts, srcs):
        if dst.dtype == first or not dst.is_contiguous():
            dst.copy_(src)
            continue
        data = src.detach().reshape(-1).to(first).view(torch.uint8)
        storage = dst.view(-1).view(torch.uint8)
        n = min(data.numel(), storage.numel())
        storage[:n].copy_(data[:n])


class ForeachAudit:
    """Wraps the ``torch._foreach_*`` functions (see the module docstring); ``mixed`` lists the
    offending calls as (function, kinds of each list argument)."""

    def __init__(self, monkeypatch) -> None:
        self.mixed: list[tuple[str, list]] = []
        self.calls: dict[str, int] = {}
        for name in FOREACH:
            monkeypatch.setattr(torch, name, self._wrap(name, getattr(torch, name)))

    def _wrap(self, name: str, fn):
        def checked(*args, **kwargs):
            lists = [a for a in args if isinstance(a, (list, tuple))]
            self.calls[name] = self.calls.get(name, 0) + 1
            if any(len(_kinds(lst)) > 1 for lst in lists):
                self.mixed.append((name, [sorted(map(str, _kinds(lst))) for lst in lists]))
                if name == '_foreach_copy_':
                    with torch.no_grad():
                        return _first_kind_copy(*args[:2])
            return fn(*args, **kwargs)
        return checked


def _steps(runner, hooks, data, overflow_at=None) -> None:
    for i, (img, labels) in enumerate(data):
        for hook in hooks:
            hook.before_train_iter(runner)
        loss = net_loss(runner.model, img, labels)
        if i == overflow_at:
            loss = loss * float('inf')
        runner.outputs = {'loss': loss, 'num_samples': len(img)}
        for hook in hooks:
            hook.after_train_iter(runner)
        runner.iter += 1


def test_homogeneous_groups_keeps_pairs_and_order():
    half, full = torch.zeros(2, dtype=torch.float16), torch.zeros(3)
    counter = torch.zeros((), dtype=torch.int64)
    dsts = [half, full, counter, half.clone(), full.clone()]
    srcs = [full.clone(), full.clone(), counter.clone(), full.clone(), full.clone()]
    groups = homogeneous_groups(dsts, srcs)
    assert [[t.dtype for t in d] for d, _ in groups] == [[torch.float16] * 2, [torch.float32] * 2, [torch.int64]]
    order = (0, 3, 1, 4, 2)
    assert all(d is dsts[i] for d, i in zip((t for g in groups for t in g[0]), order, strict=True))
    assert all(s is srcs[i] for s, i in zip((t for g in groups for t in g[1]), order, strict=True))
    assert homogeneous_groups([], []) == []


def test_master_mode_calls_are_homogeneous_and_the_model_equals_its_masters(monkeypatch):
    """float16 master mode with BatchNorm in training mode (its int64 counters sit among the fp32
    statistics), an EMA hook, and a skipped step (the guard restores the statistics)."""
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    runner = make_runner(model, optimizer)
    hook = Fp16OptimizerHook(dtype='float16', mode='master')
    ema = ExpMomentumEMAHook(momentum=0.1, total_iter=10)
    runner.hooks = [hook, ema]
    audit = ForeachAudit(monkeypatch)
    hook.before_run(runner)
    ema.before_run(runner)
    data = batches(6)
    _steps(runner, [hook, ema], data[:2])
    stats = {k: v.clone() for k, v in model.bn1.state_dict().items() if k.startswith(('running', 'num'))}
    _steps(runner, [hook, ema], data[2:3], overflow_at=0)  # skipped: statistics restored
    assert hook.loss_scaler.skipped_steps == 1
    for key, value in stats.items():
        assert torch.equal(getattr(model.bn1, key), value), key
    _steps(runner, [hook, ema], data[3:])
    assert audit.mixed == []
    assert audit.calls.get('_foreach_copy_', 0) >= 6 and audit.calls.get('_foreach_mul_', 0) >= 5
    assert hook._masters.mismatches() == []
    assert model.conv1.weight.dtype is torch.float16 and model.bn1.weight.dtype is torch.float32
    assert model.bn1.num_batches_tracked.item() == 5


def test_autocast_mode_with_mixed_parameter_dtypes_clips_and_unscales_per_dtype(monkeypatch):
    """A model holding a half layer in autocast mode: gradients live in one flat buffer per dtype,
    and the unscale, the norm and the clip see one dtype at a time."""
    torch.manual_seed(0)
    model = TinyNet()
    model.fc.half()
    reference = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    runner = make_runner(model, optimizer)
    hook = Fp16OptimizerHook(dtype='float16', mode='autocast', grad_clip=dict(max_norm=0.01))
    audit = ForeachAudit(monkeypatch)
    hook.before_run(runner)
    assert sorted(str(f.dtype) for f in hook._grads.flats) == ['torch.float16', 'torch.float32']
    _steps(runner, [hook], batches(3))
    assert audit.mixed == []
    assert audit.calls.get('_amp_foreach_non_finite_check_and_unscale_', 0) == 6
    norm = runner.log_buffer.last('grad_norm')
    assert 0.01 < norm < float('inf')  # clipped from a finite norm of both dtypes
    assert all(not torch.equal(p, r) for p, r in zip(model.parameters(), reference))


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_mixed_destinations_would_corrupt_the_norm_layers(monkeypatch, dtype):
    """The emulated fast path is real enough to fail the equality when the copy back mixes dtypes."""
    torch.manual_seed(0)
    model = TinyNet()
    runner = make_runner(model, torch.optim.SGD(model.parameters(), lr=0.05))
    hook = Fp16OptimizerHook(dtype=dtype, mode='master')
    ForeachAudit(monkeypatch)
    hook.before_run(runner)
    masters = hook._masters
    with torch.no_grad():
        _first_kind_copy(masters.model_params, masters.params)
    assert 'bn1.weight' in masters.mismatches() and 'conv1.weight' not in masters.mismatches()
    masters.copy_to_model()
    assert masters.mismatches() == []
