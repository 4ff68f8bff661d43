"""optimizer.paramwise_cfg / constructor (mmcv 1.x's DefaultOptimizerConstructor), the groups under the
fp16 hook's master weights, GradientCumulativeOptimizerHook against one step over the concatenated
batch, and tools/train.py with a paramwise config, a directly given Fp16OptimizerHook and schedules."""
import glob
import json
import logging
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from helpers.fp16 import TinyNet, batches, make_runner, run as drive_fp16
from helpers.tiny import write_tiny_config
from helpers.tool_runs import load_tool
from helpers.toy import toy_collate
from mixprec.engine import Hook, Runner
from mixprec.engine.optimizer import build_optimizer
from mixprec.fp16 import Fp16OptimizerHook
from mixprec.registry import OPTIMIZER_BUILDERS, ConfigError

LR, WD = 0.1, 0.01


class Net(nn.Module):
    """Every rule's case: a top-level parameter, a frozen stem, a conv, a norm, a depthwise conv, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.stem = nn.Conv2d(3, 4, 3)
        self.stem.requires_grad_(False)
        self.backbone = nn.Sequential(nn.Conv2d(4, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 4, 3, groups=4))
        self.head = nn.Module()
        self.head.fc = nn.Linear(4, 2)
        self.head.cls = nn.Linear(4, 2)


def groups_by_name(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for group in optimizer.param_groups:
        assert len(group['params']) == 1
        out.append((names[id(group['params'][0])], group['lr'], group['weight_decay']))
    return out


def assert_groups(actual, expected):
    """(name, lr, weight_decay) rows: names exactly, numbers to float tolerance (pytest.approx takes no
    nested structures since pytest 9.2)."""
    assert [row[0] for row in actual] == [row[0] for row in expected]
    assert [x for row in actual for x in row[1:]] == pytest.approx([x for row in expected for x in row[1:]])


def test_paramwise_groups_as_mmcv_builds_them():
    model = Net()
    optimizer = build_optimizer(model, dict(
        type='SGD', lr=LR, momentum=0.9, weight_decay=WD,
        paramwise_cfg=dict(bias_lr_mult=2., bias_decay_mult=0., norm_decay_mult=0., dwconv_decay_mult=0.1,
                           custom_keys={'head': dict(lr_mult=3.), 'head.cl': dict(lr_mult=0.25),
                                        'ead.cls': dict(lr_mult=0.5, decay_mult=3.)})))
    assert_groups(groups_by_name(model, optimizer), [
        ('scale', LR, WD),
        ('stem.weight', LR, WD), ('stem.bias', LR, WD),               # frozen: own groups, no rule applied
        ('backbone.0.weight', LR, WD), ('backbone.0.bias', 2 * LR, 0.),
        ('backbone.1.weight', LR, 0.), ('backbone.1.bias', LR, 0.),   # norm: no bias_lr_mult
        ('backbone.2.weight', LR, 0.1 * WD), ('backbone.2.bias', 2 * LR, 0.1 * WD),  # dwconv before bias
        ('head.fc.weight', 3 * LR, WD), ('head.fc.bias', 3 * LR, WD),  # custom key wins over the bias rules
        # longest key first; 'ead.cls' and 'head.cl' tie on length and 'ead.cls' sorts first
        ('head.cls.weight', 0.5 * LR, 3 * WD), ('head.cls.bias', 0.5 * LR, 3 * WD),
    ])
    assert all(not g['params'][0].requires_grad for g in optimizer.param_groups[1:3])


def test_without_paramwise_one_group_of_all_parameters():
    model = Net()
    optimizer = build_optimizer(model, dict(type='SGD', lr=LR, momentum=0.9))
    assert len(optimizer.param_groups) == 1
    assert [id(p) for p in optimizer.param_groups[0]['params']] == [id(p) for p in model.parameters()]


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        shared = nn.Linear(2, 2)
        self.a = nn.Sequential(shared)
        self.b = nn.Sequential(shared, nn.Linear(2, 2))


def test_bypass_duplicate(recwarn):
    with pytest.raises(ValueError, match='more than one parameter group'):
        build_optimizer(Shared(), dict(type='SGD', lr=LR, paramwise_cfg=dict(bias_lr_mult=2.)))
    model = Shared()
    optimizer = build_optimizer(model, dict(type='SGD', lr=LR, paramwise_cfg=dict(bypass_duplicate=True)))
    assert [g['params'][0] for g in optimizer.param_groups] == [model.a[0].weight, model.a[0].bias,
                                                                model.b[1].weight, model.b[1].bias]
    assert any('b.0.weight is a duplicate' in str(w.message) for w in recwarn)


class DeformConv2dPack(nn.Module):
    """Stands for mmcv's deformable conv: its own weight and bias, and an offset conv ``conv_offset``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4, 4, 3, 3))
        self.bias = nn.Parameter(torch.zeros(4))
        self.conv_offset = nn.Conv2d(4, 18, 3)


