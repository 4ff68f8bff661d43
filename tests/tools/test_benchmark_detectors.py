"""tools/analysis_tools/benchmark_detectors.py: a tiny end-to-end run (ResNet-18, 128 x 128, 1 iteration)
whose table parses, with a positive s/iter and peak memory in every row and the target ratios; the
ratios themselves against hand-made rows."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from helpers.tiny import ROOT
from helpers.tool_runs import load_tool

TOOL = os.path.join(ROOT, 'tools', 'analysis_tools', 'benchmark_detectors.py')
ROW = re.compile(r'^(\w+)\s+\|\s+(ours|torchvision)\s+\|\s+(\S+)\s+\|\s+(\S+)\s+\|\s+(\S+)\s+\|\s+(\S+)')


def run_tool(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, TOOL, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=600)


def parse_rows(stdout: str) -> list[tuple]:
    return [m.groups() for m in map(ROW.match, stdout.splitlines()) if m]


@pytest.mark.slow
def test_tiny_retinanet_table(tmp_path):
    out = tmp_path / 'results.jsonl'
    proc = run_tool('--models', 'retinanet', '--size', '128', '128', '--iters', '1', '--warmup', '1',
                    '--depth', '18', '--width', '64', '--num-gt', '3', '--threads', '1', '--json-out', str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = parse_rows(proc.stdout)
    configs = {(impl, mode) for _, impl, mode, *_ in rows}
    assert configs == {('ours', 'fp32'), ('ours', 'bf16-master'), ('ours', 'bf16-autocast'),
                       ('torchvision', 'fp32'), ('torchvision', 'bf16-autocast')}, proc.stdout
    for model, impl, mode, s_per_iter, peak_mb, speedup in rows:
        assert model == 'retinanet'
        assert float(s_per_iter) > 0 and float(peak_mb) > 0, (impl, mode, s_per_iter, peak_mb)
        assert float(speedup.rstrip('x')) > 0
    assert re.search(r'retinanet \(wall\): ours fp32 / torchvision fp32 time = \d+\.\d\d \(target <= 0.8: '
                     r'(NOT )?met\); ours fp32 / torchvision fp32 peak memory = \d+\.\d\d .*; ours bf16-\w+ / '
                     r'torchvision bf16-autocast time = \d+\.\d\d \(target <= 0.3: (NOT )?met\); '
                     r'our fp32 / our best mixed \(bf16-\w+\) time = \d+\.\d\dx', proc.stdout), proc.stdout
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == 5
    for r in results:
        assert r['finite'] and r['s_per_iter'] > 0 and len(r['times']) == 1 and r['size'] == [128, 128]
    # both implementations train the same number of parameters within a few percent (frozen stem +
    # layer1 on both sides; the heads differ only in small details such as torchvision's P6 input)
    params = {r['impl']: r['trainable_params'] for r in results}
    assert abs(params['ours'] - params['torchvision']) / params['ours'] < 0.1, params


def row(impl: str, mode: str, wall: float, cpu: float, peak: float, predict: bool = False) -> dict:
    label = mode if mode == 'fp32' else f'bf16-{mode}'
    return dict(model='faster_rcnn', impl=impl, mode=mode, label=label, s_per_iter=wall, cpu_s_per_iter=cpu,
                peak_mb=peak, predict=predict)


def test_target_ratios_pick_the_best_row_of_each_side():
    tool = load_tool('tools/analysis_tools/benchmark_detectors.py')
    rows = [row('ours', 'fp32', 6.0, 6.2, 1900), row('ours', 'master', 3.0, 3.3, 2100),
            row('ours', 'autocast', 3.5, 3.1, 2000), row('torchvision', 'fp32', 10.0, 7.0, 2000),
            row('torchvision', 'autocast', 5.0, 5.0, 2100)]
    ratios = tool.target_ratios(rows)
    assert ratios['wall'] == [
        'ours fp32 / torchvision fp32 time = 0.60 (target <= 0.8: met)',
        'ours fp32 / torchvision fp32 peak memory = 0.95 (target <= 1.0: met)',
        'ours bf16-master / torchvision bf16-autocast time = 0.60 (target <= 0.3: NOT met)',
        'our fp32 / our best mixed (bf16-master) time = 2.00x']
    # by CPU time autocast is our faster mixed mode; peak memory is reported once, with the wall times
    assert ratios['cpu'] == [
        'ours fp32 / torchvision fp32 time = 0.89 (target <= 0.8: NOT met)',
        'ours bf16-autocast / torchvision bf16-autocast time = 0.62 (target <= 0.3: NOT met)',
        'our fp32 / our best mixed (bf16-autocast) time = 2.00x']
    # a second peer: the fastest fp32 peer sets the time ratio, the leanest one the memory ratio
    mmdet = rows + [row('mmdet', 'fp32', 7.5, 7.5, 2200), row('mmdet', 'autocast', 6.0, 4.0, 1800)]
    assert tool.target_ratios(mmdet)['wall'][:3] == [
        'ours fp32 / mmdet fp32 time = 0.80 (target <= 0.8: met)',
        'ours fp32 / torchvision fp32 peak memory = 0.95 (target <= 1.0: met)',
        'ours bf16-master / torchvision bf16-autocast time = 0.60 (target <= 0.3: NOT met)']
    assert tool.target_ratios(mmdet)['cpu'][:2] == [
        'ours fp32 / torchvision fp32 time = 0.89 (target <= 0.8: NOT met)',
        'ours bf16-autocast / mmdet bf16-autocast time = 0.78 (target <= 0.3: NOT met)']
    predict = [dict(r, predict=True) for r in rows]
    assert tool.target_ratios(predict)['wall'][1] == \
        'ours bf16-master / torchvision bf16-autocast time = 0.60 (target <= 0.8: met)'
    assert len(tool.target_ratios(predict)['wall']) == 3  # no memory target at inference
    assert tool.target_ratios(rows[:3])['wall'] == ['our fp32 / our best mixed (bf16-master) time = 2.00x']


def test_bad_arguments():
    proc = run_tool('--impls', 'torchvision', '--modes', 'master')
    assert proc.returncode == 2 and 'no configuration to run' in proc.stderr
    if importlib.util.find_spec('mmdet') is None:
        proc = run_tool('--impls', 'mmdet')  # this Python, without mmdetection
        assert proc.returncode == 2 and "cannot import mmdetection with mmcv's compiled ops" in proc.stderr
        assert proc.stderr.count('\n') == 1, proc.stderr
    proc = run_tool('--impls', 'mmdet', '--mmdet-python', os.path.join(ROOT, 'no-such-python'))
    assert proc.returncode == 2 and 'no-such-python' in proc.stderr and proc.stderr.count('\n') == 1, proc.stderr
    proc = run_tool('--size', '16', '16')
    assert proc.returncode == 2 and '--size' in proc.stderr


@pytest.mark.slow
def test_tiny_predict_table_keeps_100_detections_everywhere(tmp_path):
    """--predict: score_thr 0 on both sides, so each detector returns its 100 best boxes per image."""
    out = tmp_path / 'results.jsonl'
    proc = run_tool('--predict', '--models', 'mask_rcnn', 'retinanet', '--modes', 'fp32', 'master', '--size', '128',
                    '128', '--iters', '1', '--warmup', '1', '--depth', '18', '--width', '64', '--threads', '1',
                    '--json-out', str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '\ninference, 100 detections per image, batch 2 of 128x128' in proc.stdout, proc.stdout
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r['model'], r['impl'], r['mode']) for r in results} == {
        (m, 'ours', 'fp32') for m in ('mask_rcnn', 'retinanet')} | {
        (m, 'ours', 'master') for m in ('mask_rcnn', 'retinanet')} | {
        (m, 'torchvision', 'fp32') for m in ('mask_rcnn', 'retinanet')}
    for r in results:
        assert r['predict'] and r['s_per_iter'] > 0 and r['detections_per_image'] == [100.0, 100.0], r
    rows = parse_rows(proc.stdout)
    assert len(rows) == 6 and all(row[0] in ('mask_rcnn', 'retinanet') for row in rows)


MMDET_PYTHON = os.environ.get('MIXPREC_MMDET_PYTHON', os.path.expanduser('~/.venvs/mmdet-ref/bin/python'))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(MMDET_PYTHON), reason='no mmdetection reference environment '
                    '(../shared/reference/ sets one up; MIXPREC_MMDET_PYTHON names another)')
def test_tiny_mmdet_rows(tmp_path):
    """mmdetection 3.x as a third implementation: trains in fp32 and bf16 autocast (its float32-only CPU
    ops wrapped) and predicts its 100 detections per image, in the reference environment's Python."""
    out = tmp_path / 'results.jsonl'
    common = ('--models', 'mask_rcnn', '--impls', 'mmdet', '--modes', 'fp32', 'autocast', '--size', '128', '128',
              '--iters', '1', '--warmup', '1', '--depth', '18', '--width', '64', '--threads', '1',
              '--mmdet-python', MMDET_PYTHON, '--json-out', str(out))
    proc = run_tool(*common)
    assert proc.returncode == 0, proc.stderr[-2000:]
    train = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r['impl'], r['mode']) for r in train] == [('mmdet', 'fp32'), ('mmdet', 'autocast')]
    assert all(r['finite'] and r['s_per_iter'] > 0 and r['peak_mb'] > 0 for r in train), train
    proc = run_tool(*common, '--predict')
    assert proc.returncode == 0, proc.stderr[-2000:]
    for r in map(json.loads, out.read_text().splitlines()):
        assert r['impl'] == 'mmdet' and r['detections_per_image'] == [100.0, 100.0], r
