"""COCO-format detection dataset with mmdetection v2's parsing and filtering rules."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os.path as osp
import pickle
from typing import Optional, Sequence, Union

import numpy as np
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from mixprec.evaluation.coco_eval import evaluate_coco, format_results
from mixprec.registry import DATASETS, ConfigError
from .errors import DataError, UnreadableImageError
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
    """Read and check a COCO annotation file; each problem is one line naming the file.

    A missing file is a FileNotFoundError; malformed JSON, a wrong layout, an annotation whose image
    or category is not in the file, or a bbox that is not four numbers are :class:`DataError`.
    Boxes that are NaN/infinite or have a zero or negative size are reported in one warning and
    skipped when the annotations are parsed.
    """
    if not isinstance(ann_file, str):
        raise ConfigError(f'ann_file must be a path, got {type(ann_file).__name__} {ann_file!r}')
    if not osp.isfile(ann_file):
        raise FileNotFoundError(f'annotation file not found: {ann_file} (check data_root/ann_file in the '
                                'config; COCO goes under data/coco/annotations/)')
    try:
        with open(ann_file, 'rb') as f:
            dataset = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f'{ann_file}: malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})') from None
    except UnicodeDecodeError as exc:
        raise DataError(f'{ann_file}: not a JSON text file ({exc.reason} at byte {exc.start})') from None
    degenerate = check_coco_annotations(dataset, ann_file)
    if degenerate:
        shown = ', '.join(str(i) for i in degenerate[:5]) + (', ...' if len(degenerate) > 5 else '')
        logging.getLogger('mixprec').warning(
            '%s: %d annotations with NaN/infinite or zero/negative-size boxes are skipped (ids %s)',
            ann_file, len(degenerate), shown)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_coco_annotations(dataset, ann_file: str) -> list:
    """Raise :class:`DataError` for a file that is not usable COCO; return the ids of degenerate boxes."""
    if not isinstance(dataset, dict):
        raise DataError(f'{ann_file}: expected a JSON object with "images", "annotations" and "categories", '
                        f'got a {type(dataset).__name__}')
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(dataset.get(key, []), list):
            raise DataError(f'{ann_file}: "{key}" must be a list, got {type(dataset[key]).__name__}')
    img_ids = set()
    for index, img in enumerate(dataset.get('images', [])):
        missing = [k for k in ('id', 'file_name', 'width', 'height') if not isinstance(img, dict) or k not in img]
        if missing:
            raise DataError(f'{ann_file}: images[{index}] has no {", ".join(missing)}')
        img_ids.add(img['id'])
    cat_ids = {c.get('id') for c in dataset.get('categories', []) if isinstance(c, dict)}
    degenerate = []
    for index, ann in enumerate(dataset.get('annotations', [])):
        ann_id = ann.get('id', f'#{index}') if isinstance(ann, dict) else f'#{index}'
        if not isinstance(ann, dict) or ann.get('image_id') not in img_ids:
            image_id = ann.get('image_id') if isinstance(ann, dict) else None
            raise DataError(f'{ann_file}: annotation {ann_id} refers to image_id {image_id!r}, '
                            'which is not in "images"')
        if ann.get('category_id') not in cat_ids:
            raise DataError(f'{ann_file}: annotation {ann_id} has category_id {ann.get("category_id")!r}, which is '
                            f'not in "categories" (ids {sorted(cat_ids, key=str)[:10]})')
        bbox = ann.get('bbox')
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise DataError(f'{ann_file}: annotation {ann_id}: bbox must be [x, y, w, h] (4 numbers), got {bbox!r}')
        if not all(math.isfinite(v) for v in bbox) or bbox[2] <= 0 or bbox[3] <= 0:
            degenerate.append(ann_id)
    return degenerate


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
    MAX_DRAWS = 1000

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
            if not keep:
                raise DataError(
                    f'{self.ann_file}: no training images left after filtering {len(self.data_infos)} images '
                    f'(kept: sides >= {self.MIN_SIZE} px and, with filter_empty_gt, a usable box of '
                    f'{", ".join(self.CLASSES)})')
            self.data_infos = [self.data_infos[i] for i in keep]
            self.img_ids = [self.img_ids[i] for i in keep]
            if self.proposals is not None:
                self.proposals = [self.proposals[i] for i in keep]
        self.flag = self._group_flags()
        self.pipeline = Compose(pipeline)
        self._skipped_files: set = set()

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
            if ann.get('ignore', False) or not all(math.isfinite(v) for v in ann['bbox']):
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
        """Test mode: image ``idx`` or an error. Training: a sample the pipeline kept, drawing another
        image of the same aspect group for one it dropped or one that cannot be read (with a warning)."""
        if self.test_mode:
            return self.prepare_test_img(idx)
        for _ in range(self.MAX_DRAWS):
            data = self._try_train_img(idx)
            if data is not None:
                return data
            idx = self._rand_another(idx)
        raise DataError(f'{self.ann_file}: {self.MAX_DRAWS} training samples in a row were unreadable or '
                        'dropped by the pipeline')

    def _try_train_img(self, idx: int) -> Optional[dict]:
        try:
            return self.prepare_train_img(idx)
        except UnreadableImageError as exc:
            if str(exc) not in self._skipped_files:
                self._skipped_files.add(str(exc))
                logging.getLogger('mixprec').warning('training skips an unreadable image: %s', exc)
            return None

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
