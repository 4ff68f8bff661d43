"""Registries: the door from config dicts (``type='Name'``) to classes.

Modules talk to each other through plain imports; the registries exist so that a config file can
name a class. Errors raised while building are :class:`ConfigError` with a one-line message that
names the registry, the type and what was expected.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Optional

import torch


class ConfigError(ValueError):
    """A config value is wrong; the message is one line a user can act on."""


class Registry:
    """A name -> class (or function) table with ``build(cfg)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._modules: dict[str, Callable] = {}

    def __repr__(self) -> str:
        return f'Registry({self.name!r}, {len(self._modules)} items)'

    def __contains__(self, key: str) -> bool:
        return key in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    @property
    def module_dict(self) -> dict[str, Callable]:
        return dict(self._modules)

    def get(self, key: str) -> Optional[Callable]:
        return self._modules.get(key)

    def register_module(self, name: Optional[str] = None, force: bool = False,
                        module: Optional[Callable] = None):
        """Register ``module`` under ``name`` (default: its ``__name__``); usable as a decorator."""

        def _register(obj: Callable) -> Callable:
            key = name or obj.__name__
            if not force and key in self._modules and self._modules[key] is not obj:
                raise KeyError(f'{key} is already registered in registry {self.name!r}')
            self._modules[key] = obj
            return obj

        if module is not None:
            return _register(module)
        return _register

    def build(self, cfg: Any, default_args: Optional[dict] = None) -> Any:
        return build_from_cfg(cfg, self, default_args)


def required(cfg: Any, key: str, where: str) -> Any:
    """``cfg[key]`` of a config dict that must have it; a one-line ConfigError naming ``where`` and
    the key otherwise."""
    if not isinstance(cfg, dict) or key not in cfg:
        have = f'its keys are {sorted(cfg)}' if isinstance(cfg, dict) else f'got {cfg!r}'
        raise ConfigError(f'{where} needs {key!r}; {have}')
    return cfg[key]


def _closest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    if not close:
        close = [c for c in candidates if name.lower() in c.lower() or c.lower() in name.lower()][:3]
    return ', '.join(close) if close else 'none close; registered: ' + ', '.join(sorted(candidates)[:12])


def build_from_cfg(cfg: Any, registry: Registry, default_args: Optional[dict] = None) -> Any:
    """Build ``cfg['type']`` from ``registry`` with the other keys (and ``default_args``) as kwargs.

    Raises:
        ConfigError: ``cfg`` is not a dict with ``type``, the type is unknown, the class does not
            take one of the given arguments or needs one that is missing, or the constructor found a
            value it refuses. Any other exception from inside the constructor (a TypeError included)
            is a bug and passes through.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f'{registry.name}: expected a dict with a "type" key, got {type(cfg).__name__}: {cfg!r}')
    args = dict(cfg)
    if default_args:
        for key, value in default_args.items():
            args.setdefault(key, value)
    if 'type' not in args:
        raise ConfigError(f'{registry.name}: config has no "type" key: {dict(cfg)!r}')
    obj_type = args.pop('type')
    if isinstance(obj_type, str):
        obj_cls = registry.get(obj_type)
        if obj_cls is None:
            raise ConfigError(f'{obj_type!r} is not in the {registry.name} registry; '
                              f'closest: {_closest(obj_type, list(registry.module_dict))}')
    elif callable(obj_type):
        obj_cls = obj_type
    else:
        raise ConfigError(f'{registry.name}: "type" must be a name or a class, got {obj_type!r}')
    _check_arguments(obj_cls, args, registry)
    try:
        return obj_cls(**args)
    except TypeError as exc:
        if exc.__traceback__.tb_next is not None:  # raised inside the constructor: a bug, not the config's
            raise
        raise ConfigError(f'{registry.name}: {obj_cls.__name__}: {exc}') from None


def _check_arguments(obj_cls: Callable, args: dict, registry: Registry) -> None:
    """Reject keyword arguments the constructor does not take, naming class and argument."""
    try:
        sig = inspect.signature(obj_cls)
    except (TypeError, ValueError):
        return
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = [k for k in args if k not in accepted]
    if unknown:
        raise ConfigError(f'{registry.name}: {obj_cls.__name__} got an unexpected argument '
                          f'{unknown[0]!r}; it takes: {", ".join(sorted(accepted))}')


MODELS = Registry('models')
TASK_UTILS = Registry('task utils')
DATASETS = Registry('datasets')
TRANSFORMS = Registry('transforms')
HOOKS = Registry('hooks')
OPTIMIZERS = Registry('optimizers')
OPTIMIZER_BUILDERS = Registry('optimizer constructors')

for _name, _cls in vars(torch.optim).items():
    if inspect.isclass(_cls) and issubclass(_cls, torch.optim.Optimizer) and _cls is not torch.optim.Optimizer:
        OPTIMIZERS.register_module(name=_name, module=_cls)
