"""tools/analysis_tools/benchmark.py: inference fps and fp32-vs-mixed training on a tiny shapes Faster R-CNN
(gpu_check.sh is tested in test_gpu_check.py)."""
import os
import re
import subprocess
import sys

import pytest

from helpers.tiny import ROOT
from helpers.tool_runs import load_tool
from mixprec.config import load_config
from mixprec.data import make_shapes_dataset
from mixprec.fp16.precision import describe_device

BENCHMARK = os.path.join(ROOT, 'tools/analysis_tools/benchmark.py')
BASES = [os.path.join(ROOT, 'configs/_base_', p) for p in
         ('models/faster_rcnn_r50_fpn.py', 'datasets/shapes_instance.py', 'schedules/schedule_1x.py',
          'default_runtime.py')]
NUMBER = r'(\d+\.\d+)'


benchmark = load_tool('tools/analysis_tools/benchmark.py')

TINY_MODEL = """
model = dict(
    backbone=dict(depth=18, base_channels=16, init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=32),
                  bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=3)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=50)))
"""


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory):
    """Faster R-CNN R-18 (16 base channels, 32-channel FPN) on 4 generated 96 px shapes images, bf16 mixed."""
    tmp = tmp_path_factory.mktemp('bench')
    root = str(tmp / 'shapes') + '/'
    make_shapes_dataset(root, num_train=4, num_val=2, img_size=96, seed=0)
    path = tmp / 'tiny_faster_rcnn.py'
    path.write_text(f'_base_ = {BASES!r}\ndata_root = {root!r}\n' + TINY_MODEL +
                    "data = dict(samples_per_gpu=2, workers_per_gpu=0,\n"
                    "    train=dict(ann_file=data_root + 'annotations/instances_train.json',\n"
                    "               img_prefix=data_root + 'train/', auto_create=None),\n"
                    "    test=dict(ann_file=data_root + 'annotations/instances_val.json',\n"
                    "              img_prefix=data_root + 'val/', auto_create=None))\n"
                    "fp16 = dict(loss_scale=512., dtype='bfloat16')\n")
    return str(path)


def run_tool(*args, timeout=600):
    return subprocess.run([sys.executable, BENCHMARK, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_inference_fps(tiny_config):
    proc = run_tool(tiny_config, '--max-iter', '3', '--warmup', '1', '--log-interval', '1', '--img-scale', '128', '96',
                    '--fuse-conv-bn', '--repeat-num', '2')
    assert proc.returncode == 0, proc.stderr
    running = re.findall(r'Done image \[(\d+)\s*/ 3\], fps: ' + NUMBER + ' img / s', proc.stdout)
    assert [int(i) for i, _ in running] == [2, 3, 2, 3]
    overall = [float(f) for f in re.findall(r'^Overall fps: ' + NUMBER + ' img / s', proc.stdout, re.M)]
    assert len(overall) == 2 and all(f > 0 for f in overall)
    assert overall[0] == pytest.approx(float(running[1][1]), abs=0.05)
    mean = float(re.search(r'Mean Overall fps: ' + NUMBER + ' img / s', proc.stdout).group(1))
    assert mean == pytest.approx(sum(overall) / 2, abs=0.06)


@pytest.mark.slow
def test_train_fp32_against_mixed_in_one_run(tiny_config):
    proc = run_tool(tiny_config, '--train', '--train-iters', '1', '--warmup', '1', '--max-iter', '2',
                    '--log-interval', '1', '--img-scale', '128', '96')
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f'training on cpu ({describe_device("cpu")}), 2 images per iteration; memory: peak RSS' in out
    rows = {name: [float(v) for v in values] for name, *values in
            re.findall(r'^(fp32|bfloat16 master)\s+' + r'\s+'.join([NUMBER] * 3) + '$', out, re.M)}
    label = 'bfloat16 master'  # the tiny config asks for bfloat16
    assert set(rows) == {'fp32', label}, out
    assert all(v > 0 for values in rows.values() for v in values)
    time_ratio, mem_ratio, fps_ratio = map(float, re.search(
        r'ratio fp32 / mixed: time ' + NUMBER + ', memory ' + NUMBER + ', fps ' + NUMBER, out).groups())
    fp32, mixed = rows['fp32'], rows[label]
    assert time_ratio == pytest.approx(fp32[0] / mixed[0], rel=0.02, abs=0.01)
    assert mem_ratio == pytest.approx(fp32[1] / mixed[1], rel=0.02, abs=0.01)
    # the fps column is printed to 0.1: the ratio of the printed values may be off by that rounding
    low, high = (fp32[2] - 0.05) / (mixed[2] + 0.05), (fp32[2] + 0.05) / max(mixed[2] - 0.05, 1e-9)
    assert low - 0.01 <= fps_ratio <= high + 0.01, (fps_ratio, fp32, mixed)
    assert re.search(r'^\[fp32\] Overall fps: ' + NUMBER, out, re.M)
    assert re.search(r'^\[mixed\] Overall fps: ' + NUMBER, out, re.M)


def test_bad_counts_exit_2_in_one_line(tiny_config):
    proc = run_tool(tiny_config, '--max-iter', '3', '--warmup', '5')
    assert proc.returncode == 2
    assert proc.stderr.strip() == 'error: --max-iter (3) must exceed --warmup (5)'


def test_set_img_scale_reaches_every_resize(tiny_config):
    cfg = load_config(tiny_config)
    benchmark.set_img_scale(cfg.data, (128, 96))
    assert cfg.data.train.pipeline[2] == dict(type='Resize', img_scale=(128, 96), keep_ratio=True)
    assert cfg.data.test.pipeline[1]['img_scale'] == (128, 96)
    assert cfg.data.test.pipeline[1]['transforms'][0] == dict(type='Resize', keep_ratio=True)


def test_optimizer_hook_cfg(tiny_config):
    cfg = load_config(tiny_config)
    cfg.optimizer_config = dict(grad_clip=dict(max_norm=35, norm_type=2))
    assert benchmark.optimizer_hook_cfg(cfg, 'fp32') == dict(type='OptimizerHook',
                                                             grad_clip=dict(max_norm=35, norm_type=2))
    mixed = benchmark.optimizer_hook_cfg(cfg, 'mixed')
    assert mixed == dict(type='Fp16OptimizerHook', grad_clip=dict(max_norm=35, norm_type=2), loss_scale=512.,
                         dtype='bfloat16', distributed=False)
    cfg.fp16 = None
    assert benchmark.optimizer_hook_cfg(cfg, 'mixed')['dtype'] == 'auto'


_PEAK_RSS_PROBE = """
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location('benchmark', sys.argv[1])
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)
if not benchmark.reset_peak_rss():
    print('unsupported')
    sys.exit(0)
before = benchmark.peak_rss_mb()
block = np.ones(64 * 2 ** 20 // 8)  # 64 MB touched
grown = benchmark.peak_rss_mb()
del block
benchmark.reset_peak_rss()
print(before, grown, benchmark.peak_rss_mb())
"""


def test_peak_rss_can_be_reset():
    # a fresh process: in a long pytest process a new block can land in pages that are already resident
    out = subprocess.run([sys.executable, '-c', _PEAK_RSS_PROBE, BENCHMARK], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    if out == ['unsupported']:
        pytest.skip('/proc/self/clear_refs is not writable here')
    before, grown, after = map(float, out)
    assert grown >= before + 60
    assert after < before + 60
