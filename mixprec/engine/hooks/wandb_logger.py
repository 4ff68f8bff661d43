"""WandbLoggerHook (mmcv 1.x) and MMDetWandbHook (mmdetection v2): the log records to Weights & Biases.

Needs the optional ``wandb`` package; ``WANDB_MODE=offline`` (or ``init_kwargs=dict(mode='offline')``)
logs to local files only. The run's files go under the work dir unless ``init_kwargs`` names a ``dir``.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Optional

from mixprec.registry import HOOKS, ConfigError
from .logger import LoggerHook


def import_wandb(hook: str):
    try:
        import wandb
    except ImportError:
        raise ConfigError(f'{hook} needs the wandb package: pip install wandb '
                          '(or pip install "mixprec[wandb]")') from None
    return wandb


@HOOKS.register_module()
class WandbLoggerHook(LoggerHook):
    """``wandb.init(**init_kwargs)`` on rank 0, ``wandb.log(tags, step=global iter)`` per record; at the end
    the work dir's ``out_suffix`` files as an artifact (``log_artifact``)."""

    def __init__(self, init_kwargs: Optional[dict] = None, interval: int = 10, ignore_last: bool = True,
                 commit: bool = True, by_epoch: bool = True, with_step: bool = True, log_artifact: bool = True,
                 out_suffix: tuple = ('.log.json', '.log', '.py'), define_metric_cfg: Optional[dict] = None) -> None:
        super().__init__(interval, ignore_last, by_epoch)
        self.wandb = import_wandb(type(self).__name__)
        self.init_kwargs = dict(init_kwargs or {})
        self.commit = commit
        self.with_step = with_step
        self.log_artifact = log_artifact
        self.out_suffix = tuple(out_suffix) if isinstance(out_suffix, (list, tuple)) else (out_suffix,)
        self.define_metric_cfg = define_metric_cfg
        self.run = None

    def before_run(self, runner) -> None:
        if runner.rank != 0:
            return
        kwargs = dict(self.init_kwargs)
        kwargs.setdefault('dir', runner.work_dir)
        self.run = self.wandb.init(**kwargs)
        for metric, summary in (self.define_metric_cfg or {}).items():
            self.run.define_metric(metric, summary=summary)

    def write(self, runner, record: OrderedDict) -> None:
        if self.run is None:
            return
        step, tags = self.loggable_tags(runner, record)
        if self.with_step and record['mode'] != 'train':
            # wandb refuses a step that was committed already (the epoch's last train record has it):
            # val records join the next step, committed with the next train record or at finish
            self.run.log(tags, commit=False)
        elif self.with_step:
            self.run.log(tags, step=step, commit=self.commit)
        else:
            self.run.log(dict(tags, global_step=step), commit=self.commit)

    def after_run(self, runner) -> None:
        if self.run is None:
            return
        if self.log_artifact and runner.work_dir:
            artifact = self.wandb.Artifact(name='artifacts', type='model')
            for name in sorted(os.listdir(runner.work_dir)):
                if name.endswith(self.out_suffix):
                    artifact.add_file(os.path.join(runner.work_dir, name))
            self.run.log_artifact(artifact)
        self.run.finish()
        self.run = None


@HOOKS.register_module()
class MMDetWandbHook(WandbLoggerHook):
    """mmdet's hook: metrics as WandbLoggerHook, plus each saved epoch checkpoint as a model artifact
    (``log_checkpoint``) carrying the latest evaluation metrics (``log_checkpoint_metadata``).

    The prediction tables of mmdet (``num_eval_images > 0``) are not implemented and refused.
    """

    def __init__(self, init_kwargs: Optional[dict] = None, interval: int = 50, log_checkpoint: bool = False,
                 log_checkpoint_metadata: bool = False, num_eval_images: int = 100, bbox_score_thr: float = 0.0,
                 **kwargs) -> None:
        if num_eval_images:
            raise ConfigError(f'MMDetWandbHook: num_eval_images={num_eval_images} (tables of predictions) is not '
                              'supported by mixprec; set num_eval_images=0')
        super().__init__(init_kwargs, interval, **kwargs)
        self.log_checkpoint = log_checkpoint
        self.log_checkpoint_metadata = log_checkpoint_metadata
        self.bbox_score_thr = bbox_score_thr

    def after_train_epoch(self, runner) -> None:
        if self.run is None or not self.log_checkpoint:
            return
        path = os.path.join(runner.work_dir, f'epoch_{runner.epoch + 1}.pth')
        if not os.path.exists(path):
            return
        metadata = {}
        if self.log_checkpoint_metadata:
            metrics = next((h.last_metrics for h in runner.hooks if hasattr(h, 'last_metrics')), {})
            metadata = dict(metrics, current_epoch=runner.epoch + 1)
        artifact = self.wandb.Artifact(f'run_{self.run.id}_model', type='model', metadata=metadata)
        artifact.add_file(path)
        self.run.log_artifact(artifact, aliases=[f'epoch_{runner.epoch + 1}', 'latest'])
