"""tools/train.py with mmdet v2.28's runtime keys: workflow val-loss epochs, --auto-scale-lr, the misc
custom hooks (EmptyCacheHook, MemoryProfilerHook, CheckInvalidLossHook, SyncBuffersHook), a user hook
through custom_imports, WandbLoggerHook offline, file_client_args, and the v2.28 command-line flags."""
import glob
import json
import multiprocessing
import os
import warnings

import pytest
import torch

from helpers.runtime import load_train_tool, train
from helpers.tiny import ROOT
from mixprec.config import load_config
from mixprec.engine import NonFiniteLossError
from mixprec.registry import ConfigError

RUN_EXTRA = '''
train_pipeline[:2] = [dict(type='LoadImageFromFile', file_client_args=dict(backend='disk')),
                      dict(type='LoadAnnotations', with_bbox=True, file_client_args=dict(backend='disk'))]
custom_hooks = [dict(type='NumClassCheckHook'), dict(type='CheckInvalidLossHook', interval=1),
                dict(type='EmptyCacheHook', before_epoch=True, after_iter=True), dict(type='SyncBuffersHook'),
                dict(type='MemoryProfilerHook', interval=1)]
log_config = dict(interval=1, hooks=[dict(type='TextLoggerHook'), dict(type='JsonLoggerHook')] + wandb)
workflow = [('train', 1), ('val', 1)]
auto_scale_lr = dict(enable=False, base_batch_size=4)
lr_config = None
fp16 = None
'''


def log_records(work_dir):
    return [json.loads(line) for line in open(glob.glob(os.path.join(work_dir, '*.log.json'))[0])][1:]


@pytest.fixture(scope='module')
def fp32_run(tmp_path_factory):
    """2 epochs of 2 iterations, each followed by a val-loss epoch; empty_cache calls counted."""
    pytest.importorskip('psutil')
    pytest.importorskip('memory_profiler')
    folder = str(tmp_path_factory.mktemp('runtime'))
    try:
        import wandb  # noqa: F401
        wandb_hooks = ("wandb = [dict(type='MMDetWandbHook', init_kwargs=dict(mode='offline', project='mixprec'), "
                       "interval=1, num_eval_images=0, log_checkpoint=True, log_checkpoint_metadata=True)]")
    except ImportError:
        wandb_hooks = 'wandb = []'
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, 'empty_cache', lambda: calls.append(1))
        mp.setenv('WANDB_MODE', 'offline')
        runner, work_dir = train(folder, wandb_hooks + RUN_EXTRA, '--auto-scale-lr', '--no-validate')
    return runner, work_dir, len(calls), wandb_hooks != 'wandb = []'


@pytest.mark.slow
def test_auto_scale_lr_scales_the_optimizer_lr(fp32_run):
    runner, work_dir, _, _ = fp32_run
    base_lr = load_config(os.path.join(ROOT, 'configs/shapes/mask_rcnn_r18_fpn_bf16_shapes.py')).optimizer.lr
    expected = base_lr * (1 * 2) / 4  # lr of the shapes config * (1 GPU * samples_per_gpu 2) / base_batch_size
    assert runner.optimizer.param_groups[0]['lr'] == pytest.approx(expected)
    assert all(r['lr'] == pytest.approx(expected) for r in log_records(work_dir) if r['mode'] == 'train')


@pytest.mark.slow
def test_workflow_val_epochs_log_val_losses(fp32_run):
    runner, work_dir, _, _ = fp32_run
    records = log_records(work_dir)
    assert [r['mode'] for r in records] == ['train', 'train', 'val', 'train', 'train', 'val']
    train_keys = {k for k in records[0] if k.startswith('loss')}
    for record, epoch in zip([r for r in records if r['mode'] == 'val'], (1, 2)):
        assert record['epoch'] == epoch and record['iter'] == 1  # 2 val images, 2 a batch
        assert {k for k in record if k.startswith('loss')} == train_keys
        assert all(record[k] > 0 for k in train_keys)
    text = open(glob.glob(os.path.join(work_dir, '*.log'))[0]).read()
    assert 'Epoch(val) [1][1]\tloss_rpn_cls: ' in text and 'Epoch(val) [2][1]\tloss_rpn_cls: ' in text


