"""Issue 10: a mixed-precision run applies the fp32 ``OptimizerHook``'s update rule, whatever the
training code does between steps, and its checkpoints hold what an fp32 run's would.

Every test runs the same model, optimizer, data and between-iteration actions twice: under the
fp32 ``OptimizerHook`` (the reference) and under ``Fp16OptimizerHook`` (master and autocast mode,
float16 and bfloat16), and compares weights, optimizer state, buffers and checkpoints.
"""
from __future__ import annotations

import copy
import logging
import re
from typing import Callable, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.fp16 import TinyNet, batches, make_runner
from mixprec.checkpoint import load_checkpoint
from mixprec.engine.hooks import NonFiniteLossError, OptimizerHook
from mixprec.fp16 import Fp16OptimizerHook, SkippedStepsError, auto_fp16
from mixprec.registry import ConfigError

MODES = [('master', 'float16'), ('master', 'bfloat16'), ('autocast', 'float16'), ('autocast', 'bfloat16')]
TOL = {'float16': 0.02, 'bfloat16': 0.08}  # |mixed - fp32| / |fp32 - start| after a few steps
INF, NAN = float('inf'), float('nan')


class Net(TinyNet):
    """TinyNet with an unused branch (``extra``), a branch used only while ``use_cond`` is set,
    and optional parameters that are views with gaps (``gaps=True``)."""

    def __init__(self, norm: str = 'bn', gaps: bool = False) -> None:
        super().__init__(norm)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # before BN a bias has no gradient but noise
        self.extra = nn.Linear(8, 4)
        self.cond = nn.Linear(8, 4)
        self.use_cond = False
        self.sliced = nn.Parameter((torch.randn(4, 16) * 0.1)[:, 2:10]) if gaps else None  # strides (16, 1)
        self.strided = nn.Parameter((torch.randn(100) * 0.1).as_strided((4, 8), (20, 2))) if gaps else None

    @auto_fp16(apply_to=('img',))
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(img)))
        x = F.relu(self.gn2(self.conv2(x))).mean((2, 3))
        out = self.fc(x)
        if self.use_cond:
            out = out + self.cond(x)
        if self.sliced is not None:
            out = out + x @ self.sliced.t() + x @ self.strided.t()
        return out


def _loss_and_vars(model, img, labels, bad_term: Optional[float] = None):
    module = model.module if hasattr(model, 'module') else model
    loss = module.loss(model(img), labels)
    log_vars = {'loss_cls': float(loss.detach())}
    if bad_term is not None:
        loss = loss * bad_term
        log_vars['loss_cls'] = float(loss.detach())
    log_vars['loss'] = log_vars['loss_cls']
    return loss, log_vars


def new_runner(model: nn.Module, hook, make_opt=None):
    make_opt = make_opt or (lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1))
    runner = make_runner(model, make_opt(model))
    hook.before_run(runner)
    return runner


def train(model: Optional[nn.Module], hook, data, between: Optional[Callable] = None, make_opt=None,
          bad_terms: dict = {}, runner=None):
    """Drive ``hook`` (fp32 OptimizerHook or the fp16 hook) like the runner does (on ``runner``, or
    a new one around ``model``); ``between(runner, i)`` runs before iteration i (the place of other
    hooks). Returns the runner."""
    if runner is None:
        runner = new_runner(model, hook, make_opt)
    for img, labels in data:
        if between is not None:
            between(runner, runner.iter)
        hook.before_train_iter(runner)
        loss, log_vars = _loss_and_vars(runner.model, img, labels, bad_terms.get(runner.iter))
        runner.outputs = {'loss': loss, 'log_vars': log_vars, 'num_samples': len(img)}
        hook.after_train_iter(runner)
        runner.iter += 1
    return runner


def fp16_hook(mode, dtype, **kwargs):
    return Fp16OptimizerHook(mode=mode, dtype=dtype, loss_scale=kwargs.pop('loss_scale', 1024.), **kwargs)


def checkpoint_state(runner, hook) -> dict:
    """The state_dict a CheckpointHook would save (fp32 values)."""
    ckpt = {'meta': {}, 'state_dict': runner.model.state_dict(), 'optimizer': runner.optimizer.state_dict()}
    hook.before_save_checkpoint(runner, ckpt)
    return {k: (v.float() if v.is_floating_point() else v).detach().clone() for k, v in ckpt['state_dict'].items()}


def params_of(runner, hook) -> dict:
    names = [n for n, _ in runner.model.named_parameters()]
    state = checkpoint_state(runner, hook)
    return {n: state[n] for n in names}


