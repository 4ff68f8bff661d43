"""What the CPU under the tests can do, read without mixprec or PyTorch: /proc/cpuinfo's flags and
oneDNN's ISA limit variable, as an independent reference for the precision choice."""
from __future__ import annotations

import os
from typing import Optional

AVX2_ONLY = {'ONEDNN_MAX_CPU_ISA': 'AVX2', 'ATEN_CPU_CAPABILITY': 'avx2'}  # a CPU without native bf16


def cpu_flags() -> Optional[set[str]]:
    """The flags of the first processor in /proc/cpuinfo, or None where there is no such file."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except OSError:
        return None
    return set()


def native_bf16(env: Optional[dict] = None) -> Optional[bool]:
    """Whether bf16 is computed natively (AVX512-BF16 or AMX-BF16) under the ISA limit in ``env``
    (default: this process's environment); None when the flags cannot be read."""
    flags = cpu_flags()
    if flags is None:
        return None
    env = os.environ if env is None else env
    limit = env.get('ONEDNN_MAX_CPU_ISA', 'ALL').upper()
    allowed = limit in ('ALL', 'DEFAULT') or any(word in limit for word in ('BF16', 'AMX', 'AVX10', 'FP16'))
    return allowed and bool({'avx512_bf16', 'amx_bf16'} & flags)


def skip_unless_native_bf16(what: str) -> None:
    """Skip a learning test that runs bf16 only to show that a model learns in it: where bf16 is
    emulated (10-100x slower than fp32) its time would depend on bf16 being fast. The fp16 hook's bf16
    arithmetic itself is tested on every CPU by the small fp16 tests."""
    import pytest
    if native_bf16() is False:
        pytest.skip(f'{what}: this CPU has no native bf16 (dtype="auto" declines mixed precision here)')


def learning_modes_for_auto(mode: str) -> None:
    """The learning tests train with dtype='auto' (what a user gets on this CPU): bf16 where it is
    native, the plain fp32 step elsewhere, where master and autocast are the same step and only
    'master' runs."""
    if mode == 'autocast':
        skip_unless_native_bf16("dtype='auto' in autocast mode")
