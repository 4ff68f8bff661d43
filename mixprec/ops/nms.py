"""Non-maximum suppression with mmcv's configs: NMS (torchvision's kernel, on score prefixes when
only the best ``max_num`` are wanted) and Soft-NMS (mmcv 1.x's semantics), per group of boxes."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torchvision.ops import batched_nms as tv_batched_nms
from torchvision.ops import nms as tv_nms


SOFT_NMS_METHODS = ('naive', 'linear', 'gaussian')


def soft_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.3, sigma: float = 0.5,
             min_score: float = 1e-3, method: str = 'linear', offset: int = 0) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al., 2017) with mmcv 1.x's semantics.

    Repeatedly the highest-scoring remaining box is selected and every other remaining box's score
    is multiplied by a weight of its IoU with it: 'naive' 0 where IoU >= ``iou_threshold``, 'linear'
    1 - IoU there, 'gaussian' exp(-IoU^2 / ``sigma``) everywhere; a box whose score falls below
    ``min_score`` is dropped. The remaining boxes keep mmcv's kernel order (a dropped box is replaced
    by the last one), so ties break as there. Widths are ``x2 - x1 + offset``.

    Args:
        boxes: [n, 4]; scores: [n].

    Returns:
        dets [k, 5] (selected boxes with their decayed scores, in selection order, so scores are
        non-increasing) and inds [k] into the inputs.
    """
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f'soft_nms: method must be one of {SOFT_NMS_METHODS}, got {method!r}')
    device = boxes.device
    boxes = boxes[:, :4].float().cpu()  # a sequential loop: on the CPU, as mmcv runs it
    rem = torch.arange(boxes.size(0))
    rem_scores = scores.float().cpu().clone()
    areas = (boxes[:, 2] - boxes[:, 0] + offset) * (boxes[:, 3] - boxes[:, 1] + offset)
    sel_inds, sel_scores = [], []
    while rem.numel() > 0:
        top = int(torch.argmax(rem_scores))  # first maximum, as the kernel's strict '<' scan
        best, best_score = rem[top], rem_scores[top]
        sel_inds.append(best)
        sel_scores.append(best_score)
        # the kernel swaps the best box into the first slot; the rest keep their slots
        rem, rem_scores = rem.clone(), rem_scores.clone()
        rem[top], rem_scores[top] = rem[0], rem_scores[0]
        rem, rem_scores = rem[1:], rem_scores[1:]
        if rem.numel() == 0:
            break
        wh = (torch.min(boxes[best, 2:], boxes[rem, 2:]) - torch.max(boxes[best, :2], boxes[rem, :2]) + offset)
        inter = wh.clamp(min=0).prod(dim=1)
        ious = inter / (areas[best] + areas[rem] - inter)
        if method == 'gaussian':
            weight = torch.exp(-ious * ious / sigma)
        else:
            decay = torch.zeros_like(ious) if method == 'naive' else 1 - ious
            weight = torch.where(ious >= iou_threshold, decay, torch.ones_like(ious))
        rem_scores = rem_scores * weight
        keep = rem_scores >= min_score
        # the kernel fills each dropped slot, left to right, with the last surviving box
        num_keep = int(keep.sum())
        holes = torch.nonzero(~keep[:num_keep]).squeeze(1)
        fillers = torch.nonzero(keep[num_keep:]).squeeze(1).flip(0) + num_keep
        order = torch.arange(num_keep, device=rem.device)
        order[holes] = fillers
        rem, rem_scores = rem[order], rem_scores[order]
    if not sel_inds:
        return boxes.new_zeros((0, 5)).to(device), rem.new_zeros(0).to(device)
    inds = torch.stack(sel_inds)
    return torch.cat([boxes[inds], torch.stack(sel_scores)[:, None]], dim=1).to(device), inds.to(device)


_NMS_KEYS = {'nms': {'iou_threshold', 'max_num', 'split_thr'},
             'soft_nms': {'iou_threshold', 'sigma', 'min_score', 'method', 'offset', 'max_num', 'split_thr'}}