def distance(a: dict, b: dict, start: dict, keys=None) -> float:
    keys = keys or list(b)
    diff = torch.cat([(a[k] - b[k]).flatten() for k in keys]).norm()
    moved = torch.cat([(b[k] - start[k]).flatten() for k in keys]).norm()
    return float(diff / moved)


def pair(mode, dtype, model, data, between=None, make_opt=None, hook_args=None, bad_terms={}, prepare=None):
    """(fp32 runner, fp32 hook, mixed runner, mixed hook, start weights) on copies of ``model``
    (``prepare(copy)`` first, when given)."""
    prepare = prepare or (lambda m: m)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref_hook = OptimizerHook()
    ref = train(prepare(copy.deepcopy(model)), ref_hook, data, between, make_opt, bad_terms)
    hook = fp16_hook(mode, dtype, **(hook_args or {}))
    mixed = train(prepare(copy.deepcopy(model)), hook, data, between, make_opt, bad_terms)
    return ref, ref_hook, mixed, hook, start


def optimizer_state(runner, hook, name):
    """The optimizer state (dict) of the parameter called ``name``, or None when it has none."""
    model_param = dict(runner.model.named_parameters())[name]
    if isinstance(hook, Fp16OptimizerHook) and hook._masters is not None:
        model_param = hook._masters._master_of[id(model_param)]
    return runner.optimizer.state.get(model_param) or None


# ------------------------------------------------------------------ 1. parameters without a gradient
@pytest.mark.parametrize('optim', ['sgd', 'adamw'])
@pytest.mark.parametrize('mode,dtype', MODES)
def test_parameters_without_gradient_are_left_alone_as_in_fp32(mode, dtype, optim):
    torch.manual_seed(0)
    model = Net()
    make_opt = ((lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1))
                if optim == 'sgd' else (lambda m: torch.optim.AdamW(m.parameters(), lr=0.01, weight_decay=0.1)))

    def between(runner, i):
        runner.model.use_cond = i in (1, 2)  # cond gets gradients in iterations 1 and 2 only

    ref, ref_hook, mixed, hook, start = pair(mode, dtype, model, batches(4), between, make_opt)
    want, got = params_of(ref, ref_hook), params_of(mixed, hook)
    for name in ('extra.weight', 'extra.bias'):  # never used: not moved, no state, as in fp32
        assert torch.equal(want[name], start[name]) and torch.equal(got[name], start[name]), name
        assert optimizer_state(ref, ref_hook, name) is None and optimizer_state(mixed, hook, name) is None
    if mode == 'autocast':
        assert mixed.model.extra.weight.grad is None and mixed.model.cond.weight.grad is None
    # cond: stepped twice, then (iteration 3) skipped as fp32 skips it: SGD momentum / Adam's
    # moments would otherwise keep moving it
    tol = TOL[dtype] * (1 if optim == 'sgd' else 3)  # Adam divides rounding noise by tiny grads
    assert distance(got, want, start, ['cond.weight', 'cond.bias']) < tol
    assert distance(got, want, start) < tol


# ------------------------------------------------------------------ 2. grads dropped or replaced
@pytest.mark.parametrize('mode,dtype', MODES)
def test_gradients_dropped_or_replaced_between_iterations(mode, dtype):
    torch.manual_seed(0)
    model = Net()

    def between(runner, i):
        module = runner.model
        if i == 1:
            module.fc.zero_grad()  # set_to_none on a submodule
        elif i == 2:
            runner.optimizer.zero_grad()  # a custom hook zeroing everything the optimizer owns
        elif i == 3:
            module.conv2.weight.grad = torch.full_like(module.conv2.weight, 1e3)  # replaced
            module.gn2.bias.grad = None

    ref, ref_hook, mixed, hook, start = pair(mode, dtype, model, batches(5), between)
    want, got = params_of(ref, ref_hook), params_of(mixed, hook)
    for keys in (['fc.weight', 'fc.bias'], ['conv2.weight'], ['gn2.bias'], None):
        assert distance(got, want, start, keys) < TOL[dtype], keys


