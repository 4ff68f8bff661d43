"""COCO evaluation: ground truth scores 1.0, hand-computed perturbations, json conversion, edge cases."""
import json

import numpy as np
import pytest

from mixprec.data import CocoDataset, ShapesDataset, decode_masks, encode_mask, make_shapes_dataset
from mixprec.evaluation import results2json


@pytest.fixture(scope='module')
def shapes_val(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    make_shapes_dataset(str(root), num_train=0, num_val=6, img_size=96, seed=2)
    return ShapesDataset(str(root / 'annotations/instances_val.json'), [], img_prefix=str(root / 'val'),
                         test_mode=True)


def _gt_results(ds, with_masks=False, masks_as_rle=False):
    results = []
    for i in range(len(ds)):
        ann, info = ds.get_ann_info(i), ds.data_infos[i]
        dets = np.concatenate([ann['bboxes'], np.ones((len(ann['labels']), 1), np.float32)], axis=1)
        per_class = [dets[ann['labels'] == c] for c in range(len(ds.CLASSES))]
        if not with_masks:
            results.append(per_class)
            continue
        masks = decode_masks(ann['masks'], info['height'], info['width']).astype(bool)
        segs = [[encode_mask(m) if masks_as_rle else m for m in masks[ann['labels'] == c]]
                for c in range(len(ds.CLASSES))]
        results.append((per_class, segs))
    return results


def test_ground_truth_scores_one(shapes_val, capsys):
    out = shapes_val.evaluate(_gt_results(shapes_val, with_masks=True), metric=['bbox', 'segm'], classwise=True)
    assert out['bbox_mAP'] == out['bbox_mAP_50'] == out['bbox_mAP_75'] == 1.0
    assert out['segm_mAP'] == 1.0
    assert out['bbox_mAP_copypaste'].startswith('1.000 1.000 1.000')
    printed = capsys.readouterr().out
    assert 'Average Precision' in printed and '| circle' in printed and 'triangle' in printed


def test_masks_as_rle_or_bool_arrays_agree(shapes_val):
    a = shapes_val.evaluate(_gt_results(shapes_val, True, masks_as_rle=True), metric='segm', logger='silent')
    b = shapes_val.evaluate(_gt_results(shapes_val, True, masks_as_rle=False), metric='segm', logger='silent')
    assert a == b and a['segm_mAP'] == 1.0


def test_proposal_metric_keys(shapes_val):
    proposals = [np.concatenate(r) for r in _gt_results(shapes_val)]
    out = shapes_val.evaluate(proposals, metric='proposal', logger='silent')
    assert list(out) == ['AR@100', 'AR@300', 'AR@1000', 'AR_s@1000', 'AR_m@1000', 'AR_l@1000']
    assert out['AR@100'] == 1.0
    fast = shapes_val.evaluate(proposals, metric='proposal_fast', logger='silent')
    assert fast == {'AR@100': 1.0, 'AR@300': 1.0, 'AR@1000': 1.0}


def test_empty_results_do_not_crash(shapes_val):
    empty = [[np.zeros((0, 5), np.float32) for _ in range(3)] for _ in range(len(shapes_val))]
    out = shapes_val.evaluate(empty, metric='bbox', logger='silent')
    assert out['bbox_mAP'] == 0.0


def test_wrong_length_and_metric_are_clear(shapes_val):
    with pytest.raises(ValueError, match='results for a dataset of'):
        shapes_val.evaluate([], logger='silent')
    with pytest.raises(KeyError, match='not supported'):
        shapes_val.evaluate(_gt_results(shapes_val), metric='mAP', logger='silent')


@pytest.fixture()
def boxes_dataset(tmp_path):
    # one 200 x 200 image; class 'x' (id 4) with GT [0, 0, 100, 100] and [100, 100, 100, 100] (xywh);
    # class 'y' (id 8) with 4 GT boxes of 20 x 20
    gts = [(4, [0, 0, 100, 100]), (4, [100, 100, 100, 100])] + [(8, [20 * i, 150, 20, 20]) for i in range(4)]
    anns = [dict(id=i + 1, image_id=1, category_id=c, bbox=b, area=b[2] * b[3], iscrowd=0,
                 segmentation=[[b[0], b[1], b[0] + b[2], b[1], b[0] + b[2], b[1] + b[3], b[0], b[1] + b[3]]])
            for i, (c, b) in enumerate(gts)]
    coco = dict(images=[dict(id=1, file_name='a.png', width=200, height=200)], annotations=anns,
                categories=[dict(id=8, name='y'), dict(id=4, name='x')])
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps(coco))
    return CocoDataset(str(path), [], classes=('x', 'y'), test_mode=True)


def test_half_the_boxes_missing(boxes_dataset):
    # class y: 2 of 4 found, precision 1 up to recall 0.5 -> 51 of COCO's 101 recall points: AP = 51 / 101
    y = np.array([[0, 150, 20, 170, 0.9], [20, 150, 40, 170, 0.8]], np.float32)
    x = np.array([[0, 0, 100, 100, 0.9], [100, 100, 200, 200, 0.8]], np.float32)
    only_y = boxes_dataset.evaluate([[np.zeros((0, 5), np.float32), y]], logger='silent', classwise=True)
    both = boxes_dataset.evaluate([[x, y]], logger='silent')
    assert both['bbox_mAP_50'] == both['bbox_mAP'] == round((1 + 51 / 101) / 2, 3) == 0.752
    assert only_y['bbox_mAP'] == round((0 + 51 / 101) / 2, 3) == 0.252


def test_one_box_shifted(boxes_dataset):
    # class x: second box shifted by 16 px: IoU = 84 * 100 / (116 * 100) = 0.724. It matches at IoU
    # thresholds .50-.70 (5 of 10: AP 1) and is a false positive at .75-.95 (AP 51 / 101).
    x = np.array([[0, 0, 100, 100, 0.9], [116, 100, 216, 200, 0.8]], np.float32)
    y = np.array([[20 * i, 150, 20 * i + 20, 170, 0.9] for i in range(4)], np.float32)
    out = boxes_dataset.evaluate([[x, y]], logger='silent')
    ap_x = (5 * 1 + 5 * 51 / 101) / 10
    assert out['bbox_mAP'] == round((ap_x + 1) / 2, 3)
    assert out['bbox_mAP_50'] == 1.0
    assert out['bbox_mAP_75'] == round((51 / 101 + 1) / 2, 3)


def test_results2json_maps_labels_and_boxes(boxes_dataset, tmp_path):
    x = np.array([[10, 20, 40, 60, 0.5]], np.float32)
    files = results2json(boxes_dataset, [[x, np.zeros((0, 5), np.float32)]], str(tmp_path / 'r'))
    assert files['bbox'] == str(tmp_path / 'r.bbox.json')
    entry = json.loads(open(files['bbox']).read())
    assert entry == [dict(image_id=1, bbox=[10.0, 20.0, 30.0, 40.0], score=0.5, category_id=4)]
    mask = np.zeros((200, 200), bool)
    mask[20:60, 10:40] = True
    files = results2json(boxes_dataset, [([x, np.zeros((0, 5))], [[mask], []])], str(tmp_path / 'm'))
    segm = json.loads(open(files['segm']).read())[0]
    assert isinstance(segm['segmentation']['counts'], str) and segm['category_id'] == 4
    assert decode_masks([segm['segmentation']], 200, 200)[0].sum() == 1200
