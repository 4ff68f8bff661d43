"""NumClassCheckHook: the heads' ``num_classes`` must equal ``len(dataset.CLASSES)`` (mmdetection v2)."""
from __future__ import annotations

from mixprec.checkpoint import unwrap_model
from mixprec.registry import HOOKS, ConfigError
from .hook import Hook

# modules whose num_classes is not the dataset's (mmdet's exemptions: class-agnostic RPN heads, ...)
EXEMPT = ('RPNHead', 'GARPNHead', 'VGG', 'FusedSemanticHead')


def check_num_classes(model, dataset, logger) -> None:
    """Raise ConfigError naming the first module whose ``num_classes`` differs from the dataset's classes."""
    classes = getattr(dataset, 'CLASSES', None)
    name = dataset.__class__.__name__  # as mmdet: a read-through wrapper (per-sample seeds) names its dataset
    if classes is None:
        logger.warning('Please set `CLASSES` in the %s and check if it is consistent with the `num_classes` '
                       'of head', name)
        return
    if isinstance(classes, str):
        raise ConfigError(f'`CLASSES` in {name} should be a tuple of str; add a comma if there is one class: '
                          f'CLASSES = ({classes!r},)')
    model = unwrap_model(model)
    for path, module in model.named_modules():
        if not hasattr(module, 'num_classes') or any(c.__name__ in EXEMPT for c in type(module).__mro__):
            continue
        if module.num_classes != len(classes):
            raise ConfigError(f'The `num_classes` ({module.num_classes}) in {type(module).__name__} '
                              f'({path}) of {type(model).__name__} does not match the length of `CLASSES` '
                              f'({len(classes)}) in {name}')


@HOOKS.register_module()
class NumClassCheckHook(Hook):
    """Checks the heads against the dataset about to be used, before every train and val epoch."""

    def before_train_epoch(self, runner) -> None:
        check_num_classes(runner.model, runner.data_loader.dataset, runner.logger)

    def before_val_epoch(self, runner) -> None:
        loader = getattr(runner, 'val_data_loader', None) or runner.data_loader
        check_num_classes(runner.model, loader.dataset, runner.logger)