# ------------------------------------------------------------------ 3. frozen parameters, live values
@pytest.mark.parametrize('write', ['inplace', 'data', 'none'])
@pytest.mark.parametrize('mode,dtype', MODES)
def test_frozen_parameters_updated_in_place_reach_the_checkpoint(mode, dtype, write):
    """conv1 frozen (a teacher updated by a hook, or a frozen stage): the checkpoint holds its live
    value, and exactly the fp32 value when nothing wrote it (issue 14: frozen stages saved exactly)."""
    torch.manual_seed(0)
    model = Net()
    model.conv1.requires_grad_(False)

    def between(runner, i):
        weight = runner.model.conv1.weight
        if write == 'inplace':
            with torch.no_grad():
                weight.mul_(0.5).add_(0.25)
        elif write == 'data':
            weight.data.mul_(0.5).add_(0.25)

    ref, ref_hook, mixed, hook, start = pair(mode, dtype, model, batches(3), between)
    want, got = checkpoint_state(ref, ref_hook), checkpoint_state(mixed, hook)
    if write == 'none':
        assert torch.equal(got['conv1.weight'], start['conv1.weight'])
        assert not torch.equal(start['conv1.weight'].to(getattr(torch, dtype)).float(), start['conv1.weight'])
    else:
        rel = 2 ** -7 if dtype == 'bfloat16' else 2 ** -10
        torch.testing.assert_close(got['conv1.weight'], want['conv1.weight'], rtol=3 * rel, atol=1e-3)
        assert not torch.allclose(want['conv1.weight'], start['conv1.weight'], atol=0.1)
    assert distance(got, want, start, [n for n in start if not n.startswith('conv1')]) < TOL[dtype]


# ------------------------------------------------------------------ 4. loading after conversion
@pytest.mark.parametrize('how', ['load_state_dict', 'load_checkpoint', 'submodule', 'copy_'])
@pytest.mark.parametrize('mode,dtype', MODES)
def test_weights_loaded_after_conversion_update_the_masters(mode, dtype, how, tmp_path):
    torch.manual_seed(0)
    model = Net()
    torch.manual_seed(1)
    loaded = {k: v * 1.5 for k, v in Net().state_dict().items() if v.is_floating_point()}
    path = str(tmp_path / 'w.pth')
    torch.save({'state_dict': loaded}, path)
    after_load = {}

    def between(runner, i):
        if i != 2:
            return
        module = runner.model
        if how == 'load_state_dict':
            module.load_state_dict(loaded, strict=False)
        elif how == 'load_checkpoint':
            load_checkpoint(module, path)
        elif how == 'submodule':
            module.conv2.load_state_dict({'weight': loaded['conv2.weight'], 'bias': loaded['conv2.bias']})
        else:  # what an EMA hook swapping weights in does
            with torch.no_grad():
                for name, param in module.named_parameters():
                    param.copy_(loaded[name])
            return  # no checkpoint here: the next step alone must take the writes in
        after_load[id(runner)] = checkpoint_state(runner, hooks[id(runner)])

    hooks = {}
    runners = []
    for h in (OptimizerHook(), fp16_hook(mode, dtype)):
        runner = new_runner(copy.deepcopy(model), h)
        hooks[id(runner)] = h
        runners.append(train(None, h, batches(4), between, runner=runner))
    (ref, ref_hook), (mixed, hook) = ((r, hooks[id(r)]) for r in runners)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    keys = ['conv2.weight', 'conv2.bias'] if how == 'submodule' else list(start)
    for key in keys if how != 'copy_' else []:  # a checkpoint right after the load: the loaded weights
        assert torch.equal(after_load[id(mixed)][key], loaded[key]), key
    assert distance(params_of(mixed, hook), params_of(ref, ref_hook), start) < TOL[dtype]
    if mode == 'master':  # layouts survive the load
        conv = mixed.model.conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last)
        assert hook._masters._master_of[id(conv)].is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------ 5. views with gaps
@pytest.mark.parametrize('mode,dtype', MODES)
def test_parameters_with_gaps_train_as_in_fp32(mode, dtype):
    torch.manual_seed(0)
    model = Net(gaps=True)

    def with_gaps(copied: Net) -> Net:  # deepcopy packs parameters: make them views with gaps again
        sliced = torch.zeros(4, 16)[:, 2:10]
        strided = torch.zeros(100).as_strided((4, 8), (20, 2))
        sliced.copy_(copied.sliced.detach())
        strided.copy_(copied.strided.detach())
        copied.sliced, copied.strided = nn.Parameter(sliced), nn.Parameter(strided)
        assert not copied.sliced.is_contiguous() and not copied.strided.is_contiguous()
        return copied

    ref, ref_hook, mixed, hook, start = pair(mode, dtype, model, batches(3), prepare=with_gaps)
    want, got = params_of(ref, ref_hook), params_of(mixed, hook)
    for keys in (['sliced'], ['strided'], ['fc.weight'], None):
        assert distance(got, want, start, keys) < TOL[dtype], keys


@pytest.mark.parametrize('mode', ['master', 'autocast'])
def test_overlapping_parameter_is_refused_by_name(mode):
    model = Net()
    model.shared = nn.Parameter(torch.randn(8).expand(4, 8))
    runner = make_runner(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r'parameter shared .*overlapping'):
        fp16_hook(mode, 'bfloat16').before_run(runner)


