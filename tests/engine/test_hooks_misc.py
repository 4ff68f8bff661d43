"""NumClassCheckHook through tools/train.py, SyncBuffersHook over two gloo processes, and the one-line
errors of the hooks whose optional packages are missing."""
import glob
import os
import sys
import types

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from helpers.runtime import train
from mixprec.engine import NumClassCheckHook, SyncBuffersHook
from mixprec.registry import HOOKS, ConfigError
from helpers.dist import free_port


def test_num_class_check_stops_train_py(tmp_path):
    with pytest.raises(ConfigError, match=r'^The `num_classes` \(2\) in Shared2FCBBoxHead \(roi_head\.bbox_head\) of '
                                          r'FasterRCNN does not match the length of `CLASSES` \(3\) in ShapesDataset$'):
        train(str(tmp_path), '', '--cfg-options', 'model.roi_head.bbox_head.num_classes=2', epochs=1, num_train=2)
    assert not os.path.exists(os.path.join(str(tmp_path), 'work', 'epoch_1.pth'))


class Head(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes


class RPNHead(Head):
    """Named as mmdet's class-agnostic head: exempt from the check."""


def fake_runner(model, classes):
    dataset = types.SimpleNamespace(CLASSES=classes)
    logged = []
    logger = types.SimpleNamespace(warning=lambda *a: logged.append(a[0] % a[1:]))
    return types.SimpleNamespace(model=model, data_loader=types.SimpleNamespace(dataset=dataset),
                                 val_data_loader=None, logger=logger), logged


def test_num_class_check_rules():
    model = nn.ModuleDict(dict(rpn=RPNHead(1), head=Head(3)))
    runner, logged = fake_runner(model, ('a', 'b', 'c'))
    NumClassCheckHook().before_train_epoch(runner)
    NumClassCheckHook().before_val_epoch(runner)
    runner, logged = fake_runner(model, None)
    NumClassCheckHook().before_train_epoch(runner)
    assert logged and 'Please set `CLASSES` in the SimpleNamespace' in logged[0]
    runner, _ = fake_runner(model, 'abc')
    with pytest.raises(ConfigError, match=r"should be a tuple of str; add a comma .*CLASSES = \('abc',\)"):
        NumClassCheckHook().before_train_epoch(runner)
    runner, _ = fake_runner(nn.ModuleDict(dict(rpn=RPNHead(1), head=Head(2))), ('a', 'b', 'c'))
    with pytest.raises(ConfigError, match=r'The `num_classes` \(2\) in Head \(head\)'):
        NumClassCheckHook().before_val_epoch(runner)


def _sync_worker(rank, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    bn = nn.BatchNorm1d(3)
    bn.running_mean.fill_(float(rank) * 2 + 1)
    bn.num_batches_tracked.fill_(4)
    SyncBuffersHook().after_train_epoch(types.SimpleNamespace(model=bn))
    torch.save({'mean': bn.running_mean, 'n': bn.num_batches_tracked}, os.path.join(out, f'{rank}.pt'))
    dist.destroy_process_group()


@pytest.mark.slow
def test_sync_buffers_averages_over_ranks(tmp_path):
    mp.spawn(_sync_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        state = torch.load(tmp_path / f'{rank}.pt', weights_only=True)
        assert torch.equal(state['mean'], torch.full((3,), 2.0))  # (1 + 3) / 2
        assert int(state['n']) == 4


@pytest.mark.parametrize('hook, module, message', [
    (dict(type='TensorboardLoggerHook'), 'torch.utils.tensorboard',
     'TensorboardLoggerHook needs the tensorboard package: pip install tensorboard'),
    (dict(type='WandbLoggerHook'), 'wandb', 'WandbLoggerHook needs the wandb package: pip install wandb'),
    (dict(type='MMDetWandbHook', num_eval_images=0), 'wandb', 'MMDetWandbHook needs the wandb package'),
    (dict(type='MemoryProfilerHook'), 'psutil', 'MemoryProfilerHook needs psutil and memory_profiler'),
    (dict(type='MemoryProfilerHook'), 'memory_profiler', 'MemoryProfilerHook needs psutil and memory_profiler'),
])
def test_missing_optional_package_is_one_line(monkeypatch, hook, module, message):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ConfigError) as info:
        HOOKS.build(hook)
    assert str(info.value).startswith(message) and '\n' not in str(info.value)


def test_missing_logger_package_through_train_py(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'wandb', None)
    extra = "log_config = dict(hooks=[dict(type='TextLoggerHook'), dict(type='WandbLoggerHook')])\n"
    with pytest.raises(ConfigError, match=r'tiny\.py: .*WandbLoggerHook needs the wandb package: pip install wandb'):
        train(str(tmp_path), extra, epochs=1, num_train=2)


def test_mmdet_wandb_prediction_rows_follow_the_results():
    """The rows of the prediction table: boxes above bbox_score_thr, 1-based class ids, masks as a class map."""
    from pycocotools import mask as mask_utils
    from mixprec.engine.hooks.wandb_logger import flat_predictions, wandb_boxes, wandb_masks
    masks = np.zeros((3, 6, 8), dtype=np.uint8)
    masks[0, :2, :2] = masks[1, 3:, 4:] = masks[2, 1, 1] = 1
    rles = [mask_utils.encode(np.asfortranarray(m)) for m in masks]
    result = ([np.array([[0, 0, 2, 2, 0.9]], np.float32),
               np.array([[4, 3, 8, 6, 0.5], [1, 1, 2, 2, 0.2]], np.float32)], [[rles[0]], [rles[1], rles[2]]])
    bboxes, labels, kept = flat_predictions(result, score_thr=0.3)
    assert bboxes.tolist() == [[0, 0, 2, 2, pytest.approx(0.9)], [4, 3, 8, 6, 0.5]] and labels.tolist() == [0, 1]
    assert np.array_equal(kept, masks[:2])
    boxes = wandb_boxes(bboxes, labels, ('circle', 'square'), 'predictions')['predictions']
    assert boxes['class_labels'] == {1: 'circle', 2: 'square'}
    assert boxes['box_data'][1] == dict(position=dict(minX=4.0, minY=3.0, maxX=8.0, maxY=6.0), class_id=2,
                                        domain='pixel', scores=dict(confidence=0.5), box_caption='square 0.50')
    class_map = wandb_masks(kept, labels, ('circle', 'square'), 'predictions')['predictions']['mask_data']
    assert class_map.tolist() == (masks[0] * 1 + masks[1] * 2).tolist()
    assert flat_predictions(result, score_thr=0.95)[0].shape == (0, 5)


def test_mmdet_wandb_hook_logs_val_and_prediction_tables_offline(tmp_path, monkeypatch):
    """mmdet's own wandb config (num_eval_images=100) through tools/train.py with validation, offline."""
    pytest.importorskip('wandb')
    monkeypatch.setenv('WANDB_MODE', 'offline')
    extra = ("log_config = dict(interval=1, hooks=[dict(type='TextLoggerHook'), dict(type='MMDetWandbHook', "
             "init_kwargs=dict(project='mixprec'), interval=1, log_checkpoint=True, log_checkpoint_metadata=True, "
             "num_eval_images=100)])\n")
    _, work_dir = train(str(tmp_path), extra, epochs=1, num_train=2)
    data = open(glob.glob(os.path.join(work_dir, 'wandb', 'offline-run-*', 'run-*.wandb'))[0], 'rb').read()
    for key in (b'val_data', b'eval_data', b'_pred', b'epoch_1'):
        assert key in data, key


