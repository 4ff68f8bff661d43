"""The synthetic shapes generator: determinism, annotation consistency, mask encodings round trip."""
import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from mixprec.data import decode_masks, encode_mask, make_shapes_dataset, segm_to_rle
from mixprec.data.shapes import mask_to_polygons, uncompressed_rle


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    paths = make_shapes_dataset(str(root), num_train=24, num_val=4, img_size=64, seed=0)
    return root, paths


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(shapes, tmp_path):
    root, _ = shapes
    make_shapes_dataset(str(tmp_path / 'again'), num_train=24, num_val=4, img_size=64, seed=0)
    assert _files(tmp_path / 'again') == _files(root)
    make_shapes_dataset(str(tmp_path / 'other'), num_train=24, num_val=4, img_size=64, seed=1)
    assert _files(tmp_path / 'other') != _files(root)


def test_annotations_match_their_masks(shapes):
    root, paths = shapes
    coco = json.loads(open(paths['train']).read())
    assert [c['id'] for c in coco['categories']] == [1, 3, 5]
    sizes = {img['id']: (img['height'], img['width']) for img in coco['images']}
    assert all(max(s) == 64 and min(s) >= 38 for s in sizes.values())
    assert {h > w for h, w in sizes.values()} == {True, False}
    kinds = set()
    for ann in coco['annotations']:
        h, w = sizes[ann['image_id']]
        rle = segm_to_rle(ann['segmentation'], h, w)
        assert ann['area'] == float(mask_utils.area(rle)) > 0
        assert ann['bbox'] == [float(v) for v in mask_utils.toBbox(rle)]
        seg = ann['segmentation']
        kinds.add('polygon' if isinstance(seg, list) else type(seg['counts']).__name__)
    assert kinds == {'polygon', 'list', 'str'}
    assert any(a['iscrowd'] for a in coco['annotations'])
    assert {a['category_id'] for a in coco['annotations']} == {1, 3, 5}


def test_visible_masks_do_not_overlap(shapes):
    root, paths = shapes
    coco = json.loads(open(paths['train']).read())
    for img in coco['images']:
        segms = [a['segmentation'] for a in coco['annotations'] if a['image_id'] == img['id']]
        assert 2 <= len(segms)
        assert decode_masks(segms, img['height'], img['width']).sum(axis=0).max() == 1


def test_rle_round_trips():
    rng = np.random.default_rng(0)
    mask = (rng.random((13, 17)) > 0.6).astype(np.uint8)
    rle = encode_mask(mask.astype(bool))
    assert isinstance(rle['counts'], str)
    np.testing.assert_array_equal(decode_masks([rle], 13, 17)[0], mask)
    np.testing.assert_array_equal(decode_masks([uncompressed_rle(mask)], 13, 17)[0], mask)
    edge = np.ones((4, 5), dtype=np.uint8)
    assert uncompressed_rle(edge)['counts'] == [0, 20]


def test_polygons_rasterise_to_the_same_pixels():
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[3:9, 4:20] = 1
    mask[9:15, 10:14] = 1
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 1
    np.testing.assert_array_equal(decode_masks([polygons], 20, 30)[0], mask)
    ring = np.zeros((10, 10), dtype=np.uint8)
    ring[2:8, 2:8] = 1
    ring[4:6, 4:6] = 0
    assert mask_to_polygons(ring) is None
