"""The first GPU run's measurements in one command: correctness first, then the seed table's ratios.

    python tools/analysis_tools/gpu_check.py [--out DIR] [--models ...] [--budget 420] [--dry-run]
    (normally through tools/analysis_tools/gpu_check.sh, which also brings the dependencies along)

For Faster R-CNN, Mask R-CNN and RetinaNet R-50-FPN (random weights; ``benchmark_detectors``' models and
synthetic batch: images of 800 x 1344, mmdetection's 1333 x 800 padded to 32, 8 objects each, two an
iteration as the configs' two images a GPU), each detector in a process of its own, so that one that
fails or runs out of time still leaves the others' numbers:

1. correctness, for the same weights and batch (and, for the two-stage detectors, the same proposals,
   so that the R-CNN stage samples the same boxes): every loss term of the first iteration in float16
   master mode and in autocast mode within 1e-2 relative of fp32's (and 1e-6 absolute, for a term at
   zero); after five master-mode steps, at least one of them applied (not skipped for an overflow),
   every trainable model parameter equals its fp32 master cast to the parameter's dtype.
2. training (``benchmark_detectors.run_configuration``): ours in fp32, fp16 master and fp16 autocast
   modes, torchvision's detectors configured alike in fp32 and under ``torch.autocast`` with a
   GradScaler: median s/iter, peak ``torch.cuda.max_memory_allocated`` (the model zoo's memory
   column), and the host-device synchronisations of one iteration (``count_syncs``).
3. inference at batch 1 with 100 detections an image: fps, the same five configurations.

The report then sets each detector's fp16 / fp32 ratios of training memory and inference fps beside
mmdetection v2's (``SEED_TABLE``: its model zoo on a V100) with the training speed-up, and lists where
the synchronisations come from. TF32 and cuDNN settings are stated; PyTorch's defaults are kept.

Raw outputs, in the folder ``--out`` (default ``work_dirs/gpu_check/<date>_<time>``):
``environment.json``; ``results.jsonl``, one JSON object a measurement; ``<model>.log``, the output of
a detector's process; ``summary.txt``, the report.

``--dry-run`` runs all of it on the CPU at a tiny size (ResNet-18, width 32, 64 x 64, one timed
iteration, bfloat16 unless ``--dtype`` says otherwise): for CI, so that the check cannot rot; its
numbers mean nothing.

Exit codes: 0 every detector measured and correct; 1 a detector failed, ran out of time or failed a
correctness check; 2 bad arguments; 3 no CUDA device (without ``--dry-run``).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
import warnings
from typing import Optional, Sequence

import torch

import benchmark_detectors as bench  # this folder is on sys.path when the tool runs as a script

ROOT = bench.ROOT
MODELS = bench.MODELS
# mmdetection v2's model zoo, V100, fp16 / fp32: training memory and inference fps (its fp16 README)
SEED_TABLE = {'faster_rcnn': dict(memory=0.85, fps=1.35), 'mask_rcnn': dict(memory=0.82, fps=1.50),
              'retinanet': dict(memory=0.74, fps=1.66)}
CONFIGS = (('ours', 'fp32'), ('ours', 'master'), ('ours', 'autocast'), ('torchvision', 'fp32'),
           ('torchvision', 'autocast'))
RTOL = 1e-2
MASTER_STEPS = 5
RESULTS = 'results.jsonl'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', help='folder for the raw outputs (default work_dirs/gpu_check/<date>_<time>)')
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=MODELS)
    parser.add_argument('--budget', type=float, default=420.,
                        help='seconds for all detectors together (each gets what the others leave)')
    parser.add_argument('--iters', type=int, default=10, help='timed training iterations per configuration')
    parser.add_argument('--fps-iters', type=int, default=20, help='timed inference calls per configuration')
    parser.add_argument('--warmup', type=int, default=3, help='untimed iterations before them')
    parser.add_argument('--dtype', choices=('float16', 'bfloat16'),
                        help='half dtype (default float16; bfloat16 in a dry run, the CPU having fast kernels for it)')
    parser.add_argument('--dry-run', action='store_true', help='the whole check on the CPU at a tiny size')
    parser.add_argument('--child', choices=MODELS, help=argparse.SUPPRESS)  # one detector, in this process
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ('bfloat16' if args.dry_run else 'float16')
    if min(args.iters, args.fps_iters) < 1 or args.warmup < 0 or args.budget <= 0:
        parser.error('--iters and --fps-iters must be >= 1, --warmup >= 0, --budget > 0')
    return args


def bench_args(args: argparse.Namespace, predict: bool) -> argparse.Namespace:
    """``benchmark_detectors``' options for one measurement: training (two images, synchronisations
    counted) or inference (one image)."""
    options = bench.parse_args([])
    if args.dry_run:
        options.size, options.depth, options.width, options.num_gt = (64, 64), 18, 32, 3
        options.iters, options.warmup = 1, 1
    else:
        options.size, options.depth, options.width, options.num_gt = (800, 1344), 50, 256, 8
        options.iters, options.warmup = (args.fps_iters if predict else args.iters), args.warmup
    options.batch, options.predict, options.count_syncs = (1 if predict else 2), predict, not predict
    options.dtype = args.dtype
    return options


# ---------------------------------------------------------------- one detector (child process)
def fix_proposals(model: torch.nn.Module, batch: dict, num: int = 1000) -> None:
    """Make a two-stage detector's RPN hand the same random boxes (8 to 200 px) to the R-CNN stage
    whatever its precision (its own losses stay): with random weights its scores are near-ties that
    half-precision noise reorders, and the R-CNN losses would compare different boxes."""
    if not hasattr(model, 'rpn_head'):
        return
    gen = torch.Generator().manual_seed(0)
    h, w = batch['images'].shape[-2:]
    proposals = []
    for _ in range(batch['images'].shape[0]):
        wh = torch.rand(num, 2, generator=gen) * 192 + 8
        xy = torch.rand(num, 2, generator=gen) * (torch.tensor([w, h]) - wh).clamp(min=1)
        proposals.append(torch.cat([xy, xy + wh, torch.rand(num, 1, generator=gen)], 1).to(batch['images'].device))
    model.rpn_head.get_bboxes = lambda *args, **kwargs: [p.clone() for p in proposals]


def loss_terms(log_vars: dict) -> dict:
    return {k: float(v) for k, v in log_vars.items() if k.startswith('loss') and k != 'loss_scale'}


def correctness(args: argparse.Namespace, model_name: str, device: torch.device) -> dict:
    """The first iteration's loss terms in fp32, master and autocast mode from the same weights,
    batch, proposals and sampler draws; the masters against the model after five master steps."""
    options = bench_args(args, predict=False)
    torch.manual_seed(0)
    batch = bench.make_batch(options, device, with_masks=model_name == 'mask_rcnn')
    terms, mismatches, applied, finite = {}, None, 0, True
    for mode in ('fp32', 'master', 'autocast'):
        torch.manual_seed(0)  # the same initial weights
        step, model = bench.ours_step_fn(options, model_name, mode, device, batch)
        fix_proposals(model, batch)
        torch.manual_seed(1)  # the same sampler draws
        losses = [step()]
        terms[mode] = loss_terms(step.runner.log_buffer.last)
        if mode == 'master':
            losses += [step() for _ in range(MASTER_STEPS - 1)]
            mismatches = step.hook._masters.mismatches()
            applied = MASTER_STEPS - int(step.runner.log_buffer.last['skipped_steps'])
        finite = finite and all(map(math.isfinite, losses))
        del step, model
        release(device)
    reference = terms['fp32']
    rel = {mode: {k: abs(terms[mode][k] - v) / max(abs(v), 1e-12) for k, v in reference.items()}
           for mode in ('master', 'autocast')}
    ok = {mode: all(abs(terms[mode][k] - v) <= RTOL * abs(v) + 1e-6 for k, v in reference.items())
          for mode in rel}
    return dict(kind='correctness', model=model_name, dtype=args.dtype, terms=terms, rel=rel, losses_ok=ok,
                steps=MASTER_STEPS, applied=applied, mismatches=mismatches, finite=finite)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def child(args: argparse.Namespace) -> None:
    """Every measurement of one detector, each appended to results.jsonl as it ends; a failing one
    is recorded (its traceback in this process's log) and the next one runs."""
    device = bench.default_device()
    path = os.path.join(args.out, RESULTS)

    def record(result: dict) -> None:
        with open(path, 'a') as f:
            f.write(json.dumps(result) + '\n')

    def failed(kind: str, **what) -> dict:
        traceback.print_exc()
        last = traceback.format_exc().strip().splitlines()[-1]
        return dict(kind=kind, model=args.child, error=last, **what)

    try:
        record(correctness(args, args.child, device))
    except Exception:
        record(failed('correctness'))
    release(device)
    for predict in (False, True):
        kind = 'predict' if predict else 'train'
        for impl, mode in CONFIGS:
            print(f'gpu_check: {args.child} {kind} {impl} {mode}', flush=True)
            try:
                record(dict(kind=kind, **bench.run_configuration(bench_args(args, predict), args.child, impl, mode)))
            except Exception:
                record(failed(kind, impl=impl, mode=mode))
            release(device)


# ---------------------------------------------------------------- the driver
def _setting(read) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            return read()
        except (AttributeError, RuntimeError):
            return None


def environment(device: torch.device) -> dict:
    """Versions, the device, and the precision settings that change fp32's speed (TF32)."""
    import torchvision
    env = dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
               cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), device=device.type,
               cudnn_benchmark=torch.backends.cudnn.benchmark,
               tf32_cudnn_conv=_setting(lambda: torch.backends.cudnn.allow_tf32),
               tf32_cuda_matmul=_setting(lambda: torch.backends.cuda.matmul.allow_tf32),
               float32_matmul_precision=torch.get_float32_matmul_precision(),
               cudnn_conv_fp32_precision=_setting(lambda: torch.backends.cudnn.conv.fp32_precision))
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, capability=f'{props.major}.{props.minor}',
                   memory_gb=round(props.total_memory / 2 ** 30, 1))
    return env


