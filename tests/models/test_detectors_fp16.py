"""Each detector under the Fp16OptimizerHook (fp16 and bf16, master and autocast) on the CPU: its
detections and first losses equal an fp32 copy's on the same weights, then it trains a few steps
with finite losses and moving weights."""
import copy

import pytest
import torch

from mixprec.fp16 import Fp16OptimizerHook
from mixprec.registry import MODELS
from helpers import precision
from helpers.detectors import tiny_batch, tiny_cfg, tiny_retinanet_cfg, total_loss
from helpers.fp16 import make_runner


pytestmark = pytest.mark.usefixtures('one_thread')


def build(kind: str, batch: dict):
    """A tiny detector with spread-out classifiers (distinct detections) and, for the two-stage ones,
    fixed proposals; RetinaNet without NMS (see test_retinanet_bf16_matches_fp32)."""
    torch.manual_seed(0)
    if kind == 'retina':
        cfg = tiny_retinanet_cfg()
        cfg['test_cfg']['nms']['iou_threshold'] = 1.0
    else:
        cfg = tiny_cfg(kind)
    model = precision.spread_classifiers(MODELS.build(cfg))
    precision.fix_proposals(model, precision.random_proposals(batch['img_metas'], 100))
    return model


@pytest.mark.parametrize('mode', ['master', 'autocast'])
@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
@pytest.mark.parametrize('kind', ['faster', 'mask', 'retina'])
def test_detector_trains_and_tests_under_the_hook(kind, dtype, mode):
    """Once the hook has converted the model, its detections and first losses equal fp32's on the same
    weights (IoU > 0.99, scores within 1e-2 / 2e-2, losses within 1e-2); then it trains."""
    batch = tiny_batch(with_masks=kind == 'mask')
    model = build(kind, batch)
    reference = copy.deepcopy(model)
    ref_losses = precision.losses_of(reference, batch)
    ref_results = precision.detections_of(reference, batch)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    hook = Fp16OptimizerHook(loss_scale=512. if dtype == 'float16' else None, dtype=dtype, mode=mode)
    runner = make_runner(model, optimizer)
    hook.before_run(runner)
    half = getattr(torch, dtype)
    conv = model.neck.lateral_convs[0].conv.weight
    assert conv.dtype is (half if mode == 'master' else torch.float32)
    pairs = precision.assert_detections_match(
        ref_results, precision.detections_of(runner.model, batch), score_tol=2e-2 if kind == 'retina' else 1e-2,
        min_distinct=0.6 if kind == 'retina' else 0.9)
    assert len(pairs) >= 40
    runner.model.train()
    before = [p.detach().float().clone() for p in model.parameters() if p.requires_grad]
    for step in range(2):
        torch.manual_seed(0)
        losses = runner.model(**batch)
        loss = total_loss(losses)
        assert loss.dtype is torch.float32 and torch.isfinite(loss), (step, losses)
        if step == 0:
            precision.assert_losses_close(ref_losses, {k: float((sum(v) if isinstance(v, list) else v).detach())
                                                       for k, v in losses.items()}, rtol=1e-2)
        runner.outputs = dict(loss=loss)
        runner.iter = step
        hook.after_train_iter(runner)
    assert runner.log_buffer.last('skipped_steps') == 0
    after = [p.detach().float() for p in model.parameters() if p.requires_grad]
    moved = sum(not torch.equal(a, b) for a, b in zip(after, before))
    assert moved > len(before) // 2, (moved, len(before))
