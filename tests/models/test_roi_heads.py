"""RoI side of the two-stage detectors: level mapping, RoI extraction, mask targets and pasting,
box head targets, losses and test-time post-processing."""
import math
from types import SimpleNamespace

import numpy as np
import torch
from torchvision.ops import roi_align

import mixprec.models  # noqa: F401  (registers the losses and task modules)
from mixprec.models.roi_heads import FCNMaskHead, Shared2FCBBoxHead, SingleRoIExtractor
from mixprec.models.task_modules.mask_ops import mask_target, paste_masks_in_image


def make_extractor(output_size=7, channels=4):
    return SingleRoIExtractor(roi_layer=dict(type='RoIAlign', output_size=output_size, sampling_ratio=0),
                              out_channels=channels, featmap_strides=[4, 8, 16, 32])


def square_rois(sides, widths=None):
    widths = sides if widths is None else widths
    return torch.tensor([[0., 5., 7., 5. + w, 7. + h] for w, h in zip(widths, sides)])


def test_map_roi_levels_by_size():
    # level = floor(log2(sqrt(w * h) / 56 + 1e-6)) clamped to [0, 3]
    sides = [8, 111, 112, 223, 224, 447, 448, 1000]
    levels = make_extractor().map_roi_levels(square_rois(sides), num_levels=4)
    assert levels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # a 224 x 56 box has scale sqrt(224 * 56) = 112 -> level 1
    assert make_extractor().map_roi_levels(square_rois([56], widths=[224]), 4).tolist() == [1]


