"""Checkpoint files: atomic writes, weights_only refusal of code-carrying pickles, bad files, key reports."""
import os
import pickle

import pytest
import torch
from torch import nn

from mixprec.checkpoint import (CheckpointError, load_checkpoint, load_file, resolve_checkpoint_path, save_file,
                                torchvision_cache_path)


class Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned > /dev/null',))


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def test_round_trip_and_prefix(tmp_path):
    model = small_model()
    path = str(tmp_path / 'a.pth')
    save_file({'meta': {'epoch': 1}, 'state_dict': {f'backbone.{k}': v for k, v in model.state_dict().items()}}, path)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    ckpt = load_checkpoint(other, path, prefix='backbone', strict=True)
    assert ckpt['meta'] == {'epoch': 1}
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])


def test_code_carrying_pickle_is_refused_by_default(tmp_path):
    path = str(tmp_path / 'legacy.pth')
    torch.save({'state_dict': small_model().state_dict(), 'payload': Evil()}, path)
    with pytest.raises(CheckpointError, match=r'Python objects beyond tensors.*refused.*trusted=True'):
        load_file(path)
    with pytest.raises(CheckpointError, match='--trusted-checkpoint'):
        load_checkpoint(small_model(), path)


def test_trusted_legacy_file_loads(tmp_path):
    path = str(tmp_path / 'legacy.pth')
    torch.save({'state_dict': small_model().state_dict(), 'note': {1, 2}}, path)
    ckpt = load_checkpoint(small_model(), path, trusted=True)
    assert ckpt['note'] == {1, 2}


@pytest.mark.parametrize('content, expected', [
    (b'', 'truncated or not a PyTorch checkpoint'),
    (b'hello world, not a checkpoint', 'truncated or not a PyTorch checkpoint|not a PyTorch checkpoint'),
])
def test_garbage_files(tmp_path, content, expected):
    path = tmp_path / 'bad.pth'
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as info:
        load_file(str(path))
    assert str(path) in str(info.value) and '\n' not in str(info.value)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / 'full.pth'
    torch.save({'state_dict': small_model().state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated'):
        load_file(str(path))


def test_missing_file_and_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'):
        load_file(str(tmp_path / 'nope.pth'))
    path = str(tmp_path / 'list.pth')
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match='not a checkpoint: it holds a list'):
        load_checkpoint(small_model(), path)


def test_other_model_lists_misshaped_keys(tmp_path, caplog):
    path = str(tmp_path / 'other.pth')
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1), nn.Linear(2, 2))
    torch.save({'state_dict': other.state_dict()}, path)
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r'mis-shaped keys.*0\.weight \(8, 3, 3, 3\) vs model \(4, 3, 3, 3\)'):
        load_checkpoint(model, path, strict=True)
    load_checkpoint(model, path, strict=False)
    assert 'unexpected keys: 3.weight, 3.bias' in caplog.text
    assert torch.equal(model.state_dict()['0.weight'], before['0.weight'])


def test_torchvision_scheme_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    expected = torchvision_cache_path('resnet50')
    assert expected == os.path.join(str(tmp_path), 'hub', 'checkpoints', 'resnet50-0676ba61.pth')
    with pytest.raises(CheckpointError, match=r'torchvision://resnet50: .*resnet50-0676ba61\.pth is missing.*copy the file there'):
        resolve_checkpoint_path('torchvision://resnet50')
    os.makedirs(os.path.dirname(expected))
    torch.save(small_model().state_dict(), expected)
    assert resolve_checkpoint_path('torchvision://resnet50') == expected


def test_save_file_failure_keeps_previous(tmp_path, monkeypatch):
    path = str(tmp_path / 'latest.pth')
    save_file({'v': torch.tensor(1)}, path)

    def failing(obj, f, *a, **k):
        f.write(b'partial')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(torch, 'save', failing)
    with pytest.raises(CheckpointError, match='No space left'):
        save_file({'v': torch.tensor(2)}, path)
    monkeypatch.undo()
    assert load_file(path)['v'].item() == 1
    assert os.listdir(tmp_path) == ['latest.pth']


def test_ddp_saved_module_prefix_is_stripped(tmp_path):
    """A checkpoint saved from a DistributedDataParallel model (keys ``module.*``) loads strictly."""
    model = small_model()
    path = str(tmp_path / 'ddp.pth')
    save_file({'state_dict': {f'module.{k}': v for k, v in model.state_dict().items()}}, path)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    load_checkpoint(other, path, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k
    # mmcv's rule strips a leading 'module.' whatever it is; a model with its own 'module' child
    # loads with revise_keys=()
    nested = nn.ModuleDict({'module': small_model()})
    save_file({'state_dict': nested.state_dict()}, path)
    with pytest.raises(CheckpointError, match='missing keys'):
        load_checkpoint(nn.ModuleDict({'module': small_model()}), path, strict=True)
    load_checkpoint(nn.ModuleDict({'module': small_model()}), path, strict=True, revise_keys=())