def test_dcn_offset_lr_mult(caplog):
    model = nn.Module()
    model.dcn = DeformConv2dPack()
    optimizer = build_optimizer(model, dict(type='SGD', lr=LR, weight_decay=WD, paramwise_cfg=dict(
        bias_lr_mult=2., bias_decay_mult=0., dcn_offset_lr_mult=0.1)))
    names = {id(p): n for n, p in model.named_parameters()}
    assert_groups([(names[id(g['params'][0])], g['lr'], g['weight_decay']) for g in optimizer.param_groups], [
        ('dcn.weight', LR, WD), ('dcn.bias', 2 * LR, 0.),
        ('dcn.conv_offset.weight', 0.1 * LR, WD), ('dcn.conv_offset.bias', 0.1 * LR, WD)])
    with caplog.at_level(logging.WARNING):
        build_optimizer(Net(), dict(type='SGD', lr=LR, paramwise_cfg=dict(dcn_offset_lr_mult=0.1)))
    assert 'no deformable convolution' in caplog.text


@pytest.mark.parametrize('cfg, words', [
    (dict(type='SGD', lr=LR, paramwise_cfg=dict(bias_lr_mul=2.)), ["'bias_lr_mul'", 'bias_lr_mult']),
    (dict(type='SGD', lr=LR, paramwise_cfg=dict(norm_decay_mult=0.)), ['norm_decay_mult', 'weight_decay']),
    (dict(type='SGD', lr=LR, weight_decay=WD, paramwise_cfg=dict(custom_keys={'head': dict(lr=1.)})),
     ["custom_keys['head']", 'lr_mult']),
    (dict(type='SGD', lr=LR, paramwise_cfg=dict(custom_keys={'head': dict(decay_mult=0.)})),
     ['decay_mult', 'weight_decay']),
    (dict(type='SGDD', lr=LR), ["'SGDD'", 'SGD']),
    (dict(type='SGD', lr=LR, constructor='NoSuchConstructor'), ["'NoSuchConstructor'"]),
])
def test_bad_optimizer_config_is_one_line(cfg, words):
    with pytest.raises(ConfigError) as info:
        build_optimizer(Net(), cfg)
    assert '\n' not in str(info.value) and all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize('kind, extra', [('Adam', dict(betas=(0.8, 0.9))), ('AdamW', {}), ('RMSprop', {}),
                                         ('Adagrad', {})])
def test_any_torch_optimizer_with_paramwise(kind, extra):
    model = Net()
    optimizer = build_optimizer(model, dict(type=kind, lr=LR, weight_decay=WD, **extra,
                                            paramwise_cfg=dict(bias_lr_mult=0.5)))
    assert type(optimizer) is getattr(torch.optim, kind)
    lrs = dict((n, lr) for n, lr, _ in groups_by_name(model, optimizer))
    assert lrs['head.fc.bias'] == pytest.approx(0.5 * LR) and lrs['head.fc.weight'] == pytest.approx(LR)


@OPTIMIZER_BUILDERS.register_module(force=True)
class HeadOnlyConstructor:
    """A user constructor: the head's parameters only, with the config's lr halved."""

    def __init__(self, optimizer_cfg, paramwise_cfg=None):
        self.cfg = dict(optimizer_cfg)
        self.paramwise_cfg = paramwise_cfg

    def __call__(self, model):
        cfg = {k: v for k, v in self.cfg.items() if k != 'type'}
        cfg['lr'] *= 0.5
        return getattr(torch.optim, self.cfg['type'])(model.head.parameters(), **cfg)


def test_user_registered_constructor():
    model = Net()
    optimizer = build_optimizer(model, dict(type='SGD', lr=LR, constructor='HeadOnlyConstructor'))
    assert optimizer.param_groups[0]['lr'] == pytest.approx(0.5 * LR)
    assert optimizer.param_groups[0]['params'] == list(model.head.parameters())