def run_children(args: argparse.Namespace) -> list[str]:
    """Each detector in its own process within the budget; the failures, one line each."""
    failures = []
    deadline = time.monotonic() + args.budget
    options = ['--out', args.out, '--dtype', args.dtype, '--iters', str(args.iters), '--fps-iters',
               str(args.fps_iters), '--warmup', str(args.warmup)] + (['--dry-run'] if args.dry_run else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))
    for index, model in enumerate(args.models):
        later = len(args.models) - index - 1
        limit = deadline - time.monotonic() - 60 * later  # leave each later detector a minute
        if limit < 30:
            failures.append(f'{model}: not run, {deadline - time.monotonic():.0f} s of the budget left')
            continue
        print(f'gpu_check: {model} (at most {limit:.0f} s)', flush=True)
        log = os.path.join(args.out, f'{model}.log')
        with open(log, 'w') as f:
            try:
                proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', model, *options],
                                      stdout=f, stderr=subprocess.STDOUT, env=env, timeout=limit)
                if proc.returncode != 0:
                    failures.append(f'{model}: its process exited with code {proc.returncode} (see {log})')
            except subprocess.TimeoutExpired:
                failures.append(f'{model}: stopped after {limit:.0f} s, the rest of the budget (see {log})')
    return failures


def read_results(folder: str) -> list[dict]:
    path = os.path.join(folder, RESULTS)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return f'{a / b:.2f}' if a and b else '-'


