"""Runner, hooks and checkpoints on a toy model: loss falls, lr schedule, exact resume, atomic saves."""
import json
import logging
import os

import numpy as np
import pytest
import torch

from helpers.toy import EpochShuffleSampler, ToyDataset, ToyModel, toy_collate, toy_loader
from mixprec.checkpoint import CheckpointError, load_file
from mixprec.engine import Hook, Runner
from mixprec.engine.hooks import NonFiniteLossError

LOG_CONFIG = dict(interval=1, hooks=[dict(type='TextLoggerHook'), dict(type='JsonLoggerHook')])


def seed_all(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)


def make_runner(work_dir, max_epochs=4, lr_config=None, seed=0, max_keep_ckpts=-1, max_iters=None,
                log_config=LOG_CONFIG, **hooks_kw):
    torch.manual_seed(seed)
    model = ToyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    runner = Runner(model, optimizer, work_dir=str(work_dir), max_epochs=None if max_iters else max_epochs,
                    max_iters=max_iters, logger=logging.getLogger('mixprec.test'), meta=dict(seed=seed))
    runner.register_training_hooks(
        lr_config=lr_config or dict(policy='step', step=[3]),
        optimizer_config=dict(grad_clip=None),
        checkpoint_config=dict(interval=1, max_keep_ckpts=max_keep_ckpts, by_epoch=max_iters is None),
        log_config=log_config, **hooks_kw)
    return runner


class Recorder(Hook):
    priority = 95

    def __init__(self):
        self.lrs, self.losses = [], []

    def after_train_iter(self, runner):
        self.lrs.append(runner.current_lr())
        self.losses.append(runner.outputs['log_vars']['loss'])


def test_loop_trains_and_logs(tmp_path):
    runner = make_runner(tmp_path, max_epochs=6)
    recorder = Recorder()
    runner.register_hook(recorder)
    seed_all(1)
    runner.run(toy_loader())
    assert runner.epoch == 6 and runner.iter == 18
    first, last = sum(recorder.losses[:3]) / 3, sum(recorder.losses[-3:]) / 3
    assert last < 0.5 * first
    lines = [json.loads(line) for line in open(tmp_path / f'{runner.timestamp}.log.json')]
    assert lines[0] == {'seed': 0}
    train = lines[1:]
    assert len(train) == 18
    assert list(train[0])[:5] == ['mode', 'epoch', 'iter', 'lr', 'memory']
    assert {'data_time', 'time', 'loss_reg', 'loss_aux', 'acc', 'loss'} <= set(train[0])
    assert train[0]['loss'] == pytest.approx(train[0]['loss_reg'] + train[0]['loss_aux'], abs=1e-4)
    assert [r['iter'] for r in train[:4]] == [1, 2, 3, 1] and train[3]['epoch'] == 2
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f'epoch_{i}.pth' for i in range(1, 7)] + ['latest.pth', f'{runner.timestamp}.log.json'])


def test_text_logger_alone_writes_the_json_log(tmp_path):
    """mmdetection's configs list only TextLoggerHook; as mmcv's, it writes log.json too (once)."""
    records = {}
    for name, hooks in (('both', LOG_CONFIG['hooks']), ('text', [dict(type='TextLoggerHook')])):
        runner = make_runner(tmp_path / name, max_epochs=2, log_config=dict(interval=1, hooks=hooks))
        seed_all(1)
        runner.run(toy_loader())
        lines = [json.loads(line) for line in open(tmp_path / name / f'{runner.timestamp}.log.json')]
        records[name] = [{k: v for k, v in r.items() if k not in ('time', 'data_time', 'memory')} for r in lines]
    assert len(records['text']) == 1 + 6
    assert records['text'] == records['both']


def test_lr_warmup_and_steps_match_hand_values(tmp_path):
    runner = make_runner(tmp_path, max_epochs=4, lr_config=dict(
        policy='step', warmup='linear', warmup_iters=4, warmup_ratio=0.1, step=[2, 3]))
    recorder = Recorder()
    runner.register_hook(recorder)
    runner.run(toy_loader())
    base = 0.05
    expected = []
    for it in range(12):
        epoch = it // 3
        regular = base * 0.1 ** sum(epoch >= s for s in (2, 3))
        warm = 1 - (1 - it / 4) * (1 - 0.1) if it < 4 else 1.0
        expected.append(regular * warm)
    assert recorder.lrs == pytest.approx(expected, rel=1e-12)
    assert recorder.lrs[0] == pytest.approx(0.005)


def _state(runner):
    return {k: v.clone() for k, v in runner.model.state_dict().items()}


def test_resume_after_epoch_is_bit_exact(tmp_path):
    full = make_runner(tmp_path / 'full', max_epochs=4)
    seed_all(7)
    full.run(toy_loader())

    first = make_runner(tmp_path / 'part', max_epochs=2)
    seed_all(7)
    first.run(toy_loader())
    resumed = make_runner(tmp_path / 'part', max_epochs=4, seed=123)
    seed_all(999)
    resumed.resume(str(tmp_path / 'part' / 'latest.pth'))
    assert (resumed.epoch, resumed.iter) == (2, 6)
    resumed.run(toy_loader())
    for key, value in _state(full).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    momentum_full = full.optimizer.state_dict()['state']
    momentum_resumed = resumed.optimizer.state_dict()['state']
    for idx in momentum_full:
        assert torch.equal(momentum_full[idx]['momentum_buffer'], momentum_resumed[idx]['momentum_buffer'])


