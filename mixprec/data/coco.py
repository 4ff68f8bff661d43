"""COCO-format detection dataset with mmdetection v2's parsing and filtering rules."""
from __future__ import annotations

import contextlib
import io
import os.path as osp
import pickle
from typing import Optional, Sequence, Union

import numpy as np
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from mixprec.evaluation.coco_eval import evaluate_coco, format_results
from mixprec.registry import DATASETS, ConfigError
from .pipelines import Compose

COCO_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
    'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard',
    'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase',
    'scissors', 'teddy bear', 'hair drier', 'toothbrush')


def _join_root(data_root: Optional[str], path: Optional[str]) -> Optional[str]:
    if data_root is None or path is None or osp.isabs(path):
        return path
    return osp.join(data_root, path)


def load_coco(ann_file: str) -> COCO:
    """Load a COCO annotation file quietly; a missing file is a one-line FileNotFoundError."""
    if not osp.isfile(ann_file):
        raise FileNotFoundError(f'annotation file not found: {ann_file} (check data_root/ann_file in the '
                                'config; COCO goes under data/coco/annotations/)')
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(ann_file)


@DATASETS.register_module()
class CocoDataset(Dataset):
    """Images and annotations of one COCO json file.

    Labels are 0..C-1 over the selected categories in ascending category id; ``CLASSES[label]`` is
    the name of that category. In training (not ``test_mode``), images without a usable box
    (``filter_empty_gt``) or with a side under 32 px are dropped, and ``flag`` (uint8 [N]) is 1 for
    images wider than tall: the aspect group used by the group samplers.
    """

    CLASSES: tuple = COCO_CLASSES
    MIN_SIZE = 32

    def __init__(self, ann_file: str, pipeline: Sequence[dict], img_prefix: str = '',
                 data_root: Optional[str] = None, test_mode: bool = False, filter_empty_gt: bool = True,
                 classes: Union[str, Sequence[str], None] = None, seg_prefix: Optional[str] = None,
                 proposal_file: Optional[str] = None) -> None:
        self.data_root = data_root
        self.ann_file = _join_root(data_root, ann_file)
        self.img_prefix = _join_root(data_root, img_prefix)
        self.seg_prefix = _join_root(data_root, seg_prefix)
        self.proposal_file = _join_root(data_root, proposal_file)
        self.test_mode = test_mode
        self.filter_empty_gt = filter_empty_gt
        self.CLASSES = self.get_classes(classes)
        self.data_infos = self.load_annotations(self.ann_file)
        self.proposals = self._load_proposals()
        if not test_mode:
            keep = self._filter_imgs()
            self.data_infos = [self.data_infos[i] for i in keep]
            self.img_ids = [self.img_ids[i] for i in keep]
            if self.proposals is not None:
                self.proposals = [self.proposals[i] for i in keep]
        self.flag = self._group_flags()
        self.pipeline = Compose(pipeline)

    @classmethod
    def get_classes(cls, classes: Union[str, Sequence[str], None] = None) -> tuple:
        """The class names: the default ``CLASSES``, a tuple/list of names, or a txt file (one a line)."""
        if classes is None:
            return tuple(cls.CLASSES)
        if isinstance(classes, str):
            if not osp.isfile(classes):
                raise FileNotFoundError(f'classes file not found: {classes}')
            with open(classes) as f:
                return tuple(line.strip() for line in f if line.strip())
        if isinstance(classes, (tuple, list)):
            return tuple(classes)
        raise ConfigError(f'classes must be a tuple/list of names or a txt file path, got {classes!r}')

    def load_annotations(self, ann_file: str) -> list[dict]:
        """Read the json; select the categories named in CLASSES and number them by ascending id."""
        self.coco = load_coco(ann_file)
        by_name = {c['name']: c['id'] for c in self.coco.dataset.get('categories', [])}
        missing = [name for name in self.CLASSES if name not in by_name]
        if missing:
            raise ConfigError(f'{ann_file}: categories {missing[:5]} of CLASSES are not in the file (it has '
                              f'{sorted(by_name)[:10]}); pass classes= to choose a subset')
        self.cat_ids = sorted(by_name[name] for name in self.CLASSES)
        id_to_name = {v: k for k, v in by_name.items()}
        self.CLASSES = tuple(id_to_name[i] for i in self.cat_ids)
        self.cat2label = {cat_id: label for label, cat_id in enumerate(self.cat_ids)}
        self.img_ids = list(self.coco.getImgIds())
        infos = []
        for img_id in self.img_ids:
            info = dict(self.coco.loadImgs([img_id])[0])
            info['filename'] = info['file_name']
            infos.append(info)
        return infos

    def _load_proposals(self) -> Optional[list]:
        if self.proposal_file is None:
            return None
        with open(self.proposal_file, 'rb') as f:
            return pickle.load(f)

    def __len__(self) -> int:
        return len(self.data_infos)

    def get_cat_ids(self, idx: int) -> list[int]:
        """Category ids of the annotations of image ``idx`` (all annotations, crowd included)."""
        ann_ids = self.coco.getAnnIds(imgIds=[self.img_ids[idx]])
        return [ann['category_id'] for ann in self.coco.loadAnns(ann_ids)]

    def get_ann_info(self, idx: int) -> dict:
        """Parsed annotation of image ``idx``: bboxes [N, 4], labels [N], bboxes_ignore [K, 4], masks, seg_map."""
        ann_ids = self.coco.getAnnIds(imgIds=[self.img_ids[idx]])
        return self._parse_ann_info(self.data_infos[idx], self.coco.loadAnns(ann_ids))

    def _parse_ann_info(self, img_info: dict, anns: list[dict]) -> dict:
        boxes, labels, ignore, masks = [], [], [], []
        width, height = img_info['width'], img_info['height']
        for ann in anns:
            if ann.get('ignore', False):
                continue
            x1, y1, w, h = ann['bbox']
            inter_w = max(0, min(x1 + w, width) - max(x1, 0))
            inter_h = max(0, min(y1 + h, height) - max(y1, 0))
            if inter_w * inter_h == 0:
                continue
            if ann.get('area', w * h) <= 0 or w < 1 or h < 1:
                continue
            if ann['category_id'] not in self.cat2label:
                continue
            box = [x1, y1, x1 + w, y1 + h]
            if ann.get('iscrowd', False):
                ignore.append(box)
            else:
                boxes.append(box)
                labels.append(self.cat2label[ann['category_id']])
                masks.append(ann.get('segmentation'))
        return dict(
            bboxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.array(labels, dtype=np.int64),
            bboxes_ignore=np.array(ignore, dtype=np.float32).reshape(-1, 4),
            masks=masks,
            seg_map=img_info['filename'].rsplit('.', 1)[0] + '.png')

    def _filter_imgs(self) -> list[int]:
        keep = []
        for i, info in enumerate(self.data_infos):
            if min(info['width'], info['height']) < self.MIN_SIZE:
                continue
            if self.filter_empty_gt and len(self.get_ann_info(i)['labels']) == 0:
                continue
            keep.append(i)
        return keep

    def _group_flags(self) -> np.ndarray:
        return np.array([1 if info['width'] / info['height'] > 1 else 0 for info in self.data_infos],
                        dtype=np.uint8)

    def pre_pipeline(self, results: dict) -> dict:
        results['img_prefix'] = self.img_prefix
        results['seg_prefix'] = self.seg_prefix
        results['proposal_file'] = self.proposal_file
        results['bbox_fields'] = []
        results['mask_fields'] = []
        results['seg_fields'] = []
        return results

    def prepare_train_img(self, idx: int) -> Optional[dict]:
        results = dict(img_info=self.data_infos[idx], ann_info=self.get_ann_info(idx))
        if self.proposals is not None:
            results['proposals'] = self.proposals[idx]
        return self.pipeline(self.pre_pipeline(results))

    def prepare_test_img(self, idx: int) -> Optional[dict]:
        results = dict(img_info=self.data_infos[idx])
        if self.proposals is not None:
            results['proposals'] = self.proposals[idx]
        return self.pipeline(self.pre_pipeline(results))

    def _rand_another(self, idx: int) -> int:
        pool = np.where(self.flag == self.flag[idx])[0]
        return int(np.random.choice(pool))

    def __getitem__(self, idx: int) -> dict:
        if self.test_mode:
            return self.prepare_test_img(idx)
        while True:
            data = self.prepare_train_img(idx)
            if data is not None:
                return data
            idx = self._rand_another(idx)

    def format_results(self, results: list, jsonfile_prefix: Optional[str] = None, **kwargs):
        """Write COCO result json files; returns ``(files_by_metric, tmp_dir_or_None)``."""
        return format_results(self, results, jsonfile_prefix)

    def evaluate(self, results: list, metric: Union[str, Sequence[str]] = 'bbox', logger=None,
                 jsonfile_prefix: Optional[str] = None, classwise: bool = False,
                 proposal_nums: Sequence[int] = (100, 300, 1000), iou_thrs=None, metric_items=None) -> dict:
        """COCO evaluation (see :func:`mixprec.evaluation.evaluate_coco`)."""
        return evaluate_coco(self, results, metric=metric, logger=logger, jsonfile_prefix=jsonfile_prefix,
                             classwise=classwise, proposal_nums=proposal_nums, iou_thrs=iou_thrs,
                             metric_items=metric_items)

    def __repr__(self) -> str:
        mode = 'Test' if self.test_mode else 'Train'
        return (f'{mode} {self.__class__.__name__} of {len(self)} images, {len(self.CLASSES)} classes, '
                f'from {self.ann_file}')
