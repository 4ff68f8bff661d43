"""A launcher that runs a tool with faults injected, chosen by environment variables (non-finite weights
from an iteration on, an exception or a pause at an iteration, a checkpoint write that stalls halfway or
finds the disk full), and the arguments of a deterministic training run."""

LAUNCHER = '''
import io
import os
import runpy
import sys
import time

import torch

from mixprec.checkpoint import unwrap_model
from mixprec.engine.runner import Runner

MARKER = os.environ.get('FAULT_MARKER', '')


def mark():
    with open(MARKER, 'w'):
        pass


def patch_iterations():
    nan_from = int(os.environ.get('FAULT_NAN_FROM_ITER', -1))
    raise_at = int(os.environ.get('FAULT_RAISE_AT_ITER', -1))
    raise_rank = os.environ.get('FAULT_RAISE_RANK', os.environ.get('RANK', '0'))
    pause_at = int(os.environ.get('FAULT_PAUSE_AT_ITER', -1))
    pause_s = 600
    run_iter = Runner._run_iter

    def faulty_run_iter(self, data_batch):
        if 0 <= nan_from <= self.iter:
            first = next(p for p in unwrap_model(self.model).parameters() if p.requires_grad)
            with torch.no_grad():
                first.fill_(float('nan'))
        if self.iter == pause_at:
            mark()
            end = time.time() + pause_s
            while time.time() < end and self._stop_signal is None:
                time.sleep(0.05)
        if self.iter == raise_at and os.environ.get('RANK', '0') == raise_rank:
            raise RuntimeError(f'injected fault on rank {raise_rank} at iter {raise_at}')
        run_iter(self, data_batch)

    Runner._run_iter = faulty_run_iter


def patch_saves():
    stall_at = int(os.environ.get('FAULT_STALL_SAVE', -1))
    full_at = int(os.environ.get('FAULT_FULL_DISK_SAVE', -1))
    real_save = torch.save
    calls = []

    def stalling_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == full_at:
            f.write(b'partial')
            raise OSError(28, 'No space left on device')
        if len(calls) != stall_at or isinstance(f, (str, os.PathLike)):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        mark()
        time.sleep(600)

    torch.save = stalling_save


patch_iterations()
patch_saves()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''

ARGS = ('--seed', '0', '--deterministic', '--no-validate')