def _header(env: dict, args: argparse.Namespace) -> list[str]:
    options = bench_args(args, predict=False)
    return [
        f'gpu_check: {env.get("device_name", "CPU (dry run)")} | torch {env["torch"]} | torchvision '
        f'{env["torchvision"]} | CUDA {env["cuda"]} | cuDNN {env["cudnn"]} | Python {env["python"]}',
        f'TF32: cuDNN convolutions {env["tf32_cudnn_conv"]}, CUDA matmul {env["tf32_cuda_matmul"]} '
        f'(float32_matmul_precision {env["float32_matmul_precision"]!r}, cudnn.conv.fp32_precision '
        f'{env["cudnn_conv_fp32_precision"]!r}); cudnn.benchmark {env["cudnn_benchmark"]}; PyTorch defaults kept',
        f'input: {options.batch} images of {options.size[0]}x{options.size[1]} (H x W) per training iteration, '
        f'1 per inference call (100 detections an image), ResNet-{options.depth} FPN {options.width}, random '
        f'weights; convolution weights channels_last in every run (place_model); {args.dtype}']


def _correctness(results: list[dict], args: argparse.Namespace) -> tuple[list[str], bool]:
    lines = [f'correctness ({args.dtype} against fp32: same weights, batch and proposals; every loss term within '
             f'{RTOL:g} relative; model = masters after {MASTER_STEPS} master steps)']
    ok = True
    for r in (r for r in results if r['kind'] == 'correctness'):
        if 'error' in r:
            lines.append(f'{r["model"]:<12} FAILED to run: {r["error"]}')
            ok = False
            continue
        for mode in ('master', 'autocast'):
            worst = max(r['rel'][mode], key=r['rel'][mode].get)
            line = (f'{r["model"]:<12} {mode:<9} largest difference {r["rel"][mode][worst]:.1e} ({worst}) '
                    f'{"PASS" if r["losses_ok"][mode] else "FAIL"}')
            if mode == 'master':
                bad, applied = r['mismatches'], r['applied']
                verdict = f'FAIL ({len(bad)}: {", ".join(bad[:4])})' if bad else 'PASS' if applied else 'FAIL'
                line += f'; model = masters ({applied} of {MASTER_STEPS} steps applied): {verdict}'
                ok = ok and not bad and applied > 0
            lines.append(line)
            ok = ok and r['losses_ok'][mode]
        if not r['finite']:
            lines.append(f'{r["model"]:<12} FAIL: non-finite losses in the {MASTER_STEPS} master steps')
            ok = False
    return lines, ok


