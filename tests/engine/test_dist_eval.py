"""Validation during distributed training (gloo, 2 processes, ``tests/helpers/toy_dist_eval.py``):

- mmdetection v2's ``evaluation`` keys ``tmpdir`` and ``gpu_collect`` configure the gathering, never
  reach ``dataset.evaluate``; with ``tmpdir`` the results travel through files there, in dataset order;
- ``train_detector`` keeps no reference to the DDP wrapper it built once the fp16 hook rebuilt it;
- a failure while evaluating (rank 0) or testing (rank 1) ends both ranks at once with the error,
  where the others used to wait at a barrier for the process group's 30-minute timeout. These two
  runs start the ranks as separate processes with torchrun's variables (as on two nodes, or under
  srun): no launcher agent stops the survivors for them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers.dist import free_port
from helpers.tiny import ROOT

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(ROOT, 'tests', 'helpers', 'toy_dist_eval.py')


def _env(**extra: str) -> dict:
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, 'tests')]),
                **extra)


def test_tmpdir_collection_and_the_first_ddp_wrapper_is_dropped(tmp_path):
    collect = tmp_path / 'collect'
    env = _env(EVAL_CFG=json.dumps(dict(interval=1, metric='mse', tmpdir=str(collect))))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1',
           f'--master_port={free_port()}', SCRIPT, str(tmp_path)]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        probe = json.loads((tmp_path / f'probe_rank{rank}.json').read_text())
        assert probe == dict(replaced=True, alive_before_gc=False, alive=False), (rank, probe)
    evaluated = json.loads((tmp_path / 'evaluated.json').read_text())
    single = json.loads((tmp_path / 'single.json').read_text())
    assert len(evaluated) == 6
    np.testing.assert_allclose(evaluated, single, rtol=1e-6)
    assert collect.is_dir() and not list(collect.iterdir())  # the parts went through it and were removed
    log = next(p for p in tmp_path.iterdir() if p.name.endswith('.log.json'))
    val = [json.loads(line) for line in log.read_text().splitlines()[1:] if '"val"' in line]
    assert len(val) == 1 and 'mse' in val[0]


@pytest.mark.parametrize('failure', ['evaluate_rank0', 'test_rank1'])
def test_a_failure_in_evaluation_ends_every_rank_with_the_error(tmp_path, failure):
    evaluation = dict(interval=1, metric='mse', gpu_collect=True)
    extra = {}
    if failure == 'evaluate_rank0':
        evaluation['bogus'] = 1  # reaches dataset.evaluate on rank 0: a TypeError there
    else:
        extra['FAIL_TEST_RANK'] = '1'
    port = free_port()
    start = time.time()
    procs = [subprocess.Popen([sys.executable, SCRIPT, str(tmp_path)], cwd=str(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', MASTER_ADDR='127.0.0.1',
                                       MASTER_PORT=str(port), DIST_TIMEOUT_S='300',
                                       EVAL_CFG=json.dumps(evaluation), **extra))
             for rank in (0, 1)]
    try:
        outputs = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    elapsed = time.time() - start
    assert all(p.returncode != 0 for p in procs), [p.returncode for p in procs]
    if failure == 'evaluate_rank0':
        assert "unexpected keyword argument 'bogus'" in outputs[0], outputs[0][-2000:]
        assert ("error: rank 0 failed in evaluation: TypeError: ToyEvalDataset.evaluate() got an unexpected "
                "keyword argument 'bogus'") in outputs[1], outputs[1][-2000:]
    else:
        assert 'RuntimeError: injected test failure on rank 1' in outputs[1], outputs[1][-2000:]
        assert ('error: rank 1 failed in testing its shard: RuntimeError: injected test failure on rank 1'
                in outputs[0]), outputs[0][-2000:]
    assert elapsed < 100, f'{elapsed:.0f} s'
    assert not (tmp_path / 'evaluated.json').exists()
