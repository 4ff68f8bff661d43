"""OHEMSampler: the R-CNN head keeps the RoIs with the largest classification loss of its own box
head, checked against a brute-force ranking of every candidate."""
import pytest
import torch
import torch.nn.functional as F

from mixprec.models.task_modules.bbox_ops import bbox2roi
from mixprec.registry import MODELS, TASK_UTILS, ConfigError

from helpers.detectors import tiny_cfg

pytestmark = pytest.mark.usefixtures('one_thread')


def ohem_roi_head(num: int = 16, pos_fraction: float = 0.25):
    cfg = tiny_cfg('faster', num_classes=3)
    cfg['train_cfg']['rcnn']['sampler'] = dict(type='OHEMSampler', num=num, pos_fraction=pos_fraction,
                                               neg_pos_ub=-1, add_gt_as_proposals=True)
    roi_cfg = dict(cfg['roi_head'], train_cfg=cfg['train_cfg']['rcnn'], test_cfg=cfg['test_cfg']['rcnn'])
    torch.manual_seed(0)
    head = MODELS.build(roi_cfg)
    # a box head with spread-out scores, so the ranking is not decided by ties
    torch.nn.init.normal_(head.bbox_head.fc_cls.weight, std=0.5)
    return head


def test_ohem_keeps_the_hardest_rois_of_the_box_head():
    head = ohem_roi_head()
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(1, 32, 64 // 2 ** k, 64 // 2 ** k, generator=g) for k in range(5)]
    gt = torch.tensor([[4., 4., 40., 40.], [30., 10., 60., 50.]])
    labels = torch.tensor([1, 2])
    # 20 jittered copies of the gt boxes (positives) and 60 boxes far from them (negatives)
    near = gt.repeat(10, 1) + torch.randn(20, 4, generator=g)
    far = torch.rand(60, 2, generator=g) * 150 + 70
    proposals = torch.cat([near, torch.cat([far, far + 20], 1)])
    assign = head.bbox_assigner.assign(proposals, gt, None, labels)
    res = head.bbox_sampler.sample(assign, proposals, gt, labels, feats=x)
    assert res.pos_inds.numel() == 4 and res.neg_inds.numel() == 12

    # brute force: the box head's cross entropy of every candidate (gt boxes come first)
    candidates = torch.cat([gt, proposals])
    with torch.no_grad():
        cls_score, _ = head._bbox_forward(x, bbox2roi([candidates]))
    is_pos = assign.gt_inds > 0
    target = torch.where(is_pos, assign.labels, torch.full_like(assign.labels, 3))
    ce = F.cross_entropy(cls_score, target, reduction='none')
    for mask, chosen, k in [(is_pos, res.pos_inds, 4), (assign.gt_inds == 0, res.neg_inds, 12)]:
        inds = torch.nonzero(mask).squeeze(1)
        expected = inds[ce[inds].topk(k).indices]
        assert sorted(chosen.tolist()) == sorted(expected.tolist())
        # and these are not what the first k or a random pick would give
        assert sorted(chosen.tolist()) != sorted(inds[:k].tolist())


def test_ohem_takes_everything_when_few_and_trains_through_the_roi_head():
    head = ohem_roi_head(num=512)
    x = [torch.randn(1, 32, 64 // 2 ** k, 64 // 2 ** k) for k in range(5)]
    gt = torch.tensor([[4., 4., 40., 40.]])
    proposals = torch.cat([gt + 1, torch.tensor([[50., 50., 60., 60.], [0., 50., 10., 60.]])])
    proposals = torch.cat([proposals, torch.ones(3, 1)], 1)
    meta = dict(img_shape=(64, 64, 3), pad_shape=(64, 64, 3))
    losses = head.forward_train(x, [meta], [proposals], [gt], [torch.tensor([0])])
    assert torch.isfinite(losses['loss_cls']) and losses['loss_bbox'] > 0
    (losses['loss_cls'] + losses['loss_bbox']).backward()
    assert head.bbox_head.fc_cls.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match='loss_key'):
        TASK_UTILS.build(dict(type='OHEMSampler', num=8, pos_fraction=0.25, context=head, loss_key='loss_bbox'))