def _rows(results: list[dict]) -> dict[tuple[str, str, str], dict]:
    """``{(model, impl, mode): {'train': result, 'predict': result}}`` in the order measured."""
    rows: dict = {}
    for r in results:
        if r['kind'] in ('train', 'predict'):
            rows.setdefault((r['model'], r['impl'], r['mode']), {})[r['kind']] = r
    return rows


def _table(rows: dict, cuda: bool) -> tuple[list[str], bool]:
    memory = 'max_memory_allocated' if cuda else 'peak RSS (dry run)'
    lines = [f'{"model":<12} {"impl":<11} {"mode":<14} {"s/iter":>8} {"memory GB":>9} {"waits":>6} {"DtoH":>5} '
             f'{"fps (1 img)":>11}   (memory: {memory}; waits / DtoH: host-device synchronisations / '
             'device-to-host copies in one training iteration)']
    errors = []
    for (model, impl, mode), row in rows.items():
        train, predict = row.get('train', {}), row.get('predict', {})
        errors += [f'{model} {impl} {mode} {kind}: {r["error"]}' for kind, r in row.items() if 'error' in r]
        syncs = train.get('syncs') or {}
        s_iter = f'{train["s_per_iter"]:.3f}' if 's_per_iter' in train else 'failed'
        mem = f'{train["peak_mb"] / 1024:.2f}' if 'peak_mb' in train else '-'
        fps = f'{1 / predict["s_per_iter"]:.1f}' if 's_per_iter' in predict else 'failed'
        dets = predict.get('detections_per_image')
        note = '' if not dets or min(dets) == 100 else f'  ({min(dets):.0f} detections an image)'
        label = train.get('label') or predict.get('label') or mode
        lines.append(f'{model:<12} {impl:<11} {label:<14} {s_iter:>8} {mem:>9} {syncs.get("waits", "-"):>6} '
                     f'{syncs.get("dtoh_copies", "-"):>5} {fps:>11}{note}')
    return lines + [f'failed: {e}' for e in errors], not errors


