"""Issue 25: stop signals as schedulers and terminals send them, to the whole process group, with
DataLoader workers running, through the real tools/train.py.

Each interrupted run is paused by a launcher at a chosen moment (an iteration, the evaluation, a
checkpoint write) until the signal has reached the main process, so the signal lands where the test
says; the workers get it from the same ``killpg`` or terminal. The run must exit with 128 + the signal
and one line, leave ``latest.pth`` at the expected iteration, and ``--auto-resume`` must end with the
weights of the uninterrupted run, bit for bit. Workers are 2 a process, so a mid-epoch resume is
exact only if a sample's augmentation does not depend on the worker that loads it.
"""
from __future__ import annotations

import glob
import logging
import os
import pty
import signal
import subprocess
import sys
import time

import pytest
import torch

from mixprec.checkpoint import load_file
from mixprec.data import make_shapes_dataset
from mixprec.stop_signals import requeue_slurm_job
from helpers.runtime import FASTER
from helpers.tiny import ROOT, write_tiny_config
from helpers.dist import free_port
from helpers.tool_runs import one_error_line, tool_env

pytestmark = pytest.mark.slow

TRAIN = os.path.join(ROOT, 'tools', 'train.py')
ARGS = ('--seed', '0', '--deterministic')
ITERS_PER_EPOCH = 5  # 8 images of the tiny shapes set in batches of 2, padded per aspect group

# Runs tools/train.py with pauses chosen by environment variables; the tool itself is unchanged.
LAUNCHER = r'''
import fcntl
import io
import os
import runpy
import sys
import termios
import time

import torch

import mixprec.engine.test as test_loop
from mixprec.engine.runner import Runner

MARKER = os.environ['SIG_MARKER']
RUNNERS = []


def mark(suffix=''):
    with open(MARKER + suffix, 'w'):
        pass


def wait_for_stop(hold=False):
    """Until the runner saw a signal (then one more second, for a dying worker to surface), or forever."""
    end = time.time() + 120
    while time.time() < end and (RUNNERS[0]._stop_signal is None or hold):
        time.sleep(0.02)
    time.sleep(1.0)


def patch():
    pause_iter = int(os.environ.get('SIG_PAUSE_ITER', -1))
    pause_rank = os.environ.get('SIG_PAUSE_RANK', os.environ.get('RANK', '0'))
    raise_at = int(os.environ.get('SIG_RAISE_AT_ITER', -1))
    hold = os.environ.get('SIG_HOLD') == '1'
    run, run_iter, encode = Runner.run, Runner._run_iter, test_loop.encode_mask_results

    def recording_run(self, *args, **kwargs):
        RUNNERS.append(self)
        return run(self, *args, **kwargs)

    def pausing_run_iter(self, data_batch):
        if self.mode == 'train' and self.iter == pause_iter and os.environ.get('RANK', '0') == pause_rank:
            mark()
            wait_for_stop(hold)
        if self.mode == 'train' and self.iter == raise_at:
            raise RuntimeError(f'injected fault at iter {raise_at}')
        run_iter(self, data_batch)

    def pausing_encode(result):
        if os.environ.get('SIG_PAUSE_EVAL') == '1' and not os.path.exists(MARKER):
            mark()
            wait_for_stop()
        return encode(result)

    Runner.run, Runner._run_iter, test_loop.encode_mask_results = recording_run, pausing_run_iter, pausing_encode


def file_name(f):
    """The base name of the file behind a file object (an ``os.fdopen`` one has only a descriptor)."""
    try:
        return os.path.basename(os.readlink(f'/proc/self/fd/{f.fileno()}'))
    except (AttributeError, OSError, io.UnsupportedOperation):
        return ''


def patch_saves():
    """SIG_PAUSE_SAVE=NAME: the write of NAME stops halfway until a signal arrived, then completes.
    SIG_STALL_STOP_SAVE=1: the write of latest.pth after a signal stops halfway for good."""
    pause_name = os.environ.get('SIG_PAUSE_SAVE')
    stall = os.environ.get('SIG_STALL_STOP_SAVE') == '1'
    real_save = torch.save

    def pausing_save(obj, f, *args, **kwargs):
        name = file_name(f)
        paused = pause_name and name.startswith(f'.{pause_name}.')
        stalled = stall and name.startswith('.latest.pth.') and RUNNERS and RUNNERS[0]._stop_signal is not None
        if not (paused or stalled):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[:len(data) // 2])
        f.flush()
        if stalled:
            mark('.stalled')
            time.sleep(600)
        mark()
        wait_for_stop()
        f.write(data[len(data) // 2:])

    torch.save = pausing_save


if os.environ.get('SIG_TAKE_TTY') == '1':  # stdin is a pty: make it this session's terminal (Ctrl-C)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
patch()
patch_saves()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''

# A stand-in for SLURM's scontrol on PATH: records its arguments and the checkpoint it finds then.
SCONTROL = '''#!{python}
import os, sys, torch
meta = torch.load(os.path.join(os.environ['CHECK_WORK_DIR'], 'latest.pth'), weights_only=True)['meta']
with open(os.environ['SCONTROL_RECORD'], 'w') as f:
    f.write(' '.join(sys.argv[1:]) + ' iter=%d' % meta['iter'])
