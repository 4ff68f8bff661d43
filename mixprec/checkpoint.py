"""Checkpoint files: atomic saving, safe loading, and loading weights into a model.

Shared by the engine (resume, ``load_from``) and the models (pretrained backbones), so it sits below
both. Loading uses ``torch.load(..., weights_only=True)`` unless the caller passes ``trusted=True``.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections import OrderedDict
from typing import Any, Iterable, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from mixprec import model_zoo


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or saved; the message is one line naming the file."""


def url_cache_path(url: str) -> str:
    """Where torch's hub (and so mmcv 1.x) keeps the file of ``url``: ``$TORCH_HOME/hub/checkpoints/<basename>``."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(urlparse(url).path))


def _zoo_url(filename: str) -> Optional[str]:
    """The URL that a ``torchvision://``, ``open-mmlab://`` or ``mmcls://`` name stands for (mmcv's
    tables, :mod:`mixprec.model_zoo`); the URL itself for ``http(s)://``; None for a local path."""
    for scheme, table in (('torchvision://', model_zoo.TORCHVISION), ('modelzoo://', model_zoo.TORCHVISION),
                          ('open-mmlab://', model_zoo.OPEN_MMLAB), ('openmmlab://', model_zoo.OPEN_MMLAB),
                          ('mmcls://', model_zoo.MMCLS)):
        if filename.startswith(scheme):
            name = filename[len(scheme):]
            if table is model_zoo.OPEN_MMLAB:
                name = model_zoo.OPEN_MMLAB_DEPRECATED.get(name, name)
            if name not in table:
                raise CheckpointError(f'{filename}: unknown {scheme} name {name!r}; known: {", ".join(sorted(table))}')
            return table[name]
    if filename.startswith(('http://', 'https://')):
        return filename
    return None


def torchvision_cache_path(name: str) -> str:
    """Where torchvision keeps the ImageNet weights of ``name`` (e.g. 'resnet50')."""
    return url_cache_path(_zoo_url(f'torchvision://{name}'))


def resolve_checkpoint_path(filename: str) -> str:
    """The local file of a checkpoint name, resolved as mmcv 1.x did, and checked to exist.

    ``torchvision://NAME``, ``open-mmlab://NAME`` (and ``openmmlab://``), ``mmcls://NAME`` map to
    their URL (:mod:`mixprec.model_zoo`); a URL maps to ``$TORCH_HOME/hub/checkpoints/<basename>``
    (TORCH_HOME defaults to ~/.cache/torch); anything else is a local path. Never downloads: a
    missing file is one line naming the path to put it at.
    """
    url = _zoo_url(filename)
    if url is not None:
        path = url_cache_path(url)
        if not os.path.isfile(path):
            origin = '' if url == filename else f' (from {url})'
            raise CheckpointError(
                f'{filename}: {path} is missing and this machine cannot download it; copy the file there{origin} '
                f'(or set TORCH_HOME), or leave it out of the config (init_cfg=None, load_from=None)')
        return path
    if re.match(r'^[a-z0-9+.-]+://', filename):
        raise CheckpointError(f'{filename}: unknown scheme; give a local path, torchvision://, open-mmlab://, '
                              f'mmcls:// or an http(s):// URL (looked up in the torch hub cache)')
    if not os.path.isfile(os.path.expanduser(filename)):
        raise CheckpointError(f'checkpoint {filename} does not exist')
    return os.path.expanduser(filename)


def load_file(filename: str, map_location: Any = 'cpu', trusted: bool = False) -> Any:
    """``torch.load`` with one-line errors; ``weights_only=True`` unless ``trusted``."""
    path = resolve_checkpoint_path(filename)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as exc:
        if 'Weights only load failed' in str(exc) and _is_torch_zip(path):
            raise CheckpointError(
                f'{path} holds Python objects beyond tensors, which could run code when loaded; refused. '
                f'If you trust its source, load it with trusted=True (tools: --trusted-checkpoint)') from None
        raise CheckpointError(f'{path} is truncated or not a PyTorch checkpoint ({_first_line(exc)})') from None
    except Exception as exc:
        reason = 'the file is empty' if os.path.getsize(path) == 0 else _first_line(exc)
        raise CheckpointError(f'{path} is truncated or not a PyTorch checkpoint ({reason})') from None
    return _mmcls_backbone(checkpoint) if filename.startswith('mmcls://') else checkpoint


def _mmcls_backbone(checkpoint: Any) -> Any:
    """An mmclassification checkpoint reduced to its backbone, as mmcv did for ``mmcls://``:
    only the ``backbone.*`` keys, with the prefix stripped."""
    if not isinstance(checkpoint, dict):
        return checkpoint
    state = checkpoint.get('state_dict', checkpoint)
    return {'state_dict': OrderedDict((k[len('backbone.'):], v) for k, v in state.items() if k.startswith('backbone.'))}


