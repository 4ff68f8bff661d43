"""Print a config after inheritance and ``--cfg-options``: ``python tools/misc/print_config.py CONFIG``."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from mixprec.cli import run_cli
from mixprec.config import DictAction, load_config


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Print the whole config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. optimizer.lr=0.01 data.samples_per_gpu=4')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    print(f'Config:\n{cfg.pretty_text}')


if __name__ == '__main__':
    run_cli(main)
