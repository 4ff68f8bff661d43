"""tools/analysis_tools/gpu_check.sh and gpu_check.py: the whole check as a CPU dry run through the shell
script (so that it cannot rot before a GPU runs it), the one-line refusals of a machine without the
dependencies, and the report's verdicts and ratios on hand-made results."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from helpers.tiny import ROOT

TOOLS = os.path.join(ROOT, 'tools', 'analysis_tools')
SCRIPT = os.path.join(TOOLS, 'gpu_check.sh')
sys.path.insert(0, TOOLS)  # gpu_check imports benchmark_detectors from its folder, as when run as a script
import gpu_check  # noqa: E402


def run_script(*args: str, pythonpath: str = '', **env: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1', **env)
    environ['PYTHONPATH'] = pythonpath
    return subprocess.run(['bash', SCRIPT, *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_dry_run_measures_everything_and_keeps_the_raw_outputs(tmp_path):
    out = tmp_path / 'raw'
    proc = run_script('--dry-run', '--models', 'mask_rcnn', '--out', str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stdout = proc.stdout
    assert f'gpu_check: raw outputs in {out}' in stdout
    assert 'mask_rcnn    master    largest difference' in stdout and 'steps applied): PASS' in stdout
    assert 'mask_rcnn    autocast  largest difference' in stdout
    for label in ('fp32', 'bf16-master', 'bf16-autocast'):
        assert f'mask_rcnn    ours        {label} ' in stdout
    for label in ('fp32', 'bf16-autocast'):
        assert f'mask_rcnn    torchvision {label} ' in stdout
    assert stdout.count('(mmdet 0.82)') == 3 and 'TF32: cuDNN convolutions' in stdout
    assert stdout.rstrip().endswith('gpu_check: PASS')
    assert sorted(os.listdir(out)) == ['environment.json', 'mask_rcnn.log', 'results.jsonl', 'summary.txt']
    results = [json.loads(line) for line in (out / 'results.jsonl').read_text().splitlines()]
    assert [r['kind'] for r in results] == ['correctness'] + ['train'] * 5 + ['predict'] * 5
    correctness = results[0]
    assert correctness['mismatches'] == [] and all(correctness['losses_ok'].values())
    assert set(correctness['terms']['fp32']) == {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox',
                                                 'loss_mask', 'loss'}
    for r in results[1:]:
        assert r['s_per_iter'] > 0 and r['peak_mb'] > 0, r
    assert all(r['syncs'] == dict(waits=0, dtoh_copies=0, flagged=0, sites=[]) for r in results[1:6])
    assert all(r['detections_per_image'] == [100.0, 100.0] for r in results[6:])  # warm-up and timed call
    assert (out / 'summary.txt').read_text() in stdout


def test_missing_dependencies_are_one_line_each(tmp_path):
    blocked = tmp_path / 'blocked'
    for name in ('mmengine', 'mmcv', 'pycocotools'):
        (blocked / name).mkdir(parents=True)
        (blocked / name / '__init__.py').write_text("raise ImportError('not on this machine')\n")
    (tmp_path / 'empty').mkdir()
    cases = [((), 'cannot import mmengine mmcv pycocotools and no wheel folder was given: run '
                  'tools/analysis_tools/gpu_wheels.sh DIR'),
             (('--wheels', str(tmp_path / 'nowhere')), f'the wheel folder {tmp_path / "nowhere"} does not exist'),
             (('--wheels', str(tmp_path / 'empty')), f'the wheel folder {tmp_path / "empty"} holds no .whl file')]
    for args, message in cases:
        proc = run_script(*args, '--dry-run', '--out', str(tmp_path / 'raw'), pythonpath=str(blocked))
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.count('\n') == 1 and message in proc.stderr, (args, proc.stderr)


@pytest.mark.skipif(gpu_check.torch.cuda.is_available(), reason='checks the path without CUDA')
def test_without_cuda_and_without_dry_run_nothing_is_measured(tmp_path):
    proc = run_script('--out', str(tmp_path / 'raw'))
    assert proc.returncode == 3, proc.stderr
    assert 'CUDA is not available' in proc.stderr and 'nothing was measured' in proc.stderr
    assert not os.listdir(tmp_path / 'raw')


# ---------------------------------------------------------------- the report on hand-made results
ENV = dict(python='3.12.3', torch='2.11.0+cu130', torchvision='0.26.0', cuda='13.0', cudnn=91000, device='cuda',
           device_name='NVIDIA H100', cudnn_benchmark=False, tf32_cudnn_conv=True, tf32_cuda_matmul=False,
           float32_matmul_precision='highest', cudnn_conv_fp32_precision='tf32')


def _args() -> argparse.Namespace:
    return gpu_check.parse_args(['--out', '/raw'])


def _correct(model: str, master_loss: float = 1.004, mismatches=(), applied: int = 4) -> dict:
    terms = {'fp32': {'loss_cls': 1.0, 'loss': 2.0}, 'master': {'loss_cls': master_loss, 'loss': 2.0},
             'autocast': {'loss_cls': 1.0, 'loss': 2.01}}
    rel = {m: {k: abs(terms[m][k] - v) / v for k, v in terms['fp32'].items()} for m in ('master', 'autocast')}
    ok = {m: all(r <= 1e-2 for r in rel[m].values()) for m in rel}
    return dict(kind='correctness', model=model, terms=terms, rel=rel, losses_ok=ok, mismatches=list(mismatches),
                applied=applied, finite=True)


def _measured(model: str, impl: str, mode: str, train_s: float, peak_mb: float, predict_s: float) -> list[dict]:
    label = 'fp32' if mode == 'fp32' else f'fp16-{mode}'
    common = dict(model=model, impl=impl, mode=mode, label=label)
    return [dict(common, kind='train', s_per_iter=train_s, peak_mb=peak_mb,
                 syncs=dict(waits=12, dtoh_copies=11, flagged=3, sites=[['mixprec/x.py:10', 2], ['y.py:5', 1]])),
            dict(common, kind='predict', s_per_iter=predict_s, peak_mb=100., detections_per_image=[100.0])]


def _all_of(model: str) -> list[dict]:
    return (_measured(model, 'ours', 'fp32', 0.30, 4000., 0.050) + _measured(model, 'ours', 'master', 0.20, 3200., 0.040)
            + _measured(model, 'ours', 'autocast', 0.24, 3600., 0.045)
            + _measured(model, 'torchvision', 'fp32', 0.33, 4200., 0.060)
            + _measured(model, 'torchvision', 'autocast', 0.22, 3150., 0.050))


def test_report_ratios_against_the_seed_table():
    text, ok = gpu_check.report([_correct('faster_rcnn')] + _all_of('faster_rcnn'), ENV, [], _args())
    assert ok and text.endswith('gpu_check: PASS')
    assert ('faster_rcnn  master    largest difference 4.0e-03 (loss_cls) PASS; model = masters (4 of 5 steps '
            'applied): PASS') in text
    assert 'faster_rcnn  autocast  largest difference 5.0e-03 (loss) PASS' in text
    # memory fp16 / fp32, fps fp16 / fp32 (= fp32 s / fp16 s at batch 1), speed-up fp32 s / fp16 s
    assert ('faster_rcnn  ours        master    memory 0.80 (mmdet 0.85)  fps 1.25 (mmdet 1.35)  '
            'training speed-up 1.50') in text
    assert ('faster_rcnn  torchvision autocast  memory 0.75 (mmdet 0.85)  fps 1.20 (mmdet 1.35)  '
            'training speed-up 1.50') in text
    assert 'faster_rcnn  ours        fp16-master       0.200      3.12     12    11        25.0' in text
    assert 'faster_rcnn ours master: 3 flagged; mixprec/x.py:10 x2, y.py:5 x1' in text
    assert 'TF32: cuDNN convolutions True, CUDA matmul False' in text and 'NVIDIA H100' in text


@pytest.mark.parametrize('case', ['loss', 'masters', 'skipped', 'config', 'detector'])
def test_report_fails_on_any_failure_and_still_shows_the_rest(case):
    results = [_correct('faster_rcnn', master_loss=1.02 if case == 'loss' else 1.004,
                        mismatches=['backbone.conv1.weight'] if case == 'masters' else (),
                        applied=0 if case == 'skipped' else 4)]
    results += _all_of('faster_rcnn') + [_correct('retinanet')] + _all_of('retinanet')
    failures = []
    if case == 'config':
        results[3] = dict(kind='train', model='faster_rcnn', impl='ours', mode='master',
                          error='torch.OutOfMemoryError: CUDA out of memory.')
    if case == 'detector':
        failures = ['mask_rcnn: stopped after 150 s, the rest of the budget (see /raw/mask_rcnn.log)']
    text, ok = gpu_check.report(results, ENV, failures, _args())
    assert not ok and text.endswith('gpu_check: FAIL')
    expected = {'loss': 'faster_rcnn  master    largest difference 2.0e-02 (loss_cls) FAIL; model = masters',
                'masters': 'model = masters (4 of 5 steps applied): FAIL (1: backbone.conv1.weight)',
                'skipped': 'model = masters (0 of 5 steps applied): FAIL',
                'config': 'failed: faster_rcnn ours master train: torch.OutOfMemoryError: CUDA out of memory.',
                'detector': 'failed: mask_rcnn: stopped after 150 s'}[case]
    assert expected in text
    assert 'retinanet    ours        master    memory 0.80 (mmdet 0.74)' in text  # the others are all there
    if case == 'config':
        assert 'faster_rcnn  ours        fp16-master      failed         -      -     -        25.0' in text
