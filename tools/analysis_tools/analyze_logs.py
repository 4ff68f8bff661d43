"""Plot curves and compute training time from ``log.json`` files (ours and mmdetection v2's).

    python tools/analysis_tools/analyze_logs.py plot_curve LOG.json [LOG2.json ...] \\
        --keys loss loss_scale bbox_mAP [--legend ...] [--title T] [--out plot.png] [--style default]
    python tools/analysis_tools/analyze_logs.py cal_train_time LOG.json [--include-outliers]

A log is one JSON object a line: an optional first line of run meta (env_info, config, seed, ...),
then ``mode='train'`` records (epoch, iter, lr, memory, data_time, time, loss_*, loss and, in ours,
loss_scale, skipped_steps, grad_norm) and ``mode='val'`` records (epoch, iter, lr, bbox_mAP, ...).

Train keys are drawn against iterations: ``(epoch - 1) * iters_per_epoch + iter``, with
iters_per_epoch the last train ``iter`` logged in the first epoch (mmdetection's convention), or
``iter`` itself when the log comes from an iteration-based run (its ``iter`` never restarts).
Val keys are drawn against epochs. On the ``loss_scale`` curve, the records where a step was
skipped (``skipped_steps`` grew or the scale dropped since the previous record) are marked.
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
from dataclasses import dataclass, field
from typing import Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mixprec.cli import run_cli  # noqa: E402
from mixprec.registry import ConfigError  # noqa: E402


@dataclass
class JsonLog:
    """The records of one log file, split by mode, in file order."""

    path: str
    meta: Optional[dict] = None
    train: list = field(default_factory=list)
    val: list = field(default_factory=list)


@dataclass
class Series:
    """One curve: x positions, values, the x axis' name and the indices of the points to mark."""

    xs: np.ndarray
    ys: np.ndarray
    x_label: str
    marked: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def load_json_log(path: str) -> JsonLog:
    """Parse ``path``; a line without ``mode`` is run meta, any other line must be a train/val record."""
    log = JsonLog(path)
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = _parse_line(path, lineno, line)
            mode = record.get('mode')
            if mode is None:
                log.meta = record
            elif mode in ('train', 'val'):
                getattr(log, mode).append(record)
            else:
                raise ConfigError(f'{path}:{lineno}: unknown mode {mode!r} (expected train or val)')
    if not log.train and not log.val:
        raise ConfigError(f'{path}: no train or val records (is it a log.json file?)')
    return log


def _parse_line(path: str, lineno: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f'{path}:{lineno}: not valid JSON ({exc.msg})') from None
    if not isinstance(record, dict):
        raise ConfigError(f'{path}:{lineno}: expected a JSON object, got {type(record).__name__}')
    for key in ('epoch', 'iter'):
        if 'mode' in record and not isinstance(record.get(key), int):
            raise ConfigError(f'{path}:{lineno}: record without an integer {key!r}')
    return record


def is_iter_based(train: Sequence[dict]) -> bool:
    """True when ``iter`` keeps growing across epoch changes (an iteration-based run logs the global iter)."""
    changes = [(a, b) for a, b in zip(train, train[1:]) if b['epoch'] != a['epoch']]
    return bool(changes) and all(b['iter'] > a['iter'] for a, b in changes)


def iters_per_epoch(train: Sequence[dict]) -> int:
    """The last train ``iter`` logged in the first epoch."""
    first_epoch = train[0]['epoch']
    return max(r['iter'] for r in train if r['epoch'] == first_epoch)


def train_x(train: Sequence[dict]) -> np.ndarray:
    """Iteration positions of the train records."""
    iters = np.array([r['iter'] for r in train], dtype=np.int64)
    if is_iter_based(train):
        return iters
    epochs = np.array([r['epoch'] for r in train], dtype=np.int64)
    return (epochs - 1) * iters_per_epoch(train) + iters


def skipped_indices(train: Sequence[dict]) -> np.ndarray:
    """Indices of the records whose ``skipped_steps`` grew or whose ``loss_scale`` dropped since the previous one."""
    marked = []
    for i in range(1, len(train)):
        prev, cur = train[i - 1], train[i]
        grew = cur.get('skipped_steps', 0) > prev.get('skipped_steps', 0)
        dropped = 'loss_scale' in cur and 'loss_scale' in prev and cur['loss_scale'] < prev['loss_scale']
        if grew or dropped:
            marked.append(i)
    return np.array(marked, dtype=np.int64)


def extract_series(log: JsonLog, key: str) -> Series:
    """The curve of ``key``: from train records against iterations, else from val records against epochs."""
    train = [r for r in log.train if key in r]
    if train:
        xs_all = train_x(log.train)
        keep = np.array([key in r for r in log.train])
        xs = xs_all[keep]
        ys = np.array([r[key] for r in train], dtype=np.float64)
        marked = skipped_indices(train) if key == 'loss_scale' else np.zeros(0, dtype=np.int64)
        return Series(xs, ys, 'iter', marked)
    val = [r for r in log.val if key in r]
    if val:
        xs = np.array([r['epoch'] for r in val], dtype=np.int64)
        return Series(xs, np.array([r[key] for r in val], dtype=np.float64), 'epoch')
    known = sorted({k for r in log.train + log.val for k in r} - {'mode', 'epoch', 'iter'})
    raise ConfigError(f'{log.path}: no key {key!r} in its records; available: {", ".join(known)}')


