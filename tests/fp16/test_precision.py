"""dtype='auto' and the fast-path warning: CUDA capabilities faked, the real CPU (with its ISA limited
in a subprocess, against /proc/cpuinfo), and the hook's declined mode against the fp32 OptimizerHook."""
import copy
import logging
import os
import subprocess
import sys

import pytest
import torch

from helpers.cpu import AVX2_ONLY, native_bf16
from helpers.fp16 import TinyNet, batches, make_runner, net_loss, run
from helpers.tiny import ROOT
from mixprec.engine import OptimizerHook
from mixprec.fp16 import Fp16OptimizerHook, precision, resolve_dtype, wrap_fp16_model

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


@pytest.fixture
def fresh_probe():
    precision._cpu_native.cache_clear()
    yield
    precision._cpu_native.cache_clear()


def fake_gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: capability)


@pytest.mark.parametrize('capability, expected', [((6, 1), FP32), ((7, 0), FP16), ((7, 5), FP16),
                                                  ((8, 0), BF16), ((8, 9), BF16), ((9, 0), BF16)])
def test_auto_on_cuda_follows_the_tensor_cores(monkeypatch, capability, expected):
    fake_gpu(monkeypatch, capability)
    choice = precision.choose_dtype('cuda')
    assert choice.dtype is expected and choice.mixed == (expected is not FP32)
    assert f'{capability[0]}.{capability[1]}' in choice.reason
    assert resolve_dtype('auto', 'cuda') is expected


@pytest.mark.parametrize('capability, dtype, slow', [((6, 1), FP16, True), ((7, 0), FP16, False),
                                                     ((7, 0), BF16, True), ((8, 0), BF16, False),
                                                     ((8, 0), FP16, False), ((9, 0), BF16, False)])
def test_explicit_dtype_without_tensor_cores_is_called_slow(monkeypatch, capability, dtype, slow):
    fake_gpu(monkeypatch, capability)
    reason = precision.slow_dtype_reason(dtype, 'cuda')
    assert (reason is not None) == slow, reason


def fake_cpu(monkeypatch, avx512_bf16=False, amx=False, onednn_bf16=True, speedup=2.0):
    monkeypatch.setattr(precision, 'cpu_flags', lambda: {'avx512_bf16': avx512_bf16, 'amx': amx, 'amx_fp16': False})
    monkeypatch.setattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported', lambda: onednn_bf16)
    calls = []
    monkeypatch.setattr(precision, 'probe_conv_speedup', lambda dtype: calls.append(dtype) or speedup)
    return calls


@pytest.mark.parametrize('cpu, expected, probed', [
    (dict(avx512_bf16=True), BF16, True),                           # Zen 4, Cooper Lake
    (dict(amx=True, speedup=6.0), BF16, True),                      # Sapphire Rapids
    (dict(), FP32, False),                                          # AVX2 or AVX512 without BF16
    (dict(avx512_bf16=True, onednn_bf16=False), FP32, False),       # ONEDNN_MAX_CPU_ISA=AVX2
    (dict(avx512_bf16=True, speedup=0.4), FP32, True),              # ONEDNN_MAX_CPU_ISA=AVX512_CORE
])
def test_auto_on_cpu_needs_native_bf16(monkeypatch, fresh_probe, cpu, expected, probed):
    calls = fake_cpu(monkeypatch, **cpu)
    choice = precision.choose_dtype('cpu')
    assert choice.dtype is expected, choice.reason
    assert calls == ([BF16] if probed else [])
    precision.choose_dtype('cpu')
    assert len(calls) == (1 if probed else 0)  # decided once per process


def test_probe_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    assert precision.probe_conv_speedup(torch.bfloat16, rounds=1) > 0
    assert torch.equal(torch.get_rng_state(), state)  # a resumed run restores it before the hook decides


def choice_in_subprocess(env: dict) -> str:
    code = ('import time; from mixprec.fp16.precision import choose_dtype; t = time.perf_counter(); '
            "c = choose_dtype('cpu'); print(c.dtype, round(time.perf_counter() - t, 3)); print(c.reason)")
    out = subprocess.run([sys.executable, '-c', code], env=dict(os.environ, PYTHONPATH=ROOT, **env),
                         capture_output=True, text=True, timeout=120, check=True).stdout.splitlines()
    return out


@pytest.mark.parametrize('env', [{}, AVX2_ONLY, {'ATEN_CPU_CAPABILITY': 'avx2'},
                                 {'ONEDNN_MAX_CPU_ISA': 'AVX512_CORE'}])
