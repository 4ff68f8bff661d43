"""ShapesDataset: the COCO dataset of the synthetic shapes, generated on first use."""
from __future__ import annotations

import fcntl
import os
import os.path as osp
from typing import Optional, Sequence, Union

from mixprec.registry import DATASETS, ConfigError
from .coco import CocoDataset, _join_root
from .shapes import make_shapes_dataset


def ensure_shapes_dataset(ann_file: str, **kwargs) -> None:
    """Generate the shapes dataset whose ``root/annotations/instances_*.json`` is ``ann_file`` unless it
    exists. An exclusive file lock makes concurrent ranks wait for the one that writes."""
    if osp.isfile(ann_file):
        return
    root = osp.dirname(osp.dirname(osp.abspath(ann_file)))
    os.makedirs(root, exist_ok=True)
    with open(osp.join(root, '.create.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not osp.isfile(ann_file):
                paths = make_shapes_dataset(root, **kwargs)
                if osp.abspath(ann_file) not in {osp.abspath(p) for p in paths.values()}:
                    raise ConfigError(f'auto_create wrote {sorted(paths.values())} but the config asks for '
                                      f'{ann_file}; use annotations/instances_train.json or instances_val.json')
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@DATASETS.register_module()
class ShapesDataset(CocoDataset):
    """Synthetic circles/squares/triangles (category ids 1, 3, 5 -> labels 0, 1, 2).

    ``auto_create=dict(num_train, num_val, img_size, seed)`` writes the dataset under the
    annotation file's grandparent directory when the file is missing.
    """

    CLASSES = ('circle', 'square', 'triangle')

    def __init__(self, ann_file: str, pipeline: Sequence[dict], img_prefix: str = '',
                 data_root: Optional[str] = None, test_mode: bool = False, filter_empty_gt: bool = True,
                 classes: Union[str, Sequence[str], None] = None, seg_prefix: Optional[str] = None,
                 proposal_file: Optional[str] = None, auto_create: Optional[dict] = None) -> None:
        if auto_create is not None:
            ensure_shapes_dataset(_join_root(data_root, ann_file), **auto_create)
        super().__init__(ann_file, pipeline, img_prefix=img_prefix, data_root=data_root, test_mode=test_mode,
                         filter_empty_gt=filter_empty_gt, classes=classes, seg_prefix=seg_prefix,
                         proposal_file=proposal_file)
