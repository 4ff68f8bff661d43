"""Publish a checkpoint: ``python tools/model_converters/publish_model.py IN.pth OUT.pth``.

As mmdetection v2: the optimizer state is dropped (meta and weights kept), the file is written and
renamed to ``OUT-<first 8 hex digits of its sha256>.pth``, the name the model zoo uses.
"""
from __future__ import annotations

import argparse
import hashlib
import os

import torch

from mixprec.checkpoint import load_file, save_file
from mixprec.cli import run_cli


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Drop the optimizer state and add the sha256 prefix to the name')
    parser.add_argument('in_file', help='input checkpoint')
    parser.add_argument('out_file', help='output checkpoint (the hash is inserted before .pth)')
    parser.add_argument('--trusted-checkpoint', action='store_true',
                        help='allow checkpoints that hold arbitrary Python objects (never for untrusted files)')
    return parser.parse_args(argv)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def process_checkpoint(in_file: str, out_file: str, trusted: bool = False) -> str:
    """Write the published checkpoint and return its final path."""
    checkpoint = load_file(in_file, 'cpu', trusted)
    if isinstance(checkpoint, dict):
        checkpoint.pop('optimizer', None)
    save_file(checkpoint, out_file)
    stem = out_file[:-4] if out_file.endswith('.pth') else out_file
    final = f'{stem}-{sha256_of(out_file)[:8]}.pth'
    os.replace(out_file, final)
    return final


def main(argv=None) -> None:
    args = parse_args(argv)
    print(process_checkpoint(args.in_file, args.out_file, args.trusted_checkpoint))


if __name__ == '__main__':
    torch.set_grad_enabled(False)
    run_cli(main)
