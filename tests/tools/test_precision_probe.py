"""tools/analysis_tools/precision_probe.py on a tiny Faster R-CNN: its table, ratios and recommendation
read back from its output, on this CPU and on this CPU limited to AVX2 (no native bf16)."""
import os
import re
import subprocess
import sys

import pytest

from helpers.cpu import AVX2_ONLY, native_bf16
from helpers.tiny import ROOT, write_tiny_config

PROBE = os.path.join(ROOT, 'tools/analysis_tools/precision_probe.py')
ROW = re.compile(r'^(fp32|bfloat16 master|bfloat16 autocast)\s+([\d.]+)\s+(\d+)\s+(\d+)%\s+([\d.]+)x\s+([\d.]+)x\s+(\d+)(.*)$')


def probe(tmp_path, env: dict) -> str:
    config = write_tiny_config(str(tmp_path), base='configs/shapes/faster_rcnn_r18_fpn_bf16_shapes.py',
                               num_train=4, img_size=64)
    proc = subprocess.run([sys.executable, PROBE, config, '--iters', '2', '--warmup', '1'], cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', **env),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def within_rounding(ratio: float, a: float, b: float, half_step: float) -> bool:
    """``ratio`` (printed to 0.01) is a / b for some values within ``half_step`` of the printed a and b."""
    low, high = (a - half_step) / (b + half_step), (a + half_step) / max(b - half_step, 1e-12)
    return low - 0.005 <= ratio <= high + 0.005


def rows(output: str) -> dict:
    table = {}
    for line in output.splitlines():
        match = ROW.match(line)
        if match:
            name, s_iter, mb, wait, time_ratio, mem_ratio, iters, note = match.groups()
            table[name] = dict(s_iter=float(s_iter), mb=float(mb), wait=int(wait), time_ratio=float(time_ratio),
                               mem_ratio=float(mem_ratio), iters=int(iters), note=note)
    return table


@pytest.mark.slow
@pytest.mark.parametrize('env', [{}, AVX2_ONLY], ids=['this-cpu', 'avx2-only'])
def test_probe_reports_each_setting_and_recommends_the_fastest(tmp_path, env):
    native = native_bf16(dict(os.environ, **env))
    if native is None:
        pytest.skip('no /proc/cpuinfo to compare with')
    output = probe(tmp_path, env)
    table = rows(output)
    assert set(table) == {'fp32', 'bfloat16 master', 'bfloat16 autocast'}, output
    fp32 = table['fp32']
    assert fp32['time_ratio'] == 1.0 and fp32['mem_ratio'] == 1.0 and fp32['iters'] == 2
    for name, row in table.items():
        assert row['s_iter'] > 0 and row['mb'] > 100 and 0 <= row['wait'] <= 100, (name, row)
        # the columns are printed rounded (s/iter to 0.001 s, MB to 1 MB, ratios to 0.01)
        assert within_rounding(row['time_ratio'], row['s_iter'], fp32['s_iter'], 0.0005), (name, row, fp32)
        assert within_rounding(row['mem_ratio'], row['mb'], fp32['mb'], 0.5), (name, row, fp32)
        if name != 'fp32':  # a dtype without a fast path is timed over one iteration, and says why
            assert row['iters'] == (2 if native else 1), (name, row)
            assert ('no fast path' in row['note']) == (not native), (name, row)
    fastest = min(table, key=lambda name: table[name]['s_iter'])
    speedup = fp32['s_iter'] / table[fastest]['s_iter']
    recommended = next(line for line in output.splitlines() if line.startswith('recommended:'))
    if fastest == 'fp32' or speedup < 1.05:
        assert recommended.startswith('recommended: fp32'), output
    else:
        dtype, mode = fastest.split()
        assert f"fp16 = dict(dtype='{dtype}', mode='{mode}')" in recommended, output
    auto = next(line for line in output.splitlines() if line.startswith("dtype='auto' here:"))
    assert auto.startswith(f"dtype='auto' here: {'bfloat16' if native else 'float32'}"), auto
    header = next(line for line in output.splitlines() if line.startswith('precision probe:'))
    assert ('AVX2' in header if env else 'AVX' in header), header
