"""tools/misc/print_config.py and tools/misc/browse_dataset.py on a tiny generated shapes dataset."""
import os
import subprocess
import sys

import mmcv
import numpy as np
import pytest

from helpers.tiny import ROOT
from helpers.tool_runs import load_tool
from mixprec.config import load_config
from mixprec.data import build_dataset, make_shapes_dataset

PRINT_CONFIG = os.path.join(ROOT, 'tools/misc/print_config.py')
BROWSE = os.path.join(ROOT, 'tools/misc/browse_dataset.py')
SHAPES_BASE = os.path.join(ROOT, 'configs/_base_/datasets/shapes_instance.py')
SCHEDULE_BASE = os.path.join(ROOT, 'configs/_base_/schedules/schedule_1x.py')


browse_dataset = load_tool('tools/misc/browse_dataset.py')


@pytest.fixture(scope='module')
def shapes_config(tmp_path_factory):
    """A config on 4 train images of 96 px, generated here."""
    tmp = tmp_path_factory.mktemp('shapes')
    root = str(tmp / 'shapes') + '/'
    make_shapes_dataset(root, num_train=4, num_val=2, img_size=96, seed=0)
    path = tmp / 'shapes_cfg.py'
    path.write_text(f"_base_ = [{SHAPES_BASE!r}, {SCHEDULE_BASE!r}]\n"
                    f"data_root = {root!r}\n"
                    "data = dict(train=dict(ann_file=data_root + 'annotations/instances_train.json',\n"
                    "                       img_prefix=data_root + 'train/', auto_create=None))\n")
    return str(path)


def run_tool(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)


def test_print_config_shows_merged_values(shapes_config):
    proc = run_tool(PRINT_CONFIG, shapes_config, '--cfg-options', 'optimizer.lr=0.5', 'data.samples_per_gpu=3')
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "type='ShapesDataset'" in out                      # from the dataset base
    assert 'max_epochs=12' in out                             # from the schedule base
    assert 'lr=0.5' in out and 'lr=0.02' not in out           # --cfg-options applied
    assert 'samples_per_gpu=3' in out
    assert os.path.dirname(shapes_config) in out              # data_root of the child config


def test_print_config_missing_file_exit_2(tmp_path):
    proc = run_tool(PRINT_CONFIG, str(tmp_path / 'nope.py'))
    assert proc.returncode == 2
    assert proc.stderr.strip().count('\n') == 0 and 'does not exist' in proc.stderr


def test_browse_dataset_cli_writes_n_images(shapes_config, tmp_path):
    out = tmp_path / 'browse'
    proc = run_tool(BROWSE, shapes_config, '--output-dir', str(out), '--not-show', '--max-images', '3')
    assert proc.returncode == 0, proc.stderr
    files = sorted(os.listdir(out))
    assert len(files) == 3 and all(f.endswith('.png') for f in files)
    img = mmcv.imread(str(out / files[0]))
    assert img.shape[0] % 32 == 0 and img.shape[1] % 32 == 0  # padded by the pipeline (Pad kept)


def test_browse_draws_boxes_and_masks_on_the_pipeline_image(shapes_config, tmp_path):
    skip = ['DefaultFormatBundle', 'Normalize', 'Collect', 'RandomFlip']  # deterministic images
    cfg = load_config(shapes_config)
    written = browse_dataset.browse(cfg, str(tmp_path / 'out'), skip, max_images=2)
    assert len(written) == 2
    plain = build_dataset(browse_dataset.train_data_cfg(load_config(shapes_config), skip))
    for index, path in enumerate(written):
        sample = plain[index]
        raw, drawn = sample['img'].astype(np.uint8), mmcv.imread(path)
        assert drawn.shape == raw.shape
        assert os.path.basename(path) == sample['ori_filename']
        h, w = raw.shape[:2]
        for x1, y1, x2, y2 in sample['gt_bboxes'].round().astype(int):
            assert (drawn[y1, x1] != raw[y1, x1]).any()          # box corners
            assert (drawn[min(y2, h - 1), min(x2, w - 1)] != raw[min(y2, h - 1), min(x2, w - 1)]).any()
        for mask in sample['gt_masks'].astype(bool):
            assert (drawn[mask] != raw[mask]).any(axis=1).mean() > 0.9  # mask tinted
        far = np.ones(raw.shape[:2], dtype=bool)
        for x1, y1, x2, y2 in sample['gt_bboxes'].round().astype(int):
            far[max(y1 - 12, 0):y2 + 3, max(x1 - 3, 0):x2 + 60] = False  # box, its label text
        assert far.any() and np.array_equal(drawn[far], raw[far])  # untouched elsewhere


def test_skip_pipeline_steps_through_wrappers():
    cfg = dict(type='RepeatDataset', times=2,
               dataset=dict(type='ShapesDataset', pipeline=[dict(type='LoadImageFromFile'), dict(type='Normalize'),
                                                            dict(type='Collect', keys=['img'])]))
    browse_dataset.skip_pipeline_steps(cfg, ['Normalize', 'Collect'])
    assert cfg['dataset']['pipeline'] == [dict(type='LoadImageFromFile')]


def test_browse_without_display_asks_for_not_show(shapes_config, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != 'DISPLAY'}
    proc = subprocess.run([sys.executable, BROWSE, shapes_config, '--output-dir', str(tmp_path / 'o')],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and '--not-show' in proc.stderr
