"""A real 2-process torchrun (gloo) run of the runner: identical weights, logs from rank 0 only."""
import os
import subprocess
import sys

import pytest
import torch

from helpers.dist import free_port
from helpers.tiny import ROOT


def torchrun(script_args, nproc=2, timeout=240, env_extra=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, 'tests')]), OMP_NUM_THREADS='1')
    env.update(env_extra or {})
    cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', '--master_addr=127.0.0.1',
           f'--master_port={free_port()}', *script_args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_process_gloo_run_keeps_ranks_identical(tmp_path):
    proc = torchrun([os.path.join(ROOT, 'tests', 'helpers', 'toy_dist_train.py'), str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(tmp_path / 'weights_rank0.pt', weights_only=True)
    w1 = torch.load(tmp_path / 'weights_rank1.pt', weights_only=True)
    for key in w0:
        if 'running' in key or 'num_batches' in key:
            continue
        assert torch.equal(w0[key], w1[key]), key
    init = torch.nn.Linear(4, 1)
    assert not torch.equal(w0['fc.weight'], init.weight.detach())
    json_logs = [f for f in os.listdir(tmp_path) if f.endswith('.log.json')]
    assert len(json_logs) == 1
    lines = open(tmp_path / json_logs[0]).read().splitlines()
    assert len(lines) == 1 + 2 * 4
    text_log = open(tmp_path / 'train.log').read()
    assert text_log.count('Epoch [2][4/4]') == 1
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith('.pth')) == ['epoch_1.pth', 'epoch_2.pth', 'latest.pth']


def test_run_cli_closes_the_process_group_after_a_finished_run(monkeypatch):
    """An open gloo group at exit can abort a finished rank; the CLI wrapper waits for all and tears it down."""
    import torch.distributed as dist
    from mixprec.cli import run_cli
    from mixprec.engine import init_dist
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', str(free_port()))
    seen = []
    run_cli(lambda: (init_dist('pytorch', backend='gloo'), seen.append(dist.is_initialized())))
    assert seen == [True]
    assert not dist.is_initialized()
