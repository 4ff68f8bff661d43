"""Sampler invariants, collate formats and loader seeding."""
import random

import numpy as np
import pytest
import torch

from mixprec.data import (DistributedGroupSampler, DistributedSampler, GroupSampler, build_dataloader, collate,
                          merge_ordered_results, worker_init_fn)


class FlagDataset:
    def __init__(self, flag):
        self.flag = np.asarray(flag, dtype=np.uint8)

    def __len__(self):
        return len(self.flag)

    def __getitem__(self, idx):
        return idx


DATASET = FlagDataset([0] * 13 + [1] * 8)


def _batches(indices, size):
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def _assert_pure(indices, size):
    for batch in _batches(indices, size):
        assert len({int(DATASET.flag[i]) for i in batch}) == 1, batch


def test_group_sampler_pure_complete_and_seeded():
    sampler = GroupSampler(DATASET, samples_per_gpu=4, seed=3)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 16 + 8
    _assert_pure(indices, 4)
    assert set(indices) == set(range(21))
    assert list(GroupSampler(DATASET, 4, seed=3)) == indices
    sampler.set_epoch(1)
    assert list(sampler) != indices


@pytest.mark.parametrize('replicas, spg', [(3, 2), (2, 4), (4, 1)])
def test_distributed_group_sampler_equal_batches_and_coverage(replicas, spg):
    samplers = [DistributedGroupSampler(DATASET, spg, num_replicas=replicas, rank=r, seed=5) for r in range(replicas)]
    parts = [list(s) for s in samplers]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(samplers[0])
    assert len(parts[0]) % spg == 0
    for part in parts:
        _assert_pure(part, spg)
    assert set().union(*parts) == set(range(21))
    again = DistributedGroupSampler(DATASET, spg, num_replicas=replicas, rank=0, seed=5)
    assert list(again) == parts[0]
    again.set_epoch(1)
    assert list(again) != parts[0]


def test_distributed_group_sampler_hand_count():
    # unit = 2 * 3 = 6: group 0 -> ceil(13 / 6) * 2 = 6, group 1 -> ceil(8 / 6) * 2 = 4 per rank
    assert len(DistributedGroupSampler(DATASET, 2, num_replicas=3, rank=1)) == 10


def test_distributed_sampler_is_ordered_and_mergeable():
    parts = [list(DistributedSampler(DATASET, num_replicas=4, rank=r)) for r in range(4)]
    assert [len(p) for p in parts] == [6] * 4
    assert parts[1][:3] == [1, 5, 9]
    assert merge_ordered_results(parts, len(DATASET)) == list(range(21))


def test_collate_train_batch_pads_right_bottom():
    sample = lambda h, w, n: dict(img=torch.ones(3, h, w), img_metas=dict(img_shape=(h, w, 3)),
                                  gt_bboxes=torch.zeros(n, 4), gt_labels=torch.zeros(n, dtype=torch.long))
    batch = collate([sample(32, 64, 2), sample(64, 32, 0)])
    assert batch['img'].shape == (2, 3, 64, 64)
    assert batch['img'][0, :, 32:].abs().sum() == 0 and batch['img'][0, :, :32, :].min() == 1
    assert batch['img'][1, :, :, 32:].abs().sum() == 0
    assert [m['batch_input_shape'] for m in batch['img_metas']] == [(64, 64), (64, 64)]
    assert [len(b) for b in batch['gt_bboxes']] == [2, 0] and isinstance(batch['gt_labels'], list)


def test_collate_test_batch_lists_over_augmentations():
    sample = lambda w: dict(img=[torch.zeros(3, 32, w), torch.zeros(3, 64, 2 * w)], img_metas=[dict(a=0), dict(a=1)])
    batch = collate([sample(32), sample(64)])
    assert [tuple(i.shape) for i in batch['img']] == [(2, 3, 32, 64), (2, 3, 64, 128)]
    assert len(batch['img_metas']) == 2 and len(batch['img_metas'][1]) == 2
    assert batch['img_metas'][1][0] == dict(a=1, batch_input_shape=(64, 128))


def test_worker_init_fn_seeds_all_generators():
    worker_init_fn(1, num_workers=2, rank=3, seed=10)  # seed = 10 + 3 * 2 + 1 = 17
    drawn = (np.random.rand(), random.random(), torch.rand(1).item())
    np.random.seed(17), random.seed(17), torch.manual_seed(17)
    assert drawn == (np.random.rand(), random.random(), torch.rand(1).item())


def test_build_dataloader_samplers_and_batch_sizes():
    loader = build_dataloader(DATASET, samples_per_gpu=2, workers_per_gpu=0, num_gpus=2, seed=0)
    assert isinstance(loader.sampler.sampler, GroupSampler) and loader.batch_size == 4  # in SeededSampler
    loader = build_dataloader(DATASET, samples_per_gpu=2, workers_per_gpu=0, dist=True, shuffle=False)
    assert isinstance(loader.sampler, DistributedSampler) and loader.batch_size == 2
    loader = build_dataloader(DATASET, samples_per_gpu=3, workers_per_gpu=0, dist=True, seed=1)
    assert isinstance(loader.sampler.sampler, DistributedGroupSampler) and loader.sampler.seed == 1
