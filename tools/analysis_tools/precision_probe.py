"""Is mixed precision faster here? Train a few iterations of a config in fp32 and in each mixed
precision this device can run, and recommend one.

    python tools/analysis_tools/precision_probe.py CONFIG [--iters 4] [--warmup 2] [--all] [--cfg-options ...]

Every setting runs in a fresh process (its peak memory is its own) on the config's own model, data,
batch size, data workers and threads, under the Runner with the config's lr schedule: fp32 with the
OptimizerHook, then ``Fp16OptimizerHook`` in master and autocast mode for bfloat16 and, on CUDA,
float16. A dtype without a fast path on the device (bf16 on a CPU without AVX512-BF16 / AMX, float16
on a CPU) is timed over a single iteration after one warm-up, so the probe stays short where that
setting is many times slower; CPU float16 only with ``--all``. The table gives s/iter (data waiting
included), peak memory (``max_memory_allocated`` on CUDA, peak RSS on the CPU), the share of the
iteration spent waiting for data, and the ratios against fp32; then the fastest setting as a config
line, and what ``dtype='auto'`` picks on this device.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from typing import Optional, Sequence

import torch

import benchmark as bench  # this folder is on sys.path when the tool runs as a script
from mixprec.apis import build_optimizer, set_random_seed, setup_threads
from mixprec.cli import run_cli
from mixprec.config import Config, DictAction, load_config
from mixprec.data import build_dataloader, build_dataset
from mixprec.engine import Runner
from mixprec.fp16.precision import choose_dtype, describe_device, dtype_name, slow_dtype_reason
from mixprec.models import build_detector, place_model
from mixprec.registry import HOOKS, ConfigError

RESULT_PREFIX = 'precision-probe-result: '
SPEEDUP_TO_RECOMMEND = 1.05  # a mixed setting must beat fp32 by this factor to be recommended


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Is mixed precision faster on this device, for this config?')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--iters', type=int, default=4, help='measured iterations per setting (after warm-up)')
    parser.add_argument('--warmup', type=int, default=2, help='iterations left out of the measurement')
    parser.add_argument('--all', action='store_true', help='also float16 on the CPU (emulated almost everywhere)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys')
    parser.add_argument('--setting', help=argparse.SUPPRESS)  # one setting, in the child process
    return parser.parse_args(argv)


def probe_device() -> torch.device:
    return torch.device('cuda', torch.cuda.current_device()) if torch.cuda.is_available() else torch.device('cpu')


def settings_for(device: torch.device, everything: bool) -> list[dict]:
    """fp32 first, then (dtype, mode) for each half dtype the device runs; ``slow`` marks the dtypes
    without a fast path there (measured over one iteration)."""
    dtypes = [torch.bfloat16]
    if device.type == 'cuda' or everything:
        dtypes.append(torch.float16)
    if device.type == 'cuda' and not torch.cuda.is_bf16_supported():
        dtypes.remove(torch.bfloat16)
    settings = [dict(name='fp32', dtype=None, mode=None, slow=None)]
    for dtype in dtypes:
        slow = slow_dtype_reason(dtype, device)
        for mode in ('master', 'autocast'):
            settings.append(dict(name=f'{dtype_name(dtype)} {mode}', dtype=dtype_name(dtype), mode=mode, slow=slow))
    return settings


def hook_cfg(cfg: Config, setting: dict) -> dict:
    """The optimizer hook of ``setting``, with the config's optimizer_config (and its fp16 loss scale)."""
    optimizer_config = {k: v for k, v in dict(cfg.get('optimizer_config') or {}).items() if k != 'type'}
    if setting['dtype'] is None:
        return dict(type='OptimizerHook', **optimizer_config)
    fp16_cfg = {k: v for k, v in dict(cfg.get('fp16') or {}).items() if k not in ('dtype', 'mode')}
    return dict(type='Fp16OptimizerHook', **optimizer_config, **fp16_cfg, dtype=setting['dtype'],
                mode=setting['mode'], distributed=False)


class DataWait:
    """Seconds each iteration waited for its batch: from the end of the previous iteration's last
    hook (the lowest priority, so after the optimizer step) to the start of this one."""

    priority = 100

    def __init__(self) -> None:
        self.waits: list[float] = []
        self._last = 0.0

    def before_run(self, runner) -> None:
        self._last = time.perf_counter()

    def before_train_iter(self, runner) -> None:
        self.waits.append(time.perf_counter() - self._last)

    def after_train_iter(self, runner) -> None:
        self._last = time.perf_counter()