def test_groups_survive_fp16_master_weights():
    """bf16 master mode: after the hook's before_run each group holds the fp32 master of its
    parameter, with its lr and weight decay, and steps write the masters back into the model."""
    torch.manual_seed(0)
    model = TinyNet()
    model.conv2.requires_grad_(False)
    optimizer = build_optimizer(model, dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-3, paramwise_cfg=dict(
        bias_lr_mult=2., bias_decay_mult=0.5, norm_decay_mult=0.,
        custom_keys={'fc': dict(lr_mult=0.1, decay_mult=4.)})))
    names = [n for n, _ in model.named_parameters()]
    originals = [p.detach().clone() for p in model.parameters()]
    model_params = list(model.parameters())
    runner = make_runner(model, optimizer, max_iters=3)
    hook = Fp16OptimizerHook(dtype='bfloat16', mode='master')
    hook.before_run(runner)
    expected = {'conv1.weight': (0.05, 1e-3), 'conv1.bias': (0.1, 5e-4), 'bn1.weight': (0.05, 0.), 'bn1.bias': (0.05, 0.),
                'conv2.weight': (0.05, 1e-3), 'conv2.bias': (0.05, 1e-3),     # frozen
                'gn2.weight': (0.05, 0.), 'gn2.bias': (0.05, 0.), 'fc.weight': (0.005, 4e-3), 'fc.bias': (0.005, 4e-3)}
    groups = optimizer.param_groups
    assert len(groups) == len(names)
    for name, original, model_param, group in zip(names, originals, model_params, groups):
        (master,) = group['params']
        assert (group['lr'], group['weight_decay']) == pytest.approx(expected[name]), name
        assert master is not model_param and master.dtype is torch.float32, name
        assert torch.equal(master, original), name
    assert model.conv1.weight.dtype is torch.bfloat16
    drive_fp16(runner, hook, batches(3))
    for name, original, model_param, group in zip(names, originals, model_params, groups):
        (master,) = group['params']
        assert torch.equal(model_param, master.to(model_param.dtype)), name
        assert torch.equal(master, original) == name.startswith('conv2'), name


