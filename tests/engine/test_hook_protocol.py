"""The hook protocol: every stage the runner calls is declared on ``HookBase``, and each declared stage is
called; a hook that does not derive from it gets the stages it has; the accumulation window is one rule."""
import logging

import pytest
import torch

from helpers.toy import ToyModel, toy_loader
from mixprec.engine import Hook, Runner
from mixprec.fp16.accumulation import window
from mixprec.fp16.hook_base import HookBase

DECLARED = {name for name, value in vars(HookBase).items() if callable(value) and not name.startswith('_')}
GENERIC = {'before_epoch', 'after_epoch', 'before_iter', 'after_iter'}  # mmcv's: reached through the others


class Probe:
    """Not a hook class: records every attribute the runner asks it for (each a no-op)."""

    priority = default_priority = 50  # registration reads these

    def __init__(self) -> None:
        self.asked = set()

    def __getattr__(self, name: str):
        if name.startswith('__'):
            raise AttributeError(name)
        self.asked.add(name)
        return lambda *args: None


class Evaluator(Hook):
    """Hands metrics to the hooks after each epoch, as EvalHook does."""

    def after_train_epoch(self, runner) -> None:
        runner.log_val({'bbox_mAP': 0.5})


def make_runner(work_dir) -> Runner:
    torch.manual_seed(0)
    model = ToyModel()
    runner = Runner(model, torch.optim.SGD(model.parameters(), lr=0.05), work_dir=str(work_dir), max_epochs=2,
                    logger=logging.getLogger('mixprec.test'))
    runner.register_training_hooks(dict(policy='fixed'), dict(), dict(interval=1), None)
    return runner


def test_the_runner_calls_exactly_the_declared_stages(tmp_path):
    runner, probe = make_runner(tmp_path), Probe()
    runner.register_hook(probe)
    runner.register_hook(Evaluator())
    runner.run(toy_loader(), [('train', 1), ('val', 1)], val_data_loader=toy_loader())
    resumed, resumed_probe = make_runner(tmp_path), Probe()
    resumed.register_hook(resumed_probe)
    resumed.resume(str(tmp_path / 'latest.pth'))
    asked = probe.asked | resumed_probe.asked
    assert asked <= DECLARED, f'the runner calls undeclared stages: {sorted(asked - DECLARED)}'
    # load_state_dict is asked for only where a state was saved, which a probe's no-op state_dict is not
    never = DECLARED - GENERIC - {'load_state_dict'} - asked
    assert not never, f'declared, never called: {sorted(never)}'
    with pytest.raises(ValueError, match="'befor_run' is not a hook stage"):
        runner.call_hook('befor_run')


def test_mmcv_s_generic_stages_are_reached_through_the_train_and_val_stages(tmp_path):
    class Generic(Hook):  # written for mmcv 1.x: overrides only the generic stages
        def __init__(self) -> None:
            self.calls = []

        def before_epoch(self, runner) -> None:
            self.calls.append(('before_epoch', runner.mode))

        def after_iter(self, runner) -> None:
            self.calls.append(('after_iter', runner.mode))

    runner, hook = make_runner(tmp_path), Generic()
    runner.register_hook(hook)
    runner.run(toy_loader(), [('train', 1), ('val', 1)], val_data_loader=toy_loader())
    epoch = [('before_epoch', 'train')] + [('after_iter', 'train')] * 3
    epoch += [('before_epoch', 'val')] + [('after_iter', 'val')] * 3
    assert hook.calls == epoch * 2


def test_a_hook_that_does_not_derive_from_hook_gets_the_stages_it_has(tmp_path):
    class Counter:  # e.g. a hook written for another runner: only the stages it needs, no priority
        def __init__(self) -> None:
            self.iters = 0

        def after_train_iter(self, runner) -> None:
            self.iters += 1

    runner, counter = make_runner(tmp_path), Counter()
    runner.register_hook(counter)
    runner.run(toy_loader())
    assert counter.iters == runner.iter == 6 and counter.priority == 50


@pytest.mark.parametrize('cumulative_iters, max_iters, expected', [
    (3, 7, [(3, True, False), (3, False, False), (3, False, True), (3, True, False), (3, False, False),
            (3, False, True), (1, True, True)]),
    (3, None, [(3, True, False), (3, False, False), (3, False, True), (3, True, False)]),
    (1, 3, [(1, True, True)] * 3),
    (4, 2, [(2, True, False), (2, False, True)]),
])
def test_accumulation_windows(cumulative_iters, max_iters, expected):
    """mmcv's rule: windows start at multiples of cumulative_iters; the last, incomplete one divides by its
    own length and ends the run."""
    assert [window(it, cumulative_iters, max_iters) for it in range(len(expected))] == expected