def test_roi_extractor_equals_torchvision_roi_align_on_its_level():
    torch.manual_seed(0)
    extractor = make_extractor(output_size=7, channels=4)
    feats = [torch.randn(2, 4, 128 // s, 128 // s) for s in (4, 8, 16, 32, 64)]
    rois = torch.tensor([[0, 3.3, 4.1, 40.0, 30.2],      # scale ~31 -> level 0
                         [1, 10.0, 0.0, 150.0, 120.0],   # ~130 -> level 1
                         [1, 0.0, 0.0, 300.0, 260.0],    # ~279 -> level 2
                         [0, 0.0, 0.0, 500.0, 480.0],    # ~490 -> level 3
                         [0, 20.5, 60.5, 30.5, 64.5]])   # ~6 -> level 0
    expected_levels = [0, 1, 2, 3, 0]
    out = extractor(feats, rois)
    assert out.shape == (5, 4, 7, 7)
    for i, level in enumerate(expected_levels):
        stride = 4 * 2 ** level
        ref = roi_align(feats[level], rois[i:i + 1], (7, 7), spatial_scale=1.0 / stride,
                        sampling_ratio=0, aligned=True)
        torch.testing.assert_close(out[i:i + 1], ref)


def test_roi_extractor_without_rois_and_bf16_feats_under_fp16():
    extractor = make_extractor(channels=4)
    feats = [torch.randn(1, 4, 16, 16) for _ in range(5)]
    assert extractor(feats, torch.zeros(0, 5)).shape == (0, 4, 7, 7)
    extractor.fp16_enabled = True
    extractor._fp16_cfg = (torch.bfloat16, 'master')
    out = extractor([f.bfloat16() for f in feats], torch.tensor([[0., 1., 1., 30., 30.]]))
    assert out.dtype == torch.bfloat16  # pooled in fp32, returned in the half dtype


def square_bitmaps():
    """Two 64 x 64 gt bitmaps: an empty one and a square covering pixels [16, 48)."""
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[1, 16:48, 16:48] = 1
    return masks


def test_mask_target_crops_the_assigned_bitmap():
    masks = square_bitmaps()
    proposals = torch.tensor([[16., 16., 48., 48.],   # exactly the square
                              [0., 0., 64., 64.],     # whole image
                              [0., 16., 32., 48.],    # left half outside the square
                              [16., 16., 48., 48.]])  # assigned to the empty bitmap
    targets = mask_target([proposals], [torch.tensor([1, 1, 1, 0])], [masks], 28)
    assert targets.shape == (4, 28, 28)
    assert torch.equal(targets[0], torch.ones(28, 28))
    # bins of 64 / 28 px: a bin is inside the square when its centre (j + 0.5) * 64 / 28 is in
    # [16, 48], i.e. j in 7..20
    whole = torch.zeros(28, 28)
    whole[7:21, 7:21] = 1
    assert torch.equal(targets[1], whole)
    # x bins of 32 / 28 px: centre >= 16 for j >= 14; every y bin is inside
    half = torch.zeros(28, 28)
    half[:, 14:] = 1
    assert torch.equal(targets[2], half)
    assert torch.equal(targets[3], torch.zeros(28, 28))


def test_mask_target_batches_images_and_handles_no_positives():
    masks = square_bitmaps()
    targets = mask_target([torch.tensor([[16., 16., 48., 48.]]), torch.zeros(0, 4)],
                          [torch.tensor([1]), torch.zeros(0, dtype=torch.long)],
                          [masks, masks[:1]], 28)
    assert targets.shape == (1, 28, 28) and targets.dtype == torch.float32


def test_paste_full_mask_gives_exactly_the_box_pixels():
    masks = torch.ones(2, 28, 28)
    boxes = torch.tensor([[10., 20., 30., 45.], [0., 0., 7., 3.]])
    pasted = paste_masks_in_image(masks, boxes, (50, 60))
    assert pasted.shape == (2, 50, 60) and pasted.dtype == torch.bool
    expected = torch.zeros(2, 50, 60, dtype=torch.bool)
    expected[0, 20:45, 10:30] = True
    expected[1, 0:3, 0:7] = True
    assert torch.equal(pasted, expected)


def slow_paste(mask: np.ndarray, box, img_h: int, img_w: int) -> np.ndarray:
    """Reference paste, pixel by pixel: bilinear sample of ``mask`` (zero outside) at the pixel
    centre mapped into the box, the mask's pixel centres sitting at (j + 0.5) * box / m."""
    m = mask.shape[0]
    x1, y1, x2, y2 = box
    out = np.zeros((img_h, img_w))

    def value(r, c):
        return mask[r, c] if 0 <= r < m and 0 <= c < m else 0.0

    for y in range(img_h):
        v = (y + 0.5 - y1) / (y2 - y1) * m - 0.5
        for x in range(img_w):
            u = (x + 0.5 - x1) / (x2 - x1) * m - 0.5
            c0, r0 = math.floor(u), math.floor(v)
            fu, fv = u - c0, v - r0
            out[y, x] = ((1 - fv) * ((1 - fu) * value(r0, c0) + fu * value(r0, c0 + 1))
                         + fv * ((1 - fu) * value(r0 + 1, c0) + fu * value(r0 + 1, c0 + 1)))
    return out


def test_paste_random_mask_matches_slow_reference():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 28, 28)).astype(np.float32)
    boxes = [(3.3, 5.7, 31.2, 22.9), (-6.0, 10.5, 20.25, 41.0), (40.0, 30.0, 70.0, 48.5)]
    img_h, img_w = 44, 52
    pasted = paste_masks_in_image(torch.from_numpy(masks), torch.tensor(boxes), (img_h, img_w),
                                  max_chunk_pixels=2 * 40 * 40)  # two chunks
    for i, box in enumerate(boxes):
        ref = slow_paste(masks[i], box, img_h, img_w)
        decided = np.abs(ref - 0.5) > 1e-4
        assert decided.mean() > 0.99
        np.testing.assert_array_equal(pasted[i].numpy()[decided], (ref >= 0.5)[decided])


