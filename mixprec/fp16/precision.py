"""Which half precision pays on a device: what ``dtype='auto'`` picks, and whether an explicit dtype
has a fast path there.

CUDA: bfloat16 from compute capability 8.0 (tensor cores, fp32's exponent range: no loss scaling),
float16 on 7.x (tensor cores, bf16 emulated), fp32 below (no half-precision tensor cores: a
mixed-precision step is slower than fp32 there).
CPU: bfloat16 only where the CPU computes it natively (AVX512-BF16 or AMX); elsewhere oneDNN emulates
it, 3x (AVX512 without BF16) to 100x (AVX2) slower than fp32, so 'auto' declines mixed precision.
The CPU's flags say what the silicon has; a short timing of the real convolution kernel (tens of
milliseconds, once per process) says what oneDNN uses, which a user can limit
(``ONEDNN_MAX_CPU_ISA=AVX2``, ``AVX512_CORE``): the choice is native only when both agree.
"""
from __future__ import annotations

import functools
import platform
import time
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F

FP32 = torch.float32


@dataclass(frozen=True)
class PrecisionChoice:
    """``dtype`` is float16, bfloat16, or float32 when mixed precision does not pay; ``reason`` is
    one clause for the log line."""
    dtype: torch.dtype
    reason: str

    @property
    def mixed(self) -> bool:
        return self.dtype is not FP32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace('torch.', '')


def choose_dtype(device: Union[str, torch.device]) -> PrecisionChoice:
    """The precision of ``dtype='auto'`` for ``device``: fast and safe there, fp32 where no half
    precision is."""
    device = torch.device(device)
    if device.type == 'cuda':
        major, minor = torch.cuda.get_device_capability(device)
        cc = f'compute capability {major}.{minor}'
        if major >= 8:
            return PrecisionChoice(torch.bfloat16, f'{cc}: bf16 on tensor cores, no loss scaling needed')
        if major == 7:
            return PrecisionChoice(torch.float16, f'{cc}: float16 tensor cores (bf16 needs 8.0)')
        return PrecisionChoice(FP32, f'{cc} has no half-precision tensor cores: a mixed-precision step '
                                     'would be slower than fp32')
    if device.type == 'cpu':
        native, why = cpu_native(torch.bfloat16)
        return PrecisionChoice(torch.bfloat16 if native else FP32, why)
    return PrecisionChoice(FP32, f'no known fast half precision on {device.type}')


def slow_dtype_reason(dtype: torch.dtype, device: Union[str, torch.device]) -> Optional[str]:
    """Why ``dtype`` has no fast path on ``device`` (for a warning), or None when it has one."""
    device = torch.device(device)
    if device.type == 'cuda':
        major, minor = torch.cuda.get_device_capability(device)
        needed = 8 if dtype is torch.bfloat16 else 7
        if major < needed:
            return (f'compute capability {major}.{minor} computes {dtype_name(dtype)} without tensor '
                    f'cores (needs {needed}.0): expect a step slower than fp32')
        return None
    if device.type == 'cpu':
        native, why = cpu_native(dtype)
        return None if native else f'{why}: expect a step slower than fp32'
    return None


def cpu_native(dtype: torch.dtype) -> tuple[bool, str]:
    """(whether this CPU computes ``dtype`` natively under the ISA oneDNN may use, the reason)."""
    return _cpu_native(dtype, torch.get_num_threads())


def cpu_flags() -> dict[str, bool]:
    """The CPU's half-precision features, as PyTorch's cpuinfo reads them (ignores ISA limits)."""
    def flag(name: str) -> bool:
        check = getattr(torch.cpu, f'_is_{name}_supported', None)
        return bool(check()) if check is not None else False
    return {'avx512_bf16': flag('avx512_bf16'), 'amx': flag('amx_tile'), 'amx_fp16': flag('amx_fp16')}


def cpu_model_name() -> str:
    """/proc/cpuinfo's model name (the machine type where there is none)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: Union[str, torch.device]) -> str:
    """One line naming the device and what it computes half precision with, for benchmark reports:
    the GPU and its compute capability, or the CPU model, ATen's vector ISA and its half-precision
    features (which :func:`choose_dtype` reads)."""
    device = torch.device(device)
    if device.type == 'cuda':
        major, minor = torch.cuda.get_device_capability(device)
        return f'{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})'
    return f'{cpu_model_name()}, {cpu_isa()}'


def cpu_isa() -> str:
    """One line for benchmark reports: ATen's vector ISA plus the CPU's half-precision features."""
    features = [name for name, present in cpu_flags().items() if present]
    return f"{torch.backends.cpu.get_cpu_capability()} ({', '.join(features) or 'no native half precision'})"


@functools.lru_cache(maxsize=None)
def _cpu_native(dtype: torch.dtype, threads: int) -> tuple[bool, str]:
    flags = cpu_flags()
    isa = torch.backends.cpu.get_cpu_capability()
    if dtype is torch.bfloat16:
        if not (flags['avx512_bf16'] or flags['amx']):
            return False, f'this CPU ({isa}) has no AVX512-BF16 or AMX: bf16 is emulated'
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False, 'oneDNN is limited to an ISA without bf16 (ONEDNN_MAX_CPU_ISA?): bf16 is emulated'
        hardware = 'AMX' if flags['amx'] else 'AVX512-BF16'
    elif dtype is torch.float16:
        if not torch.ops.mkldnn._is_mkldnn_fp16_supported():
            return False, f'oneDNN has no float16 kernels for this CPU ({isa}) or its ISA limit: float16 is emulated'
        hardware = 'AMX-FP16' if flags['amx_fp16'] else 'AVX512-FP16'
    else:
        raise ValueError(f'not a half dtype: {dtype}')
    speedup = probe_conv_speedup(dtype)
    name = dtype_name(dtype)
    if speedup < 1.0:
        return False, (f'the CPU has {hardware} but a {name} convolution runs at {speedup:.2f}x the fp32 '
                       'speed here (oneDNN limited by ONEDNN_MAX_CPU_ISA?)')
    return True, f'native {name} ({hardware}; convolution {speedup:.1f}x fp32)'


def probe_conv_speedup(dtype: torch.dtype, rounds: int = 7) -> float:
    """fp32 time / ``dtype`` time of a 64-channel 3x3 convolution (channels_last, 1 x 64 x 64 x 64).

    Both run once to warm up (oneDNN builds its kernels there), then alternately ``rounds`` times;
    the best time of each is kept, so other work on the machine delays both alike and only makes
    single runs slower, never the best one faster. Its inputs come from a generator of its own: the
    global random state is the training run's (a resumed run restores it before this runs)."""
    generator = torch.Generator().manual_seed(0)

    def inputs(dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(1, 64, 64, 64, generator=generator).to(dt, memory_format=torch.channels_last)
        w = torch.randn(64, 64, 3, 3, generator=generator).to(dt, memory_format=torch.channels_last)
        return x, w

    cases = {FP32: inputs(FP32), dtype: inputs(dtype)}
    best = {dt: float('inf') for dt in cases}
    with torch.no_grad():
        for round_ in range(rounds + 1):
            for dt, (x, w) in cases.items():
                start = time.perf_counter()
                F.conv2d(x, w, padding=1)
                if round_:
                    best[dt] = min(best[dt], time.perf_counter() - start)
    return best[FP32] / best[dtype]
