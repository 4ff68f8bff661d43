"""Issue 7, case 1: bad configs through the real tools/train.py: exit 2, one line, only the log written."""
from __future__ import annotations

import os
import re
from typing import Optional

import pytest

from helpers.tiny import write_tiny_config
from helpers.tool_runs import finish, one_error_line, start_tool

pytestmark = pytest.mark.slow

MINIMAL_WITHOUT_OPTIMIZER = ("model = dict(type='MaskRCNN')\n"
                            "data = dict(samples_per_gpu=2, workers_per_gpu=0, train=dict(type='ShapesDataset'))\n"
                            "runner = dict(max_epochs=1)\n")

# name: (config text, or None for the tiny config plus ``extra``; extra; --cfg-options; expected regex)
CASES = {
    'missing file': (None, None, [], r'config file \S*nope\.py does not exist'),
    'syntax error': ('x = dict(\n', None, [], r'bad\.py, line 1: Python syntax error'),
    'missing _base_': ("_base_ = './missing_base.py'\n", None, [], r'bad\.py: .*missing_base\.py'),
    'unknown type': ('', '', ['model.backbone.type=ResNot'],
                     r"tiny\.py: model: 'ResNot' is not in the models registry; closest: ResNet"),
    'unexpected argument': ('', '', ['model.backbone.dept=18'],
                            r"tiny\.py: model: .*ResNet got an unexpected argument 'dept'; it takes: .*depth"),
    'string for a number': ('', "optimizer = dict(lr='0.02')\n", [],
                            r"tiny\.py: optimizer\.lr must be a number, got str '0\.02'"),
    'bad model value': ('', "model = dict(backbone=dict(depth='18'))\n", [],
                        r"tiny\.py: model: ResNet depth must be one of \[18, 34, 50, 101, 152\], got '18'"),
    'missing section': (MINIMAL_WITHOUT_OPTIMIZER, None, [],
                        r"bad\.py: the config has no 'optimizer'; it is required for training"),
}


def _config_for(folder: str, text: Optional[str], extra: Optional[str]) -> str:
    if text is None:
        return os.path.join(folder, 'nope.py')
    if extra is not None:
        return write_tiny_config(folder, epochs=1, num_train=4, num_val=2, img_size=64, extra=extra)
    path = os.path.join(folder, 'bad.py')
    with open(path, 'w') as f:
        f.write(text)
    return path


@pytest.fixture(scope='module')
def bad_config_runs(tmp_path_factory) -> dict:
    """Every case through tools/train.py, the subprocesses side by side: {name: (process, work dir)}."""
    started = {}
    for name, (text, extra, options, _) in CASES.items():
        folder = str(tmp_path_factory.mktemp('badcfg'))
        config = _config_for(folder, text, extra)
        work_dir = os.path.join(folder, 'work')
        args = [config, '--work-dir', work_dir] + (['--cfg-options', *options] if options else [])
        started[name] = (start_tool('train.py', *args, cwd=folder), work_dir)
    return {name: (finish(proc), work_dir) for name, (proc, work_dir) in started.items()}


@pytest.mark.parametrize('name', list(CASES))
def test_bad_config_exits_2_with_one_line(bad_config_runs, name):
    proc, work_dir = bad_config_runs[name]
    line = one_error_line(proc)
    assert proc.returncode == 2, line
    assert line.startswith('error: ') and re.search(CASES[name][3], line), line
    written = os.listdir(work_dir) if os.path.isdir(work_dir) else []
    assert all(f.endswith('.log') for f in written), written
