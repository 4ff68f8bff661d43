"""Issue 25: a training sample's augmentation is seeded by (seed, rank, epoch, position), so the batches do
not depend on the data workers (none, several, persistent) and a mid-epoch resume sees the same ones."""
import random

import numpy as np
import pytest
import torch

from mixprec.data import build_dataloader, build_dataset
from mixprec.data.sample_seeds import SeededDataset, SeededSampler
from mixprec.engine.runner import _skip_batches

NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
# random flips and a random scale: the image tensors show both
TRAIN = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
         dict(type='Resize', img_scale=(96, 64), ratio_range=(0.5, 1.5), keep_ratio=True),
         dict(type='RandomFlip', flip_ratio=0.5), dict(type='Normalize', **NORM), dict(type='Pad', size_divisor=32),
         dict(type='DefaultFormatBundle'), dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels'])]


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes')) + '/'
    return build_dataset(dict(type='ShapesDataset', data_root=root, ann_file='annotations/instances_train.json',
                              img_prefix='train/', pipeline=TRAIN,
                              auto_create=dict(num_train=10, num_val=1, img_size=64, seed=2)))


def epoch(loader, index: int, skip: int = 0) -> list:
    loader.sampler.set_epoch(index)
    source = _skip_batches(loader, skip) if skip else loader
    return [(tuple(m['ori_filename'] for m in b['img_metas']), b['img'].clone(), b['gt_bboxes'][0].clone())
            for b in source]


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (names_a, img_a, box_a), (names_b, img_b, box_b) in zip(a, b):
        assert names_a == names_b and torch.equal(img_a, img_b) and torch.equal(box_a, box_b)


def test_batches_do_not_depend_on_the_workers(dataset):
    plain = build_dataloader(dataset, 2, 0, seed=3)
    workers = build_dataloader(dataset, 2, 2, seed=3)
    persistent = build_dataloader(dataset, 2, 2, seed=3, persistent_workers=True)
    for index in (0, 1):
        reference = epoch(plain, index)
        assert_same_batches(reference, epoch(workers, index))
        assert_same_batches(reference, epoch(persistent, index))
    shapes = {tuple(img.shape) for e in (0, 1) for _, img, _ in epoch(plain, e)}
    assert len(shapes) > 2  # the random scale is in effect (and so part of what is compared)


def test_epochs_and_seeds_draw_differently(dataset):
    loader = build_dataloader(dataset, 2, 0, seed=3)
    first, second = epoch(loader, 0), epoch(loader, 1)
    other_seed = epoch(build_dataloader(dataset, 2, 0, seed=4), 0)
    key = lambda batches: sorted((names, img.shape, float(img.sum())) for names, img, _ in batches)
    assert key(first) != key(second) and key(first) != key(other_seed)


@pytest.mark.parametrize('workers', [0, 2])
def test_a_resumed_epoch_sees_the_uninterrupted_batches(dataset, workers):
    loader = build_dataloader(dataset, 2, workers, seed=3)
    full = epoch(loader, 1)
    assert_same_batches(full[3:], epoch(loader, 1, skip=3))


def test_loading_leaves_the_callers_generators_alone(dataset):
    """Without workers the samples load in the training process: their draws come from their own seeds.
    (torch's generator gives the DataLoader its one base seed per epoch, as always.)"""
    loader = build_dataloader(dataset, 2, 0, seed=3)
    np.random.seed(5)
    random.seed(5)
    expected = np.random.rand(), random.random()
    np.random.seed(5)
    random.seed(5)
    epoch(loader, 0)
    assert (np.random.rand(), random.random()) == expected


class Draws(torch.utils.data.Dataset):
    """Each sample is what numpy, random and torch draw for it."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return np.random.rand(), random.random(), torch.rand(()).item()


def test_every_generator_is_seeded_by_seed_rank_epoch_and_position():
    def draws(seed, rank, epoch):
        sampler = SeededSampler(torch.utils.data.SequentialSampler(range(4)), seed, rank)
        sampler.set_epoch(epoch)
        return [SeededDataset(Draws())[key] for key in sampler]

    reference = draws(3, 0, 1)
    assert draws(3, 0, 1) == reference
    for other in (draws(4, 0, 1), draws(3, 1, 1), draws(3, 0, 2)):
        assert all(a != b for pos_a, pos_b in zip(reference, other) for a, b in zip(pos_a, pos_b))
    assert len({value for position in reference for value in position}) == 12  # positions differ too
