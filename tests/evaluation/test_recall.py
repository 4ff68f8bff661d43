"""Fast proposal recall against hand-computed cases."""
import numpy as np

from mixprec.evaluation import bbox_overlaps, eval_recalls

THRS = np.linspace(.5, .95, 10)


def test_bbox_overlaps_hand_values():
    a = np.array([[0, 0, 100, 100]], np.float32)
    b = np.array([[16, 0, 116, 100], [200, 200, 210, 210], [0, 0, 50, 100]], np.float32)
    np.testing.assert_allclose(bbox_overlaps(a, b), [[84 / 116, 0, 0.5]])


def test_recall_shifted_missing_and_top_n():
    gt = [np.array([[0, 0, 100, 100], [200, 0, 300, 100]], np.float32), np.array([[0, 0, 10, 10]], np.float32)]
    # image 0: one exact proposal, one shifted by 16 px (IoU 0.724); image 1: nothing
    props = [np.array([[16, 0, 116, 100, 0.9], [200, 0, 300, 100, 0.1]], np.float32), np.zeros((0, 5), np.float32)]
    recalls = eval_recalls(gt, props, proposal_nums=(1, 2), iou_thrs=THRS)
    # top-1 is the shifted box: 1 of 3 gts matched at thresholds .50-.70, none above
    np.testing.assert_allclose(recalls[0], [1 / 3] * 5 + [0] * 5)
    # top-2: the exact box adds one more gt at every threshold
    np.testing.assert_allclose(recalls[1], [2 / 3] * 5 + [1 / 3] * 5)


def test_one_proposal_matches_one_gt_only():
    gt = [np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)]
    props = [np.array([[0, 0, 10, 10, 1.0]], np.float32)]
    np.testing.assert_allclose(eval_recalls(gt, props, (10,), [0.5]), [[0.5]])
