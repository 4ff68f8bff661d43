"""Reading config files (``mmengine.Config``) with one-line errors, and checking the training keys."""
from __future__ import annotations

import difflib
import os
import re
import warnings
from numbers import Number
from typing import Any, Optional

from mmengine import Config, DictAction

from .registry import ConfigError
from .stop_signals import parse_signal

__all__ = ['Config', 'DictAction', 'load_config', 'check_train_config', 'compat_cfg', 'check_top_level_keys',
           'cpu_winograd', 'RUNTIME_KEYS', 'UNSUPPORTED_KEYS']


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
    parse_signal(cfg.get('requeue_signal', 'SIGUSR1'), f'{path}: requeue_signal')
    if cfg.get('fp16') is not None and not isinstance(cfg.fp16, dict):
        raise ConfigError(f'{path}: fp16 must be a dict such as dict(loss_scale=512.), got {cfg.fp16!r}')
    loss_scale = (cfg.get('fp16') or {}).get('loss_scale', 'dynamic')
    if not (isinstance(loss_scale, (dict, Number)) or loss_scale == 'dynamic') or isinstance(loss_scale, bool):
        raise ConfigError(f"{path}: fp16.loss_scale must be a number, 'dynamic' or a dict, got {loss_scale!r}")


def cpu_winograd(cfg: Config, path: str) -> bool:
    """``cpu_winograd`` (default True): whether fp32 3x3 convolutions on the CPU may run as Winograd
    F(4x4, 3x3) (see :func:`mixprec.models.place_model`); False keeps PyTorch's kernel, e.g. to compare."""
    value = cfg.get('cpu_winograd', True)
    if not isinstance(value, bool):
        raise ConfigError(f'{path}: cpu_winograd must be True or False, got {type(value).__name__} {value!r}')
    return value


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


# Top-level keys of mmdetection v2.28 / mmcv 1.x configs that mixprec acts on (plus its own cpu_threads and
# cpu_winograd and requeue_signal).
RUNTIME_KEYS = frozenset({
    'model', 'data', 'optimizer', 'optimizer_config', 'lr_config', 'momentum_config', 'runner', 'total_epochs',
    'checkpoint_config', 'log_config', 'custom_hooks', 'custom_imports', 'evaluation', 'fp16', 'workflow',
    'dist_params', 'log_level', 'load_from', 'resume_from', 'auto_resume', 'work_dir', 'gpu_ids', 'seed',
    'opencv_num_threads', 'mp_start_method', 'auto_scale_lr', 'find_unused_parameters', 'cudnn_benchmark',
    'train_cfg', 'test_cfg', 'cpu_threads', 'cpu_winograd', 'trusted_checkpoint', 'requeue_signal',
})
# Keys mmdet knows (or that belong in a section) that mixprec refuses, with what to do instead.
UNSUPPORTED_KEYS = {
    'device': 'mixprec picks the device itself (CUDA when available, else the CPU); use --gpu-id',
    'rfsearch_cfg': 'RF-Next receptive-field search is not supported',
    'samples_per_gpu': 'it belongs in data = dict(samples_per_gpu=...)',
    'workers_per_gpu': 'it belongs in data = dict(workers_per_gpu=...)',
    'imgs_per_gpu': 'it belongs in data = dict(samples_per_gpu=...)',
    'persistent_workers': 'it belongs in data = dict(persistent_workers=...)',
}
_NEAR_MISS = 0.85


