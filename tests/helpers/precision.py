"""Compare one detector's losses and detections in fp32 and in a mixed precision, same weights.

A random-init detector detects nothing distinct (every score is near the prior), so the classifiers
get spread-out weights first. For the two-stage detectors the proposals are fixed (random boxes):
the RPN's top-k and NMS over near-equal random scores would otherwise pick different proposals under
bf16 noise, and the R-CNN stage could not be compared box for box.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torchvision.ops import box_iou

from mixprec.fp16 import wrap_fp16_model


def spread_classifiers(model: torch.nn.Module, std: float = 2.0, retina_bias: float = -8.0,
                       seed: int = 0) -> torch.nn.Module:
    """Classifier weights whose logits spread over several units (scores over the whole [0, 1])."""
    gen = torch.Generator().manual_seed(seed)
    for conv in getattr(getattr(model, 'bbox_head', None), 'cls_convs', []):
        with torch.no_grad():  # std 0.01 convs make every location's score the same: bf16 noise orders them
            conv.conv.weight.copy_(torch.randn(conv.conv.weight.shape, generator=gen)
                                   * (2 / conv.conv.weight[0].numel()) ** 0.5)
    for name in ('roi_head.bbox_head.fc_cls', 'bbox_head.retina_cls'):
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            continue
        fan_in = layer.weight[0].numel()
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * std / fan_in ** 0.5)
            offset = retina_bias if 'retina' in name else 0.0  # RetinaNet: few pairs above score_thr
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * std + offset)
    return model


def random_proposals(metas: list[dict], num: int, seed: int = 0) -> list[torch.Tensor]:
    """Per image [num, 5] boxes (x1, y1, x2, y2, score) inside the image, 8 to 60 px wide."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for meta in metas:
        h, w = meta['img_shape'][:2]
        wh = torch.rand(num, 2, generator=gen) * 52 + 8
        xy = torch.rand(num, 2, generator=gen) * (torch.tensor([w, h]) - wh)
        out.append(torch.cat([xy, xy + wh, torch.rand(num, 1, generator=gen)], dim=1))
    return out


def fix_proposals(model: torch.nn.Module, proposals: list[torch.Tensor]) -> None:
    """Make the RPN hand ``proposals`` to the R-CNN stage, in training and test (its losses stay)."""
    if hasattr(model, 'rpn_head'):
        model.rpn_head.get_bboxes = lambda *args, **kwargs: [p.clone() for p in proposals]
        model.rpn_head.simple_test_rpn = lambda *args, **kwargs: [p.clone() for p in proposals]


def losses_of(model: torch.nn.Module, batch: dict, seed: int = 0) -> dict[str, float]:
    """Every loss term (levels summed) of one training forward, with the samplers seeded."""
    model.train()
    torch.manual_seed(seed)
    losses = model(**copy.deepcopy(batch))
    return {k: float((sum(v) if isinstance(v, list) else v).detach()) for k, v in losses.items()}


def detections_of(model: torch.nn.Module, batch: dict) -> list:
    """Per image the test results (rescaled to the original image)."""
    model.eval()
    with torch.no_grad():
        return model(img=batch['img'], img_metas=copy.deepcopy(batch['img_metas']), return_loss=False)


def assert_losses_close(reference: dict, got: dict, rtol: float) -> None:
    assert sorted(reference) == sorted(got)
    for key, value in reference.items():
        assert abs(got[key] - value) <= rtol * abs(value) + 1e-4, (key, value, got[key])


def _floor(per_class: list, score_thr: float, max_per_img: int) -> float:
    """The score below which an image's detections are cut: the threshold, or the lowest score kept
    when the image is at ``max_per_img`` (a detection near the cut may fall on either side)."""
    scores = np.concatenate([c[:, 4] for c in per_class])
    return float(scores.min()) if len(scores) >= max_per_img else score_thr


def _boxes(result) -> list:
    return result[0] if isinstance(result, tuple) else result


def assert_detections_match(reference: list, got: list, score_tol: float = 1e-2, min_iou: float = 0.99,
                            min_distinct: float = 0.9, margin: float = 0.02, score_thr: float = 0.05,
                            max_per_img: int = 100) -> list[tuple[int, int, int, int]]:
    """Every detection of one side that clears the cut (:func:`_floor`, both sides) by ``margin`` has
    a detection of the same class on the other side with IoU > ``min_iou`` and a score within
    ``score_tol``; and ``got`` has at least ``min_distinct`` times as many distinct scores as
    ``reference`` (scores computed in half collapse onto few values). Both are per image lists per
    class of [k, 5] arrays (or (bbox, segm) tuples).

    Returns the matched pairs ``(image, class, reference index, got index)``.
    """
    pairs = []
    for img, (ref_img, got_img) in enumerate(zip(map(_boxes, reference), map(_boxes, got), strict=True)):
        floor = max(_floor(ref_img, score_thr, max_per_img), _floor(got_img, score_thr, max_per_img)) + margin
        for cls, (ref_cls, got_cls) in enumerate(zip(ref_img, got_img, strict=True)):
            for a, b, forward in ((ref_cls, got_cls, True), (got_cls, ref_cls, False)):
                sure = np.flatnonzero(a[:, 4] > floor)
                if len(sure) == 0:
                    continue
                assert len(b) > 0, f'{len(sure)} detections have no counterpart'
                iou = box_iou(torch.from_numpy(a[sure, :4]), torch.from_numpy(b[:, :4])).numpy()
                ok = (iou > min_iou) & (np.abs(a[sure, 4:5] - b[None, :, 4]) <= score_tol)
                unmatched = ~ok.any(axis=1)
                assert not unmatched.any(), (
                    f'{int(unmatched.sum())} of {len(sure)} detections unmatched, e.g. {a[sure][unmatched][:3].tolist()}, '
                    f'best IoU {iou[unmatched].max(axis=1)[:3].tolist()}')
                if forward:
                    pairs += [(img, cls, int(i), int(row.argmax())) for i, row in zip(sure, ok)]

    def distinct(results):
        return len(np.unique(np.concatenate([c[:, 4] for r in map(_boxes, results) for c in r])))
    assert distinct(got) >= min_distinct * distinct(reference), (distinct(got), distinct(reference))
    return pairs


def mixed_copy(model: torch.nn.Module, dtype: torch.dtype, mode: str) -> torch.nn.Module:
    """A deep copy of ``model`` (same weights) prepared for ``dtype`` in ``mode``."""
    return wrap_fp16_model(copy.deepcopy(model), dtype=dtype, mode=mode)
