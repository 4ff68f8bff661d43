"""Issue 7, case 6 through torchrun (gloo, 2 processes): a rank that raises ends every rank within a
bounded time with its error printed; nodes started with different configs stop at start."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from mixprec.data import make_shapes_dataset
from helpers.tiny import ROOT, write_tiny_config
from helpers.dist import free_port
from helpers.faults import LAUNCHER
from helpers.tool_runs import tool_env

pytestmark = pytest.mark.slow

TRAIN = os.path.join(ROOT, 'tools', 'train.py')


def torchrun(script_args: list, cwd: str, env: dict, nnodes: int = 1, node_rank: int = 0, nproc: int = 2,
             port: int = 0) -> subprocess.Popen:
    cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nnodes={nnodes}', f'--node_rank={node_rank}',
           '--master_addr=127.0.0.1', f'--master_port={port}', f'--nproc_per_node={nproc}', *script_args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def tiny(tmp_path) -> str:
    config = write_tiny_config(str(tmp_path), epochs=2, num_train=8, num_val=2, img_size=64)
    make_shapes_dataset(str(tmp_path / 'shapes'), num_train=8, num_val=2, img_size=64, seed=0)
    return config


def test_failing_rank_ends_every_rank_with_its_error(tmp_path, tiny):
    launcher = tmp_path / 'launcher.py'
    launcher.write_text(LAUNCHER)
    env = tool_env(FAULT_RAISE_AT_ITER='2', FAULT_RAISE_RANK='1')
    start = time.time()
    proc = torchrun([str(launcher), TRAIN, tiny, '--launcher', 'pytorch', '--work-dir', str(tmp_path / 'work'),
                     '--no-validate'], cwd=str(tmp_path), env=env, port=free_port())
    stdout, stderr = proc.communicate(timeout=240)
    elapsed = time.time() - start
    assert proc.returncode != 0
    assert 'RuntimeError: injected fault on rank 1 at iter 2' in stderr, stderr[-3000:]
    assert elapsed < 120, f'{elapsed:.0f} s'


def test_nodes_with_different_configs_stop_at_start(tmp_path, tiny):
    port = free_port()
    procs = []
    for node_rank, lr in ((0, '0.02'), (1, '0.01')):
        env = tool_env()
        args = [TRAIN, tiny, '--launcher', 'pytorch', '--work-dir', str(tmp_path / 'work'), '--no-validate',
                '--cfg-options', f'optimizer.lr={lr}']
        procs.append(torchrun(args, cwd=str(tmp_path), env=env, nnodes=2, node_rank=node_rank, nproc=1, port=port))
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (stdout, stderr) in zip(procs, outputs):
        assert proc.returncode != 0
        assert 'error: ranks [1] were started with a config that differs from rank 0' in stderr, stderr[-3000:]
    assert not os.path.exists(tmp_path / 'work' / 'latest.pth')
