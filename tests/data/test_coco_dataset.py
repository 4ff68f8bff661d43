"""CocoDataset parsing and filtering rules on a hand-written annotation file with edge cases."""
import json

import numpy as np
import pytest

from mixprec.data import CocoDataset, ConcatDataset, RepeatDataset, ShapesDataset, build_dataset
from mixprec.registry import ConfigError


def _ann(ann_id, img_id, cat, bbox, area=None, **extra):
    area = bbox[2] * bbox[3] if area is None else area
    x, y, w, h = bbox
    poly = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return dict(id=ann_id, image_id=img_id, category_id=cat, bbox=bbox, area=area, segmentation=poly,
                iscrowd=0, **extra)


@pytest.fixture()
def ann_file(tmp_path):
    # categories listed out of id order: labels must follow ascending ids 2 ('a'), 7 ('b'), 9 ('c')
    cats = [dict(id=7, name='b'), dict(id=2, name='a'), dict(id=9, name='c')]
    images = [dict(id=1, file_name='one.png', width=100, height=80),
              dict(id=2, file_name='two.png', width=60, height=90),
              dict(id=3, file_name='empty.png', width=100, height=100),
              dict(id=4, file_name='small.png', width=20, height=100),
              dict(id=5, file_name='crowd_only.png', width=80, height=80)]
    anns = [_ann(1, 1, 2, [10, 20, 30, 40]),
            dict(_ann(2, 1, 7, [0, 0, 50, 50]), iscrowd=1),
            _ann(3, 1, 7, [5, 5, 10, 10], area=0),
            _ann(4, 1, 7, [5, 5, 0.5, 10]),
            _ann(5, 1, 7, [120, 5, 10, 10]),
            _ann(6, 1, 7, [5, 5, 10, 10], ignore=True),
            _ann(7, 1, 9, [50, 40, 20, 10]),
            _ann(8, 2, 7, [1, 2, 3, 4]),
            _ann(9, 4, 2, [1, 1, 10, 10]),
            dict(_ann(10, 5, 2, [1, 1, 10, 10]), iscrowd=1)]
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))
    return str(path)


def test_labels_follow_sorted_category_ids(ann_file):
    ds = CocoDataset(ann_file, [], classes=('a', 'b', 'c'), test_mode=True)
    assert ds.cat_ids == [2, 7, 9]
    assert ds.cat2label == {2: 0, 7: 1, 9: 2}
    assert ds.CLASSES == ('a', 'b', 'c')


def test_parse_rules(ann_file):
    ds = CocoDataset(ann_file, [], classes=('a', 'b', 'c'), test_mode=True)
    ann = ds.get_ann_info(0)
    np.testing.assert_array_equal(ann['bboxes'], [[10, 20, 40, 60], [50, 40, 70, 50]])
    np.testing.assert_array_equal(ann['labels'], [0, 2])
    np.testing.assert_array_equal(ann['bboxes_ignore'], [[0, 0, 50, 50]])
    assert len(ann['masks']) == 2
    assert ann['bboxes'].dtype == np.float32 and ann['labels'].dtype == np.int64
    assert ann['seg_map'] == 'one.png'
    assert ds.get_cat_ids(0) == [2, 7, 7, 7, 7, 7, 9]


def test_test_mode_keeps_every_image(ann_file):
    ds = CocoDataset(ann_file, [], classes=('a', 'b', 'c'), test_mode=True)
    assert len(ds) == 5
    assert ds.img_ids == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(ds.flag, [1, 0, 0, 0, 0])


def test_training_drops_empty_small_and_crowd_only_images(ann_file):
    ds = CocoDataset(ann_file, [], classes=('a', 'b', 'c'))
    assert ds.img_ids == [1, 2]
    assert [d['filename'] for d in ds.data_infos] == ['one.png', 'two.png']
    np.testing.assert_array_equal(ds.flag, [1, 0])
    kept = CocoDataset(ann_file, [], classes=('a', 'b', 'c'), filter_empty_gt=False)
    assert kept.img_ids == [1, 2, 3, 5]


def test_class_subset_and_txt_file(ann_file, tmp_path):
    ds = CocoDataset(ann_file, [], classes=('c', 'b'))
    assert ds.cat_ids == [7, 9] and ds.CLASSES == ('b', 'c')
    ann = ds.get_ann_info(0)
    np.testing.assert_array_equal(ann['labels'], [1])
    assert ds.img_ids == [1, 2]
    txt = tmp_path / 'classes.txt'
    txt.write_text('a\n\n')
    only_a = CocoDataset(ann_file, [], classes=str(txt))
    assert only_a.CLASSES == ('a',) and only_a.img_ids == [1]


def test_data_root_joins_relative_paths(ann_file, tmp_path):
    ds = CocoDataset('ann.json', [], img_prefix='imgs/', data_root=str(tmp_path), classes=('a', 'b', 'c'))
    assert ds.ann_file == str(tmp_path / 'ann.json')
    assert ds.img_prefix == str(tmp_path) + '/imgs/'


def test_errors_name_the_problem(ann_file, tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.json'):
        CocoDataset(str(tmp_path / 'missing.json'), [])
    with pytest.raises(ConfigError, match='not in the file'):
        CocoDataset(ann_file, [])


def test_wrappers(ann_file):
    cfg = dict(type='CocoDataset', ann_file=ann_file, pipeline=[], classes=('a', 'b', 'c'))
    rep = build_dataset(dict(type='RepeatDataset', dataset=cfg, times=3))
    assert isinstance(rep, RepeatDataset) and len(rep) == 6
    np.testing.assert_array_equal(rep.flag, [1, 0] * 3)
    np.testing.assert_array_equal(rep.get_ann_info(2)['labels'], [0, 2])
    cat = build_dataset([cfg, cfg])
    assert isinstance(cat, ConcatDataset) and len(cat) == 4 and cat.CLASSES == ('a', 'b', 'c')
    np.testing.assert_array_equal(cat.get_ann_info(3)['labels'], [1])


def test_train_getitem_retries_when_pipeline_returns_none(ann_file):
    calls = []

    def drop_first(results):
        calls.append(results['img_info']['id'])
        return None if len(calls) == 1 else results

    ds = CocoDataset(ann_file, [drop_first], classes=('a', 'b', 'c'))
    np.random.seed(0)
    out = ds[0]
    assert len(calls) == 2 and out['img_info']['id'] == 1  # the only landscape image: same group


def test_shapes_dataset_auto_creates_once(tmp_path):
    root = tmp_path / 'shapes'
    cfg = dict(type='ShapesDataset', ann_file='annotations/instances_train.json', img_prefix='train/',
               data_root=str(root) + '/', pipeline=[],
               auto_create=dict(num_train=6, num_val=2, img_size=64, seed=1))
    ds = build_dataset(cfg)
    assert isinstance(ds, ShapesDataset) and ds.CLASSES == ('circle', 'square', 'triangle')
    assert ds.cat_ids == [1, 3, 5] and len(ds) > 0
    stamp = (root / 'annotations' / 'instances_train.json').stat().st_mtime_ns
    build_dataset(cfg)
    assert (root / 'annotations' / 'instances_train.json').stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (root / 'val').iterdir()) == ['000000.png', '000001.png']
