"""``HookBase``: the class every mixprec hook derives from, so that mmcv 1.x runners accept them.

mmcv 1.x's ``BaseRunner.register_hook`` asserts ``isinstance(hook, mmcv.runner.Hook)``. When the
``mmcv`` that this environment imports is 1.x (it has ``mmcv/runner/hooks/hook.py``), ``HookBase``
is that ``Hook``; otherwise (mmcv-lite 2.x, or no mmcv) it is a plain class and mmcv is not
imported. The check looks for the file without importing mmcv; mmcv 1.x's runner is imported only
where it is installed.
"""
from __future__ import annotations

import importlib.util
import logging
import os

logger = logging.getLogger(__name__)


def _mmcv1_hook() -> type | None:
    """mmcv 1.x's ``Hook`` class when the importable ``mmcv`` is 1.x, else None."""
    try:
        spec = importlib.util.find_spec('mmcv')
    except (ImportError, ValueError):
        return None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not any(os.path.isfile(os.path.join(f, 'runner', 'hooks', 'hook.py')) for f in folders):
        return None
    try:
        from mmcv.runner import Hook
    except Exception as exc:  # a broken mmcv 1.x install must not break mixprec's import
        logger.warning('mmcv 1.x found but mmcv.runner failed to import (%s: %s); mixprec hooks will '
                       'not register in mmcv 1.x runners', type(exc).__name__, exc)
        return None
    return Hook


class _PlainBase:
    """The base when mmcv 1.x is absent: nothing."""


HookBase: type = _mmcv1_hook() or _PlainBase