# ------------------------------------------------------------------ 6. a run that never recovers
@pytest.mark.parametrize('mode,dtype', [('master', 'bfloat16'), ('autocast', 'float16')])
def test_consecutive_skipped_steps_stop_the_run(mode, dtype):
    """Non-finite losses from iteration 2 on: the fp32 hook stops after max_nonfinite_iters, the
    fp16 hook (static scale, never backs off) after max_skipped_steps, at the same iteration; a
    streak broken by a good step does not count."""
    torch.manual_seed(0)
    model = Net()
    bad = {i: NAN for i in range(2, 20)}
    with pytest.raises(NonFiniteLossError) as fp32_error:
        train(copy.deepcopy(model), OptimizerHook(max_nonfinite_iters=3), batches(10), bad_terms=bad)
    with pytest.raises(SkippedStepsError, match=r'^3 consecutive optimizer steps skipped .* at iter 5 .*'
                       r'max_skipped_steps=3.*diverged') as fp16_error:
        train(copy.deepcopy(model), fp16_hook(mode, dtype, loss_scale=1., max_skipped_steps=3), batches(10),
              bad_terms=bad)
    assert 'at iter 5' in str(fp32_error.value) and '\n' not in str(fp16_error.value)
    broken = {1: NAN, 2: NAN, 4: NAN, 5: NAN}
    runner = train(copy.deepcopy(model), fp16_hook(mode, dtype, loss_scale=1., max_skipped_steps=3), batches(7),
                   bad_terms=broken)
    assert runner.log_buffer.last('skipped_steps') == 4
    assert Fp16OptimizerHook().max_skipped_steps >= 50  # a healthy dynamic-scale start never trips it


@pytest.mark.slow
def test_skipped_steps_stop_tools_train_with_exit_code_1(tmp_path):
    """Through the real tools/train.py (tiny Mask R-CNN, bf16, static scale 1): NaN weights from
    iteration 1 on end the run with one line and exit code 1 after max_skipped_steps."""
    from helpers.tiny import write_tiny_config
    from helpers.faults import ARGS, LAUNCHER
    from helpers.tool_runs import finish, one_error_line, start_tool, tool_env
    config = write_tiny_config(str(tmp_path), epochs=3, num_train=4, num_val=2, img_size=64,
                               extra="fp16 = dict(dtype='bfloat16', max_skipped_steps=2)\n")
    launcher = tmp_path / 'launcher.py'
    launcher.write_text(LAUNCHER)
    env = tool_env(FAULT_NAN_FROM_ITER='1', FAULT_MARKER=str(tmp_path / 'marker'))
    proc = finish(start_tool('train.py', config, '--work-dir', str(tmp_path / 'work'), *ARGS, cwd=str(tmp_path),
                             env=env, launcher=str(launcher)))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert re.match(r'error: 2 consecutive optimizer steps skipped for inf/NaN gradients at iter 3 '
                    r'\(loss_scale 1, max_skipped_steps=2\): the run has diverged', one_error_line(proc))


# ------------------------------------------------------------------ 7. unknown arguments
def test_unknown_argument_is_a_config_error_naming_the_closest():
    with pytest.raises(ConfigError, match=r"unknown argument 'loss_sacle'; did you mean loss_scale"):
        Fp16OptimizerHook(loss_sacle=512.)
    with pytest.raises(ConfigError, match=r"'cumulative_iter'; did you mean cumulative_iters"):
        Fp16OptimizerHook(cumulative_iter=2)
    Fp16OptimizerHook(coalesce=True, bucket_size_mb=-1)  # mmcv 1.x arguments without effect here
    with pytest.raises(ConfigError, match='fp32_modules must be a list'):
        Fp16OptimizerHook(fp32_modules='roi_head')