'''


class Run:
    """A tool process in its own session (its own process group, as under a scheduler), output in files."""

    started: list = []

    def __init__(self, folder: str, name: str, cmd: list, env: dict, tty: bool = False) -> None:
        self.name = name
        self.work_dir = os.path.join(folder, name)
        self.marker = os.path.join(folder, f'{name}.marker')
        logs = f'{name}.resumed' if '--auto-resume' in cmd else name
        self.out_path, self.err_path = (os.path.join(folder, f'{logs}.{s}') for s in ('out', 'err'))
        self.master = None
        stdin = subprocess.DEVNULL
        if tty:
            self.master, stdin = pty.openpty()
            env = dict(env, SIG_TAKE_TTY='1')
        with open(self.out_path, 'w') as out, open(self.err_path, 'w') as err:
            self.proc = subprocess.Popen(cmd, cwd=folder, env=dict(env, SIG_MARKER=self.marker), stdin=stdin,
                                         stdout=out, stderr=err, start_new_session=True)
        Run.started.append(self)
        if tty:
            os.close(stdin)

    def wait_for(self, path: str, timeout: float = 240) -> bool:
        """Whether ``path`` appeared (False: the run ended or timed out first; its test then fails)."""
        deadline = time.time() + timeout
        while not os.path.exists(path):
            if self.proc.poll() is not None or time.time() > deadline:
                return False
            time.sleep(0.05)
        return True

    def wait_for_log(self, text: str, timeout: float = 60) -> bool:
        deadline = time.time() + timeout
        while text not in self.stdout + self.stderr:
            if self.proc.poll() is not None or time.time() > deadline:
                return False
            time.sleep(0.05)
        return True

    def killpg(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def ctrl_c(self) -> None:
        """What the terminal does on Ctrl-C: SIGINT to its foreground process group, workers included."""
        os.write(self.master, b'\x03')

    def finish(self, timeout: float = 300) -> subprocess.CompletedProcess:
        """The ended run; one still running after ``timeout`` s is killed and reads as return code None."""
        try:
            self.proc.wait(timeout=timeout)
            returncode, stderr = self.proc.returncode, self.stderr
        except subprocess.TimeoutExpired:
            self.killpg(signal.SIGKILL)
            self.proc.wait()
            returncode, stderr = None, self.stderr + '\n(timed out)'
        if self.master is not None:
            os.close(self.master)
            self.master = None
        return subprocess.CompletedProcess(self.proc.args, returncode, self.stdout, stderr)

    @classmethod
    def kill_leftovers(cls) -> None:
        """SIGKILL the groups of the runs a failed test left running."""
        for run in cls.started:
            if run.proc.poll() is None:
                run.killpg(signal.SIGKILL)
                run.proc.wait()
        cls.started.clear()

    @property
    def stdout(self) -> str:
        return open(self.out_path).read()

    @property
    def stderr(self) -> str:
        return open(self.err_path).read()


def train(setup: dict, name: str, *extra: str, pauses: dict | None = None, tty: bool = False,
          env: dict | None = None) -> Run:
    cmd = [sys.executable, *([setup['launcher']] if pauses else []), TRAIN, setup['config'],
           '--work-dir', os.path.join(setup['folder'], name), *ARGS, *extra]
    values = {k: str(v) for k, v in {**(pauses or {}), **(env or {})}.items()}
    return Run(setup['folder'], name, cmd, tool_env(**values), tty=tty)


def counters(work_dir: str, name: str = 'latest.pth') -> tuple | None:
    """(epoch, iter, inner_iter) of a checkpoint, None when there is none."""
    path = os.path.join(work_dir, name)
    if not os.path.exists(path):
        return None
    meta = load_file(path)['meta']
    return meta['epoch'], meta['iter'], meta['inner_iter']


def assert_same_weights(reference: str, resumed: str) -> None:
    a = load_file(os.path.join(reference, 'latest.pth'))['state_dict']
    b = load_file(os.path.join(resumed, 'latest.pth'))['state_dict']
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f'{len(differing)} of {len(a)} tensors differ, e.g. {differing[:3]}'


@pytest.fixture(scope='module', autouse=True)
def no_leftover_processes():
    yield
    Run.kill_leftovers()


@pytest.fixture(scope='module')
def setup(tmp_path_factory) -> dict:
    """A 2-epoch tiny Faster R-CNN config, 2 workers, evaluation after each epoch (6 images, so the evaluation
    still needs its workers when it is paused at its first image); the launcher; scontrol."""
    folder = str(tmp_path_factory.mktemp('signals'))
    extra = "evaluation = dict(interval=1, metric=['bbox'])\n"
    config = write_tiny_config(folder, base=FASTER, epochs=2, num_train=8, num_val=6, img_size=64, workers=2,
                               extra=extra)
    make_shapes_dataset(os.path.join(folder, 'shapes'), num_train=8, num_val=6, img_size=64, seed=0)
    launcher = os.path.join(folder, 'launcher.py')
    with open(launcher, 'w') as f:
        f.write(LAUNCHER)
    bin_dir = os.path.join(folder, 'bin')
    os.makedirs(bin_dir)
    scontrol = os.path.join(bin_dir, 'scontrol')
    with open(scontrol, 'w') as f:
        f.write(SCONTROL.format(python=sys.executable))
    os.chmod(scontrol, 0o755)
    return dict(folder=folder, config=config, launcher=launcher, bin=bin_dir)


@pytest.fixture(scope='module')
def runs(setup) -> dict:
    """The uninterrupted run and the interrupted ones side by side; then each resumed with --auto-resume."""
    folder = setup['folder']
    slurm = dict(SLURM_JOB_ID='4242', PATH=setup['bin'] + os.pathsep + os.environ['PATH'],
                 SCONTROL_RECORD=os.path.join(folder, 'scontrol.txt'),
                 CHECK_WORK_DIR=os.path.join(folder, 'usr1_in_save'))
    started = {
        'reference': train(setup, 'reference'),
        # killpg SIGTERM in the middle of epoch 1's third iteration
        'sigterm': train(setup, 'sigterm', pauses=dict(SIG_PAUSE_ITER=2)),
        # killpg SIGTERM in epoch 1's last iteration
        'sigterm_last_iter': train(setup, 'sigterm_last_iter', pauses=dict(SIG_PAUSE_ITER=ITERS_PER_EPOCH - 1)),
        # Ctrl-C on the terminal during epoch 1's evaluation
        'ctrl_c_in_eval': train(setup, 'ctrl_c_in_eval', pauses=dict(SIG_PAUSE_EVAL=1), tty=True),
        # the advance warning to the group while epoch_1.pth is half written, under (a stand-in for) SLURM,
        # with persistent training workers (alive through the write)
        'usr1_in_save': train(setup, 'usr1_in_save', '--cfg-options', 'data.persistent_workers=True',
                              pauses=dict(SIG_PAUSE_SAVE='epoch_1.pth'), env=slurm),
        # SIGTERM in epoch 2, then SIGKILL to the group while the stop's latest.pth is half written
        'kill_in_stop_save': train(setup, 'kill_in_stop_save', pauses=dict(SIG_PAUSE_ITER=7, SIG_STALL_STOP_SAVE=1)),
        # Ctrl-C twice on the terminal
        'double_ctrl_c': train(setup, 'double_ctrl_c', pauses=dict(SIG_PAUSE_ITER=2, SIG_HOLD=1), tty=True),
        # a crash while persistent workers live: the interpreter's exit must still end them
        'crash': train(setup, 'crash', '--cfg-options', 'data.persistent_workers=True',
                       pauses=dict(SIG_RAISE_AT_ITER=2)),
    }
    results = {}
    for name, send in (('sigterm', lambda r: r.killpg(signal.SIGTERM)), ('ctrl_c_in_eval', Run.ctrl_c),
                       ('sigterm_last_iter', lambda r: r.killpg(signal.SIGTERM)),
                       ('usr1_in_save', lambda r: r.killpg(signal.SIGUSR1)),
                       ('kill_in_stop_save', lambda r: r.killpg(signal.SIGTERM)), ('double_ctrl_c', Run.ctrl_c)):
        run = started[name]
        if run.wait_for(run.marker):
            send(run)
    stalled = started['kill_in_stop_save']
    if stalled.wait_for(stalled.marker + '.stalled'):
        results['kill_in_stop_save tmp files'] = glob.glob(os.path.join(stalled.work_dir, '.latest.pth.*.tmp'))
        stalled.killpg(signal.SIGKILL)
    double = started['double_ctrl_c']
    if double.wait_for_log('SIGINT received'):
        double.ctrl_c()
    for name, run in started.items():
        results[name] = (run.finish(timeout=60 if name == 'crash' else 300), run.work_dir)
        if name not in ('reference', 'double_ctrl_c', 'crash'):
            results[f'{name} counters'] = counters(run.work_dir)
    record = slurm['SCONTROL_RECORD']
    results['scontrol'] = open(record).read() if os.path.exists(record) else None
    resumed = {name: train(setup, name, '--auto-resume')
               for name in ('sigterm', 'ctrl_c_in_eval', 'usr1_in_save', 'kill_in_stop_save')}
    for name, run in resumed.items():
        results[f'{name} resumed'] = (run.finish(), run.work_dir)
    return results


def test_reference_run_completes(runs):
    proc, work_dir = runs['reference']
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert counters(work_dir) == (2, 2 * ITERS_PER_EPOCH, 0)


@pytest.mark.parametrize('name, signum, expected', [
    ('sigterm', signal.SIGTERM, (0, 3, 3)),                              # the iteration in flight completes
    ('ctrl_c_in_eval', signal.SIGINT, (1, ITERS_PER_EPOCH, 0)),          # after the evaluation, before epoch 2
    ('usr1_in_save', signal.SIGUSR1, (1, ITERS_PER_EPOCH, 0)),           # after the write and the evaluation
])
def test_group_signal_stops_with_a_checkpoint_and_resumes_exactly(runs, name, signum, expected):
    proc, work_dir = runs[name]
    latest = os.path.join(work_dir, 'latest.pth')
    assert proc.returncode == 128 + signum, proc.stderr[-3000:]
    assert one_error_line(proc) == (f'interrupted: {signal.Signals(signum).name} received; saved {latest}; '
                                    f'continue with --resume-from {latest} or --auto-resume')
    assert runs[f'{name} counters'] == expected
    # logged by the main process alone: a forked worker left unshielded would run the runner's handler too
    assert proc.stdout.count(f'{signal.Signals(signum).name} received') == 1, proc.stdout[-3000:]
    assert not glob.glob(os.path.join(work_dir, '.*.tmp'))
    resumed, _ = runs[f'{name} resumed']
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'resumed from {latest}: epoch {expected[0]}, iter {expected[1]}' in resumed.stdout
    assert_same_weights(runs['reference'][1], work_dir)


def test_signal_during_evaluation_lets_the_evaluation_finish(runs):
    proc, work_dir = runs['ctrl_c_in_eval']
    assert 'Epoch(val) [1][' in proc.stdout and 'bbox_mAP' in proc.stdout
    assert 'Epoch [2][' not in proc.stdout
    assert counters(work_dir, 'epoch_1.pth') == (1, ITERS_PER_EPOCH, 0)


def test_signal_in_an_epochs_last_iteration_stops_after_the_epochs_hooks(runs):
    """The epoch checkpoint and the evaluation of that epoch are not skipped."""
    proc, work_dir = runs['sigterm_last_iter']
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert runs['sigterm_last_iter counters'] == (1, ITERS_PER_EPOCH, 0)
    assert counters(work_dir, 'epoch_1.pth') == (1, ITERS_PER_EPOCH, 0)
    assert 'Epoch(val) [1][' in proc.stdout and 'Epoch [2][' not in proc.stdout


def test_advance_warning_requeues_the_slurm_job_after_the_checkpoint(runs):
    proc, _ = runs['usr1_in_save']
    assert runs['scontrol'] == f'requeue 4242 iter={ITERS_PER_EPOCH}'
    assert 'SLURM job 4242 requeued' in proc.stdout


def test_hard_kill_during_the_stop_checkpoint_keeps_the_previous_one(runs):
    proc, work_dir = runs['kill_in_stop_save']
    assert proc.returncode == -signal.SIGKILL
    assert len(runs.get('kill_in_stop_save tmp files', [])) == 1, proc.stderr[-3000:]
    assert runs['kill_in_stop_save counters'] == (1, ITERS_PER_EPOCH, 0)  # epoch 1's, intact
    resumed, _ = runs['kill_in_stop_save resumed']
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"removed {runs['kill_in_stop_save tmp files'][0]}, the partial file" in resumed.stdout
    assert_same_weights(runs['reference'][1], work_dir)


def test_second_ctrl_c_aborts_at_once_without_a_checkpoint(runs):
    proc, work_dir = runs['double_ctrl_c']
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr[-3000:]
    assert one_error_line(proc) == ('interrupted: SIGINT before training started or a second Ctrl-C; '
                                    'no checkpoint saved')
    assert not os.path.exists(os.path.join(work_dir, 'latest.pth'))
    assert 'Epoch [1][3/' not in proc.stdout  # the paused iteration never ran


def test_crash_with_shielded_persistent_workers_exits(runs):
    """The workers drop stop signals but not their parent's SIGTERM, with which the exiting interpreter
    ends workers whose loader is still alive (held by the traceback)."""
    proc, _ = runs['crash']
    assert proc.returncode == 1
    assert proc.stderr.rstrip().endswith('RuntimeError: injected fault at iter 2'), proc.stderr[-3000:]


def test_requeue_outside_slurm_is_one_log_line(monkeypatch, caplog):
    monkeypatch.delenv('SLURM_JOB_ID', raising=False)
    with caplog.at_level(logging.INFO, logger='test.requeue'):
        assert requeue_slurm_job(logging.getLogger('test.requeue')) is False
    assert [r.getMessage() for r in caplog.records] == ['not running under SLURM (no SLURM_JOB_ID): no requeue']


def test_failing_scontrol_is_one_warning(tmp_path, monkeypatch, caplog):
    scontrol = tmp_path / 'scontrol'
    scontrol.write_text('#!/bin/sh\necho "Invalid job id specified" >&2\nexit 1\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv('SLURM_JOB_ID', '77')
    monkeypatch.setenv('PATH', f'{tmp_path}{os.pathsep}{os.environ["PATH"]}')
    with caplog.at_level(logging.INFO, logger='test.requeue'):
        assert requeue_slurm_job(logging.getLogger('test.requeue')) is False
    assert [r.getMessage() for r in caplog.records] == [
        'SLURM job 77: scontrol requeue exited with 1 (Invalid job id specified); the job is not requeued']


def torchrun(setup: dict, name: str, *extra: str, pauses: dict | None = None) -> Run:
    """2 ranks on gloo, 1 worker each; torchrun (the agent) leads its own session."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1',
           f'--master_port={free_port()}', *([setup['launcher']] if pauses else []), TRAIN, setup['config'],
           '--launcher', 'pytorch', '--work-dir', os.path.join(setup['folder'], name), *ARGS, '--no-validate',
           '--cfg-options', 'data.workers_per_gpu=1', *extra]
    return Run(setup['folder'], name, cmd, tool_env(**{k: str(v) for k, v in (pauses or {}).items()}))


def test_torchrun_agent_group_sigterm_stops_every_rank_after_the_same_iteration(setup):
    """SIGTERM to the agent's group: the agent passes it to each rank's group (rank and its workers)."""
    reference = torchrun(setup, 'dist_reference')
    stopped = torchrun(setup, 'dist_sigterm', pauses=dict(SIG_PAUSE_ITER=1, SIG_PAUSE_RANK='1'))
    assert stopped.wait_for(stopped.marker), stopped.stderr[-3000:]
    stopped.killpg(signal.SIGTERM)
    proc = stopped.finish()
    latest = os.path.join(stopped.work_dir, 'latest.pth')
    for rank in (0, 1):
        assert (f'[rank {rank}] interrupted: SIGTERM received; saved {latest}; continue with --resume-from '
                f'{latest} or --auto-resume') in proc.stderr, proc.stderr[-3000:]
    # the one traceback is the agent's own: torchrun ends itself with SignalException on SIGTERM
    assert proc.stderr.count('Traceback') == 1, proc.stderr[-3000:]
    assert proc.stderr.rstrip().endswith(f'SignalException: Process {stopped.proc.pid} got signal: 15')
    meta = load_file(latest)['meta']
    assert (meta['epoch'], meta['iter'], meta['inner_iter']) == (0, 2, 2)
    assert len(meta['rng_states']) == 2
    assert reference.finish().returncode == 0, reference.stderr[-3000:]
    resumed = torchrun(setup, 'dist_sigterm', '--auto-resume').finish()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(reference.work_dir, stopped.work_dir)


# A stand-in for srun on PATH: records the signal it gets and its arguments, and exits as a step would.
FAKE_SRUN = '''#!{python}
import os, signal, sys, time
record = os.environ['FAKE_SRUN_RECORD']


