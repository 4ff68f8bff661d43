"""Issue 7, case 2: bad data gives an error naming the file, or a warning and a skipped sample."""
from __future__ import annotations

import json
import logging
import os

import cv2
import numpy as np
import pytest

from mixprec.checkpoint import save_file
from mixprec.config import load_config
from mixprec.data import LoadImageFromFile, ShapesDataset, make_shapes_dataset
from mixprec.data.errors import DataError, MissingImageError, UnreadableImageError
from mixprec.models import build_detector
from helpers.tiny import write_tiny_config
from helpers.tool_runs import finish, one_error_line, run_tool, start_tool

PIPELINE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True)]


@pytest.fixture
def shapes(tmp_path) -> str:
    """A 4-image shapes dataset; returns its training annotation file."""
    return make_shapes_dataset(str(tmp_path / 'shapes'), num_train=4, num_val=0, img_size=64, seed=0)['train']


@pytest.fixture
def mixprec_log(caplog):
    """Records of the 'mixprec' logger (which does not propagate once the tools set it up)."""
    logger = logging.getLogger('mixprec')
    attach = not logger.propagate
    if attach:
        logger.addHandler(caplog.handler)
    yield caplog
    if attach:
        logger.removeHandler(caplog.handler)


def edit_json(path: str, change) -> str:
    with open(path) as f:
        data = json.load(f)
    change(data)
    with open(path, 'w') as f:
        json.dump(data, f)
    return path


def dataset(ann_file: str, test_mode: bool = False) -> ShapesDataset:
    return ShapesDataset(ann_file, PIPELINE, img_prefix=os.path.join(os.path.dirname(os.path.dirname(ann_file)),
                                                                      'train'), test_mode=test_mode)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'annotation file not found: \S*nope\.json'):
        dataset(str(tmp_path / 'nope.json'))


@pytest.mark.parametrize('text, expected', [
    ('{"images": [', r'malformed JSON \(Expecting value at line 1, column 13\)'),
    ('[1, 2]', r'expected a JSON object .* got a list'),
    ('{"images": {}}', r'"images" must be a list, got dict'),
])
def test_malformed_json_names_the_file(tmp_path, text, expected):
    path = tmp_path / 'bad.json'
    path.write_text(text)
    with pytest.raises(DataError, match=expected) as info:
        dataset(str(path))
    assert str(info.value).startswith(str(path)) and '\n' not in str(info.value)


@pytest.mark.parametrize('field, value, expected', [
    ('image_id', 999, r'annotation \d+ refers to image_id 999, which is not in "images"'),
    ('category_id', 7, r'annotation \d+ has category_id 7, which is not in "categories" \(ids \[1, 3, 5\]\)'),
    ('bbox', [1, 2, 'x', 4], r"annotation \d+: bbox must be \[x, y, w, h\] \(4 numbers\), got \[1, 2, 'x', 4\]"),
])
def test_inconsistent_annotation_names_file_and_annotation(shapes, field, value, expected):
    edit_json(shapes, lambda d: d['annotations'][0].update({field: value}))
    with pytest.raises(DataError, match=expected) as info:
        dataset(shapes)
    assert str(info.value).startswith(shapes)


def test_degenerate_and_nan_boxes_are_skipped_with_one_warning(shapes, mixprec_log):
    def spoil(data):
        anns = data['annotations']
        anns[0]['bbox'][2] = 0
        anns[1]['bbox'][3] = -5
        anns[2]['bbox'][0] = float('nan')
    edit_json(shapes, spoil)
    with open(shapes) as f:
        spoiled = [a['id'] for a in json.load(f)['annotations'][:3]]
        f.seek(0)
        total = len(json.load(f)['annotations'])
    ds = dataset(shapes)
    warnings = [r.getMessage() for r in mixprec_log.records if 'boxes are skipped' in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f'{shapes}: 3 annotations')
    assert all(str(i) in warnings[0] for i in spoiled)
    boxes = np.concatenate([ds.get_ann_info(i)['bboxes'] for i in range(len(ds))])
    assert np.isfinite(boxes).all() and len(boxes) == total - 3
    assert ((boxes[:, 2:] - boxes[:, :2]) > 0).all()


def test_empty_after_filtering(shapes):
    edit_json(shapes, lambda d: d.update(annotations=[]))
    with pytest.raises(DataError, match=r'no training images left after filtering 4 images .*circle, square'):
        dataset(shapes)
    assert len(dataset(shapes, test_mode=True)) == 4