# ------------------------------------------------------------------ 8. skipped steps leave no trace
@pytest.mark.parametrize('mode,dtype', MODES)
def test_skipped_step_restores_norm_running_stats(mode, dtype):
    """fp16 over batches 0, 1, 2 with an overflow in step 1 == fp32 over batches 0 and 2, BN
    running statistics and their counter included."""
    torch.manual_seed(0)
    model = Net()
    data = batches(3)
    ref_hook = OptimizerHook()
    ref = train(copy.deepcopy(model), ref_hook, [data[0], data[2]])
    hook = fp16_hook(mode, dtype)
    mixed_model = copy.deepcopy(model)
    handles = []

    def between(runner, i):
        for h in handles:
            h.remove()
        handles.clear()
        if i == 1:
            handles.append(runner.model.fc.weight.register_hook(lambda g: torch.full_like(g, INF)))

    mixed = train(mixed_model, hook, data, between)
    assert mixed.log_buffer.last('skipped_steps') == 1
    want, got = checkpoint_state(ref, ref_hook), checkpoint_state(mixed, hook)
    assert got['bn1.num_batches_tracked'] == want['bn1.num_batches_tracked'] == 2
    start = {k: v.float() for k, v in model.state_dict().items()}
    assert distance(got, want, start, ['bn1.running_mean', 'bn1.running_var']) < TOL[dtype]
    assert distance(got, want, start, [n for n, _ in model.named_parameters()]) < TOL[dtype]


def test_norm_layers_in_eval_mode_are_not_snapshotted():
    model = Net()
    hook = fp16_hook('master', 'bfloat16')
    runner = new_runner(model, hook)
    model.bn1.eval()
    hook.before_train_iter(runner)
    assert hook._stats._live == []
    model.bn1.train()
    hook.before_train_iter(runner)
    assert [t.data_ptr() for t in hook._stats._live] == [model.bn1.running_mean.data_ptr(),
                                                          model.bn1.running_var.data_ptr(),
                                                          model.bn1.num_batches_tracked.data_ptr()]


# ------------------------------------------------------------------ 9. the warning names the loss term
@pytest.mark.parametrize('mode,dtype', [('master', 'float16'), ('autocast', 'bfloat16')])
def test_overflow_warning_names_the_loss_terms(mode, dtype, caplog):
    torch.manual_seed(0)
    model = Net()
    with caplog.at_level(logging.WARNING):
        train(copy.deepcopy(model), OptimizerHook(), batches(2), bad_terms={1: INF})
        fp32_line = caplog.records[-1].getMessage()
        caplog.clear()
        train(copy.deepcopy(model), fp16_hook(mode, dtype), batches(2), bad_terms={1: INF})
        bad_loss = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and 'overflow' in r.getMessage()]
        caplog.clear()

        def between(runner, i):
            if i == 1:
                runner.model.conv2.bias.register_hook(lambda g: torch.full_like(g, NAN))
        train(copy.deepcopy(model), fp16_hook(mode, dtype), batches(2), between)
        bad_backward = [r.getMessage() for r in caplog.records
                        if r.levelno == logging.WARNING and 'overflow' in r.getMessage()]
    assert 'non-finite loss terms loss_cls' in fp32_line
    assert len(bad_loss) == 1 and 'non-finite loss terms: loss_cls;' in bad_loss[0]
    assert len(bad_backward) == 1 and 'all loss terms finite, the overflow arose in backward' in bad_backward[0]
    assert 'conv2.bias (nan)' in bad_backward[0]


# ------------------------------------------------------------------ 10. fp32_modules
class HeadNet(Net):
    """Its head squares values of several hundreds: inf in float16 (max 65504), fine in fp32."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(8, 4))
        self.head[0].seen = []  # output dtypes
        self.head[0].register_forward_hook(lambda m, a, out: m.seen.append(out.dtype))

    @auto_fp16(apply_to=('img',))
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(img)))
        x = F.relu(self.gn2(self.conv2(x))).mean((2, 3))
        return self.fc(x) + (self.head(x) * 2e3).square() * 2.5e-6


@pytest.mark.parametrize('mode,dtype', MODES)
def test_fp32_modules_run_in_fp32_and_train_as_fp32(mode, dtype):
    torch.manual_seed(0)
    model = HeadNet()
    ref, ref_hook, mixed, hook, start = pair(mode, dtype, model, batches(3),
                                             hook_args=dict(fp32_modules=['head']))
    assert mixed.log_buffer.last('skipped_steps') == 0
    assert set(mixed.model.head[0].seen) == {torch.float32}
    assert mixed.model.head[0].weight.dtype is torch.float32
    if mode == 'master':
        assert mixed.model.fc.weight.dtype is getattr(torch, dtype)
    assert distance(params_of(mixed, hook), params_of(ref, ref_hook), start) < TOL[dtype]
    if dtype == 'float16':  # without it the head overflows in half: every step skipped
        plain = train(copy.deepcopy(model), fp16_hook(mode, dtype), batches(3))
        assert plain.log_buffer.last('skipped_steps') == 3


def test_fp32_modules_unknown_name_is_a_config_error():
    model = HeadNet()
    runner = make_runner(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ConfigError, match=r"no module named 'heads'; closest: head"):
        fp16_hook('master', 'bfloat16', fp32_modules=['heads']).before_run(runner)
