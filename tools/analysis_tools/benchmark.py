"""Inference speed and training speed / memory of a detector config (the model zoo's columns).

    python tools/analysis_tools/benchmark.py CONFIG [CHECKPOINT] [--fuse-conv-bn] [--max-iter 50]
        [--log-interval 50] [--repeat-num 1] [--img-scale W H] [--samples-per-gpu N] [--cfg-options ...]
    python tools/analysis_tools/benchmark.py CONFIG --train [--train-iters 20] [--warmup 5] ...

Inference: the config's test data and the model of ``init_detector`` (wrapped for fp16 when the
config has ``fp16``); ``--warmup`` iterations, then images/s until ``--max-iter``, printed as
mmdetection's benchmark prints it (``Overall fps: X img / s``).

``--train``: fp32 and the config's mixed precision (its ``fp16`` key; without one, ``dtype='auto'``:
bfloat16 on the CPU, float16 on CUDA) each in a fresh subprocess: build the model and optimizer, train
``--warmup`` + ``--train-iters`` iterations on the config's training data under the Runner with the
config's lr schedule (its warm-up keeps a fresh model from diverging) and the OptimizerHook or the
Fp16OptimizerHook, and report s/iter (data loading included, after warm-up) and
the peak memory of the measured iterations: ``torch.cuda.max_memory_allocated`` on GPUs, the
process's peak RSS on the CPU. Then, unless ``--max-iter 0``, the trained model's inference fps.
The table ends with the ratios fp32 / mixed. The backbone's pretrained init is dropped: weights do
not change the timing and the benchmark needs no downloaded file.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from typing import Iterator, Optional, Sequence

import torch

from mixprec.apis import build_optimizer, init_detector, set_random_seed
from mixprec.cli import run_cli
from mixprec.config import Config, DictAction, load_config
from mixprec.data import build_dataloader, build_dataset
from mixprec.engine import Runner, move_to_device
from mixprec.fp16.precision import describe_device
from mixprec.models import build_detector, place_model
from mixprec.registry import HOOKS, ConfigError

RESULT_PREFIX = 'benchmark-result: '
PRECISIONS = ('fp32', 'mixed')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Benchmark a detector: inference fps, or training s/iter and memory')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint for inference (random weights without one)')
    parser.add_argument('--fuse-conv-bn', action='store_true',
                        help='(mmdetection\'s option; always on) BatchNorm folds into the convolutions at inference')
    parser.add_argument('--repeat-num', type=int, default=1, help='repeat the inference measurement')
    parser.add_argument('--max-iter', type=int, default=50, help='inference iterations, warm-up included '
                                                                 '(0 with --train: no fps)')
    parser.add_argument('--log-interval', type=int, default=50, help='print the running fps every N iterations')
    parser.add_argument('--warmup', type=int, default=5, help='iterations left out of the measurements')
    parser.add_argument('--train', action='store_true', help='measure training s/iter and memory, fp32 vs mixed')
    parser.add_argument('--train-iters', type=int, default=20, help='measured training iterations (after warm-up)')
    parser.add_argument('--img-scale', type=int, nargs=2, metavar=('W', 'H'),
                        help='override img_scale of the Resize / MultiScaleFlipAug steps of the pipelines')
    parser.add_argument('--samples-per-gpu', type=int, help='images per batch (default: test 1, train the config\'s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys')
    parser.add_argument('--precision', choices=PRECISIONS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Counts that make a measurement possible."""
    if args.warmup < 0 or args.log_interval < 1 or args.repeat_num < 1:
        raise ConfigError('--warmup must be >= 0, --log-interval and --repeat-num >= 1')
    if args.samples_per_gpu is not None and args.samples_per_gpu < 1:
        raise ConfigError(f'--samples-per-gpu must be >= 1, got {args.samples_per_gpu}')
    if args.train and args.train_iters < 1:
        raise ConfigError(f'--train-iters must be >= 1, got {args.train_iters}')
    if (args.max_iter or not args.train) and args.max_iter <= args.warmup:
        raise ConfigError(f'--max-iter ({args.max_iter}) must exceed --warmup ({args.warmup})')


def default_device() -> torch.device:
    return torch.device('cuda', torch.cuda.current_device()) if torch.cuda.is_available() else torch.device('cpu')


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def set_img_scale(node, scale: tuple[int, int]) -> None:
    """In place: every Resize / MultiScaleFlipAug step with an ``img_scale`` gets ``scale`` (W, H)."""
    if isinstance(node, (list, tuple)):
        for child in node:
            set_img_scale(child, scale)
    elif isinstance(node, dict):
        if node.get('type') in ('Resize', 'MultiScaleFlipAug') and 'img_scale' in node:
            node['img_scale'] = scale
        for value in node.values():
            if isinstance(value, (dict, list, tuple)):
                set_img_scale(value, scale)


