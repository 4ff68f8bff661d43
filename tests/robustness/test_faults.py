"""Issue 7, cases 4 and 5 through the real tools/train.py: non-finite losses and loss-scale collapse stop
the run with one line (exit 1); SIGINT/SIGTERM save a resumable checkpoint (exit 128 + signal); kill -9
in the middle of an epoch or of a checkpoint write, then --auto-resume, ends with the weights of an
uninterrupted run, bit for bit."""
from __future__ import annotations

import glob
import os
import re
import signal
import time

import pytest
import torch

from mixprec.checkpoint import load_file
from mixprec.data import make_shapes_dataset
from helpers.faults import ARGS, LAUNCHER
from helpers.tiny import write_tiny_config
from helpers.tool_runs import finish, one_error_line, start_tool, tool_env

pytestmark = pytest.mark.slow



@pytest.fixture(scope='module')
def setup(tmp_path_factory) -> dict:
    """A 3-epoch tiny config (2 iterations an epoch) with its data, and the launcher script."""
    folder = str(tmp_path_factory.mktemp('faults'))
    config = write_tiny_config(folder, epochs=3, num_train=4, num_val=2, img_size=64)
    make_shapes_dataset(os.path.join(folder, 'shapes'), num_train=4, num_val=2, img_size=64, seed=0)
    launcher = os.path.join(folder, 'launcher.py')
    with open(launcher, 'w') as f:
        f.write(LAUNCHER)
    return dict(folder=folder, config=config, launcher=launcher)


def start_train(setup: dict, name: str, *extra: str, faults: dict | None = None, config: str | None = None):
    """tools/train.py into ``folder/name`` (through the fault launcher when ``faults`` are given)."""
    work_dir = os.path.join(setup['folder'], name)
    env = tool_env(**{k: str(v) for k, v in (faults or {}).items()},
                   FAULT_MARKER=os.path.join(setup['folder'], f'{name}.marker'))
    proc = start_tool('train.py', config or setup['config'], '--work-dir', work_dir, *ARGS, *extra,
                      cwd=setup['folder'], env=env, launcher=setup['launcher'] if faults else None)
    return proc, work_dir


def wait_for(path: str, proc, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, f'exited early: {finish(proc).stderr[-3000:]}'
        assert time.time() < deadline, f'{path} did not appear'
        time.sleep(0.1)


def weights(path: str) -> dict:
    return load_file(path)['state_dict']


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope='module')
def interrupted(setup) -> dict:
    """The uninterrupted run and four interrupted ones, side by side; then each resumed with --auto-resume."""
    runs = {'reference': start_train(setup, 'reference'),
            'full_disk': start_train(setup, 'full_disk', faults=dict(FAULT_FULL_DISK_SAVE=2))}
    plans = {'kill_mid_epoch': dict(FAULT_PAUSE_AT_ITER=3), 'kill_mid_save': dict(FAULT_STALL_SAVE=2),
             'sigterm': dict(FAULT_PAUSE_AT_ITER=2), 'sigint': dict(FAULT_PAUSE_AT_ITER=2)}
    for name, faults in plans.items():
        runs[name] = start_train(setup, name, faults=faults)
    results = {}
    for name, sig in (('kill_mid_epoch', signal.SIGKILL), ('kill_mid_save', signal.SIGKILL),
                      ('sigterm', signal.SIGTERM), ('sigint', signal.SIGINT)):
        proc, work_dir = runs[name]
        wait_for(os.path.join(setup['folder'], f'{name}.marker'), proc)
        results[f'{name} tmp files'] = glob.glob(os.path.join(work_dir, '.*.tmp'))
        proc.send_signal(sig)
        results[name] = (finish(proc), work_dir)
        meta = load_file(os.path.join(work_dir, 'latest.pth'))['meta']
        results[f'{name} counters'] = (meta['epoch'], meta['iter'], meta['inner_iter'])
    results['reference'] = (finish(runs['reference'][0]), runs['reference'][1])
    results['full_disk'] = (finish(runs['full_disk'][0]), runs['full_disk'][1])
    resumed = {name: start_train(setup, name, '--auto-resume') for name in plans}
    for name, (proc, work_dir) in resumed.items():
        results[f'{name} resumed'] = (finish(proc), work_dir)
    return results


