"""tools/analysis_tools/analyze_logs.py on mmdetection v2's log.json and on logs our JsonLoggerHook writes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers.tiny import ROOT
from helpers.tool_runs import load_tool
from helpers.toy import ToyModel, toy_loader
from mixprec.engine import Runner
from mixprec.engine.hooks import IterTimerHook, JsonLoggerHook
from mixprec.fp16 import Fp16OptimizerHook
from mixprec.registry import ConfigError

TOOL = os.path.join(ROOT, 'tools/analysis_tools/analyze_logs.py')
MMDET_LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'mmdet_v2_log.json')


al = load_tool('tools/analysis_tools/analyze_logs.py')


def write_lines(path, records):
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))
    return str(path)


def train(epoch, it, **values):
    return dict(mode='train', epoch=epoch, iter=it, lr=0.01, memory=100, data_time=0.01, time=0.2, **values)


# ---------------------------------------------------------------- mmdetection v2's format
def test_mmdet_log_parsed_into_train_and_val_records():
    log = al.load_json_log(MMDET_LOG)
    assert log.meta['seed'] == 0 and log.meta['exp_name'] == 'faster_rcnn_r50_fpn_fp16_1x_coco.py'
    assert len(log.train) == 9 and len(log.val) == 3
    assert not al.is_iter_based(log.train)
    assert al.iters_per_epoch(log.train) == 150


def test_mmdet_train_loss_against_iterations():
    s = al.extract_series(al.load_json_log(MMDET_LOG), 'loss')
    assert s.x_label == 'iter'
    np.testing.assert_array_equal(s.xs, [50, 100, 150, 200, 250, 300, 350, 400, 450])
    np.testing.assert_allclose(s.ys, [2.00037, 0.95306, 1.02408, 0.89961, 0.86075, 0.83161,
                                      0.79771, 0.77443, 0.75639])
    assert len(s.marked) == 0


def test_mmdet_val_metric_against_epochs():
    s = al.extract_series(al.load_json_log(MMDET_LOG), 'bbox_mAP')
    assert s.x_label == 'epoch'
    np.testing.assert_array_equal(s.xs, [1, 2, 3])
    np.testing.assert_allclose(s.ys, [0.2, 0.3, 0.35])


def test_mmdet_log_without_meta_line(tmp_path):
    lines = open(MMDET_LOG).read().splitlines()[1:]
    path = tmp_path / 'no_meta.log.json'
    path.write_text('\n'.join(lines) + '\n')
    log = al.load_json_log(str(path))
    assert log.meta is None
    np.testing.assert_array_equal(al.extract_series(log, 'acc').xs[-3:], [350, 400, 450])


def test_mmdet_log_has_no_loss_scale():
    with pytest.raises(ConfigError, match="no key 'loss_scale'.*loss_rpn_cls"):
        al.extract_series(al.load_json_log(MMDET_LOG), 'loss_scale')


def test_cal_train_time_against_hand_computation():
    log = al.load_json_log(MMDET_LOG)
    # times per epoch: [0.9, 0.5, 0.6], [0.8, 0.4, 0.5], [0.7, 0.45, 0.55]; first of each dropped
    result = al.cal_train_time(log)
    assert result.epochs == [1, 2, 3]
    np.testing.assert_allclose(result.epoch_means, [0.55, 0.45, 0.5])
    assert result.slowest == (1, pytest.approx(0.55))
    assert result.fastest == (2, pytest.approx(0.45))
    assert result.std_over_epochs == pytest.approx(np.sqrt((0.05 ** 2 + 0.05 ** 2 + 0) / 3))
    assert result.mean_iter_time == pytest.approx(3.0 / 6)


def test_cal_train_time_include_outliers():
    result = al.cal_train_time(al.load_json_log(MMDET_LOG), include_outliers=True)
    np.testing.assert_allclose(result.epoch_means, [2.0 / 3, 1.7 / 3, 1.7 / 3])
    assert result.slowest[0] == 1
    assert result.mean_iter_time == pytest.approx(5.4 / 9)


def test_cal_train_time_cli_prints_report():
    proc = subprocess.run([sys.executable, TOOL, 'cal_train_time', MMDET_LOG], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'slowest epoch 1, average time is 0.5500' in proc.stdout
    assert 'fastest epoch 2, average time is 0.4500' in proc.stdout
    assert 'time std over epochs is 0.0408' in proc.stdout
    assert 'average iter time: 0.5000 s/iter' in proc.stdout


def test_plot_curve_cli_writes_png(tmp_path):
    out = tmp_path / 'plot.png'
    proc = subprocess.run([sys.executable, TOOL, 'plot_curve', MMDET_LOG, '--keys', 'loss', 'bbox_mAP',
                           '--title', 'fp16', '--out', str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


# ---------------------------------------------------------------- our format
def our_log(tmp_path):
    """Two epochs of 4 iterations logged every 2, with two skipped steps and a scale drop and regrowth."""
    records = [
        dict(env_info='x', config='fp16 = dict(loss_scale=\'dynamic\')', seed=1, exp_name='c.py'),
        train(1, 2, loss=1.0, loss_scale=65536.0, skipped_steps=0),
        train(1, 4, loss=0.9, loss_scale=32768.0, skipped_steps=1),
        dict(mode='val', epoch=1, iter=4, lr=0.01, bbox_mAP=0.1),
        train(2, 2, loss=0.8, loss_scale=32768.0, skipped_steps=1),
        train(2, 4, loss=0.7, loss_scale=65536.0, skipped_steps=2),
        dict(mode='val', epoch=2, iter=4, lr=0.01, bbox_mAP=0.25),
    ]
    return write_lines(tmp_path / '20260101_000000.log.json', records)


def test_loss_scale_marks_skipped_steps_and_drops(tmp_path):
    s = al.extract_series(al.load_json_log(our_log(tmp_path)), 'loss_scale')
    np.testing.assert_array_equal(s.xs, [2, 4, 6, 8])
    np.testing.assert_array_equal(s.ys, [65536, 32768, 32768, 65536])
    np.testing.assert_array_equal(s.marked, [1, 3])
    np.testing.assert_array_equal(s.xs[s.marked], [4, 8])


def test_scale_drop_without_skipped_steps_key_is_marked(tmp_path):
    records = [train(1, 1, loss_scale=512.0), train(1, 2, loss_scale=256.0), train(1, 3, loss_scale=256.0)]
    path = write_lines(tmp_path / 'a.log.json', records)
    np.testing.assert_array_equal(al.extract_series(al.load_json_log(path), 'loss_scale').marked, [1])


def test_iteration_based_log_uses_global_iter(tmp_path):
    path = write_lines(tmp_path / 'it.log.json', [train(1, 5, loss=1.0), train(1, 10, loss=0.9),
                                                  train(2, 15, loss=0.8), train(3, 20, loss=0.7)])
    log = al.load_json_log(path)
    assert al.is_iter_based(log.train)
    np.testing.assert_array_equal(al.extract_series(log, 'loss').xs, [5, 10, 15, 20])


def test_two_logs_plot_with_legend(tmp_path):
    ours = our_log(tmp_path)
    out = al.plot_curve([al.load_json_log(ours), al.load_json_log(MMDET_LOG)], ['loss', 'bbox_mAP'],
                        str(tmp_path / 'two.png'), legend=['a_loss', 'a_map', 'b_loss', 'b_map'])
    assert os.path.getsize(out) > 0
    with pytest.raises(ConfigError, match='--legend needs 4 names'):
        al.plot_curve([al.load_json_log(ours), al.load_json_log(MMDET_LOG)], ['loss', 'bbox_mAP'],
                      str(tmp_path / 'x.png'), legend=['a'])


def test_log_written_by_our_runner(tmp_path):
    """A real run: toy model, bf16 Fp16OptimizerHook (autocast), JsonLoggerHook every iteration, 2 epochs x 3 iters."""
    torch.manual_seed(0)
    model = ToyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    runner = Runner(model, optimizer, work_dir=str(tmp_path), max_epochs=2, timestamp='run',
                    meta=dict(seed=0, exp_name='toy.py', config='x = 1'))
    runner.register_hook(Fp16OptimizerHook(dtype='bfloat16', mode='autocast', loss_scale=8.0))
    runner.register_hook(IterTimerHook())
    runner.register_hook(JsonLoggerHook(interval=1))
    runner.run(toy_loader(12, 4))
    path = str(tmp_path / 'run.log.json')
    raw = [json.loads(line) for line in open(path)]
    log = al.load_json_log(path)
    assert log.meta == dict(seed=0, exp_name='toy.py', config='x = 1')
    assert [(r['epoch'], r['iter']) for r in log.train] == [(e, i) for e in (1, 2) for i in (1, 2, 3)]
    loss = al.extract_series(log, 'loss')
    np.testing.assert_array_equal(loss.xs, [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(loss.ys, [r['loss'] for r in raw[1:]])
    scale = al.extract_series(log, 'loss_scale')
    np.testing.assert_array_equal(scale.ys, [8.0] * 6)
    assert len(scale.marked) == 0
    result = al.cal_train_time(log)
    times = [r['time'] for r in raw[1:]]
    np.testing.assert_allclose(result.epoch_means, [np.mean(times[1:3]), np.mean(times[4:6])])
    assert result.mean_iter_time == pytest.approx(np.mean(times[1:3] + times[4:6]))
    out = al.plot_curve([log], ['loss', 'loss_scale'], str(tmp_path / 'run.png'))
    assert open(out, 'rb').read(4) == b'\x89PNG'


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize('content, message', [
    ('{"mode": "train", "epoch": 1, "iter": 1, "loss": 1.0}\nnot json\n', 'bad.json:2: not valid JSON'),
    ('{"env_info": "x"}\n', 'no train or val records'),
    ('{"mode": "test", "epoch": 1, "iter": 1}\n', "unknown mode 'test'"),
])
def test_bad_logs_one_line_exit_2(tmp_path, content, message):
    path = tmp_path / 'bad.json'
    path.write_text(content)
    proc = subprocess.run([sys.executable, TOOL, 'plot_curve', str(path), '--keys', 'loss',
                           '--out', str(tmp_path / 'p.png')], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count('\n') == 0 and message in proc.stderr, proc.stderr


def test_unknown_style(tmp_path):
    with pytest.raises(ConfigError, match="--style 'nope' is not a matplotlib style"):
        al.plot_curve([al.load_json_log(MMDET_LOG)], ['loss'], str(tmp_path / 'p.png'), style='nope')


def test_missing_key_and_file_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, TOOL, 'plot_curve', MMDET_LOG, '--keys', 'nope',
                           '--out', str(tmp_path / 'p.png')], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no key 'nope'" in proc.stderr
    proc = subprocess.run([sys.executable, TOOL, 'cal_train_time', str(tmp_path / 'missing.json')],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith('error: ') and 'missing.json' in proc.stderr