def stop(signum, frame):
    with open(record, 'w') as f:
        f.write(signal.Signals(signum).name + ' ' + ' '.join(sys.argv[1:]))
    sys.exit(128 + signum)


signal.signal(signal.SIGUSR1, stop)
open(record + '.ready', 'w').close()
time.sleep(60)
'''


def test_slurm_script_hands_the_batch_shells_warning_to_srun(tmp_path):
    """``--signal=B:USR1@120`` signals the batch shell alone; tools/slurm_train.sh passes it to srun and
    ends with srun's status."""
    srun = tmp_path / 'srun'
    srun.write_text(FAKE_SRUN.format(python=sys.executable))
    srun.chmod(0o755)
    record = str(tmp_path / 'record')
    env = dict(os.environ, SLURM_JOB_ID='7', FAKE_SRUN_RECORD=record,
               PATH=f'{tmp_path}{os.pathsep}{os.environ["PATH"]}')
    proc = subprocess.Popen(['bash', os.path.join(ROOT, 'tools', 'slurm_train.sh'), 'gpu', 'job', 'cfg.py', 'wd',
                             '--auto-resume'], env=env, start_new_session=True)
    deadline = time.time() + 30
    while not os.path.exists(record + '.ready'):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGUSR1)
    assert proc.wait(timeout=30) == 128 + signal.SIGUSR1
    words = open(record).read().split()
    assert words[0] == 'SIGUSR1' and words[-3:] == ['--work-dir=wd', '--launcher=slurm', '--auto-resume']


@pytest.mark.parametrize('value', ['SIGTERM', 'SIGKILL', 'USR9', 1.5])
def test_bad_requeue_signal_is_one_config_error(setup, value):
    from mixprec.config import check_train_config, load_config
    from mixprec.registry import ConfigError
    cfg = load_config(setup['config'], {'requeue_signal': value})
    with pytest.raises(ConfigError) as info:
        check_train_config(cfg, 'tiny.py')
    assert str(info.value) == ("tiny.py: requeue_signal: expected a catchable signal other than SIGINT and SIGTERM, "
                               f"such as 'SIGUSR1' or 'SIGUSR2' (or None for no advance-warning signal), got {value!r}")


@pytest.mark.parametrize('value, expected', [('SIGUSR2', signal.SIGUSR2), ('usr1', signal.SIGUSR1),
                                             (int(signal.SIGHUP), signal.SIGHUP), (None, None)])
def test_requeue_signal_spellings(value, expected):
    from mixprec.stop_signals import parse_signal
    assert parse_signal(value, 'requeue_signal') == expected