def prepare_config(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config, args.cfg_options)
    if 'data' not in cfg:
        raise ConfigError(f'{args.config}: the config has no data section')
    if args.img_scale:
        set_img_scale(cfg.data, tuple(args.img_scale))
    if cfg.get('cudnn_benchmark', False):
        torch.backends.cudnn.benchmark = True
    return cfg


# ---------------------------------------------------------------- inference
def build_test_loader(cfg: Config, samples_per_gpu: Optional[int]):
    """The config's test set in order, ``samples_per_gpu`` images a batch (default 1, as the model zoo);
    workers persist, so cycling through a small set does not restart them."""
    test_cfg = dict(cfg.data.test)
    test_cfg.pop('samples_per_gpu', None)
    dataset = build_dataset(test_cfg, dict(test_mode=True))
    return build_dataloader(dataset, samples_per_gpu or 1, cfg.data.get('workers_per_gpu', 0), shuffle=False,
                            persistent_workers=True)


def cycle(loader) -> Iterator[dict]:
    """The loader's batches over and over (a small test set still gives ``--max-iter`` iterations)."""
    while True:
        yield from loader


def batch_images(data: dict) -> int:
    """Images in a test batch (``img_metas`` is a list over augmentations of lists, or a flat list)."""
    metas = data['img_metas']
    return len(metas[0]) if metas and isinstance(metas[0], list) else len(metas)


def measure_fps(model: torch.nn.Module, loader, max_iter: int, warmup: int, log_interval: int,
                device: torch.device) -> float:
    """Images/s of ``model(return_loss=False)`` over iterations ``warmup`` .. ``max_iter`` - 1."""
    model.eval()
    images, elapsed = 0, 0.0
    for i, data in enumerate(cycle(loader)):
        data = move_to_device(data, device)
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            model(return_loss=False, rescale=True, **data)
        synchronize(device)
        if i >= warmup:
            elapsed += time.perf_counter() - start
            images += batch_images(data)
            if (i + 1) % log_interval == 0:
                print(f'Done image [{i + 1:<3}/ {max_iter}], fps: {images / elapsed:.1f} img / s', flush=True)
        if i + 1 == max_iter:
            break
    fps = images / elapsed
    print(f'Overall fps: {fps:.1f} img / s', flush=True)
    return fps


def benchmark_inference(args: argparse.Namespace, cfg: Config) -> list[float]:
    """fps of ``--repeat-num`` measurements of the config's model (and checkpoint)."""
    device = default_device()
    loader = build_test_loader(cfg, args.samples_per_gpu)
    model = init_detector(cfg, args.checkpoint, device=device, classes=loader.dataset.CLASSES)
    runs = [measure_fps(model, loader, args.max_iter, args.warmup, args.log_interval, device)
            for _ in range(args.repeat_num)]
    if len(runs) > 1:
        print(f'Overall fps of {len(runs)} runs: {", ".join(f"{f:.1f}" for f in runs)} img / s')
        print(f'Mean Overall fps: {sum(runs) / len(runs):.1f} img / s')
    return runs


