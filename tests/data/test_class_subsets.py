"""Class subsets (``data.train.classes`` with a matching ``num_classes``, the zoo's ``-person``
configs): only the chosen categories' annotations, labels in category-id order, and a clear error
when the head's ``num_classes`` disagrees."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import mixprec.models  # noqa: F401  (registers the heads)
from mixprec.data import CocoDataset, make_shapes_dataset
from mixprec.registry import MODELS

pytestmark = pytest.mark.usefixtures('one_thread')

PIPELINE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True)]


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes'))
    return root, make_shapes_dataset(root, num_train=12, num_val=1, img_size=64, seed=2, min_shapes=1, max_shapes=2)['train']


def test_subset_keeps_only_its_categories_in_id_order(shapes):
    root, ann = shapes
    with open(ann) as f:
        coco = json.load(f)
    ids = {c['name']: c['id'] for c in coco['categories']}  # circle 1, square 3, triangle 5
    data = CocoDataset(ann, PIPELINE, img_prefix=root + '/train/', classes=('triangle', 'circle'))
    assert data.CLASSES == ('circle', 'triangle') and data.cat_ids == [ids['circle'], ids['triangle']]
    by_image = {}
    for a in coco['annotations']:
        if not a['iscrowd'] and a['category_id'] in data.cat_ids:
            by_image.setdefault(a['image_id'], []).append(data.cat_ids.index(a['category_id']))
    # training keeps exactly the images holding a chosen category, each with only those labels
    assert sorted(data.img_ids) == sorted(by_image)
    assert len(data.img_ids) < len(coco['images'])  # some images hold squares only
    for i, img_id in enumerate(data.img_ids):
        assert sorted(data.get_ann_info(i)['labels'].tolist()) == sorted(by_image[img_id])
        assert sorted(data[i]['gt_labels'].tolist()) == sorted(by_image[img_id])


def test_person_subset_config_semantics_on_coco_names(tmp_path):
    # COCO's own ids: person 1, bicycle 2, car 3 -> labels 0, 1, 2 (the zoo's -person-bicycle-car)
    cats = [dict(id=i, name=n) for i, n in [(1, 'person'), (2, 'bicycle'), (3, 'car'), (4, 'motorcycle')]]
    anns = [dict(id=k + 1, image_id=1, category_id=c, bbox=[10 * k, 0, 8, 8], area=64, iscrowd=0)
            for k, c in enumerate([3, 4, 1, 2])]
    ann_file = tmp_path / 'a.json'
    ann_file.write_text(json.dumps(dict(images=[dict(id=1, file_name='x.png', width=64, height=64)],
                                        annotations=anns, categories=cats)))
    data = CocoDataset(str(ann_file), [], classes=('person', 'bicycle', 'car'))
    info = data.get_ann_info(0)
    assert info['labels'].tolist() == [2, 0, 1]  # car, (motorcycle dropped), person, bicycle
    np.testing.assert_array_equal(info['bboxes'][:, 0], [0, 20, 30])


def test_num_classes_mismatch_fails_clearly():
    head = MODELS.build(dict(type='Shared2FCBBoxHead', in_channels=4, roi_feat_size=2, fc_out_channels=8,
                             num_classes=1))
    res = SimpleNamespace(pos_bboxes=torch.tensor([[0., 0., 10., 10.]]), neg_bboxes=torch.zeros(0, 4),
                          pos_gt_bboxes=torch.tensor([[0., 0., 10., 10.]]), pos_gt_labels=torch.tensor([2]))
    with pytest.raises(ValueError, match='gt label 2 but num_classes=1'):
        head.get_targets([res], dict(pos_weight=-1))
    retina = MODELS.build(dict(type='RetinaHead', num_classes=1, in_channels=4, stacked_convs=0, feat_channels=4,
                               train_cfg=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4,
                                                            min_pos_iou=0, ignore_iof_thr=-1),
                                              allowed_border=-1, pos_weight=-1)))
    meta = dict(img_shape=(256, 256, 3), pad_shape=(256, 256, 3))
    feats = [torch.zeros(1, 4, 256 // s, 256 // s) for s in (8, 16, 32, 64, 128)]
    cls, reg = retina(feats)
    with pytest.raises(ValueError, match='num_classes=1'):
        retina.loss(cls, reg, [torch.tensor([[0., 0., 40., 40.]])], [torch.tensor([1])], [meta])
