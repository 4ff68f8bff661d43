"""Time the Fp16OptimizerHook adds to an iteration beyond backward + optimizer step.

The model has a ResNet-50-FPN detector's parameter set (torchvision ResNet-50, FPN lateral and
output convs, an RPN conv and two 1024-wide box-head FCs: ~43M parameters in ~190 tensors),
built from torch.nn with random weights. Each iteration runs the forward (under ``auto_fp16``),
then the hook's ``after_train_iter``; inside it ``Tensor.backward`` and ``optimizer.step`` are
timed, and the rest (zeroing, grad copy, unscale + finite check, clip, copy back, logging) is
the hook's overhead, together with the time of its per-parameter gradient hooks (which run inside
backward; timed through a wrapper, so slightly overestimated) and of ``before_train_iter`` (the
norm statistics snapshot), reported as a fraction of the whole iteration (median over iterations).

    python tools/analysis_tools/benchmark_fp16_hook.py --dtype bfloat16 --img-size 512
"""
from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mixprec.fp16 import Fp16OptimizerHook, auto_fp16, force_fp32
from mixprec.fp16.precision import describe_device


class DetectorSizedNet(nn.Module):
    """ResNet-50 + FPN (256 channels) + RPN conv + 2-FC box head; [B, 3, H, W] -> scalar loss."""

    def __init__(self) -> None:
        super().__init__()
        resnet = torchvision.models.resnet50(weights=None)
        self.backbone = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.stages = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, 256, 1) for c in (256, 512, 1024, 2048))
        self.fpn_convs = nn.ModuleList(nn.Conv2d(256, 256, 3, padding=1) for _ in range(4))
        self.rpn_conv = nn.Conv2d(256, 256, 3, padding=1)
        self.rpn_cls = nn.Conv2d(256, 3, 1)
        self.rpn_reg = nn.Conv2d(256, 12, 1)
        self.shared_fcs = nn.Sequential(nn.Linear(256 * 7 * 7, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU())
        self.fc_cls = nn.Linear(1024, 81)
        self.fc_reg = nn.Linear(1024, 320)
        self.fp16_enabled = False

    @auto_fp16(apply_to=('img',))
    def forward(self, img: torch.Tensor) -> list[torch.Tensor]:
        x = self.backbone(img)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(3, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        rpn = [F.relu(self.rpn_conv(o)) for o in outs]
        rpn_out = [torch.cat([self.rpn_cls(r).flatten(1), self.rpn_reg(r).flatten(1)], 1) for r in rpn]
        rois = F.adaptive_avg_pool2d(outs[0], 7).flatten(1)
        box = self.shared_fcs(rois)
        return rpn_out + [self.fc_cls(box), self.fc_reg(box)]

    @force_fp32(apply_to=('outputs',))
    def loss(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        return sum(o.float().square().mean() for o in outputs)


class _Timer:
    """Accumulates the wall time spent inside wrapped callables during one iteration."""

    def __init__(self) -> None:
        self.total = 0.

    def wrap(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - start
        return timed


class _LogBuffer:
    def update(self, values: dict, count: int = 1) -> None:
        self.last = values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dtype', default='bfloat16', choices=['bfloat16', 'float16', 'auto'])
    parser.add_argument('--mode', default='master', choices=['master', 'autocast'])
    parser.add_argument('--img-size', type=int, default=512)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--iters', type=int, default=4, help='timed iterations (after 2 warm-up ones)')
    parser.add_argument('--loss-scale', default=None,
                        help="a number or 'dynamic' (default: the hook's, static 1.0 for bf16)")
    parser.add_argument('--no-clip', action='store_true', help='run without grad_clip')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: leave default)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DetectorSizedNet()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    runner = SimpleNamespace(model=model, optimizer=optimizer, outputs={}, log_buffer=_LogBuffer(),
                             iter=0, meta={}, max_iters=None, logger=None)
    loss_scale = args.loss_scale
    if loss_scale not in (None, 'dynamic'):
        loss_scale = float(loss_scale)
    hook = Fp16OptimizerHook(dtype=args.dtype, mode=args.mode, loss_scale=loss_scale,
                             grad_clip=None if args.no_clip else dict(max_norm=35, norm_type=2))
    hook.before_run(runner)
    print(f'device: {describe_device("cpu")}')
    print(f'model: {sum(p.numel() for p in params) / 1e6:.1f}M parameters in {len(params)} tensors; '
          f'{args.dtype} {args.mode}; input {args.batch}x3x{args.img_size}x{args.img_size}; '
          f'{torch.get_num_threads()} threads; grad_clip={not args.no_clip}; '
          f'loss_scale={hook.loss_scaler.loss_scale:g} ({hook.loss_scaler.mode})')

    timer, grad_hooks = _Timer(), _Timer()
    flat = hook._grads
    flat.remove_hooks()
    flat._handles = [p.register_hook(grad_hooks.wrap(flat._grad_hook(i))) for i, p in enumerate(flat.params)]
    backward = torch.Tensor.backward
    torch.Tensor.backward = timer.wrap(backward)
    optimizer.step = timer.wrap(optimizer.step)
    img = torch.randn(args.batch, 3, args.img_size, args.img_size)
    rows = []
    try:
        for i in range(args.iters + 2):
            start = time.perf_counter()
            hook.before_train_iter(runner)
            before_done = time.perf_counter()
            runner.outputs = {'loss': model.loss(model(img)), 'num_samples': args.batch}
            forward_done = time.perf_counter()
            timer.total = grad_hooks.total = 0.
            hook.after_train_iter(runner)
            end = time.perf_counter()
            runner.iter += 1
            if i >= 2:
                hook_time = (end - forward_done) + (before_done - start)
                own = hook_time - (timer.total - grad_hooks.total)
                rows.append((end - start, forward_done - before_done, timer.total - grad_hooks.total, own))
    finally:
        torch.Tensor.backward = backward
    iteration, forward, bwd_step, overhead = (statistics.median(col) for col in zip(*rows))
    print(f'median per iteration: total {iteration * 1e3:.1f} ms, forward {forward * 1e3:.1f} ms, '
          f'backward + optimizer.step {bwd_step * 1e3:.1f} ms, hook overhead {overhead * 1e3:.1f} ms')
    print(f'hook overhead: {100 * overhead / iteration:.2f}% of the iteration (target < 3%)')
    print(f'last log: {runner.log_buffer.last}')


if __name__ == '__main__':
    main()
