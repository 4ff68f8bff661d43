"""Reading config files (``mmengine.Config``) with one-line errors, and checking the training keys."""
from __future__ import annotations

import os
import re
from numbers import Number
from typing import Optional

from mmengine import Config, DictAction

from .registry import ConfigError

__all__ = ['Config', 'DictAction', 'load_config', 'check_train_config']


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """``Config.fromfile`` plus ``--cfg-options``; every failure is a ConfigError naming the file."""
    if not os.path.isfile(path):
        raise ConfigError(f'config file {path} does not exist')
    try:
        cfg = Config.fromfile(path)
    except SyntaxError as exc:
        source = exc.filename if exc.filename and not exc.filename.startswith('<') else path
        where = f'{source}, line {exc.lineno}' if exc.lineno else source
        raise ConfigError(f'{where}: Python syntax error in the config: {exc.msg}') from None
    except FileNotFoundError as exc:
        raise ConfigError(f'{path}: {_first_line(exc)} (check the _base_ paths, relative to the config)') from None
    except (KeyError, NameError, TypeError, ValueError, ImportError, AttributeError) as exc:
        raise ConfigError(f'{path}: cannot read the config: {_first_line(exc)}') from None
    if cfg_options:
        try:
            cfg.merge_from_dict(cfg_options)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f'--cfg-options {cfg_options}: {_first_line(exc)}') from None
    return cfg


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().strip('"').strip("'")
    return text.splitlines()[0] if text else type(exc).__name__


def _require(cfg: Config, dotted: str, path: str):
    node = cfg
    for part in dotted.split('.'):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            node = None
        if node is None:
            raise ConfigError(f'{path}: the config has no {dotted!r}; it is required for training')
    return node


def _check_number(value, key: str, path: str, kind: type = Number, minimum: Optional[float] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = 'an integer' if kind is int else 'a number'
        raise ConfigError(f'{path}: {key} must be {expected}, got {type(value).__name__} {value!r}')
    if minimum is not None and value < minimum:
        raise ConfigError(f'{path}: {key} must be >= {minimum}, got {value!r}')


def check_train_config(cfg: Config, path: str) -> None:
    """The sections and value types training needs, checked before anything is built or written."""
    _require(cfg, 'model', path)
    _require(cfg, 'data.train', path)
    optimizer = _require(cfg, 'optimizer', path)
    runner = _require(cfg, 'runner', path)
    _check_number(_require(cfg, 'data.samples_per_gpu', path), 'data.samples_per_gpu', path, int, 1)
    _check_number(cfg.data.get('workers_per_gpu', 0), 'data.workers_per_gpu', path, int, 0)
    _check_number(optimizer.get('lr'), 'optimizer.lr', path, minimum=0)
    for key in ('momentum', 'weight_decay'):
        if key in optimizer:
            _check_number(optimizer[key], f'optimizer.{key}', path, minimum=0)
    if ('max_epochs' in runner) == ('max_iters' in runner):
        raise ConfigError(f'{path}: runner needs exactly one of max_epochs and max_iters, got {dict(runner)}')
    _check_runner_type(runner, path)
    for key in ('max_epochs', 'max_iters'):
        if key in runner:
            _check_number(runner[key], f'runner.{key}', path, int, 1)
    if cfg.get('fp16') is not None and not isinstance(cfg.fp16, dict):
        raise ConfigError(f'{path}: fp16 must be a dict such as dict(loss_scale=512.), got {cfg.fp16!r}')
    loss_scale = (cfg.get('fp16') or {}).get('loss_scale', 'dynamic')
    if not (isinstance(loss_scale, (dict, Number)) or loss_scale == 'dynamic') or isinstance(loss_scale, bool):
        raise ConfigError(f"{path}: fp16.loss_scale must be a number, 'dynamic' or a dict, got {loss_scale!r}")


RUNNER_LENGTH_KEYS = {'EpochBasedRunner': 'max_epochs', 'IterBasedRunner': 'max_iters'}


def _check_runner_type(runner: dict, path: str) -> None:
    """mmcv 1.x's two runners: EpochBasedRunner counts ``max_epochs``, IterBasedRunner ``max_iters``."""
    unknown = sorted(set(runner) - {'type', 'max_epochs', 'max_iters'})
    if unknown:
        raise ConfigError(f'{path}: runner.{unknown[0]} is not a runner option (type, max_epochs, max_iters)')
    kind = runner.get('type')
    if kind is None:
        return
    if kind not in RUNNER_LENGTH_KEYS:
        raise ConfigError(f'{path}: runner.type={kind!r} is not supported; use EpochBasedRunner (max_epochs) '
                          f'or IterBasedRunner (max_iters)')
    if RUNNER_LENGTH_KEYS[kind] not in runner:
        raise ConfigError(f'{path}: runner.type={kind!r} needs runner.{RUNNER_LENGTH_KEYS[kind]}, got {dict(runner)}')


def config_name(path: str) -> str:
    return re.sub(r'\.py$', '', os.path.basename(path))
