"""End to end through the real tools: train.py, test.py, dist_train.sh / dist_test.sh (torchrun, gloo)."""
import ast
import glob
import json
import os
import pickle
import subprocess
import sys

import pytest

from helpers.tiny import ROOT, write_tiny_config
from test_engine_dist import free_port

pytestmark = pytest.mark.slow

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)


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
def trained(tmp_path_factory):
    """A tiny Mask R-CNN trained 2 epochs by tools/train.py with bf16 master weights."""
    folder = str(tmp_path_factory.mktemp('e2e'))
    config = write_tiny_config(folder)
    work_dir = os.path.join(folder, 'work')
    run([sys.executable, 'tools/train.py', config, '--work-dir', work_dir, '--seed', '0'])
    return folder, config, work_dir


def test_train_writes_work_dir(trained):
    folder, config, work_dir = trained
    files = os.listdir(work_dir)
    assert {'tiny.py', 'epoch_1.pth', 'epoch_2.pth', 'latest.pth'} <= set(files)
    assert any(f.endswith('.log') for f in files) and any(f.endswith('.log.json') for f in files)
    records = [json.loads(line) for line in open(glob.glob(os.path.join(work_dir, '*.log.json'))[0])]
    assert records[0]['seed'] == 0 and 'config' in records[0]
    train = [r for r in records if r.get('mode') == 'train']
    assert all({'loss', 'loss_mask', 'loss_scale', 'skipped_steps', 'lr', 'time'} <= set(r) for r in train)


def test_test_tool_matches_training_evaluation(trained):
    folder, config, work_dir = trained
    out = os.path.join(folder, 'results.pkl')
    show = os.path.join(folder, 'show')
    proc = run([sys.executable, 'tools/test.py', config, os.path.join(work_dir, 'latest.pth'),
                '--eval', 'bbox', 'segm', '--out', out, '--show-dir', show])
    metrics = printed_metrics(proc.stdout)
    val = val_record(work_dir)
    for key in ('bbox_mAP', 'bbox_mAP_50', 'segm_mAP', 'segm_mAP_50'):
        assert metrics[key] == pytest.approx(val[key], abs=1e-4), key
    results = pickle.load(open(out, 'rb'))
    assert len(results) == 4 and isinstance(results[0], tuple) and len(results[0][0]) == 3
    assert len(os.listdir(show)) == 4

    prefix = os.path.join(folder, 'coco_results')
    run([sys.executable, 'tools/test.py', config, os.path.join(work_dir, 'latest.pth'), '--format-only',
         '--eval-options', f'jsonfile_prefix={prefix}'])
    boxes = json.load(open(prefix + '.bbox.json'))
    assert all(set(b) >= {'image_id', 'bbox', 'score', 'category_id'} for b in boxes)
    assert {b['category_id'] for b in boxes} <= {1, 3, 5}
    assert os.path.exists(prefix + '.segm.json')


def test_two_process_test_equals_one_process(trained):
    folder, config, work_dir = trained
    ckpt = os.path.join(work_dir, 'latest.pth')
    single = printed_metrics(run([sys.executable, 'tools/test.py', config, ckpt, '--eval', 'bbox', 'segm']).stdout)
    env = dict(ENV, PORT=str(free_port()))
    double = printed_metrics(run(['bash', 'tools/dist_test.sh', config, ckpt, '2', '--eval', 'bbox', 'segm'],
                                 env=env).stdout)
    assert double == single


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
