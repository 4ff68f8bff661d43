"""Fp16OptimizerHook on a small conv net, against fp32 references computed here."""
import copy
import io
import logging

import pytest
import torch
from torch import nn

from helpers.cpu import native_bf16
from helpers.fp16 import TinyNet, batches, fp32_reference, make_runner, net_loss, plain_loss, run
from mixprec.fp16 import Fp16OptimizerHook, LossScaleCollapseError
from mixprec.registry import HOOKS

INF, NAN = float('inf'), float('nan')


def setup(dtype='float16', mode='master', lr=0.05, momentum=0.9, seed=0, model=None, **hook_args):
    torch.manual_seed(seed)
    model = TinyNet() if model is None else model
    fp32 = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    runner = make_runner(model, opt, max_iters=hook_args.pop('max_iters', None))
    if dtype == 'float16':  # these tests follow the dynamic scaler; float16's default is a static 512
        hook_args.setdefault('loss_scale', 'dynamic')
    hook = Fp16OptimizerHook(dtype=dtype, mode=mode, **hook_args)
    hook.before_run(runner)
    return runner, hook, fp32


def masters(runner):
    return [p for g in runner.optimizer.param_groups for p in g['params']]


def flat(tensors):
    return torch.cat([t.detach().float().flatten() for t in tensors])


def test_master_mode_dtypes_and_distinct_masters():
    runner, hook, fp32 = setup('float16')
    model = runner.model
    params = masters(runner)
    model_params = list(model.parameters())
    assert all(p.dtype is torch.float32 for p in params)
    assert not any(p is q for p in params for q in model_params)
    assert torch.equal(flat(params), flat(fp32.parameters()))  # masters start from the exact fp32 values
    assert model.conv1.weight.dtype is torch.float16 and model.fc.weight.dtype is torch.float16
    assert model.bn1.weight.dtype is torch.float32 and model.gn2.bias.dtype is torch.float32
    img, labels = batches(1)[0]
    logits = model(img)
    assert logits.dtype is torch.float16  # auto_fp16 region ran in half
    run(runner, hook, batches(1))
    logged, count = runner.log_buffer.history[-1]
    assert logged == {'loss_scale': 65536., 'skipped_steps': 0} and count == 4
    assert runner.meta['fp16']['loss_scaler']['loss_scale'] == 65536.
    assert runner.meta['fp16']['dtype'] == 'float16' and runner.meta['fp16']['mode'] == 'master'
    # the model is the masters rounded to half (norm layers: the masters themselves)
    assert torch.equal(model.conv1.weight, hook._masters.params[0].half())


@pytest.mark.parametrize('dtype,mode,tol', [('float16', 'master', 2e-3), ('float16', 'autocast', 2e-3),
                                            ('bfloat16', 'master', 1e-2)])
def test_training_ends_close_to_fp32(dtype, mode, tol):
    """12 SGD steps: final weights within ``tol`` (relative) of the fp32 run, and the distance to
    fp32 is small compared with how far training moved them."""
    data = batches(12)
    runner, hook, fp32 = setup(dtype, mode, lr=0.05, momentum=0.)
    start = flat(fp32.parameters())
    reference = flat(fp32_reference(fp32, data, lr=0.05, momentum=0.).parameters())
    run(runner, hook, data)
    result = flat(masters(runner))
    assert (result - reference).norm() / reference.norm() < tol
    assert (result - reference).norm() / (reference - start).norm() < 15 * tol
    assert runner.log_buffer.last('skipped_steps') == 0


@pytest.mark.parametrize('mode', ['master', 'autocast'])
@pytest.mark.parametrize('bad,kind,param', [(INF, 'inf', 'fc.weight'), (NAN, 'nan', 'conv1.weight')])
def test_overflow_skips_step_and_halves_scale(mode, bad, kind, param, caplog):
    runner, hook, _ = setup('float16', mode)
    data = batches(4)
    run(runner, hook, data[:2])
    before_params = [p.detach().clone() for p in masters(runner)]
    before_model = [p.detach().clone() for p in runner.model.parameters()]
    before_state = copy.deepcopy(runner.optimizer.state_dict()['state'])
    handle = runner.model.get_parameter(param).register_hook(lambda g: torch.full_like(g, bad))
    with caplog.at_level(logging.WARNING):
        run(runner, hook, data[2:3])
    handle.remove()
    assert all(torch.equal(a, b) for a, b in zip(masters(runner), before_params))
    assert all(torch.equal(a, b) for a, b in zip(runner.model.parameters(), before_model))
    state = runner.optimizer.state_dict()['state']
    assert all(torch.equal(state[i]['momentum_buffer'], before_state[i]['momentum_buffer']) for i in state)
    assert hook.loss_scaler.loss_scale == 32768.
    assert runner.log_buffer.last('skipped_steps') == 1 and runner.log_buffer.last('loss_scale') == 32768.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and 'overflow' in r.getMessage()]
    assert len(warnings) == 1 and f'{param} ({kind})' in warnings[0] and 'skipped' in warnings[0]
    run(runner, hook, data[3:])  # training continues with a finite step
    assert not torch.equal(masters(runner)[0], before_params[0])
    assert runner.log_buffer.last('skipped_steps') == 1


