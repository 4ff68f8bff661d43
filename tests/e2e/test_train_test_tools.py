"""End to end through the real tools: train.py, test.py, dist_train.sh / dist_test.sh (torchrun, gloo)."""
import ast
import glob
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from helpers.tiny import ROOT, write_tiny_config
from helpers.trained import model, reference, trained  # noqa: F401 (fixtures)
from helpers.dist import free_port

pytestmark = pytest.mark.slow

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT, PYTHON=sys.executable)  # the launchers' interpreter


def run(cmd, timeout=300, env=None):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or ENV, cwd=ROOT)
    assert proc.returncode == 0, f'{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}'
    return proc


def printed_metrics(stdout: str) -> dict:
    return ast.literal_eval([line for line in stdout.splitlines() if line.startswith("{'bbox_mAP'")][-1])


def val_record(work_dir: str) -> dict:
    log = glob.glob(os.path.join(work_dir, '*.log.json'))[0]
    records = [json.loads(line) for line in open(log)]
    return [r for r in records if r.get('mode') == 'val'][-1]


@pytest.fixture(scope='module')
def single(trained, tmp_path_factory):
    """tools/test.py in one process: printed metrics and the --out results."""
    out = str(tmp_path_factory.mktemp('single') / 'single.pkl')
    proc = run([sys.executable, 'tools/test.py', trained.config, trained.checkpoint, '--eval', 'bbox', '--out', out])
    return printed_metrics(proc.stdout), pickle.load(open(out, 'rb'))


def assert_same_results(results, expected):
    assert len(results) == len(expected)
    for i, (result, ref) in enumerate(zip(results, expected)):
        assert len(result) == len(ref) == 3, i
        for c, (r, e) in enumerate(zip(result, ref)):
            assert r.shape == e.shape and np.array_equal(r, e), (i, c)


def test_train_writes_work_dir(trained):
    files = os.listdir(trained.work_dir)
    assert {'trained.py', 'epoch_80.pth', 'latest.pth'} <= set(files)
    assert any(f.endswith('.log') for f in files) and any(f.endswith('.log.json') for f in files)
    records = [json.loads(line) for line in open(glob.glob(os.path.join(trained.work_dir, '*.log.json'))[0])]
    assert records[0]['seed'] == 0 and 'config' in records[0]
    train = [r for r in records if r.get('mode') == 'train']
    assert all({'loss', 'loss_cls', 'loss_scale', 'skipped_steps', 'lr', 'time'} <= set(r) for r in train)


def test_test_tool_matches_training_evaluation(trained, single, reference, tmp_path):
    metrics, results = single
    val = val_record(trained.work_dir)
    for key in ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75'):
        assert metrics[key] == pytest.approx(val[key], abs=1e-4), key
    assert metrics['bbox_mAP_50'] > 0.3  # the model detects: the comparison is not one of zeros
    assert_same_results(results, reference)

    prefix = str(tmp_path / 'coco_results')
    run([sys.executable, 'tools/test.py', trained.config, trained.checkpoint, '--format-only',
         '--eval-options', f'jsonfile_prefix={prefix}'])
    boxes = json.load(open(prefix + '.bbox.json'))
    cat_ids = (1, 3, 5)
    expected = [(i + 1, cat_ids[c], [float(v) for v in (b[0], b[1], b[2] - b[0], b[3] - b[1])], float(b[4]))
                for i, result in enumerate(results) for c, r in enumerate(result) for b in r]
    assert len(boxes) == len(expected) > 4
    for got, (image_id, cat_id, xywh, score) in zip(boxes, expected):
        assert (got['image_id'], got['category_id']) == (image_id, cat_id)
        assert got['bbox'] == pytest.approx(xywh, abs=1e-3) and got['score'] == pytest.approx(score, abs=1e-6)


@pytest.mark.parametrize('collect', [[], ['--tmpdir', 'TMP']], ids=['process-group', 'tmpdir'])
def test_two_process_test_equals_one_process(trained, single, collect, tmp_path):
    out = str(tmp_path / 'double.pkl')
    collect = [str(tmp_path / 'parts') if a == 'TMP' else a for a in collect]
    env = dict(ENV, PORT=str(free_port()))
    proc = run(['bash', 'tools/dist_test.sh', trained.config, trained.checkpoint, '2', '--eval', 'bbox', '--out', out,
                *collect], env=env)
    assert printed_metrics(proc.stdout) == single[0]
    assert_same_results(pickle.load(open(out, 'rb')), single[1])
    if collect:
        assert os.listdir(collect[1]) == []  # rank 0 removed the parts it read


def test_dist_train_two_processes(tmp_path):
    config = write_tiny_config(str(tmp_path), epochs=1, num_train=8)
    work_dir = str(tmp_path / 'work')
    env = dict(ENV, PORT=str(free_port()))
    run(['bash', 'tools/dist_train.sh', config, '2', '--work-dir', work_dir, '--no-validate'], env=env)
    assert os.path.exists(os.path.join(work_dir, 'epoch_1.pth'))
    records = [json.loads(line) for line in open(glob.glob(os.path.join(work_dir, '*.log.json'))[0])]
    iters = [r['iter'] for r in records if r.get('mode') == 'train']
    # 8 images in two aspect groups, each group padded to whole batches on both ranks: 2 or 3 iterations
    assert iters == list(range(1, len(iters) + 1)) and len(iters) in (2, 3)


def test_two_node_launch_on_one_machine(tmp_path):
    config = write_tiny_config(str(tmp_path), epochs=1, num_train=8)
    from mixprec.data import make_shapes_dataset
    make_shapes_dataset(str(tmp_path / 'shapes'), num_train=8, num_val=4, img_size=96, seed=0)
    work_dir = str(tmp_path / 'work')
    port = str(free_port())
    procs = []
    for node_rank in (0, 1):
        env = dict(ENV, NNODES='2', NODE_RANK=str(node_rank), MASTER_ADDR='127.0.0.1', PORT=port)
        procs.append(subprocess.Popen(['bash', 'tools/dist_train.sh', config, '1', '--work-dir', work_dir,
                                       '--no-validate'], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert os.path.exists(os.path.join(work_dir, 'epoch_1.pth'))
