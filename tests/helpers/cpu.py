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