def _is_torch_zip(path: str) -> bool:
    """A complete torch.save archive (so a weights_only refusal is about its content, not damage)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def tensors_to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor inside its dicts, lists and tuples on the CPU (others as they are).

    A checkpoint written from a GPU run otherwise keeps the tensors that hooks put there on their
    device (the fp16 hook's masters, the optimizer's momentum): ``torch.load`` without
    ``map_location`` then fails on a machine without that device.
    """
    if isinstance(obj, torch.Tensor):
        return obj if obj.device.type == 'cpu' else obj.detach().cpu()
    if isinstance(obj, dict):
        items = [(k, tensors_to_cpu(v)) for k, v in obj.items()]
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, list):
        return [tensors_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        values = [tensors_to_cpu(v) for v in obj]
        return type(obj)(*values) if hasattr(obj, '_fields') else tuple(values)
    return obj


def save_file(obj: Any, filename: str) -> None:
    """Write ``obj`` with ``torch.save`` atomically: temp file in the same folder, fsync, rename.

    Every tensor is saved from the CPU (:func:`tensors_to_cpu`), so the file loads anywhere. A
    failure (a full disk, an interruption) leaves any previous ``filename`` untouched.
    """
    obj = tensors_to_cpu(obj)
    folder = os.path.dirname(os.path.abspath(filename))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(filename)}.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise CheckpointError(f'could not write {filename} ({exc.strerror or exc}); '
                                  f'the previous checkpoint there, if any, is intact') from None
        raise
    _fsync_dir(folder)


def link_or_copy(src: str, dst: str) -> None:
    """Make ``dst`` the same file as ``src`` atomically (hard link, else an atomic copy)."""
    folder = os.path.dirname(os.path.abspath(dst))
    tmp = os.path.join(folder, f'.{os.path.basename(dst)}.{os.getpid()}.lnk')
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DataParallel / DistributedDataParallel wrappers."""
    while isinstance(model, (nn.parallel.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def extract_state_dict(checkpoint: Any, filename: str) -> dict:
    """The weights inside a checkpoint: ``checkpoint['state_dict']``, ``['model']`` or the dict itself."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{filename} is not a checkpoint: it holds a {type(checkpoint).__name__}, not a dict')
    for key in ('state_dict', 'model'):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
            break
    if not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(f'{filename} is not a checkpoint: its state dict has non-tensor values')
    return checkpoint


def load_state_dict(module: nn.Module, state_dict: dict, strict: bool = False,
                    logger: Optional[logging.Logger] = None, source: str = 'checkpoint') -> dict[str, list]:
    """Copy matching tensors into ``module``; report missing, unexpected and mis-shaped keys.

    Mis-shaped keys are never loaded. With ``strict`` any of the three is an error. BatchNorm's
    ``num_batches_tracked`` counters are not reported missing (older files lack them; mmcv did the same).
    Returns ``dict(missing=[...], unexpected=[...], mismatched=[(key, ckpt_shape, model_shape)])``.
    """
    module = unwrap_model(module)
    own = module.state_dict()
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
                  if k in own and v.shape != own[k].shape]
    bad = {k for k, _, _ in mismatched}
    loadable = OrderedDict((k, v) for k, v in state_dict.items() if k not in bad)
    result = module.load_state_dict(loadable, strict=False)
    missing = [k for k in result.missing_keys if k not in bad and not k.endswith('num_batches_tracked')]
    report = dict(missing=missing, unexpected=list(result.unexpected_keys), mismatched=mismatched)
    lines = _describe(report)
    if lines and strict:
        raise CheckpointError(f'{source} does not fit the model: ' + '; '.join(lines))
    if lines:
        (logger or logging.getLogger('mixprec')).warning('%s: %s', source, '; '.join(lines))
    return report


def _describe(report: dict) -> list[str]:
    lines = []
    if report['mismatched']:
        shown = ', '.join(f'{k} {c} vs model {m}' for k, c, m in report['mismatched'][:8])
        lines.append(f'{len(report["mismatched"])} mis-shaped keys (not loaded): {shown}')
    if report['missing']:
        lines.append(f'{len(report["missing"])} missing keys: {_head(report["missing"])}')
    if report['unexpected']:
        lines.append(f'{len(report["unexpected"])} unexpected keys: {_head(report["unexpected"])}')
    return lines


def _head(keys: list[str], n: int = 8) -> str:
    return ', '.join(keys[:n]) + (', ...' if len(keys) > n else '')


def load_checkpoint(model: nn.Module, filename: str, map_location: Any = 'cpu', strict: bool = False,
                    logger: Optional[logging.Logger] = None, prefix: Optional[str] = None,
                    revise_keys: Iterable[tuple[str, str]] = ((r'^module\.', ''),),
                    trusted: bool = False) -> dict:
    """Load weights from ``filename`` (a path or ``torchvision://name``) into ``model``.

    ``prefix`` keeps only keys under it (``'backbone.'``) and strips it. Returns the whole checkpoint.
    """
    checkpoint = load_file(filename, map_location, trusted)
    state_dict = extract_state_dict(checkpoint, filename)
    for pattern, repl in revise_keys:
        state_dict = OrderedDict((re.sub(pattern, repl, k), v) for k, v in state_dict.items())
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state_dict = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items() if k.startswith(prefix))
        if not state_dict:
            raise CheckpointError(f'{filename} has no keys under the prefix {prefix!r}')
    load_state_dict(model, state_dict, strict=strict, logger=logger, source=filename)
    return checkpoint if isinstance(checkpoint, dict) else {'state_dict': state_dict}