def _ratios(rows: dict, args: argparse.Namespace) -> list[str]:
    half = bench.mode_label('master', getattr(torch, args.dtype)).split('-')[0]
    lines = [f'{half} / fp32 (mmdetection v2, fp16 on a V100: training memory and inference fps; training '
             f'speed-up = fp32 s/iter / {half} s/iter)']
    for model, impl, mode in rows:
        if mode == 'fp32':
            continue
        base, row, seed = rows.get((model, impl, 'fp32'), {}), rows[model, impl, mode], SEED_TABLE[model]
        t32, t16 = base.get('train', {}), row.get('train', {})
        p32, p16 = base.get('predict', {}), row.get('predict', {})
        lines.append(f'{model:<12} {impl:<11} {mode:<9} memory {_ratio(t16.get("peak_mb"), t32.get("peak_mb"))} '
                     f'(mmdet {seed["memory"]:.2f})  fps {_ratio(p32.get("s_per_iter"), p16.get("s_per_iter"))} '
                     f'(mmdet {seed["fps"]:.2f})  training speed-up '
                     f'{_ratio(t32.get("s_per_iter"), t16.get("s_per_iter"))}')
    return lines


def _sync_sites(rows: dict) -> list[str]:
    lines = []
    for (model, impl, mode), row in rows.items():
        syncs = row.get('train', {}).get('syncs') or {}
        if 'error' in syncs:
            lines.append(f'{model} {impl} {mode}: not counted ({syncs["error"]})')
        elif syncs.get('sites'):
            top = ', '.join(f'{site} x{n}' for site, n in syncs['sites'])
            lines.append(f'{model} {impl} {mode}: {syncs["flagged"]} flagged; {top}')
    if lines:
        lines.insert(0, 'where the synchronisations of one training iteration come from (torch.cuda.set_sync_debug_mode)')
    return lines


def report(results: list[dict], env: dict, failures: list[str], args: argparse.Namespace) -> tuple[str, bool]:
    """The printed summary, and whether every detector was measured and correct."""
    rows = _rows(results)
    correct, correct_ok = _correctness(results, args)
    table, table_ok = _table(rows, env['device'] == 'cuda')
    sections = [_header(env, args), correct, table, _ratios(rows, args), _sync_sites(rows),
                [f'failed: {line}' for line in failures]]
    ok = correct_ok and table_ok and not failures
    lines = [line for section in sections if section for line in section + ['']]
    lines += [f'raw outputs: {args.out}', f'gpu_check: {"PASS" if ok else "FAIL"}']
    return '\n'.join(lines), ok


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    if not args.dry_run and not torch.cuda.is_available():
        print('gpu_check: CUDA is not available (torch.cuda.is_available() is False): nothing was measured; '
              'run it on a machine with an NVIDIA GPU, or with --dry-run', file=sys.stderr)
        sys.exit(3)
    args.out = os.path.abspath(args.out or os.path.join(ROOT, 'work_dirs', 'gpu_check', time.strftime('%Y%m%d_%H%M%S')))
    os.makedirs(args.out, exist_ok=True)
    if os.path.exists(os.path.join(args.out, RESULTS)):
        os.remove(os.path.join(args.out, RESULTS))
    env = environment(bench.default_device())
    with open(os.path.join(args.out, 'environment.json'), 'w') as f:
        json.dump(env, f, indent=1)
    print(f'gpu_check: raw outputs in {args.out}', flush=True)
    failures = run_children(args)
    text, ok = report(read_results(args.out), env, failures, args)
    with open(os.path.join(args.out, 'summary.txt'), 'w') as f:
        f.write(text + '\n')
    print(text, flush=True)
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