def test_hysteresis_and_static_mode():
    runner, hook, _ = setup('float16', loss_scale=dict(init_scale=1024., hysteresis=2))
    handle = runner.model.fc.weight.register_hook(lambda g: torch.full_like(g, INF))
    run(runner, hook, batches(1))
    assert hook.loss_scaler.loss_scale == 1024.
    run(runner, hook, batches(1))
    assert hook.loss_scaler.loss_scale == 512. and hook.loss_scaler.skipped_steps == 2
    handle.remove()
    runner, hook, _ = setup('float16', loss_scale=512.)
    before = flat(masters(runner))
    handle = runner.model.fc.bias.register_hook(lambda g: torch.full_like(g, INF))
    run(runner, hook, batches(2))
    assert torch.equal(flat(masters(runner)), before)  # static mode skipped the inf steps too
    assert hook.loss_scaler.loss_scale == 512. and runner.log_buffer.last('skipped_steps') == 2


def test_collapse_error_through_the_hook():
    runner, hook, _ = setup('float16', loss_scale=dict(init_scale=2., min_scale=1.))
    runner.model.fc.weight.register_hook(lambda g: torch.full_like(g, NAN))
    run(runner, hook, batches(1))
    with pytest.raises(LossScaleCollapseError, match='diverged'):
        run(runner, hook, batches(1))


@pytest.mark.parametrize('mode', ['master', 'autocast'])
@pytest.mark.parametrize('loss_scale', [512., None])  # fused unscale path; bf16's default scale 1
@pytest.mark.parametrize('max_norm,norm_type', [(0.05, 2.), (1e6, 2.), (0.05, 1.), (0.05, INF)])
def test_grad_clip_equals_clipping_unscaled_fp32_grads(mode, loss_scale, max_norm, norm_type):
    """Independent reference: unscaled backward on a copy, grads as fp32, clip_grad_norm_, SGD lr 1."""
    model = TinyNet()
    if mode == 'autocast':
        del model.fp16_enabled  # the whole model then runs in fp32: the reference is exact fp32
    runner, hook, _ = setup('bfloat16', mode, lr=1., momentum=0., model=model, loss_scale=loss_scale,
                            grad_clip=dict(max_norm=max_norm, norm_type=norm_type))
    img, labels = batches(1)[0]
    ref_model = copy.deepcopy(runner.model)
    named = dict(ref_model.named_parameters())
    net_loss(ref_model, img, labels).backward()
    copies = []
    for name in hook._names:
        q = named[name].detach().float().clone().requires_grad_()
        q.grad = named[name].grad.float()
        copies.append(q)
    unclipped = [q.grad.clone() for q in copies]
    total = nn.utils.clip_grad_norm_(copies, max_norm, norm_type)
    assert (total > 2 * max_norm) == (max_norm < 1)
    l2 = torch.linalg.vector_norm(torch.cat([g.flatten() for g in unclipped]))
    assert (abs(float(total) - float(l2)) > 0.1 * float(l2)) == (norm_type != 2)  # L2 clipping would differ  # clipping is active in the first case only
    start = [p.detach().clone() for p in (hook._masters.params if mode == 'master' else hook._grads.params)]
    run(runner, hook, [(img, labels)])
    after = hook._masters.params if mode == 'master' else hook._grads.params
    for p0, p1, q, g in zip(start, after, copies, unclipped):
        torch.testing.assert_close(p1, p0 - q.grad, rtol=1e-6, atol=1e-9)
    assert runner.log_buffer.last('grad_norm') == pytest.approx(float(total), rel=1e-6)
    unclipped_update = flat(p0 - g for p0, g in zip(start, unclipped))
    assert torch.allclose(flat(after), unclipped_update) == (max_norm > 1)


def test_bf16_scale_one_still_skips_non_finite_steps(caplog):
    runner, hook, _ = setup('bfloat16', grad_clip=dict(max_norm=10.))
    assert hook.loss_scaler.loss_scale == 1.
    run(runner, hook, batches(1))
    before = flat(masters(runner))
    handle = runner.model.conv2.bias.register_hook(lambda g: torch.full_like(g, NAN))
    with caplog.at_level(logging.WARNING):
        run(runner, hook, batches(1))
    handle.remove()
    assert torch.equal(flat(masters(runner)), before)
    assert 'conv2.bias (nan)' in caplog.records[-1].getMessage()
    assert runner.log_buffer.last('skipped_steps') == 1 and hook.loss_scaler.loss_scale == 1.


