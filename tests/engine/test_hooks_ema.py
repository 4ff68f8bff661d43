"""ExpMomentumEMAHook / LinearMomentumEMAHook through tools/train.py: the averages in the saved checkpoints
equal an EMA computed by hand from the run's fp32 weights, in fp32 and under the fp16 hook (bf16,
master and autocast modes); evaluation swaps them in and the trained weights come back exactly; a run
resumed with the hook's resume_from continues the averages. The bf16 master run also writes a
TensorboardLoggerHook event file, read back with tensorboard's own reader."""
import glob
import json
import math
import os

import pytest
import torch

from helpers.runtime import KEYS, hand_ema, recorder_cfg, train, user_module, write_recorder
from mixprec.engine.hooks.ema import ema_name

pytestmark = pytest.mark.slow

MOMENTUM = 2e-4


def linear(it, warm_up=100):
    return min(MOMENTUM, (1 + it) / (warm_up + it))


def exp(it, total_iter=3):
    return (1 - MOMENTUM) * math.exp(-(1 + it) / total_iter) + MOMENTUM


HOOKS = {'linear': ("dict(type='LinearMomentumEMAHook', momentum=2e-4)", linear),
         'exp': ("dict(type='ExpMomentumEMAHook', momentum=2e-4, total_iter=3)", exp)}


def ema_extra(module: str, fp16: str, hook: str, more: str = '') -> str:
    return (recorder_cfg(module) + f"fp16 = {fp16}\n"
            f"custom_hooks = [dict(type='NumClassCheckHook'), {HOOKS[hook][0]}, recorder]\n" + more)


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def check_checkpoint(work_dir, records, momentum_at, epoch):
    """epoch_N.pth: the model keys hold the EMA (fp32, as computed by hand), ema_* the trained weights."""
    state = load(os.path.join(work_dir, f'epoch_{epoch}.pth'))['state_dict']
    iters = 2 * epoch
    for key in KEYS:
        expected = hand_ema(records, key, momentum_at, iters)
        assert state[key].dtype == torch.float32 and state[ema_name(key)].dtype == torch.float32, key
        torch.testing.assert_close(state[key].double(), expected, rtol=1e-6, atol=1e-9, msg=key)
        assert torch.equal(state[ema_name(key)], records['iters'][iters - 1][key]), key
    moved = (state[KEYS[0]].double() - records['init'][KEYS[0]].double()).abs().max()
    assert moved > 1e-6, 'the EMA of a trained weight should move away from its initial value'


@pytest.fixture(scope='module')
def master_run(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp('ema_master'))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(folder)
        module = write_recorder(folder, 'ema_master_recorder')
        tb = "log_config = dict(interval=1, hooks=[dict(type='TextLoggerHook'), dict(type='JsonLoggerHook'), " \
             "dict(type='TensorboardLoggerHook')])\nevaluation = dict(interval=2, metric='bbox')\n"
        extra = ema_extra(module, "dict(dtype='bfloat16', mode='master', loss_scale=512.)", 'linear', tb)
        runner, work_dir = train(folder, extra)
        records = user_module(module).RECORDS
        return folder, work_dir, {k: v for k, v in records.items()}, runner


def test_ema_under_fp16_master_weights_equals_hand_ema(master_run):
    folder, work_dir, records, runner = master_run
    half = records['model_iters'][0][KEYS[0]]
    assert half.dtype == torch.bfloat16, 'the model should be half in master mode'
    for epoch in (1, 2):
        check_checkpoint(work_dir, records, linear, epoch)


def test_eval_swap_restores_master_and_half_weights_exactly(master_run):
    """Epoch 2 starts from exactly the weights epoch 1 ended with (before the EMA was swapped in for eval)."""
    folder, work_dir, records, runner = master_run
    fp32_start, model_start = records['epoch_start'][1]
    for key in KEYS:
        assert torch.equal(fp32_start[key], records['iters'][1][key]), key
        assert torch.equal(model_start[key], records['model_iters'][1][key]), key
        assert model_start[key].dtype == records['model_iters'][1][key].dtype


def test_ema_resume_from_continues_the_averages(master_run, tmp_path):
    """The hook's resume_from (mmdet's argument) resumes the run: epoch 2 equals the uninterrupted one."""
    folder, work_dir, records, _ = master_run
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(tmp_path))
        module = write_recorder(str(tmp_path), 'ema_resume_recorder')
        hook = HOOKS['linear'][0].replace(')', f", resume_from={os.path.join(work_dir, 'epoch_1.pth')!r})")
        extra = recorder_cfg(module) + ("fp16 = dict(dtype='bfloat16', mode='master', loss_scale=512.)\n"
                                        f"custom_hooks = [{hook}, recorder]\n")
        _, resumed = train(str(tmp_path), extra, '--no-validate')
    expected, got = load(os.path.join(work_dir, 'epoch_2.pth')), load(os.path.join(resumed, 'epoch_2.pth'))
    assert got['meta']['epoch'] == 2 and not os.path.exists(os.path.join(resumed, 'epoch_1.pth'))
    for key in KEYS:
        for name in (key, ema_name(key)):
            assert torch.equal(got['state_dict'][name], expected['state_dict'][name]), name


@pytest.mark.parametrize('fp16', [None, "dict(dtype='bfloat16', mode='autocast')"], ids=['fp32', 'autocast'])
def test_ema_fp32_and_autocast_equal_hand_ema(tmp_path, fp16):
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(tmp_path))
        module = write_recorder(str(tmp_path), f'ema_{"fp32" if fp16 is None else "autocast"}_recorder')
        _, work_dir = train(str(tmp_path), ema_extra(module, fp16, 'exp'), '--no-validate', epochs=1)
        records = user_module(module).RECORDS
    assert records['model_iters'][0][KEYS[0]].dtype == torch.float32
    check_checkpoint(work_dir, records, exp, 1)


def test_tensorboard_event_file_holds_the_logged_scalars(master_run):
    event_accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
    folder, work_dir, records, runner = master_run
    events = glob.glob(os.path.join(work_dir, 'tf_logs', 'events.out.tfevents.*'))
    assert len(events) == 1
    acc = event_accumulator.EventAccumulator(events[0])
    acc.Reload()
    scalars = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()['scalars']}
    log = [json.loads(line) for line in open(glob.glob(os.path.join(work_dir, '*.log.json'))[0])][1:]
    train = [r for r in log if r['mode'] == 'train']
    assert len(train) == 4
    for r in train:
        step = (r['epoch'] - 1) * 2 + r['iter']
        for key in ('loss', 'loss_cls', 'loss_rpn_bbox', 'loss_scale', 'skipped_steps'):
            assert scalars[f'train/{key}'][step] == pytest.approx(r[key], abs=1e-4), (key, step)
        assert scalars['learning_rate'][step] == pytest.approx(r['lr'], rel=1e-5)
    assert set(scalars['train/loss_scale'].values()) == {512.0} and set(scalars['train/skipped_steps'].values()) == {0}
    val = [r for r in log if r['mode'] == 'val']
    assert len(val) == 1 and scalars['val/bbox_mAP'] == {4: pytest.approx(val[0]['bbox_mAP'], abs=1e-4)}
    assert 'val/bbox_mAP_copypaste/text_summary' in acc.Tags()['tensors']
