"""tools/train.py through torchrun (gloo, 2 processes), validating during training, from --load-from.

One run checks three things (a torchrun start is the expensive part):
- the logged losses are the mean over the ranks of each rank's own losses (Runner._reduce_for_log);
- DistEvalHook's validation: the results it gathered equal, image by image, those of a single-process
  ``tools/test.py`` on the saved checkpoint, and the logged val metrics equal their evaluation;
- ``--load-from`` with a DDP-saved (``module.``-prefixed) checkpoint: the first iteration runs on
  the checkpoint's weights.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine import Config

from helpers.tiny import ROOT, write_tiny_config
import mixprec.models  # noqa: F401  (registers the models)
from mixprec.data import build_dataset, make_shapes_dataset
from mixprec.registry import MODELS
from helpers.dist import free_port
from helpers.tool_runs import tool_env

pytestmark = pytest.mark.slow

# Runs tools/train.py after patching: each rank appends its own loss terms (before the all-reduce)
# to terms_rank{R}.jsonl and saves its weights at the first iteration; dataset.evaluate pickles
# the results it is given.
LAUNCHER = '''
import json, os, pickle, runpy, sys
import torch
from mixprec.checkpoint import unwrap_model
from mixprec.data.coco import CocoDataset
from mixprec.engine.runner import Runner

OUT, RANK = os.environ['DUMP_DIR'], os.environ.get('RANK', '0')
reduce_for_log, evaluate = Runner._reduce_for_log, CocoDataset.evaluate


def recording_reduce(self, terms):
    path = os.path.join(OUT, f'first_iter_weights_rank{RANK}.pt')
    if not os.path.exists(path):
        torch.save({k: v.detach().clone() for k, v in unwrap_model(self.model).state_dict().items()}, path)
    with open(os.path.join(OUT, f'terms_rank{RANK}.jsonl'), 'a') as f:
        f.write(json.dumps({k: float(v) for k, v in terms.items()}) + '\\n')
    return reduce_for_log(self, terms)


def dumping_evaluate(self, results, *args, **kwargs):
    with open(os.path.join(OUT, f'val_results_rank{RANK}.pkl'), 'wb') as f:
        pickle.dump(results, f)
    return evaluate(self, results, *args, **kwargs)


Runner._reduce_for_log, CocoDataset.evaluate = recording_reduce, dumping_evaluate
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def test_dist_train_validates_logs_rank_means_and_loads_weights(tmp_path):
    extra = 'model = dict(test_cfg=dict(rcnn=dict(score_thr=0.0)))\n'  # 100 detections per image
    config = write_tiny_config(str(tmp_path), base='configs/shapes/faster_rcnn_r18_fpn_bf16_shapes.py', epochs=1,
                               num_train=8, num_val=4, img_size=64, extra=extra)
    make_shapes_dataset(str(tmp_path / 'shapes'), num_train=8, num_val=4, img_size=64, seed=0)
    cfg = Config.fromfile(config)
    torch.manual_seed(123)  # not the training seed: weights the run would not make itself
    init = MODELS.build(cfg.model).state_dict()
    torch.save({'meta': {}, 'state_dict': {f'module.{k}': v for k, v in init.items()}}, tmp_path / 'ddp.pth')
    launcher = tmp_path / 'launcher.py'
    launcher.write_text(LAUNCHER)
    work = tmp_path / 'work'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1',
           f'--master_port={free_port()}', str(launcher), os.path.join(ROOT, 'tools', 'train.py'), config,
           '--launcher', 'pytorch', '--work-dir', str(work), '--load-from', str(tmp_path / 'ddp.pth'),
           '--seed', '0']  # seeded: from these untrained weights an unlucky draw of flips and samples gave
    # the two ranks' different images total losses equal to 4e-6, which the check below cannot tell apart
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=tool_env(DUMP_DIR=str(tmp_path)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # --load-from reached the model: the first iteration ran on the checkpoint's weights (in the
    # model's precision), on both ranks (BN statistics have moved in that forward)
    for rank in (0, 1):
        first = torch.load(tmp_path / f'first_iter_weights_rank{rank}.pt', weights_only=True)
        for key, value in init.items():
            if 'running_' in key or 'num_batches' in key:
                continue
            assert torch.equal(first[key].float(), value.to(first[key].dtype).float()), (rank, key)

    # logged losses = mean over ranks of each rank's own losses, iteration by iteration
    ranks = [[json.loads(line) for line in open(tmp_path / f'terms_rank{r}.jsonl')] for r in (0, 1)]
    log_json = next(f for f in os.listdir(work) if f.endswith('.log.json'))
    lines = [json.loads(line) for line in open(work / log_json).read().splitlines()[1:]]
    train = [line for line in lines if line['mode'] == 'train']
    assert len(train) == len(ranks[0]) == len(ranks[1]) >= 2
    for logged, own0, own1 in zip(train, *ranks):
        assert own0['loss'] != pytest.approx(own1['loss'], rel=1e-3)  # the ranks saw different images
        for key in own0:
            assert logged[key] == pytest.approx((own0[key] + own1[key]) / 2, rel=1e-3, abs=1e-4), key

    # validation during training: rank 0 evaluated the results of all 4 images, equal to a
    # single-process test of the saved checkpoint
    val = [line for line in lines if line['mode'] == 'val']
    assert len(val) == 1 and not (tmp_path / 'val_results_rank1.pkl').exists()
    with open(tmp_path / 'val_results_rank0.pkl', 'rb') as f:
        dist_results = pickle.load(f)
    test = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'test.py'), config, str(work / 'epoch_1.pth'),
                           '--out', str(tmp_path / 'single.pkl')], cwd=str(tmp_path), env=tool_env(),
                          capture_output=True, text=True, timeout=300)
    assert test.returncode == 0, test.stderr[-3000:]
    with open(tmp_path / 'single.pkl', 'rb') as f:
        single = pickle.load(f)
    assert len(dist_results) == len(single) == 4
    for img, (a, b) in enumerate(zip(dist_results, single)):
        assert sum(len(c) for c in a) == 100, img
        for ca, cb in zip(a, b, strict=True):
            np.testing.assert_allclose(ca, cb, rtol=1e-5, atol=1e-4, err_msg=f'image {img}')
    dataset = build_dataset(cfg.data.test)
    metrics = dataset.evaluate(single, metric='bbox', logger='silent')
    for key in ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75'):
        assert val[0][key] == metrics[key], key