def test_reference_run_completes(interrupted):
    proc, work_dir = interrupted['reference']
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_file(os.path.join(work_dir, 'latest.pth'))['meta']['iter'] == 6


@pytest.mark.parametrize('name, signum', [('sigint', signal.SIGINT), ('sigterm', signal.SIGTERM)])
def test_signal_saves_a_resumable_checkpoint(interrupted, name, signum):
    proc, work_dir = interrupted[name]
    line = one_error_line(proc)
    latest = os.path.join(work_dir, 'latest.pth')
    assert proc.returncode == 128 + signum, proc.stderr[-3000:]
    assert line == (f'interrupted: {signal.Signals(signum).name} received; saved {latest}; '
                    f'continue with --resume-from {latest} or --auto-resume')
    assert interrupted[f'{name} counters'] == (1, 3, 1)


@pytest.mark.parametrize('name', ['kill_mid_epoch', 'kill_mid_save', 'sigterm', 'sigint'])
def test_auto_resume_ends_with_the_uninterrupted_weights(interrupted, name):
    if name == 'kill_mid_epoch':
        assert interrupted['kill_mid_epoch'][0].returncode == -signal.SIGKILL
        assert interrupted['kill_mid_epoch counters'] == (1, 2, 0)
    proc, work_dir = interrupted[f'{name} resumed']
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(weights(os.path.join(interrupted['reference'][1], 'latest.pth')),
                        weights(os.path.join(work_dir, 'latest.pth')))


def test_kill_mid_save_leaves_a_partial_temp_file_that_resume_removes(interrupted):
    proc, work_dir = interrupted['kill_mid_save']
    assert proc.returncode == -signal.SIGKILL
    assert interrupted['kill_mid_save counters'] == (1, 2, 0)
    assert len(interrupted['kill_mid_save tmp files']) == 1
    assert interrupted['kill_mid_save tmp files'][0].startswith(os.path.join(work_dir, '.epoch_2.pth.'))
    stdout = interrupted['kill_mid_save resumed'][0].stdout
    resumed_from = [line for line in stdout.splitlines() if 'resumed from' in line]
    assert resumed_from and resumed_from[0].endswith('latest.pth: epoch 1, iter 2')
    assert f"removed {interrupted['kill_mid_save tmp files'][0]}, the partial file" in stdout
    assert not glob.glob(os.path.join(work_dir, '.*.tmp'))


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(interrupted):
    proc, work_dir = interrupted['full_disk']
    epoch_2 = os.path.join(work_dir, 'epoch_2.pth')
    assert proc.returncode == 2
    assert one_error_line(proc) == (f'error: could not write {epoch_2} (No space left on device); '
                                    'the previous checkpoint there, if any, is intact')
    assert load_file(os.path.join(work_dir, 'latest.pth'))['meta']['iter'] == 2
    assert sorted(f for f in os.listdir(work_dir) if '.pth' in f) == ['epoch_1.pth', 'latest.pth']


@pytest.mark.parametrize('fp16, expected', [
    ("fp16 = None\noptimizer_config = dict(max_nonfinite_iters=2)\n",
     r'error: 2 consecutive iterations with non-finite losses \(loss_rpn_cls, .*loss_mask.*\) at iter 3: '
     r'training diverged'),
    ("fp16 = dict(dtype='bfloat16', loss_scale=dict(init_scale=4., min_scale=1.))\n",
     r'error: loss scale would fall below min_scale=1: gradients are inf/NaN even at the smallest scale'),
], ids=['fp32 non-finite', 'bf16 scale collapse'])
def test_numerical_faults_stop_with_one_line(setup, tmp_path, fp16, expected):
    config = write_tiny_config(str(tmp_path), epochs=3, num_train=4, num_val=2, img_size=64, extra=fp16)
    proc, _ = start_train(dict(setup, folder=str(tmp_path)), 'work', faults=dict(FAULT_NAN_FROM_ITER=1),
                          config=config)
    proc = finish(proc)
    assert proc.returncode == 1 and re.search(expected, one_error_line(proc)), proc.stderr[-3000:]