@pytest.mark.slow
def test_misc_hooks_ran(fp32_run):
    runner, work_dir, empty_cache_calls, _ = fp32_run
    # before and after each of 2 train + 2 val epochs, after each of 4 train + 2 val iterations
    assert empty_cache_calls == 8 + 6
    text = open(glob.glob(os.path.join(work_dir, '*.log'))[0]).read()
    lines = [line for line in text.splitlines() if 'Memory information available_memory: ' in line]
    assert len(lines) == 4 and all('current_process_memory: ' in line for line in lines)


@pytest.mark.slow
def test_mmdet_wandb_hook_offline_run(fp32_run):
    runner, work_dir, _, with_wandb = fp32_run
    if not with_wandb:
        pytest.skip('wandb is not installed')
    runs = glob.glob(os.path.join(work_dir, 'wandb', 'offline-run-*'))
    assert len(runs) == 1
    # the offline run file (records in protobuf, keys and JSON values as text) holds train and val-loss keys
    data = open(glob.glob(os.path.join(runs[0], 'run-*.wandb'))[0], 'rb').read()
    for key in (b'train/loss', b'train/loss_cls', b'learning_rate', b'val/loss', b'val/loss_cls'):
        assert key in data, key
    assert b'artifacts' in data and b'.log.json' in data  # the log files as an artifact at the end
    assert b'epoch_1.pth' in data and b'epoch_2.pth' in data and b'current_epoch' in data  # log_checkpoint(_metadata)