def _legends(paths: Sequence[str], keys: Sequence[str], legend: Optional[Sequence[str]]) -> list[str]:
    """One label per (log, key) pair, log-major."""
    if legend is not None:
        if len(legend) != len(paths) * len(keys):
            raise ConfigError(f'--legend needs {len(paths) * len(keys)} names (logs x keys), got {len(legend)}')
        return list(legend)
    stems = [osp.basename(p).replace('.log.json', '').replace('.json', '') for p in paths]
    return [f'{stem}_{key}' if len(paths) > 1 else key for stem in stems for key in keys]


def plot_curve(logs: Sequence[JsonLog], keys: Sequence[str], out: str, legend: Optional[Sequence[str]] = None,
               title: Optional[str] = None, style: str = 'default') -> str:
    """Draw one panel per key with a curve per log; write the figure to ``out`` and return its path."""
    if style not in plt.style.available and style != 'default':
        raise ConfigError(f'--style {style!r} is not a matplotlib style; '
                          f'try one of {", ".join(plt.style.available[:8])}')
    labels = iter(_legends([log.path for log in logs], keys, legend))
    series = [[extract_series(log, key) for key in keys] for log in logs]
    with plt.style.context(style):
        fig, axes = plt.subplots(len(keys), 1, figsize=(8, 3 * len(keys)), squeeze=False)
        for per_log in series:
            for ax, key, s in zip(axes[:, 0], keys, per_log):
                _draw(ax, key, s, next(labels))
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)
    return out


def _draw(ax, key: str, s: Series, label: str) -> None:
    line, = ax.plot(s.xs, s.ys, label=label, marker='o' if len(s.xs) == 1 else None)
    if len(s.marked):
        ax.plot(s.xs[s.marked], s.ys[s.marked], linestyle='none', marker='v', color=line.get_color(),
                label=f'{label} skipped steps')
    if key == 'loss_scale':
        ax.set_yscale('log', base=2)
    ax.set_xlabel(s.x_label)
    ax.set_ylabel(key)
    ax.legend()


@dataclass
class TrainTime:
    """Per-epoch average iteration times and the summary cal_train_time prints."""

    epochs: list
    epoch_means: np.ndarray
    mean_iter_time: float

    @property
    def slowest(self) -> tuple[int, float]:
        i = int(self.epoch_means.argmax())
        return self.epochs[i], float(self.epoch_means[i])

    @property
    def fastest(self) -> tuple[int, float]:
        i = int(self.epoch_means.argmin())
        return self.epochs[i], float(self.epoch_means[i])

    @property
    def std_over_epochs(self) -> float:
        return float(self.epoch_means.std())


def cal_train_time(log: JsonLog, include_outliers: bool = False) -> TrainTime:
    """Average ``time`` of the train records per epoch; each epoch's first record (start-up) is
    dropped unless ``include_outliers``. The overall mean is over all the kept records."""
    by_epoch: dict[int, list[float]] = {}
    for record in log.train:
        if 'time' in record:
            by_epoch.setdefault(record['epoch'], []).append(float(record['time']))
    kept = {e: (t if include_outliers else t[1:]) for e, t in by_epoch.items()}
    kept = {e: t for e, t in kept.items() if t}
    if not kept:
        raise ConfigError(f'{log.path}: no train "time" values to analyse'
                          + ('' if include_outliers else ' (try --include-outliers)'))
    epochs = sorted(kept)
    means = np.array([np.mean(kept[e]) for e in epochs])
    return TrainTime(epochs, means, float(np.mean([t for e in epochs for t in kept[e]])))


def format_train_time(path: str, result: TrainTime) -> str:
    """mmdetection's report of cal_train_time."""
    slow_epoch, slow = result.slowest
    fast_epoch, fast = result.fastest
    return '\n'.join([f'-----Analyze train time of {path}-----',
                      f'slowest epoch {slow_epoch}, average time is {slow:.4f}',
                      f'fastest epoch {fast_epoch}, average time is {fast:.4f}',
                      f'time std over epochs is {result.std_over_epochs:.4f}',
                      f'average iter time: {result.mean_iter_time:.4f} s/iter'])


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Analyze json logs')
    sub = parser.add_subparsers(dest='task', required=True)
    plot = sub.add_parser('plot_curve', help='plot curves of the given keys')
    plot.add_argument('json_logs', nargs='+', help='log.json files')
    plot.add_argument('--keys', nargs='+', default=['bbox_mAP'], help='the keys to plot, one panel each')
    plot.add_argument('--legend', nargs='+', help='a label per (log, key), log-major')
    plot.add_argument('--title', help='figure title')
    plot.add_argument('--out', default='plot.png', help='image file to write (default plot.png)')
    plot.add_argument('--style', default='default', help='matplotlib style')
    train_time = sub.add_parser('cal_train_time', help='average iteration time per epoch')
    train_time.add_argument('json_logs', nargs='+', help='log.json files')
    train_time.add_argument('--include-outliers', action='store_true',
                            help="keep each epoch's first record (start-up time) in the averages")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    logs = [load_json_log(path) for path in args.json_logs]
    if args.task == 'plot_curve':
        out = plot_curve(logs, args.keys, args.out, args.legend, args.title, args.style)
        print(f'saved curves of {", ".join(args.keys)} to {out}')
    else:
        for log in logs:
            print(format_train_time(log.path, cal_train_time(log, args.include_outliers)))


if __name__ == '__main__':
    run_cli(main)