def _plain(value: Any) -> Any:
    """ConfigDicts as dicts and tuples as lists, recursively, so values compare by content."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _nodes(value: Any, out: list) -> list:
    out.append(value)
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        _nodes(child, out)
    return out


def _used(value: Any, nodes: list) -> bool:
    """Whether a helper variable's value appears in the runtime sections: as a value, as part of a string
    (``data_root + 'train/'``), as the items of a dict (``dict(type='Normalize', **img_norm_cfg)``) or,
    for a list, element by element."""
    for node in nodes:
        if type(node) is type(value) and node == value:
            return True
        if isinstance(value, str) and isinstance(node, str) and value in node:
            return True
        if isinstance(value, dict) and isinstance(node, dict) and value and all(
                k in node and node[k] == v for k, v in value.items()):
            return True
        if isinstance(value, Number) and isinstance(node, Number) and not isinstance(node, bool) and node == value:
            return True
    return isinstance(value, list) and bool(value) and all(_used(v, nodes) for v in value)


def check_top_level_keys(cfg: Config, path: str, cfg_options: Optional[dict] = None) -> None:
    """Refuse, with one line naming it, a top-level key that nothing acts on.

    ``cfg`` is the file as written (before ``--cfg-options``, which may rewrite the sections that use
    a helper variable); a ``cfg_options`` key must set a runtime key or a key the file has.

    The rule: a key is either one of RUNTIME_KEYS (acted on), or refused when it is in
    UNSUPPORTED_KEYS, ends in ``_config`` (mmcv's naming of runtime sections) or is a near-miss of a
    runtime key (``lr_confg``); any other key is a helper variable (``dataset_type``, ``data_root``,
    ``img_norm_cfg``, ``train_pipeline``...) and must be used: its value must appear inside the
    runtime sections. A helper whose value appears nowhere changed nothing, and is refused too.
    """
    plain = _plain(cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg))
    nodes: list = []
    for key in RUNTIME_KEYS & set(plain):
        _nodes(plain[key], nodes)
    for key, value in plain.items():
        if key in RUNTIME_KEYS:
            continue
        if key in UNSUPPORTED_KEYS:
            raise ConfigError(f'{path}: config key {key!r} is not supported: {UNSUPPORTED_KEYS[key]}')
        close = difflib.get_close_matches(key, sorted(RUNTIME_KEYS), n=1, cutoff=_NEAR_MISS)
        if close or key.endswith('_config'):
            hint = f'did you mean {close[0]!r}?' if close else 'mixprec does not act on it'
            raise ConfigError(f'{path}: unknown config key {key!r}: {hint}')
        if not _used(value, nodes):
            raise ConfigError(f'{path}: config key {key!r} is not a key mixprec acts on, and its value is used by '
                              f'none of them (a misspelling, a setting in the wrong place, or an unsupported key)')
    for option in cfg_options or {}:
        key = option.split('.')[0]
        if key not in RUNTIME_KEYS and key not in plain:
            close = difflib.get_close_matches(key, sorted(RUNTIME_KEYS | set(plain)), n=1, cutoff=_NEAR_MISS)
            hint = f'did you mean {close[0]!r}?' if close else 'neither a runtime key nor a key of the config'
            raise ConfigError(f'--cfg-options {option}: unknown config key {key!r}: {hint}')


def compat_cfg(cfg: Config, path: str) -> Config:
    """mmdetection v2's deprecated spellings, accepted with a warning as mmdet did (compat_cfg)."""
    data = cfg.get('data')
    if isinstance(data, dict) and 'imgs_per_gpu' in data:
        if 'samples_per_gpu' in data and data.samples_per_gpu != data.imgs_per_gpu:
            warnings.warn(f'Got "imgs_per_gpu"={data.imgs_per_gpu} and "samples_per_gpu"={data.samples_per_gpu}, '
                          f'"imgs_per_gpu"={data.imgs_per_gpu} is used in this experiment')
        warnings.warn('"imgs_per_gpu" is deprecated. Please use "samples_per_gpu" instead')
        data.samples_per_gpu = data.pop('imgs_per_gpu')
    if 'total_epochs' in cfg:
        if cfg.get('runner') is None:
            warnings.warn('config is using total_epochs; please use runner = dict(type=..., max_epochs=...)')
            cfg.runner = dict(type='EpochBasedRunner', max_epochs=cfg.total_epochs)
        elif cfg.runner.get('max_epochs') != cfg.total_epochs:
            raise ConfigError(f'{path}: total_epochs ({cfg.total_epochs}) and runner.max_epochs '
                              f'({cfg.runner.get("max_epochs")}) differ; keep only runner')
    model = cfg.get('model') or {}
    for key in ('train_cfg', 'test_cfg'):
        if cfg.get(key) is not None:
            if model.get(key) is not None:
                raise ConfigError(f'{path}: {key} is given both at the top level and in model; keep the one in model')
            warnings.warn(f'top-level {key} is deprecated, please specify it in model')
            model[key] = cfg.pop(key)
    return cfg