def test_fcn_mask_head_shapes_and_seg_masks():
    head = FCNMaskHead(num_convs=2, in_channels=8, conv_out_channels=16, num_classes=3)
    pred = head(torch.randn(4, 8, 14, 14))
    assert pred.shape == (4, 3, 28, 28)
    targets = torch.randint(0, 2, (4, 28, 28)).float()
    loss = head.loss(pred, targets, torch.tensor([0, 2, 1, 2]))['loss_mask']
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert head.loss(pred[:0], targets[:0], torch.zeros(0, dtype=torch.long))['loss_mask'] == 0
    # huge logits on the label channel: the pasted masks are the boxes
    logits = torch.full((2, 3, 28, 28), -20.0)
    logits[0, 2] = 20.0
    logits[1, 0] = 20.0
    segms = head.get_seg_masks(logits, torch.tensor([[2., 3., 10., 9., 0.9], [0., 0., 4., 4., 0.8]]),
                               torch.tensor([2, 0]), (12, 16, 3))
    assert [len(s) for s in segms] == [1, 0, 1]
    assert segms[2][0].shape == (12, 16) and segms[2][0].dtype == np.bool_
    assert segms[2][0].sum() == 8 * 6 and segms[2][0][3:9, 2:10].all()
    assert segms[0][0].sum() == 16


def make_bbox_head(num_classes=3):
    """The R-CNN head as the shipped configs set it (L1 box loss; the class default is mmdet's SmoothL1)."""
    return Shared2FCBBoxHead(in_channels=4, fc_out_channels=16, roi_feat_size=7, num_classes=num_classes,
                             loss_bbox=dict(type='L1Loss', loss_weight=1.0))


def test_bbox_head_shapes_and_init():
    torch.manual_seed(0)
    head = make_bbox_head()
    cls_score, bbox_pred = head(torch.randn(5, 4, 7, 7))
    assert cls_score.shape == (5, 4) and bbox_pred.shape == (5, 12)
    assert head.shared_fcs[0].weight.shape == (16, 196)
    assert torch.all(head.fc_cls.bias == 0) and torch.all(head.fc_reg.bias == 0)


def test_bbox_head_targets_and_losses_on_a_crafted_case():
    head = make_bbox_head(num_classes=3)
    # image 0: one positive (label 2) and two negatives; image 1: one positive (label 0)
    results = [
        SimpleNamespace(pos_bboxes=torch.tensor([[0., 0., 10., 10.]]),
                        neg_bboxes=torch.tensor([[50., 50., 60., 60.], [0., 30., 5., 40.]]),
                        pos_gt_bboxes=torch.tensor([[1., 1., 11., 11.]]), pos_gt_labels=torch.tensor([2])),
        SimpleNamespace(pos_bboxes=torch.tensor([[0., 0., 20., 20.]]), neg_bboxes=torch.zeros(0, 4),
                        pos_gt_bboxes=torch.tensor([[0., 0., 20., 40.]]), pos_gt_labels=torch.tensor([0])),
    ]
    labels, label_weights, bbox_targets, bbox_weights = head.get_targets(results, dict(pos_weight=-1))
    assert labels.tolist() == [2, 3, 3, 0]
    assert label_weights.tolist() == [1, 1, 1, 1]
    # stds (0.1, 0.1, 0.2, 0.2): image 0 centre moves 1 px on a 10 px box -> 0.1 / 0.1 = 1;
    # image 1 centre moves 10 px on a 20 px box -> 5, height doubles -> log(2) / 0.2
    expected = torch.tensor([[1., 1., 0., 0.], [0., 0., 0., 0.], [0., 0., 0., 0.],
                             [0., 5., 0., math.log(2) / 0.2]])
    torch.testing.assert_close(bbox_targets, expected)
    assert bbox_weights.sum(1).tolist() == [4, 0, 0, 4]

    cls_score = torch.zeros(4, 4)
    bbox_pred = torch.randn(4, 12)
    bbox_pred[0, 8:12] = torch.tensor([1., 1., 0., 0.])   # exact on the label-2 channel
    bbox_pred[3, 0:4] = 0.0
    losses = head.loss(cls_score, bbox_pred, labels, label_weights, bbox_targets, bbox_weights)
    torch.testing.assert_close(losses['loss_cls'], torch.tensor(math.log(4)))
    torch.testing.assert_close(losses['acc'], torch.tensor(25.0))  # argmax 0 is right for 1 of 4
    # L1 on the positives' label channels, summed, divided by the 4 sampled RoIs
    torch.testing.assert_close(losses['loss_bbox'], torch.tensor((5 + math.log(2) / 0.2) / 4))


