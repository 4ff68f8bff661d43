"""WandbLoggerHook (mmcv 1.x) and MMDetWandbHook (mmdetection v2): the log records to Weights & Biases.

Needs the optional ``wandb`` package; ``WANDB_MODE=offline`` (or ``init_kwargs=dict(mode='offline')``)
logs to local files only. The run's files go under the work dir unless ``init_kwargs`` names a ``dir``.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Optional, Sequence

import mmcv
import numpy as np
from pycocotools import mask as mask_utils

from mixprec.data.masks import decode_masks
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


def wandb_boxes(bboxes: np.ndarray, labels: np.ndarray, class_names: Sequence[str], key: str) -> dict:
    """W&B's box format for ``bboxes`` [N, 4] (or [N, 5] with scores) in pixels and 0-based ``labels`` [N]:
    ``{key: {'box_data': [...], 'class_labels': {1: name, ...}}}`` (class ids 1-based, as mmdet logs them)."""
    rows = []
    for box, label in zip(bboxes, labels):
        row = dict(position=dict(minX=float(box[0]), minY=float(box[1]), maxX=float(box[2]), maxY=float(box[3])),
                   class_id=int(label) + 1, domain='pixel')
        if len(box) == 5:
            row['scores'] = dict(confidence=float(box[4]))
            row['box_caption'] = f'{class_names[label]} {float(box[4]):.2f}'
        else:
            row['box_caption'] = class_names[label]
        rows.append(row)
    return {key: dict(box_data=rows, class_labels={i + 1: name for i, name in enumerate(class_names)})}


def wandb_masks(masks: np.ndarray, labels: np.ndarray, class_names: Sequence[str], key: str) -> dict:
    """``masks`` [N, H, W] of 0/1 as one class-id map (later masks over earlier ones; 0 = background)."""
    class_map = np.zeros(masks.shape[1:], dtype=np.uint8)
    for mask, label in zip(masks, labels):
        class_map[mask.astype(bool)] = int(label) + 1
    return {key: dict(mask_data=class_map, class_labels={i + 1: name for i, name in enumerate(class_names)})}


def flat_predictions(result, score_thr: float) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """One image's result (per-class ``[n_c, 5]`` arrays, or with RLE masks) -> boxes [N, 5], labels [N],
    masks [N, H, W] or None, keeping scores above ``score_thr`` (mmdet's ``bbox_score_thr``)."""
    bbox_result, segm_result = result if isinstance(result, tuple) else (result, None)
    bboxes = np.concatenate([np.asarray(b, dtype=np.float32).reshape(-1, 5) for b in bbox_result])
    labels = np.concatenate([np.full(len(b), i, dtype=np.int64) for i, b in enumerate(bbox_result)])
    masks = None
    if segm_result is not None and len(labels):
        segms = [m for per_class in segm_result for m in per_class]
        masks = np.stack([mask_utils.decode(m) if isinstance(m, dict) else np.asarray(m) for m in segms])
    keep = bboxes[:, 4] > score_thr
    return bboxes[keep], labels[keep], None if masks is None else masks[keep]


@HOOKS.register_module()
class MMDetWandbHook(WandbLoggerHook):
    """mmdet's hook: metrics as WandbLoggerHook; each saved epoch checkpoint as a model artifact
    (``log_checkpoint``) carrying the latest evaluation metrics (``log_checkpoint_metadata``); and, with
    validation on, ``num_eval_images`` validation images (the same ones every run: seed 42) logged once
    with their ground truth (artifact ``val``, table ``val_data``), then after each evaluation with the
    predictions scoring above ``bbox_score_thr`` (artifact ``run_<id>_pred``, table ``eval_data``).
    """

    def __init__(self, init_kwargs: Optional[dict] = None, interval: int = 50, log_checkpoint: bool = False,
                 log_checkpoint_metadata: bool = False, num_eval_images: int = 100, bbox_score_thr: float = 0.3,
                 **kwargs) -> None:
        super().__init__(init_kwargs, interval, **kwargs)
        self.log_checkpoint = log_checkpoint
        self.log_checkpoint_metadata = log_checkpoint and log_checkpoint_metadata
        self.num_eval_images = int(num_eval_images)
        self.bbox_score_thr = bbox_score_thr
        self.eval_hook = None
        self.eval_indices: list[int] = []
        self.data_table = None

    def before_run(self, runner) -> None:
        super().before_run(runner)
        if self.run is None or self.num_eval_images <= 0:
            return
        self.eval_hook = next((h for h in runner.hooks if hasattr(h, 'latest_results')), None)
        if self.eval_hook is None:
            runner.logger.warning('MMDetWandbHook: num_eval_images=%d needs validation during training (no '
                                  'EvalHook: --no-validate?); no prediction tables are logged', self.num_eval_images)
            return
        dataset = self.eval_hook.dataloader.dataset
        order = np.arange(len(dataset))
        np.random.RandomState(42).shuffle(order)
        self.eval_indices = [int(i) for i in order[:self.num_eval_images]]
        self.data_table = self.wandb.Table(columns=['image_name', 'image'])
        for idx in self.eval_indices:
            info = dataset.data_infos[idx]
            image = mmcv.bgr2rgb(mmcv.imread(os.path.join(dataset.img_prefix, info['filename'])))
            ann = dataset.get_ann_info(idx)
            masks = decode_masks(ann['masks'], info['height'], info['width']) if ann.get('masks') else None
            self.data_table.add_data(info['filename'], self.wandb.Image(
                image, boxes=wandb_boxes(ann['bboxes'], ann['labels'], dataset.CLASSES, 'ground_truth'),
                masks=None if masks is None else wandb_masks(masks, ann['labels'], dataset.CLASSES, 'ground_truth')))
        artifact = self.wandb.Artifact('val', type='dataset')
        artifact.add(self.data_table, 'val_data')
        self.run.log_artifact(artifact)

    def after_train_epoch(self, runner) -> None:
        if self.run is None:
            return
        if self.log_checkpoint:
            self._log_checkpoint(runner)
        if self.by_epoch:
            self._log_predictions(runner, f'epoch_{runner.epoch + 1}')

    def after_train_iter(self, runner) -> None:
        super().after_train_iter(runner)
        if self.run is not None and not self.by_epoch:
            self._log_predictions(runner, f'iter_{runner.iter + 1}')

    def _log_checkpoint(self, runner) -> None:
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

    def _log_predictions(self, runner, alias: str) -> None:
        """The prediction table of the evaluation that ran at this epoch/iteration (if one did)."""
        results = None if self.eval_hook is None else self.eval_hook.latest_results
        if results is None:
            return
        self.eval_hook.latest_results = None  # each evaluation is logged once
        names = self.eval_hook.dataloader.dataset.CLASSES
        table = self.wandb.Table(columns=['image_name', 'ground_truth', 'prediction'])
        for row, idx in enumerate(self.eval_indices):
            bboxes, labels, masks = flat_predictions(results[idx], self.bbox_score_thr)
            image_name, gt_image = self.data_table.data[row]
            table.add_data(image_name, gt_image, self.wandb.Image(
                gt_image, boxes=wandb_boxes(bboxes, labels, names, 'predictions'),
                masks=None if masks is None else wandb_masks(masks, labels, names, 'predictions')))
        artifact = self.wandb.Artifact(f'run_{self.run.id}_pred', type='evaluation')
        artifact.add(table, 'eval_data')
        self.run.log_artifact(artifact, aliases=['latest', alias])
