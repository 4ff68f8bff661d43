"""How the command-line tools end: one line per failure and an exit code, never a deep traceback."""
from __future__ import annotations

import json
import os
import signal
import sys
from typing import Callable

from .checkpoint import CheckpointError
from .registry import ConfigError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _input_errors() -> tuple:
    from .data.errors import DataError
    return (ConfigError, CheckpointError, DataError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError, json.JSONDecodeError)


def _runtime_errors() -> tuple:
    from .engine import RankFailedError
    from .engine.hooks import NonFiniteLossError
    from .fp16 import LossScaleCollapseError
    return (NonFiniteLossError, LossScaleCollapseError, RankFailedError)


def run_cli(main: Callable[[], None]) -> None:
    """Run ``main``; known failures print ``error: <one line>`` to stderr and exit with a code.

    Exit codes: 2 for bad input (config, data, checkpoint), 1 for a run that failed (diverged),
    128 + signal number after an interruption that saved a checkpoint. ``MIXPREC_DEBUG=1`` keeps
    the traceback.
    """
    from .engine import TrainingInterrupted, close_dist
    debug = os.environ.get('MIXPREC_DEBUG') == '1'
    rank = os.environ.get('RANK')
    prefix = f'[rank {rank}] ' if rank is not None and os.environ.get('WORLD_SIZE', '1') != '1' else ''
    try:
        main()
        close_dist()
    except TrainingInterrupted as exc:
        print(f'{prefix}interrupted: {exc}', file=sys.stderr, flush=True)
        sys.exit(128 + exc.signum)
    except KeyboardInterrupt:
        print(f'{prefix}interrupted: SIGINT before training started or a second Ctrl-C; no checkpoint saved',
              file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGINT)
    except _input_errors() as exc:
        if debug:
            raise
        print(f'{prefix}error: {_one_line(exc)}', file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_INPUT)
    except _runtime_errors() as exc:
        if debug:
            raise
        print(f'{prefix}error: {_one_line(exc)}', file=sys.stderr, flush=True)
        sys.exit(EXIT_FAILED)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc.strerror or ''):
        return f'{exc.filename}: {exc.strerror or exc}'
    lines = str(exc).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith('Caught ') and 'DataLoader worker' in lines[0]:
        return lines[-1].split(': ', 1)[-1]
    return lines[0] if lines else type(exc).__name__
