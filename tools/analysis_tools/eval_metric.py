"""Evaluate saved results: ``python tools/analysis_tools/eval_metric.py CONFIG RESULTS.pkl --eval bbox segm``.

The results are tools/test.py's ``--out`` pickle; the dataset is the config's ``data.test``, and the
evaluation arguments are built as tools/test.py builds them (``evaluation`` of the config without
the hook's keys, then ``--eval-options``), so both print the same numbers for the same results.
"""
from __future__ import annotations

import argparse
import pickle

from mixprec.cli import run_cli
from mixprec.config import DictAction, load_config
from mixprec.data import build_dataset
from mixprec.engine.test import evaluation_kwargs
from mixprec.registry import ConfigError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Evaluate the results saved in pickle format')
    parser.add_argument('config', help='config of the model (its data.test is evaluated)')
    parser.add_argument('pkl_results', help='results in pickle format (tools/test.py --out)')
    parser.add_argument('--format-only', action='store_true', help='only write COCO result json files')
    parser.add_argument('--eval', nargs='+', choices=['bbox', 'segm', 'proposal'], help='metrics to evaluate')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys')
    parser.add_argument('--eval-options', nargs='+', action=DictAction, default={},
                        help='arguments of dataset.evaluate / format_results, e.g. classwise=True')
    return parser.parse_args(argv)


def load_results(path: str, num_images: int) -> list:
    """The pickled per-image results; one line when the file does not hold one result per test image."""
    try:
        with open(path, 'rb') as f:
            results = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
        raise ConfigError(f'{path}: not a results pickle ({exc})') from None
    if not isinstance(results, list) or len(results) != num_images:
        count = len(results) if isinstance(results, list) else type(results).__name__
        raise ConfigError(f'{path}: holds {count} results but the test dataset has {num_images} images')
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    if not (args.eval or args.format_only):
        raise ConfigError('nothing to do: give --eval METRIC... or --format-only')
    if args.eval and args.format_only:
        raise ConfigError('--eval and --format-only are exclusive')
    cfg = load_config(args.config, args.cfg_options)
    test_cfg = dict(cfg.data.test)
    test_cfg.pop('samples_per_gpu', None)
    dataset = build_dataset(test_cfg, dict(test_mode=True))
    results = load_results(args.pkl_results, len(dataset))
    if args.format_only:
        dataset.format_results(results, **args.eval_options)
    if args.eval:
        metrics = dataset.evaluate(results, **evaluation_kwargs(cfg, args.eval, args.eval_options))
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()})


if __name__ == '__main__':
    run_cli(main)