def test_auto_on_this_cpu_under_isa_limits(env):
    expected = native_bf16(dict(os.environ, **env))
    if expected is None:
        pytest.skip('no /proc/cpuinfo to compare with')
    first, reason = choice_in_subprocess(env)
    dtype, seconds = first.split()
    assert dtype == ('torch.bfloat16' if expected else 'torch.float32'), reason
    print(env, dtype, f'{seconds} s', reason)


def setup_hook(dtype, mode='master', **hook_args):
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    runner = make_runner(model, optimizer, max_iters=4)
    hook = Fp16OptimizerHook(dtype=dtype, mode=mode, distributed=False, **hook_args)
    return runner, hook


@pytest.mark.parametrize('mode', ['master', 'autocast'])
def test_declined_auto_is_the_plain_fp32_step(monkeypatch, fresh_probe, caplog, mode):
    fake_cpu(monkeypatch)  # no native bf16
    runner, hook = setup_hook('auto', mode, loss_scale=512., grad_clip=dict(max_norm=1.0))
    reference = make_runner(copy.deepcopy(runner.model), None)
    reference.optimizer = torch.optim.SGD(reference.model.parameters(), lr=0.05, momentum=0.9)
    with caplog.at_level(logging.INFO):
        hook.before_run(runner)
    declined = [r for r in caplog.records if 'mixed precision declined' in r.getMessage()]
    assert len(declined) == 1 and declined[0].levelno == logging.WARNING
    assert hook.dtype is FP32 and hook._masters is None
    assert all(p.dtype is FP32 for p in runner.model.parameters())
    assert not runner.model.fp16_enabled  # the model is not converted: @auto_fp16 stays a no-op
    assert hook.loss_scaler.loss_scale == 1.  # no scaling, whatever loss_scale said
    fp32_hook = OptimizerHook(grad_clip=dict(max_norm=1.0))
    data = batches(4)
    run(runner, hook, data)
    for img, labels in data:
        fp32_hook.before_train_iter(reference)
        reference.outputs = {'loss': net_loss(reference.model, img, labels), 'num_samples': len(img),
                             'log_vars': {'loss': 0.}}
        fp32_hook.after_train_iter(reference)
    for (name, p), q in zip(runner.model.named_parameters(), reference.model.parameters()):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), name
    meta = runner.meta['fp16']
    assert meta['dtype'] == 'float32' and meta['mode'] == 'fp32'
    assert meta['requested'] == {'dtype': 'auto', 'mode': mode} and 'bf16' in meta['declined']
    checkpoint = {'meta': {}, 'state_dict': {}}
    hook.before_save_checkpoint(runner, checkpoint)
    assert checkpoint['meta']['fp16']['declined'] == meta['declined']


def test_native_auto_converts_and_logs_why(monkeypatch, fresh_probe, caplog):
    fake_cpu(monkeypatch, avx512_bf16=True)
    runner, hook = setup_hook('auto')
    with caplog.at_level(logging.INFO):
        hook.before_run(runner)
    assert hook.dtype is BF16 and hook.declined is None and runner.model.conv1.weight.dtype is BF16
    assert hook.loss_scaler.loss_scale == 1. and hook.loss_scaler.mode == 'static'
    assert any("'auto' -> bfloat16 on cpu: native bfloat16" in r.getMessage() for r in caplog.records)
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)


@pytest.mark.parametrize('native', [True, False])
def test_explicit_dtype_is_honoured_with_one_warning_where_slow(monkeypatch, fresh_probe, caplog, native):
    fake_cpu(monkeypatch, avx512_bf16=native)
    runner, hook = setup_hook('bfloat16')
    with caplog.at_level(logging.INFO):
        hook.before_run(runner)
        run(runner, hook, batches(2))
    assert hook.dtype is BF16 and runner.model.conv1.weight.dtype is BF16
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == (0 if native else 1), warnings
    if not native:
        assert 'dtype=bfloat16 on cpu as configured' in warnings[0] and 'slower than fp32' in warnings[0]


def test_wrap_with_auto_leaves_the_model_where_declined(monkeypatch, fresh_probe):
    fake_cpu(monkeypatch)
    model = wrap_fp16_model(TinyNet(), 'auto')
    assert model.conv1.weight.dtype is FP32 and not model.fp16_enabled
    precision._cpu_native.cache_clear()
    fake_cpu(monkeypatch, amx=True)
    model = wrap_fp16_model(TinyNet(), 'auto')
    assert model.conv1.weight.dtype is BF16 and model.fp16_enabled


def test_the_probe_leaves_the_global_random_state_as_it_was():
    """A resumed run restores the random state before the hook's before_run probes the CPU: a probe
    that drew from it would shift every random number after it (a resume would not be bit-exact)."""
    torch.manual_seed(3)
    state = torch.get_rng_state()
    precision.probe_conv_speedup(torch.bfloat16, rounds=1)
    assert torch.equal(torch.get_rng_state(), state)
