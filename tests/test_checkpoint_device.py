"""Checkpoints hold CPU tensors only, whatever device the run's tensors live on: a checkpoint written
from a GPU run must load with a plain ``torch.load(path, weights_only=True)`` on a machine without one.

The GPU is stood in for by :class:`FakeCudaTensor` (its data on the CPU, its device ``cuda:0``),
which ``torch.load(weights_only=True)`` refuses when it reaches a file, as it refuses CUDA tensors on
a CPU-only machine.
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple

import torch

from helpers.fake_device import FakeCudaTensor
from helpers.toy import ToyModel, toy_loader
from mixprec.checkpoint import save_file, tensors_to_cpu
from mixprec.engine import Runner


def _tensors(obj, path=''):
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f'{path}.{key}')
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f'{path}[{i}]')


def test_tensors_to_cpu_keeps_structure_and_cpu_tensors():
    Pair = namedtuple('Pair', 'a b')
    cpu = torch.arange(3.)
    obj = OrderedDict(x=FakeCudaTensor(torch.ones(2)), y=[cpu, (FakeCudaTensor(torch.zeros(1)), 'text')],
                      z=Pair(FakeCudaTensor(torch.full((2,), 7.)), 3))
    out = tensors_to_cpu(obj)
    assert type(out) is OrderedDict and list(out) == ['x', 'y', 'z']
    assert out['y'][0] is cpu and out['y'][1][1] == 'text' and isinstance(out['z'], Pair) and out['z'].b == 3
    assert all(type(t) is torch.Tensor and t.device.type == 'cpu' for _, t in _tensors(out))
    assert torch.equal(out['z'].a, torch.full((2,), 7.))


def test_run_checkpoint_from_device_tensors_loads_without_map_location(tmp_path):
    """A run whose optimizer state (and a meta entry) sit on the (fake) GPU, as after a CUDA run; the
    saved file loads with weights_only and no map_location, every value equal to the run's."""
    torch.manual_seed(0)
    model = ToyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    runner = Runner(model, optimizer, work_dir=str(tmp_path), max_iters=2)
    runner.register_training_hooks(None, dict(grad_clip=None), None, None)
    runner.run(toy_loader(8, 4))
    state = optimizer.state
    assert state and all('momentum_buffer' in s for s in state.values())
    expected = {id(p): s['momentum_buffer'].clone() for p, s in state.items()}
    for s in state.values():
        s['momentum_buffer'] = FakeCudaTensor(s['momentum_buffer'].clone())
    runner.meta['device_tensor'] = FakeCudaTensor(torch.tensor([1., 2.]))
    path = runner.save_checkpoint(str(tmp_path), 'gpu.pth')

    checkpoint = torch.load(path, weights_only=True)
    tensors = list(_tensors(checkpoint))
    assert all(type(t) is torch.Tensor and t.device.type == 'cpu' for _, t in tensors), \
        [k for k, t in tensors if t.device.type != 'cpu' or type(t) is not torch.Tensor]
    saved = checkpoint['optimizer']['state']
    order = [p for group in optimizer.param_groups for p in group['params']]
    for index, param in enumerate(order):
        assert torch.equal(saved[index]['momentum_buffer'], expected[id(param)])
    assert torch.equal(checkpoint['meta']['device_tensor'], torch.tensor([1., 2.]))


def test_save_file_alone_moves_device_tensors(tmp_path):
    path = tmp_path / 'plain.pth'
    save_file({'state_dict': {'w': FakeCudaTensor(torch.arange(4.))}}, str(path))
    assert torch.equal(torch.load(path, weights_only=True)['state_dict']['w'], torch.arange(4.))