class StopAt(Hook):
    """Sends the runner the stop request a SIGINT handler would, at a chosen iteration."""
    priority = 95

    def __init__(self, at_iter):
        self.at_iter = at_iter

    def before_train_iter(self, runner):
        if runner.iter == self.at_iter:
            os.kill(os.getpid(), __import__('signal').SIGINT)


def test_sigint_mid_epoch_saves_and_resumes_exactly(tmp_path):
    from mixprec.engine import TrainingInterrupted
    full = make_runner(tmp_path / 'full', max_epochs=3, custom_hooks_config=[dict(type='DistSamplerSeedHook')])
    seed_all(3)
    full.run(toy_loader(sampler=EpochShuffleSampler(12)))

    part = make_runner(tmp_path / 'part', max_epochs=3, custom_hooks_config=[dict(type='DistSamplerSeedHook')])
    part.register_hook(StopAt(4))
    seed_all(3)
    with pytest.raises(TrainingInterrupted) as info:
        part.run(toy_loader(sampler=EpochShuffleSampler(12)))
    assert info.value.checkpoint.endswith('latest.pth')
    meta = load_file(info.value.checkpoint)['meta']
    assert (meta['epoch'], meta['iter'], meta['inner_iter']) == (1, 5, 2)

    resumed = make_runner(tmp_path / 'part', max_epochs=3, custom_hooks_config=[dict(type='DistSamplerSeedHook')])
    resumed.resume(info.value.checkpoint)
    resumed.run(toy_loader(sampler=EpochShuffleSampler(12)))
    for key, value in _state(full).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_iteration_based_run_and_max_keep(tmp_path):
    runner = make_runner(tmp_path, max_iters=7, max_keep_ckpts=2,
                         lr_config=dict(policy='step', step=[5], by_epoch=False))
    recorder = Recorder()
    runner.register_hook(recorder)
    runner.run(toy_loader())
    assert runner.iter == 7 and len(recorder.lrs) == 7
    assert recorder.lrs[4] == pytest.approx(0.05) and recorder.lrs[5] == pytest.approx(0.005)
    ckpts = sorted(f for f in os.listdir(tmp_path) if f.endswith('.pth'))
    assert ckpts == ['iter_6.pth', 'iter_7.pth', 'latest.pth']
    assert load_file(str(tmp_path / 'latest.pth'))['meta']['iter'] == 7


def test_failed_save_leaves_previous_latest_loadable(tmp_path, monkeypatch):
    runner = make_runner(tmp_path, max_epochs=1)
    runner.run(toy_loader())
    before = load_file(str(tmp_path / 'latest.pth'))['state_dict']

    real_save = torch.save

    def torn_save(obj, f, *args, **kwargs):
        f.write(b'PK\x03\x04 partial bytes')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(torch, 'save', torn_save)
    with pytest.raises(CheckpointError, match='No space left on device.*previous checkpoint'):
        runner.save_checkpoint(str(tmp_path), 'latest.pth', update_latest=False)
    monkeypatch.setattr(torch, 'save', real_save)
    after = load_file(str(tmp_path / 'latest.pth'))['state_dict']
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]


def test_nonfinite_loss_stops_naming_the_terms(tmp_path):
    runner = make_runner(tmp_path, max_epochs=3)

    class PoisonLoss(Hook):
        priority = 1

        def before_train_iter(self, runner):
            if runner.iter >= 2:
                with torch.no_grad():
                    runner.model.fc.bias.fill_(float('nan'))

    runner.register_hook(PoisonLoss())
    with pytest.raises(NonFiniteLossError, match='loss_reg.*loss_aux|loss_aux.*loss_reg'):
        runner.run(toy_loader())
    assert runner.iter == 2 + 5 - 1


class ScoredToyDataset(ToyDataset):
    """Evaluation returns a scripted score per call, so the best epoch is known in advance."""

    def __init__(self, scores):
        super().__init__(8)
        self.scores = list(scores)
        self.seen = []

    def evaluate(self, results, logger=None, metric='score'):
        self.seen.append(len(results))
        return {'score': self.scores[len(self.seen) - 1]}


def test_eval_hook_logs_val_lines_and_keeps_best(tmp_path):
    from mixprec.engine import EvalHook
    dataset = ScoredToyDataset([0.2, 0.7, 0.5])
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=toy_collate)
    runner = make_runner(tmp_path, max_epochs=3)
    runner.register_hook(EvalHook(loader, interval=1, save_best='score'), priority='LOW')
    runner.run(toy_loader())
    assert dataset.seen == [8, 8, 8]
    records = [json.loads(line) for line in open(tmp_path / f'{runner.timestamp}.log.json')]
    val = [r for r in records if r.get('mode') == 'val']
    assert [(r['epoch'], r['iter'], r['score']) for r in val] == [(1, 3, 0.2), (2, 3, 0.7), (3, 3, 0.5)]
    best = [f for f in os.listdir(tmp_path) if f.startswith('best_')]
    assert best == ['best_score_epoch_2.pth']
    assert load_file(str(tmp_path / best[0]))['meta']['epoch'] == 2
    state = [h for h in runner.hooks if isinstance(h, EvalHook)][0].state_dict()
    assert state['best_score'] == 0.7