def write_corrupt(path: str, kind: str) -> None:
    """Truncate ``path`` (a PNG) as a PNG or rewrite it as a truncated JPEG, or write garbage."""
    img = cv2.imread(path)
    if kind == 'jpeg':
        data = cv2.imencode('.jpg', img)[1].tobytes()
    elif kind == 'png':
        data = cv2.imencode('.png', img)[1].tobytes()
    else:
        data = b'not an image at all'
    with open(path, 'wb') as f:
        f.write(data if kind == 'garbage' else data[: len(data) // 2])


@pytest.mark.parametrize('kind', ['png', 'jpeg', 'garbage'])
def test_corrupt_image_is_an_error_naming_the_file(tmp_path, kind):
    path = str(tmp_path / 'img.png')
    cv2.imwrite(path, np.full((40, 50, 3), 128, np.uint8))
    write_corrupt(path, kind)
    with pytest.raises(UnreadableImageError, match=rf'{path}: cannot decode the image \(\d+ bytes; truncated'):
        LoadImageFromFile()(dict(img_info=dict(filename='img.png'), img_prefix=str(tmp_path)))
    with pytest.raises(MissingImageError, match='image file not found'):
        LoadImageFromFile()(dict(img_info=dict(filename='gone.png'), img_prefix=str(tmp_path)))


@pytest.mark.parametrize('channels', [1, 4])
def test_grayscale_and_rgba_become_3_channel_bgr(tmp_path, channels):
    img = np.random.RandomState(0).randint(0, 255, (40, 50, channels) if channels > 1 else (40, 50), np.uint8)
    cv2.imwrite(str(tmp_path / 'img.png'), img)
    out = LoadImageFromFile()(dict(img_info=dict(filename='img.png'), img_prefix=str(tmp_path)))['img']
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    expected = np.repeat(img[..., None], 3, axis=2) if channels == 1 else img[..., :3]
    assert np.array_equal(out, expected)


def test_training_skips_unreadable_images_with_a_warning(shapes, mixprec_log):
    ds = dataset(shapes)
    root = os.path.dirname(os.path.dirname(shapes))
    bad = os.path.join(root, 'train', ds.data_infos[0]['filename'])
    write_corrupt(bad, 'png')
    os.remove(os.path.join(root, 'train', ds.data_infos[1]['filename']))
    np.random.seed(0)
    samples = [ds[i] for i in range(len(ds))]
    assert all(s['img'].shape[2] == 3 for s in samples)
    assert {s['filename'] for s in samples} <= {os.path.join(root, 'train', ds.data_infos[i]['filename'])
                                                for i in (2, 3)}
    warnings = [r.getMessage() for r in mixprec_log.records if 'training skips an unreadable image' in r.getMessage()]
    assert len(warnings) == 2 and any(bad in w for w in warnings)
    with pytest.raises(UnreadableImageError, match=bad):
        dataset(shapes, test_mode=True)[0]


def test_all_images_unreadable_is_an_error(shapes):
    ds = dataset(shapes)
    ds.MAX_DRAWS = 20
    for info in ds.data_infos:
        os.remove(os.path.join(os.path.dirname(os.path.dirname(shapes)), 'train', info['filename']))
    with pytest.raises(DataError, match='20 training samples in a row were unreadable'):
        ds[0]


@pytest.mark.slow
def test_tools_report_bad_data_in_one_line(tmp_path):
    """tools/train.py on a malformed annotation file, tools/test.py on a corrupt test image
    read by a DataLoader worker: exit 2, one line naming the file."""
    config = write_tiny_config(str(tmp_path), epochs=1, num_train=4, num_val=2, img_size=64, workers=1)
    paths = make_shapes_dataset(str(tmp_path / 'shapes'), num_train=4, num_val=2, img_size=64, seed=0)
    with open(paths['train'], 'w') as f:
        f.write('{"images": [}')
    with open(paths['val']) as f:
        val_image = os.path.join(str(tmp_path / 'shapes'), 'val', json.load(f)['images'][1]['file_name'])
    write_corrupt(val_image, 'png')
    checkpoint = save_random_weights(config, str(tmp_path / 'random.pth'))
    train = start_tool('train.py', config, '--work-dir', str(tmp_path / 'work'), cwd=str(tmp_path))
    test = run_tool('test.py', config, checkpoint, '--eval', 'bbox', cwd=str(tmp_path))
    train = finish(train)
    assert train.returncode == 2
    assert one_error_line(train) == f'error: {paths["train"]}: malformed JSON (Expecting value at line 1, column 13)'
    assert test.returncode == 2
    assert one_error_line(test).startswith(f'error: {val_image}: cannot decode the image')


def save_random_weights(config: str, path: str) -> str:
    """A checkpoint of the config's model with its initial weights."""
    model = build_detector(load_config(config).model)
    save_file({'meta': {}, 'state_dict': model.state_dict()}, path)
    return path