def _checkpoint(runner, hook):
    ckpt = {'meta': dict(runner.meta), 'state_dict': runner.model.state_dict(),
            'optimizer': runner.optimizer.state_dict()}
    hook.before_save_checkpoint(runner, ckpt)
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_resume_is_bit_exact(dtype):
    k = 4
    data = batches(2 * k)
    scale = dict(init_scale=2.**10, growth_interval=3)
    inject_at = 1

    def session(model, part, meta=None, opt_state=None, start=0):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        runner = make_runner(model, opt, meta=meta)
        runner.iter = start
        hook = Fp16OptimizerHook(dtype=dtype, loss_scale=scale)
        hook.before_run(runner)
        for i, batch in enumerate(part, start):
            handle = runner.model.fc.bias.register_hook(lambda g: g * INF) if i == inject_at else None
            run(runner, hook, [batch])
            if handle:
                handle.remove()
        return runner, hook

    torch.manual_seed(0)
    init = TinyNet()
    full, full_hook = session(copy.deepcopy(init), data)
    first, first_hook = session(copy.deepcopy(init), data[:k])
    ckpt = _checkpoint(first, first_hook)
    assert all(v.dtype is torch.float32 for v in ckpt['state_dict'].values() if v.is_floating_point())
    assert ckpt['meta']['fp16']['loss_scaler']['skipped_steps'] == 1
    fresh = TinyNet()  # different random init: everything must come from the checkpoint
    fresh.load_state_dict(ckpt['state_dict'])
    second, second_hook = session(fresh, data[k:], meta=ckpt['meta'], opt_state=ckpt['optimizer'], start=k)
    assert second_hook.loss_scaler.state_dict() == full_hook.loss_scaler.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(masters(second), masters(full)))
    for (name, a), b in zip(second.model.state_dict().items(), full.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(second.optimizer.state.values(), full.optimizer.state.values()):
        assert torch.equal(a['momentum_buffer'], b['momentum_buffer'])


def test_checkpoint_holds_masters_not_half_weights():
    runner, hook, _ = setup('float16')
    run(runner, hook, batches(2))
    ckpt = _checkpoint(runner, hook)
    state = ckpt['state_dict']
    assert torch.equal(state['conv1.weight'], hook._masters.params[0])
    assert not torch.equal(state['conv1.weight'], runner.model.conv1.weight.float())  # masters keep more bits
    assert state['bn1.running_mean'].dtype is torch.float32 and state['bn1.num_batches_tracked'] == 2
    assert set(state) == set(runner.model.state_dict())
    assert ckpt['meta']['fp16'] == {'loss_scaler': hook.loss_scaler.state_dict(), 'dtype': 'float16',
                                    'mode': 'master'}


def test_resumed_optimizer_state_moves_to_masters():
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    momentum = {p: torch.randn_like(p) for p in model.parameters()}
    for p, m in momentum.items():
        opt.state[p]['momentum_buffer'] = m
    runner = make_runner(model, opt)
    Fp16OptimizerHook(dtype='bfloat16').before_run(runner)
    assert set(opt.state) == set(masters(runner))
    assert all(opt.state[m]['momentum_buffer'] is momentum[p] for m, p in zip(masters(runner), momentum))


def _accumulate(mode, dtype, cumulative, data, model, loss_fn):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    runner = make_runner(model, opt, max_iters=len(data))
    hook = Fp16OptimizerHook(dtype=dtype, mode=mode, cumulative_iters=cumulative, loss_scale=256.)
    hook.before_run(runner)
    run(runner, hook, data, loss_fn)
    return flat(masters(runner))


@pytest.mark.parametrize('mode,dtype,tol', [('autocast', 'bfloat16', 1e-6), ('master', 'float16', 3e-3)])
def test_accumulation_equals_one_large_batch(mode, dtype, tol):
    """cumulative_iters=2 over 5 batches of 4 == 3 steps over batches of 8, 8, 4 (last window short)."""
    torch.manual_seed(0)
    model = TinyNet(norm='gn')
    loss_fn = net_loss
    if mode == 'autocast':
        del model.fp16_enabled  # all fp32: accumulation must match to rounding
        loss_fn = plain_loss
    small = batches(5)
    large = [(torch.cat([small[i][0], small[i + 1][0]]), torch.cat([small[i][1], small[i + 1][1]]))
             for i in (0, 2)] + [small[4]]
    accumulated = _accumulate(mode, dtype, 2, small, copy.deepcopy(model), loss_fn)
    one_batch = _accumulate(mode, dtype, 1, large, copy.deepcopy(model), loss_fn)
    start = flat(model.parameters())
    assert (accumulated - one_batch).norm() / (one_batch - start).norm() < tol
    reference = flat(fp32_reference(copy.deepcopy(model), large, loss_fn=loss_fn).parameters())
    assert (accumulated - reference).norm() / (reference - start).norm() < max(tol, 1e-5)


def test_accumulation_logs_every_iter_and_steps_once_per_window():
    runner, hook, _ = setup('bfloat16', cumulative_iters=3, max_iters=6,
                            grad_clip=dict(max_norm=10.))
    before = flat(masters(runner))
    run(runner, hook, batches(2))
    assert torch.equal(flat(masters(runner)), before)  # no step inside the window
    run(runner, hook, batches(1))
    assert not torch.equal(flat(masters(runner)), before)
    assert [('grad_norm' in v) for v, _ in runner.log_buffer.history] == [False, False, True]
    assert all('loss_scale' in v and 'skipped_steps' in v for v, _ in runner.log_buffer.history)


def test_bf16_defaults_and_auto_dtype(caplog):
    assert Fp16OptimizerHook(dtype='bfloat16').loss_scaler.state_dict()['mode'] == 'static'
    assert Fp16OptimizerHook(dtype='bfloat16').loss_scaler.loss_scale == 1.
    assert Fp16OptimizerHook(dtype='bfloat16', loss_scale='dynamic').loss_scaler.mode == 'dynamic'
    default = Fp16OptimizerHook().loss_scaler  # float16: mmcv 1.x's default, a static 512
    assert default.mode == 'static' and default.loss_scale == 512.
    with caplog.at_level(logging.INFO):
        runner, hook, _ = setup('auto')
    expected = torch.bfloat16 if native_bf16() in (True, None) else torch.float32  # this CPU (see fp16/test_precision.py)
    assert hook.dtype is expected and runner.model.conv1.weight.dtype is expected
    assert hook.loss_scaler.loss_scale == 1. and hook.loss_scaler.mode == 'static'
    assert any(f"'auto' -> {str(expected)[6:]}" in r.getMessage() for r in caplog.records)


def test_registry_and_hook_interface():
    hook = HOOKS.build(dict(type='Fp16OptimizerHook', grad_clip=None, loss_scale=512.,
                            distributed=False, coalesce=True, bucket_size_mb=-1))
    assert hook.loss_scaler.mode == 'static' and hook.loss_scaler.loss_scale == 512.
    assert isinstance(hook.default_priority, int) and hook.default_priority < 50
    assert not hasattr(hook, 'priority')  # the runner's registration sets it (mmcv 1.x refuses it preset)
    for name in ('before_run', 'after_run', 'before_epoch', 'after_epoch', 'before_iter', 'after_iter',
                 'before_train_epoch', 'after_train_epoch', 'before_train_iter', 'after_train_iter',
                 'before_val_epoch', 'after_val_epoch', 'before_val_iter', 'after_val_iter',
                 'before_save_checkpoint', 'state_dict', 'load_state_dict'):
        assert callable(getattr(hook, name)), name
    with pytest.raises(ValueError, match='mode'):
        Fp16OptimizerHook(mode='O1')


def test_mmcv_style_runner_without_meta():
    runner, hook, _ = setup('bfloat16')
    runner.meta = None
    run(runner, hook, batches(1))
    assert runner.meta['fp16']['loss_scaler']['loss_scale'] == 1.


def test_guards_and_warnings(caplog):
    """The hook's own argument checks, its order check and the resume-inside-a-window warning."""
    with pytest.raises(ValueError, match='grad_clip needs max_norm'):
        Fp16OptimizerHook(grad_clip=dict(norm_type=2))
    with pytest.raises(ValueError, match='cumulative_iters must be >= 1, got 0'):
        Fp16OptimizerHook(cumulative_iters=0)
    with pytest.raises(ValueError, match='max_skipped_steps must be >= 1'):
        Fp16OptimizerHook(max_skipped_steps=0)
    model = TinyNet()
    runner = make_runner(model, torch.optim.SGD(model.parameters(), lr=0.1))
    img, labels = batches(1)[0]
    runner.outputs = {'loss': net_loss(model, img, labels), 'num_samples': 4}
    with pytest.raises(RuntimeError, match='after_train_iter called before before_run'):
        Fp16OptimizerHook(dtype='bfloat16').after_train_iter(runner)
    for it, warned in ((5, True), (8, False)):
        model = TinyNet()
        runner = make_runner(model, torch.optim.SGD(model.parameters(), lr=0.1))
        runner.iter = it
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            Fp16OptimizerHook(dtype='bfloat16', cumulative_iters=4).before_run(runner)
        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any('resuming at iter 5, inside an accumulation window of 4' in m for m in messages) == warned
