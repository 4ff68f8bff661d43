"""Issue 7, case 3: bad checkpoints given to tools/test.py and tools/train.py (--resume-from, --load-from):
exit 2 with one line; a code-carrying pickle is refused with the way to load a trusted file."""
from __future__ import annotations

import os
import re

import pytest
import torch

from mixprec.checkpoint import save_file
from mixprec.config import load_config
from mixprec.data import make_shapes_dataset
from mixprec.models import build_detector
from helpers.tiny import write_tiny_config
from helpers.tool_runs import finish, one_error_line, start_tool

pytestmark = pytest.mark.slow


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __reduce__(self):
        return (os.system, ('true',))


def write_checkpoints(folder: str, config: str) -> dict:
    """Bad checkpoint files by name: missing, truncated, garbage, list, other model, runs code."""
    cfg = load_config(config)
    torch.manual_seed(0)
    good = {'meta': {}, 'state_dict': build_detector(cfg.model).state_dict()}
    paths = {name: os.path.join(folder, f'{name}.pth') for name in
             ('missing', 'truncated', 'garbage', 'list', 'other_model', 'runs_code')}
    save_file(good, paths['truncated'])
    with open(paths['truncated'], 'rb') as f:
        data = f.read()
    with open(paths['truncated'], 'wb') as f:
        f.write(data[: len(data) // 2])
    with open(paths['garbage'], 'wb') as f:
        f.write(b'this is not a checkpoint\n')
    torch.save([1, 2, 3], paths['list'])
    cfg.model.roi_head.bbox_head.num_classes = 5
    save_file({'meta': {}, 'state_dict': build_detector(cfg.model).state_dict()}, paths['other_model'])
    torch.save(dict(good, payload=RunsCode()), paths['runs_code'])
    return paths


# (tool, option or None for test.py's positional checkpoint, checkpoint name, expected regex)
CASES = {
    'test missing': ('test.py', None, 'missing', r'checkpoint \S+missing\.pth does not exist'),
    'test truncated': ('test.py', None, 'truncated', r'\S+truncated\.pth is truncated or not a PyTorch checkpoint'),
    'test garbage': ('test.py', None, 'garbage', r'\S+garbage\.pth is truncated or not a PyTorch checkpoint'),
    'test list': ('test.py', None, 'list', r'\S+list\.pth is not a checkpoint: it holds a list, not a dict'),
    'test other model': ('test.py', None, 'other_model',
                         r'other_model\.pth does not fit the model: 4 mis-shaped keys \(not loaded\): '
                         r'roi_head\.bbox_head\.fc_cls\.weight \(6, 256\) vs model \(4, 256\)'),
    'test runs code': ('test.py', None, 'runs_code',
                       r'runs_code\.pth holds Python objects beyond tensors, which could run code when loaded; '
                       r'refused\. .*--trusted-checkpoint'),
    'resume truncated': ('train.py', '--resume-from', 'truncated', r'truncated\.pth is truncated'),
    'resume other model': ('train.py', '--resume-from', 'other_model', r'other_model\.pth does not fit the model: '
                                                                       r'4 mis-shaped keys'),
    'load_from runs code': ('train.py', '--load-from', 'runs_code', r'runs_code\.pth holds Python objects.*refused'),
    'load_from missing': ('train.py', '--load-from', 'missing', r'checkpoint \S+missing\.pth does not exist'),
}


@pytest.fixture(scope='module')
def bad_checkpoint_runs(tmp_path_factory) -> dict:
    """Every case through its tool, the subprocesses side by side: {name: (process, work dir)}."""
    folder = str(tmp_path_factory.mktemp('badckpt'))
    config = write_tiny_config(folder, epochs=1, num_train=4, num_val=2, img_size=64)
    make_shapes_dataset(os.path.join(folder, 'shapes'), num_train=4, num_val=2, img_size=64, seed=0)
    paths = write_checkpoints(folder, config)
    started = {}
    for name, (tool, option, ckpt, _) in CASES.items():
        work_dir = os.path.join(folder, re.sub(r'\W', '_', name))
        args = ([config, paths[ckpt], '--eval', 'bbox'] if tool == 'test.py' else
                [config, option, paths[ckpt], '--work-dir', work_dir, '--no-validate'])
        started[name] = (start_tool(tool, *args, cwd=folder), work_dir)
    return {name: (finish(proc), work_dir) for name, (proc, work_dir) in started.items()}


@pytest.mark.parametrize('name', list(CASES))
def test_bad_checkpoint_exits_2_with_one_line(bad_checkpoint_runs, name):
    proc, work_dir = bad_checkpoint_runs[name]
    line = one_error_line(proc)
    assert proc.returncode == 2 and re.search(CASES[name][3], line), line
    written = os.listdir(work_dir) if os.path.isdir(work_dir) else []
    assert all(f.endswith('.log') for f in written), written