def measure_setting(cfg: Config, setting: dict, warmup: int, iters: int) -> dict:
    """Train ``warmup + iters`` iterations of ``setting`` in this process; the measured numbers."""
    device = probe_device()
    setup_threads(cfg)
    set_random_seed(0)
    model = place_model(build_detector(bench.without_pretrained(cfg.model)), device)
    loader = build_dataloader(build_dataset(cfg.data.train), cfg.data.samples_per_gpu,
                              cfg.data.get('workers_per_gpu', 0), seed=0)
    logger = logging.getLogger('mixprec.precision_probe')
    logger.setLevel(logging.ERROR)
    runner = Runner(model, build_optimizer(model, cfg.optimizer), logger=logger,
                    max_iters=warmup + iters)
    timer, wait = bench.StepTimer(warmup, device), DataWait()
    runner.register_training_hooks(cfg.get('lr_config'), HOOKS.build(hook_cfg(cfg, setting)), None, None)
    runner.register_hook(timer)
    runner.register_hook(wait)
    runner.run(loader)
    measured = timer.times[warmup:]
    return dict(setting=setting['name'], s_per_iter=sum(measured) / len(measured),
                memory_mb=timer.peak_memory_mb(), data_share=sum(wait.waits[warmup:]) / sum(measured),
                iters=len(measured), loss=float(runner.outputs['loss']))


def run_setting(argv: Sequence[str], setting: dict, warmup: int, iters: int) -> dict:
    """This tool again for one setting, in a fresh process; a failure is reported, not raised."""
    command = [sys.executable, os.path.abspath(__file__), *argv, '--setting', json.dumps(setting),
               '--warmup', str(warmup), '--iters', str(iters)]
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [line[len(RESULT_PREFIX):] for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not results:
        lines = proc.stderr.strip().splitlines()
        return dict(setting=setting['name'], error=lines[-1] if lines else f'exit code {proc.returncode}')
    return json.loads(results[-1])


def format_report(device: torch.device, cfg: Config, rows: list[dict], settings: list[dict]) -> str:
    """The table, the recommendation and what dtype='auto' does here."""
    fp32 = rows[0]
    lines = [f'precision probe: {cfg.filename} on {describe_device(device)}; '
             f'{cfg.data.samples_per_gpu} images/iter, {cfg.data.get("workers_per_gpu", 0)} data worker(s), '
             f'{torch.get_num_threads()} thread(s); memory: '
             + ('max_memory_allocated' if device.type == 'cuda' else 'peak RSS'),
             f'{"setting":<20}{"s/iter":>9}{"peak MB":>10}{"data wait":>11}{"time/fp32":>11}{"memory/fp32":>13}  iters']
    for row, setting in zip(rows, settings):
        if 'error' in row:
            lines.append(f'{row["setting"]:<20}  failed: {row["error"]}')
            continue
        ratio = (f'{row["s_per_iter"] / fp32["s_per_iter"]:>10.2f}x{row["memory_mb"] / fp32["memory_mb"]:>12.2f}x'
                 if 'error' not in fp32 else f'{"-":>11}{"-":>13}')
        note = '  (no fast path: ' + setting['slow'] + ')' if setting['slow'] else ''
        lines.append(f'{row["setting"]:<20}{row["s_per_iter"]:>9.3f}{row["memory_mb"]:>10.0f}'
                     f'{100 * row["data_share"]:>10.0f}%{ratio}  {row["iters"]:>5}{note}')
    lines.append(recommendation(rows))
    choice = choose_dtype(device)
    lines.append(f"dtype='auto' here: {dtype_name(choice.dtype)} ({choice.reason})")
    return '\n'.join(lines)


def recommendation(rows: list[dict]) -> str:
    fp32 = rows[0]
    if 'error' in fp32:
        return 'recommended: none (the fp32 run failed)'
    mixed = [r for r in rows[1:] if 'error' not in r]
    best = min(mixed, key=lambda r: r['s_per_iter'], default=None)
    if best is None or fp32['s_per_iter'] / best['s_per_iter'] < SPEEDUP_TO_RECOMMEND:
        return 'recommended: fp32 (no mixed precision is faster here): fp16 = None  # or --cfg-options fp16=None'
    dtype, mode = best['setting'].split()
    return (f'recommended: {best["setting"]} ({fp32["s_per_iter"] / best["s_per_iter"]:.2f}x the fp32 speed): '
            f"fp16 = dict(dtype='{dtype}', mode='{mode}')")


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        raise ConfigError(f'--iters must be >= 1 and --warmup >= 0, got {args.iters} and {args.warmup}')
    cfg = load_config(args.config, args.cfg_options)
    if args.setting is not None:
        result = measure_setting(cfg, json.loads(args.setting), args.warmup, args.iters)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return
    device = probe_device()
    setup_threads(cfg)  # as the children (and tools/train.py) run, for the report
    settings = settings_for(device, args.all)
    rows = []
    for setting in settings:
        warmup, iters = (min(args.warmup, 1), 1) if setting['slow'] else (args.warmup, args.iters)
        rows.append(run_setting(argv, setting, warmup, iters))
        print(f'  {setting["name"]}: ' + (f'{rows[-1]["s_per_iter"]:.3f} s/iter' if 'error' not in rows[-1]
                                          else 'failed'), flush=True)
    print(format_report(device, cfg, rows, settings))


if __name__ == '__main__':
    run_cli(main)