def test_bbox_head_loss_without_positives_is_zero_and_differentiable():
    head = make_bbox_head()
    bbox_pred = torch.randn(2, 12, requires_grad=True)
    losses = head.loss(torch.zeros(2, 4), bbox_pred, torch.tensor([3, 3]),
                       torch.ones(2), torch.zeros(2, 4), torch.zeros(2, 4))
    assert losses['loss_bbox'] == 0
    losses['loss_bbox'].backward()


TEST_CFG = dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)


def test_bbox_head_post_processing_limits():
    head = make_bbox_head(num_classes=3)
    num = 30
    # disjoint 10 px boxes along a row
    rois = torch.tensor([[0., 12. * i, 0., 12. * i + 10., 10.] for i in range(num)])
    probs = torch.full((num, 4), 0.001)
    probs[:, 1] = torch.linspace(0.01, 0.9, num)  # class 1: 0.01 .. 0.9
    probs[:, 3] = 1 - probs[:, :3].sum(1)
    cls_score = probs.log()
    bbox_pred = torch.zeros(num, 12)
    dets, labels = head.get_bboxes(rois, cls_score, bbox_pred, (20, 1000, 3), None, cfg=TEST_CFG)
    assert torch.all(dets[:, 4] > 0.05) and torch.all(labels == 1)
    assert len(dets) == int((probs[:, 1] > 0.05).sum())
    cfg = dict(TEST_CFG, max_per_img=5)
    dets, labels = head.get_bboxes(rois, cls_score, bbox_pred, (20, 1000, 3), None, cfg=cfg)
    assert len(dets) == 5
    torch.testing.assert_close(dets[:, 4], probs[-5:, 1].flip(0))
    torch.testing.assert_close(dets[:, :4], rois[-5:, 1:].flip(0))


def test_bbox_head_decodes_class_specific_clips_and_rescales():
    head = make_bbox_head(num_classes=2)
    rois = torch.tensor([[0., 10., 10., 30., 30.], [0., 90., 10., 130., 30.]])
    cls_score = torch.tensor([[0., 10., 0.], [10., 0., 0.]])  # roi 0 -> class 1, roi 1 -> class 0
    bbox_pred = torch.zeros(2, 8)
    bbox_pred[0, 4:8] = torch.tensor([1., 0., 0., 0.])  # shift x by 0.1 * 20 = 2 px for class 1
    bbox_pred[0, 0:4] = torch.tensor([-5., 0., 0., 0.])  # class 0 channel of roi 0: ignored
    dets, labels = head.get_bboxes(rois, cls_score, bbox_pred, (100, 100, 3),
                                   np.array([2., 2., 2., 2.], dtype=np.float32), rescale=True, cfg=TEST_CFG)
    assert labels.tolist() == [1, 0]
    # roi 1 clipped to x2 = 100, then everything halved
    torch.testing.assert_close(dets[:, :4], torch.tensor([[6., 5., 16., 15.], [45., 5., 50., 15.]]))


def test_bbox_head_default_losses_are_mmdet_v2s():
    """A config that leaves out loss_bbox gets mmdet v2 BBoxHead's SmoothL1Loss(beta=1.0), not another loss."""
    head = Shared2FCBBoxHead(in_channels=4, fc_out_channels=8, roi_feat_size=2, num_classes=2)
    pred, target = torch.tensor([[0.0, 0.5, 2.0, -3.0]]), torch.zeros(1, 4)
    # smooth L1, beta 1: 0.5 x^2 below 1, |x| - 0.5 above; mean over the 4 elements
    assert head.loss_bbox(pred, target).item() == (0 + 0.125 + 1.5 + 2.5) / 4
    assert type(head.loss_cls).__name__ == 'CrossEntropyLoss' and not head.loss_cls.use_sigmoid