# ---------------------------------------------------------------- training, one precision per process
def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (VmHWM) of this process; False where that is not possible."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """VmHWM of this process in MB (the lifetime ru_maxrss where /proc is not there)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepTimer:
    """Wall time between consecutive iteration ends, and peak memory from the end of warm-up."""

    default_priority = 95

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup = warmup
        self.device = device
        self.times: list[float] = []
        self._last = 0.0

    def before_run(self, runner) -> None:
        if self.warmup == 0:
            self._reset_peak()
        self._last = time.perf_counter()

    def after_train_iter(self, runner) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        self.times.append(now - self._last)
        if len(self.times) == self.warmup:
            self._reset_peak()
        self._last = time.perf_counter()

    def _reset_peak(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()

    def seconds_per_iter(self) -> float:
        measured = self.times[self.warmup:]
        return sum(measured) / len(measured)

    def peak_memory_mb(self) -> float:
        if self.device.type == 'cuda':
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        return peak_rss_mb()


def optimizer_hook_cfg(cfg: Config, precision: str) -> dict:
    """OptimizerHook for fp32; Fp16OptimizerHook(**optimizer_config, **fp16) for mixed, as train.py builds it."""
    optimizer_config = {k: v for k, v in dict(cfg.get('optimizer_config') or {}).items() if k != 'type'}
    if precision == 'fp32':
        return dict(type='OptimizerHook', **optimizer_config)
    fp16_cfg = dict(cfg.get('fp16') or dict(dtype='auto'))
    return dict(type='Fp16OptimizerHook', **optimizer_config, **fp16_cfg, distributed=False)


def without_pretrained(model_cfg: dict) -> dict:
    """The model config without the backbone's pretrained init (no torchvision file needed)."""
    model_cfg = dict(model_cfg)
    if isinstance(model_cfg.get('backbone'), dict):
        model_cfg['backbone'] = dict(model_cfg['backbone'], init_cfg=None)
    model_cfg.pop('pretrained', None)
    return model_cfg


def precision_label(hook) -> str:
    """'fp32', or the Fp16OptimizerHook's dtype and mode ('bfloat16 master')."""
    dtype = getattr(hook, 'dtype', None)
    if dtype is None:
        return 'fp32'
    if getattr(hook, 'declined', None):
        return 'fp32 (auto declined)'
    return f'{str(dtype).replace("torch.", "")} {hook.mode}'


def train_one_precision(args: argparse.Namespace, cfg: Config, precision: str) -> dict:
    """Train ``--warmup + --train-iters`` iterations in this process; the measured numbers as a dict."""
    device = default_device()
    set_random_seed(0)
    model = place_model(build_detector(without_pretrained(cfg.model)), device)
    dataset = build_dataset(cfg.data.train)
    samples = args.samples_per_gpu or cfg.data.samples_per_gpu
    loader = build_dataloader(dataset, samples, cfg.data.get('workers_per_gpu', 0), seed=0)
    optimizer = build_optimizer(model, cfg.optimizer)
    logger = logging.getLogger('mixprec.benchmark')
    logger.setLevel(logging.WARNING)
    runner = Runner(model, optimizer, logger=logger, max_iters=args.warmup + args.train_iters)
    hook = HOOKS.build(optimizer_hook_cfg(cfg, precision))
    timer = StepTimer(args.warmup, device)
    runner.register_training_hooks(cfg.get('lr_config'), hook, None, None)
    runner.register_hook(timer)
    runner.run(loader)
    result = dict(precision=precision, label=precision_label(hook), device=device.type,
                  s_per_iter=timer.seconds_per_iter(), memory_mb=timer.peak_memory_mb(),
                  samples_per_gpu=samples)
    if args.max_iter:
        test_loader = build_test_loader(cfg, args.samples_per_gpu)
        result['fps'] = measure_fps(runner.model, test_loader, args.max_iter, args.warmup, args.log_interval, device)
    return result


def run_precision_subprocess(argv: Sequence[str], precision: str) -> dict:
    """This tool again with ``--precision``: a fresh process, so its peak memory is its own."""
    command = [sys.executable, os.path.abspath(__file__), *argv, '--precision', precision]
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    results = [line[len(RESULT_PREFIX):] for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    sys.stdout.write(''.join(f'[{precision}] {line}\n' for line in proc.stdout.splitlines()
                             if not line.startswith(RESULT_PREFIX)))
    if proc.returncode != 0 or not results:
        print(f'error: the {precision} training run failed (exit code {proc.returncode}); see above',
              file=sys.stderr)
        sys.exit(proc.returncode or 1)
    return json.loads(results[-1])


def format_train_table(fp32: dict, mixed: dict) -> str:
    """The two runs side by side and the ratios fp32 / mixed."""
    kind = 'max_memory_allocated' if fp32['device'] == 'cuda' else 'peak RSS'
    has_fps = 'fps' in fp32 and 'fps' in mixed
    lines = [f'training on {fp32["device"]} ({describe_device(default_device())}), {fp32["samples_per_gpu"]} images per iteration; '
             f'memory: {kind}',
             f'{"precision":<20}{"s/iter":>10}{"memory (MB)":>14}' + (f'{"fps (img/s)":>14}' if has_fps else '')]
    for run in (fp32, mixed):
        row = f'{run["label"]:<20}{run["s_per_iter"]:>10.4f}{run["memory_mb"]:>14.1f}'
        lines.append(row + (f'{run["fps"]:>14.1f}' if has_fps else ''))
    ratio = (f'ratio fp32 / mixed: time {fp32["s_per_iter"] / mixed["s_per_iter"]:.2f}, '
             f'memory {fp32["memory_mb"] / mixed["memory_mb"]:.2f}')
    if has_fps:
        ratio += f', fps {fp32["fps"] / mixed["fps"]:.2f}'
    return '\n'.join(lines + [ratio])


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    check_args(args)
    cfg = prepare_config(args)
    if args.precision is not None:
        print(RESULT_PREFIX + json.dumps(train_one_precision(args, cfg, args.precision)), flush=True)
    elif args.train:
        runs = [run_precision_subprocess(argv, precision) for precision in PRECISIONS]
        print(format_train_table(*runs))
    else:
        print(f'inference on {describe_device(default_device())}', flush=True)
        benchmark_inference(args, cfg)


if __name__ == '__main__':
    run_cli(main)