class Regressor(nn.Module):
    """No BatchNorm and no dropout, so accumulating equals a step over the concatenated batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 1)

    def predict(self, img):
        return self.fc(F.relu(self.conv(img)).mean((2, 3))).squeeze(1)

    def forward(self, img, img_metas, target, **kwargs):
        return dict(loss_reg=F.mse_loss(self.predict(img), target))


def regression_data(n=10):
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(n, 3, 8, 8, generator=gen)
    targets = 2.0 + 10 * imgs.mean((1, 2, 3))
    return [dict(img=imgs[i], img_metas=dict(idx=i), target=targets[i]) for i in range(n)], imgs, targets


def reference_windows(model, imgs, targets, windows, grad_clip):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for start, end in windows:
        optimizer.zero_grad()
        F.mse_loss(model.predict(imgs[start:end]), targets[start:end]).backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    return model


@pytest.mark.parametrize('grad_clip', [None, 0.5])
def test_gradient_cumulative_equals_one_step_over_the_concatenated_batch(grad_clip):
    """5 iterations of batch 2 in windows of 2: steps over samples [0:4], [4:8] and the last,
    incomplete window [8:10] (its loss divided by 1, not 2); with grad_clip the summed grads are clipped."""
    data, imgs, targets = regression_data(10)
    windows = [(0, 4), (4, 8), (8, 10)]
    torch.manual_seed(0)
    model = Regressor()
    torch.manual_seed(0)
    reference = reference_windows(Regressor(), imgs, targets, windows, grad_clip=grad_clip)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    runner = Runner(model, optimizer, max_iters=5, logger=logging.getLogger('mixprec.test'))
    hook_cfg = dict(type='GradientCumulativeOptimizerHook', cumulative_iters=2)
    if grad_clip:
        hook_cfg['grad_clip'] = dict(max_norm=grad_clip)
    runner.register_training_hooks(None, hook_cfg, None, None)
    runner.run(DataLoader(data, batch_size=2, shuffle=False, collate_fn=toy_collate))
    result = torch.cat([p.detach().flatten() for p in model.parameters()])
    expected = torch.cat([p.detach().flatten() for p in reference.parameters()])
    assert torch.allclose(result, expected, rtol=1e-5, atol=1e-7)
    if grad_clip:
        torch.manual_seed(0)
        unclipped = reference_windows(Regressor(), imgs, targets, windows, grad_clip=None)
        assert not torch.allclose(expected, torch.cat([p.detach().flatten() for p in unclipped.parameters()]),
                                  rtol=1e-3)   # the clip mattered


@pytest.mark.parametrize('hook_cfg', [dict(type='OptimizerHook'),
                                      dict(type='GradientCumulativeOptimizerHook', cumulative_iters=2)])
def test_gradients_are_released_before_the_forward_pass_and_seen_after_the_step(hook_cfg):
    """The previous step's gradients are gone while the next forward runs (inside an accumulation
    window they stay), and a later hook's after_train_iter still reads this step's."""
    data, _, _ = regression_data(8)
    torch.manual_seed(0)
    model = Regressor()
    during_forward, after_step = [], []
    model.register_forward_pre_hook(lambda m, args: during_forward.append(
        [p.grad is None for p in m.parameters()]))

    class GradReader(Hook):
        def after_train_iter(self, runner) -> None:
            after_step.append(all(p.grad is not None for p in runner.model.parameters()))

    runner = Runner(model, torch.optim.SGD(model.parameters(), lr=0.1), max_iters=4,
                    logger=logging.getLogger('mixprec.test'))
    runner.register_training_hooks(None, hook_cfg, None, None)
    runner.register_hook(GradReader(), priority='LOW')
    runner.run(DataLoader(data, batch_size=2, shuffle=False, collate_fn=toy_collate))
    released = [all(flags) for flags in during_forward]
    window = hook_cfg.get('cumulative_iters', 1)
    assert released == [i % window == 0 for i in range(4)] and after_step == [True] * 4


@pytest.mark.slow
def test_train_tool_paramwise_direct_fp16_hook_and_schedules(tmp_path):
    """tools/train.py: paramwise groups, a cosine lr with linear warm-up over iterations and a cosine
    momentum, under an ``optimizer_config`` that names the Fp16OptimizerHook directly (no ``fp16``)."""
    extra = '''
fp16 = None
optimizer = dict(lr=0.02, paramwise_cfg=dict(bias_lr_mult=2., norm_decay_mult=0.,
                                             custom_keys={'backbone.layer': dict(lr_mult=0.1)}))
optimizer_config = dict(_delete_=True, type='Fp16OptimizerHook', loss_scale=512., dtype='bfloat16', mode='master',
                        grad_clip=dict(max_norm=35, norm_type=2))
lr_config = dict(_delete_=True, policy='CosineAnnealing', by_epoch=False, min_lr_ratio=0.01,
                 warmup='linear', warmup_iters=2, warmup_ratio=0.1)
momentum_config = dict(policy='CosineAnnealing', by_epoch=False, min_momentum_ratio=0.5)
'''
    config = write_tiny_config(str(tmp_path), base='configs/shapes/faster_rcnn_r18_fpn_bf16_shapes.py', epochs=1,
                               num_train=8, img_size=64, extra=extra)
    work_dir = str(tmp_path / 'work')
    load_tool('tools/train.py').main([config, '--work-dir', work_dir, '--seed', '0', '--no-validate'])

    def schedule(base, k, total):
        regular = base * 0.01 + 0.5 * (base - base * 0.01) * (1 + math.cos(math.pi * k / total))
        return regular * (1 - (1 - k / 2) * 0.9) if k < 2 else regular

    records = [json.loads(line) for line in open(glob.glob(os.path.join(work_dir, '*.log.json'))[0])]
    train = [r for r in records if r.get('mode') == 'train']
    total = len(train)
    assert total >= 4
    # the logged lr is the first group's (backbone.conv1.weight), rounded to 5 decimals
    assert [r['lr'] for r in train] == pytest.approx([schedule(0.02, k, total) for k in range(total)], abs=5.1e-6)
    assert all(r['loss_scale'] == 512. for r in train)

    from mixprec.config import load_config
    from mixprec.models import build_detector
    names = [n for n, _ in build_detector(load_config(config).model).named_parameters()]
    checkpoint = torch.load(os.path.join(work_dir, 'latest.pth'), weights_only=True)
    groups = checkpoint['optimizer']['param_groups']
    assert len(groups) == len(names) and all(len(g['params']) == 1 for g in groups)
    last = total - 1
    assert any(n.startswith('backbone.layer') for n in names) and 'backbone.bn1.weight' in names
    for name, group in zip(names, groups):
        custom = name.startswith('backbone.layer')     # the custom key wins over the norm and bias rules
        norm = not custom and name.startswith('backbone.bn1.')
        base = 0.02 * (0.1 if custom else 2. if name.endswith('.bias') and not norm else 1.)
        assert group['lr'] == pytest.approx(schedule(base, last, total), rel=1e-6), name
        assert group['weight_decay'] == pytest.approx(0. if norm else 1e-4), name
        assert group['momentum'] == pytest.approx(0.45 + 0.5 * 0.45 * (1 + math.cos(math.pi * last / total))), name
    assert checkpoint['meta']['fp16']['dtype'] == 'bfloat16'
