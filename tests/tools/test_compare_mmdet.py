"""tools/analysis_tools/compare_mmdet.py: our detectors against mmdetection 3.x for the same weights and
input. The comparison itself needs mmdetection's environment (``../shared/reference/``); without it the
tool says which Python lacked it and exits 1."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from helpers.tiny import ROOT

TOOL = os.path.join(ROOT, 'tools', 'analysis_tools', 'compare_mmdet.py')
MMDET_PYTHON = os.environ.get('MIXPREC_MMDET_PYTHON', os.path.expanduser('~/.venvs/mmdet-ref/bin/python'))


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TOOL, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=900)


def test_a_python_without_mmdetection_is_named_and_fails():
    missing = os.path.join(ROOT, 'no-such-python')
    proc = run_tool('--models', 'retinanet', '--size', '64', '64', '--mmdet-python', missing)
    assert proc.returncode == 1 and proc.stderr == '', proc.stderr[-2000:]
    assert proc.stdout == f'retinanet: mmdetection side failed in {missing} (No such file or directory)\n'
    if importlib.util.find_spec('mmdet') is None:  # this Python: the import fails in the mmdetection side
        proc = run_tool('--models', 'retinanet', '--size', '64', '64')
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert re.fullmatch(r"retinanet: mmdetection side failed in \S+ \(ModuleNotFoundError: No module named "
                            r"'mmdet'\)\n", proc.stdout), proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(MMDET_PYTHON), reason='no mmdetection reference environment '
                    '(../shared/reference/ sets one up; MIXPREC_MMDET_PYTHON names another)')
def test_mask_rcnn_matches_mmdetection():
    proc = run_tool('--models', 'mask_rcnn', '--size', '192', '224', '--mmdet-python', MMDET_PYTHON)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'detections (\d+) / (\d+) matched \((\d+) of ours unmatched\), box diff <= (\S+) px, score '
                      r'diff <= (\S+), mask pixels differing (\d+); losses <= (\S+) relative; gradients of (\d+) '
                      r'parameters \(relative L2\): median (\S+), worst (\S+)', proc.stdout)
    assert found, proc.stdout
    matched, total, extra, box, score, pixels, losses, params, median, worst = found.groups()
    assert int(matched) == int(total) > 0 and int(extra) == 0, proc.stdout
    # float32 rounding apart (measured: 3e-5 px, 5e-7, 0 pixels, 1e-7, gradients 3e-5 / 2.3e-4); a 1e-4
    # error in one Winograd filter-transform coefficient gave 3.8e-4 px, 2.3e-5, 28 pixels, 1.1e-5, 1e-3
    assert float(box) < 2e-4 and float(score) < 5e-6 and int(pixels) <= 5, proc.stdout
    assert float(losses) < 2e-6 and int(params) > 100 and float(median) < 3e-4 and float(worst) < 2e-3, proc.stdout
