"""faster-coco-eval's C++ COCOeval and pycocotools' give the same 12 numbers on the same results."""
import numpy as np
import pytest

from mixprec.data import ShapesDataset, decode_masks, make_shapes_dataset
from mixprec.evaluation import coco_eval

ALL_ITEMS = list(coco_eval.STAT_INDEX)


@pytest.fixture(scope='module')
def noisy(tmp_path_factory):
    """Shapes val set and results: every gt box jittered (some masks eroded), plus random boxes."""
    root = tmp_path_factory.mktemp('shapes')
    make_shapes_dataset(str(root), num_train=0, num_val=8, img_size=320, seed=3)
    ds = ShapesDataset(str(root / 'annotations/instances_val.json'), [], img_prefix=str(root / 'val'),
                       test_mode=True)
    rng = np.random.default_rng(0)
    results = []
    for i in range(len(ds)):
        ann, info = ds.get_ann_info(i), ds.data_infos[i]
        h, w = info['height'], info['width']
        gt_masks = decode_masks(ann['masks'], h, w).astype(bool)
        n_extra = 6
        xy = rng.uniform(0, 200, size=(n_extra, 2))
        boxes = np.concatenate([ann['bboxes'] + rng.normal(0, 3, ann['bboxes'].shape),
                                np.concatenate([xy, xy + rng.uniform(10, 120, size=(n_extra, 2))], axis=1)])
        labels = np.concatenate([ann['labels'], rng.integers(0, len(ds.CLASSES), n_extra)])
        scores = rng.uniform(0.05, 1.0, len(boxes))
        masks = list(gt_masks)
        for j in range(n_extra):
            m = np.zeros((h, w), bool)
            x1, y1, x2, y2 = boxes[len(gt_masks) + j].astype(int)
            m[max(y1, 0):y2, max(x1, 0):x2] = True
            masks.append(m)
        for m in masks[:len(gt_masks):2]:
            m[::3] = False  # a third of the rows gone: mask IoU near 2/3
        dets = np.concatenate([boxes, scores[:, None]], axis=1).astype(np.float32)
        per_class = [dets[labels == c] for c in range(len(ds.CLASSES))]
        segs = [[m for m, lab in zip(masks, labels) if lab == c] for c in range(len(ds.CLASSES))]
        results.append((per_class, segs))
    return ds, results


@pytest.mark.skipif(not coco_eval.importlib.util.find_spec('faster_coco_eval'), reason='faster-coco-eval missing')
def test_both_backends_give_the_same_twelve_numbers(noisy, monkeypatch):
    ds, results = noisy
    out = {}
    for backend in ('pycocotools', 'faster_coco_eval'):
        out[backend] = coco_eval.evaluate_coco(ds, results, metric=['bbox', 'segm'], logger='silent',
                                               metric_items=ALL_ITEMS, backend=backend)
    assert len(out['pycocotools']) == 2 * 13
    assert out['faster_coco_eval'] == out['pycocotools']
    values = [v for k, v in out['pycocotools'].items() if not k.endswith('copypaste')]
    assert 0.05 < out["pycocotools"]["bbox_mAP"] < 0.9 and 0.05 < out["pycocotools"]["segm_mAP"] < 0.9
    assert values.count(-1.0) <= 4 and len(set(values)) > 12  # real, distinct numbers, not a table of zeros or ones
    monkeypatch.setenv(coco_eval.BACKEND_ENV, 'pycocotools')
    assert coco_eval.resolve_backend() == 'pycocotools'
    monkeypatch.delenv(coco_eval.BACKEND_ENV)
    assert coco_eval.resolve_backend() == 'faster_coco_eval'


def test_backend_choice_and_errors(monkeypatch):
    monkeypatch.setenv(coco_eval.BACKEND_ENV, 'pycocotools')
    assert coco_eval.resolve_backend() == 'pycocotools'
    assert coco_eval.resolve_backend('pycocotools') == 'pycocotools'
    monkeypatch.setenv(coco_eval.BACKEND_ENV, 'fast')
    with pytest.raises(ValueError, match=r"MIXPREC_COCO_EVAL='fast': expected one of"):
        coco_eval.resolve_backend()
    monkeypatch.setattr(coco_eval.importlib.util, 'find_spec', lambda name: None)
    assert coco_eval.resolve_backend('auto') == 'pycocotools'
    with pytest.raises(ImportError, match='pip install faster-coco-eval'):
        coco_eval.resolve_backend('faster_coco_eval')
