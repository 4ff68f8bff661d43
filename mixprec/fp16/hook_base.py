"""``HookBase``: the hook protocol, every stage a runner calls declared once; mmcv 1.x runners accept it.

Each stage is a no-op here and a hook overrides those it needs; as in mmcv 1.x's ``Hook``, the train
and val stages also reach the generic ``before_epoch`` / ``after_epoch`` / ``before_iter`` /
``after_iter``, so a hook written for mmcv 1.x runs unchanged. This project's runner calls them in
priority order: ``before_run``; per train epoch ``before_train_epoch``, per iteration
``before_train_iter`` / ``after_train_iter``, ``after_train_epoch``; per val epoch of a ``workflow``
``before_val_epoch``, ``before_val_iter`` / ``after_val_iter``, ``after_val_epoch``; ``after_run``;
``before_save_checkpoint(runner, checkpoint)`` as a checkpoint is written, ``before_resume(runner,
checkpoint)`` before a resumed checkpoint is loaded, ``log_val(runner, metrics)`` when an evaluation
hook has metrics; ``state_dict`` / ``load_state_dict`` carry a hook's resumable state.

mmcv 1.x's ``BaseRunner.register_hook`` asserts ``isinstance(hook, mmcv.runner.Hook)``. When the
``mmcv`` that this environment imports is 1.x (it has ``mmcv/runner/hooks/hook.py``), ``HookBase``
derives from that ``Hook``; otherwise (mmcv-lite 2.x, or no mmcv) from ``object``, and mmcv is not
imported. The check looks for the file without importing mmcv; mmcv 1.x's runner is imported only
where it is installed. This module lives in ``fp16`` because the fp16 hook derives from it and the
fp16 package imports nothing from the engine.
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


class HookBase(_mmcv1_hook() or object):
    """Every stage a runner calls, as a no-op (see the module docstring)."""

    def before_run(self, runner) -> None:
        pass

    def after_run(self, runner) -> None:
        pass

    def before_epoch(self, runner) -> None:
        """mmcv 1.x's generic stage: the train and the val epoch stages call it."""

    def after_epoch(self, runner) -> None:
        """mmcv 1.x's generic stage: the train and the val epoch stages call it."""

    def before_iter(self, runner) -> None:
        """mmcv 1.x's generic stage: the train and the val iteration stages call it."""

    def after_iter(self, runner) -> None:
        """mmcv 1.x's generic stage: the train and the val iteration stages call it."""

    def before_train_epoch(self, runner) -> None:
        self.before_epoch(runner)

    def after_train_epoch(self, runner) -> None:
        self.after_epoch(runner)

    def before_train_iter(self, runner) -> None:
        self.before_iter(runner)

    def after_train_iter(self, runner) -> None:
        self.after_iter(runner)

    def before_val_epoch(self, runner) -> None:
        self.before_epoch(runner)

    def after_val_epoch(self, runner) -> None:
        self.after_epoch(runner)

    def before_val_iter(self, runner) -> None:
        self.before_iter(runner)

    def after_val_iter(self, runner) -> None:
        self.after_iter(runner)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """``checkpoint`` (``meta``, ``state_dict``, ``optimizer``) may be changed before it is written."""

    def before_resume(self, runner, checkpoint: dict) -> None:
        """Before the runner loads ``checkpoint`` into the model, optimizer and hooks."""

    def log_val(self, runner, metrics: dict) -> None:
        """Evaluation ``metrics`` of the current epoch / iteration (called on rank 0)."""

    def state_dict(self) -> dict:
        """Resumable state saved in ``meta['hook_states'][ClassName]``."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