def _nms_args(nms_cfg: dict) -> tuple[str, dict, int]:
    """(type, keyword arguments of the op, max_num) of an mmcv nms config."""
    cfg = dict(nms_cfg)
    nms_type = cfg.pop('type', 'nms')
    if nms_type not in _NMS_KEYS:
        raise ValueError(f"nms type {nms_type!r} is not supported; use type='nms' or 'soft_nms'")
    unknown = sorted(set(cfg) - _NMS_KEYS[nms_type])
    if unknown:
        raise ValueError(f'{nms_type} config has unknown keys {unknown}; it takes {sorted(_NMS_KEYS[nms_type])}')
    if nms_type == 'nms' and 'iou_threshold' not in cfg:
        raise ValueError(f'nms config needs iou_threshold, got {nms_cfg!r}')
    max_num = int(cfg.pop('max_num', -1))
    cfg.pop('split_thr', None)
    return nms_type, cfg, max_num


def _greedy_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, class_agnostic: bool,
                max_num: int) -> Tensor:
    """Indices kept by NMS within each ``idxs`` group, by decreasing score; only the first
    ``max_num`` when it is positive.

    Those are found on growing score prefixes (the 2 * max_num best pairs, then 8x, ... with every
    tie of the last score): NMS keeps or drops a box by the higher-scored boxes of its group alone,
    so a prefix's survivors are exactly the whole set's survivors inside it, and once it holds
    ``max_num`` of them no box below it can rank among the first ``max_num``. With 80 classes and
    no score threshold this is one NMS over a few hundred pairs instead of 80 over all of them.
    """
    def run(sel: Optional[Tensor]) -> Tensor:
        b, s, i = (boxes, scores, idxs) if sel is None else (boxes[sel], scores[sel], idxs[sel])
        keep = tv_nms(b, s, iou_threshold) if class_agnostic else tv_batched_nms(b, s, i, iou_threshold)
        return keep if sel is None else sel[keep]

    count = scores.numel()
    prefix = 2 * max_num if not bool(torch.isnan(scores).any()) else 0  # NaN sorts first: no prefix
    while 0 < prefix < count:
        sel = torch.nonzero(scores >= scores.topk(prefix).values[-1]).squeeze(1)
        keep = run(sel)
        if keep.numel() >= max_num:
            return keep[:max_num]
        prefix *= 8
    keep = run(None)
    return keep[:max_num] if max_num > 0 else keep


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, nms_cfg: dict,
                class_agnostic: bool = False, max_num: int = -1) -> tuple[Tensor, Tensor]:
    """NMS (or soft-NMS) applied independently within each value of ``idxs`` (class or level id).

    Args:
        boxes: [n, 4]; scores: [n]; idxs: [n] integer group ids.
        nms_cfg: ``dict(type='nms', iou_threshold=float, max_num=-1)`` or ``dict(type='soft_nms',
            iou_threshold=0.3, sigma=0.5, min_score=1e-3, method='linear')`` (see :func:`soft_nms`).
        class_agnostic: ignore ``idxs`` and run one NMS over everything.
        max_num: keep at most this many (as does the config's ``max_num``; the smaller one wins).

    Returns:
        dets: [k, 5] kept boxes with their scores (decayed by soft-NMS), sorted by decreasing
        score; keep: [k] indices into the inputs.
    """
    nms_type, kwargs, cfg_max_num = _nms_args(nms_cfg)
    max_num = min((m for m in (max_num, cfg_max_num) if m > 0), default=-1)
    boxes_f = boxes[:, :4].float()
    scores_f = scores.float()
    if boxes_f.numel() == 0:
        keep = torch.zeros(0, dtype=torch.long, device=boxes.device)
        dets = boxes_f.new_zeros((0, 5))
    elif nms_type == 'soft_nms':
        # groups never overlap once shifted apart, so one pass treats them independently (mmcv)
        shifted = boxes_f if class_agnostic else boxes_f + (idxs.to(boxes_f) * (boxes_f.max() + 1))[:, None]
        dets, keep = soft_nms(shifted, scores_f, **kwargs)
        dets = torch.cat([boxes_f[keep], dets[:, 4:]], dim=1)
    else:
        keep = _greedy_nms(boxes_f, scores_f, idxs, float(kwargs['iou_threshold']), class_agnostic, max_num)
        dets = torch.cat([boxes_f[keep], scores_f[keep, None]], dim=-1)
    if max_num > 0:
        keep, dets = keep[:max_num], dets[:max_num]
    return dets, keep