def test_check_invalid_loss_hook_stops_with_one_line(tmp_path):
    """A user hook (custom_imports) makes the loss NaN at the 1st iteration; the check stops the run."""
    (tmp_path / 'nan_loss_hooks.py').write_text(
        'import torch\nfrom mixprec.engine import Hook\nfrom mixprec.registry import HOOKS\n\n\n'
        '@HOOKS.register_module(force=True)\nclass NanLossHook(Hook):\n    priority = 45\n\n'
        '    def after_train_iter(self, runner):\n'
        "        runner.outputs['loss'] = runner.outputs['loss'] * float('nan')\n")
    extra = ("custom_imports = dict(imports=['nan_loss_hooks'], allow_failed_imports=False)\n"
             "custom_hooks = [dict(type='NanLossHook'), dict(type='CheckInvalidLossHook', interval=1)]\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(tmp_path))
        with pytest.raises(NonFiniteLossError, match=r'^loss become infinite or NaN! \(loss nan at iter 1\)$'):
            train(str(tmp_path), extra, '--no-validate', epochs=1, num_train=2)


def test_custom_imports_missing_module_is_one_line(tmp_path):
    extra = "custom_imports = dict(imports=['no_such_user_module'], allow_failed_imports=False)\n"
    with pytest.raises(ConfigError, match=r"tiny\.py: cannot read the config: .*no_such_user_module"):
        train(str(tmp_path), extra)


def test_file_client_other_backend_is_refused(tmp_path):
    extra = "data['train']['pipeline'][0] = dict(type='LoadImageFromFile', file_client_args=dict(backend='petrel'))\n"
    with pytest.raises(ConfigError, match=r"data\.train: LoadImageFromFile: file_client_args=\{'backend': 'petrel'\} "
                                          r"is not supported"):
        train(str(tmp_path), extra)


@pytest.fixture
def captured(monkeypatch):
    """tools/train.py up to train_detector, which records its config instead of training."""
    tool = load_train_tool()
    seen = {}
    monkeypatch.setattr(tool, 'train_detector', lambda model, dataset, cfg, **kw: seen.update(model=model, cfg=cfg))

    def run(folder, extra='', *args):
        from helpers.tiny import write_tiny_config
        config = write_tiny_config(folder, base='configs/shapes/faster_rcnn_r18_fpn_bf16_shapes.py', epochs=1,
                                   num_train=2, num_val=2, img_size=64, extra=extra)
        threads = torch.get_num_threads()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            try:
                tool.main([config, '--work-dir', os.path.join(folder, 'work'), *args])
            finally:
                torch.set_num_threads(threads)
        return seen['cfg'], seen['model'], [str(w.message) for w in caught]
    run.tool = tool
    return run


def test_gpu_flags_and_deprecated_spellings(captured, tmp_path):
    cfg, _, _ = captured(str(tmp_path), '', '--gpu-id', '2')
    assert cfg.gpu_ids == [2]
    cfg, _, messages = captured(str(tmp_path), '', '--gpu-ids', '3', '1')
    assert cfg.gpu_ids == [3] and any('`--gpu-ids` is deprecated' in m for m in messages)
    cfg, _, messages = captured(str(tmp_path), '', '--gpus', '2')
    assert cfg.gpu_ids == [0] and any('`--gpus` is deprecated' in m for m in messages)
    cfg, _, messages = captured(str(tmp_path), '', '--options', 'optimizer.lr=0.5')
    assert cfg.optimizer.lr == 0.5 and '--options is deprecated in favor of --cfg-options' in messages
    with pytest.raises(ConfigError, match='--options and --cfg-options cannot be both given'):
        captured(str(tmp_path), '', '--options', 'optimizer.lr=0.5', '--cfg-options', 'optimizer.lr=0.1')
    cfg, _, messages = captured(str(tmp_path), "data['imgs_per_gpu'] = data.pop('samples_per_gpu') + 1\n")
    assert cfg.data.samples_per_gpu == 3 and 'imgs_per_gpu' not in cfg.data
    assert '"imgs_per_gpu" is deprecated. Please use "samples_per_gpu" instead' in messages


def test_diff_seed_adds_the_rank(captured, tmp_path, monkeypatch):
    cfg, _, _ = captured(str(tmp_path), '', '--seed', '5')
    assert cfg.seed == 5
    monkeypatch.setattr(captured.tool, 'get_dist_info', lambda: (3, 4))
    cfg, _, _ = captured(str(tmp_path), '', '--seed', '5')
    assert cfg.seed == 5
    cfg, _, _ = captured(str(tmp_path), '', '--seed', '5', '--diff-seed')
    assert cfg.seed == 5 + 3


def test_auto_scale_lr_flag_needs_base_batch_size(captured, tmp_path):
    with pytest.raises(ConfigError, match=r'--auto-scale-lr needs auto_scale_lr = dict\(enable=False, base_batch_size'):
        captured(str(tmp_path), "auto_scale_lr = dict(_delete_=True, enable=False)\n", '--auto-scale-lr')
    cfg, _, _ = captured(str(tmp_path), '', '--auto-scale-lr')
    assert cfg.auto_scale_lr.enable is True and cfg.auto_scale_lr.base_batch_size == 16


def test_mp_start_method_and_top_level_train_cfg(captured, tmp_path):
    before = multiprocessing.get_start_method(allow_none=True)
    try:
        captured(str(tmp_path), "mp_start_method = 'spawn'\n")
        assert multiprocessing.get_start_method() == 'spawn'
    finally:
        multiprocessing.set_start_method(before, force=True)
    with pytest.raises(ConfigError, match=r"mp_start_method must be one of .*got 'sideways'"):
        captured(str(tmp_path), "mp_start_method = 'sideways'\n")
    extra = "train_cfg = {{_base_.model.train_cfg}}\nmodel = dict(train_cfg=None)\n"
    _, model, messages = captured(str(tmp_path), extra, '--cfg-options', 'train_cfg.rpn.allowed_border=7')
    assert model.train_cfg['rpn']['allowed_border'] == 7
    assert 'top-level train_cfg is deprecated, please specify it in model' in messages
