"""The inference API a mmdetection v2 user reaches for first, on a shapes model trained until it detects:
init_detector, inference_detector, model.show_result / show_result_pyplot and demo/image_demo.py."""
import os
import subprocess
import sys

import mmcv
import numpy as np
import pytest
import torch

from helpers.cpu import native_bf16
from helpers.tiny import ROOT
from helpers.trained import found_fraction, gt_instances, model, reference, trained  # noqa: F401 (fixtures)
from mixprec.apis import inference_detector, init_detector, show_result_pyplot
from mixprec.config import load_config
from mixprec.palettes import COCO_PALETTE
from mixprec.registry import ConfigError

pytestmark = pytest.mark.slow

RED = (255, 0, 0)  # RGB, as mmdetection's palettes


def same_result(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def close_result(a, b) -> bool:
    """The same detections up to float rounding: a batch of three may run other convolution kernels
    than one image (oneDNN picks them by shape), which moves fp32 boxes in the last bits."""
    return len(a) == len(b) and all(x.shape == y.shape and np.allclose(x, y, rtol=1e-5, atol=1e-3)
                                    for x, y in zip(a, b))


def test_init_detector_takes_classes_and_precision_from_checkpoint_and_config(model, trained):
    assert model.CLASSES == ('circle', 'square', 'triangle')
    assert not model.training and next(model.parameters()).device.type == 'cpu'
    # the config trains with fp16=dict(dtype='auto'): bf16 on a CPU with native bf16, BatchNorm kept in
    # fp32; fp32 throughout on other CPUs
    expected = torch.bfloat16 if native_bf16() in (True, None) else torch.float32
    assert model.backbone.conv1.weight.dtype == expected
    assert model.backbone.bn1.weight.dtype == torch.float32
    assert model.cfg.model.roi_head.bbox_head.num_classes == 3
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match='CUDA is not available'):
            init_detector(trained.config, trained.checkpoint, device='cuda:0')


def test_inference_detector_finds_the_shapes(reference, trained):
    gts = gt_instances(trained)
    assert all(sum(len(r[r[:, 4] > 0.3]) for r in result) > 0 for result in reference)
    # the model overfits these images: most shapes are found with the right class
    assert found_fraction(reference, gts) >= 0.6, found_fraction(reference, gts)


def test_inference_detector_inputs_path_array_list_agree(model, trained, reference, one_thread):
    paths = [path for path, _, _ in gt_instances(trained)]
    assert same_result(inference_detector(model, mmcv.imread(paths[1])), reference[1])
    batch = inference_detector(model, [paths[0], mmcv.imread(paths[2]), paths[3]])
    assert isinstance(batch, list) and len(batch) == 3
    assert all(close_result(b, reference[i]) for b, i in zip(batch, (0, 2, 3)))
    with pytest.raises(ConfigError, match=r'BGR \[H, W, 3\]'):
        inference_detector(model, np.zeros((8, 8), dtype=np.uint8))


def test_init_detector_cfg_options_and_config_object(trained, reference, one_thread):
    cfg = load_config(trained.config)
    top1 = init_detector(cfg, trained.checkpoint, device='cpu', cfg_options={'model.test_cfg.rcnn.max_per_img': 1})
    path = gt_instances(trained)[3][0]
    result = inference_detector(top1, path)
    assert sum(len(r) for r in result) == 1
    best = max((r[0, 4], c) for c, r in enumerate(reference[3]) if len(r))
    assert np.array_equal(result[best[1]][0], reference[3][best[1]][0])
    assert cfg.model.test_cfg.rcnn.max_per_img == 100  # the caller's Config is left as it was


def edge_share(img: np.ndarray, box: np.ndarray, bgr) -> float:
    """Share of the box's edge pixels (those inside the image) that carry colour ``bgr``."""
    x1, y1, x2, y2 = (int(v) for v in box[:4].astype(np.int32))
    h, w = img.shape[:2]
    xs, ys = np.arange(max(x1, 0), min(x2, w - 1) + 1), np.arange(max(y1, 0), min(y2, h - 1) + 1)
    pixels = [img[y, x] for y in (y1, y2) if 0 <= y < h for x in xs]
    pixels += [img[y, x] for x in (x1, x2) if 0 <= x < w for y in ys]
    return float(np.mean([tuple(p) == tuple(bgr) for p in pixels]))


def kept(result, thr):
    return [(c, box) for c, boxes in enumerate(result) for box in boxes if box[4] > thr]


def test_show_result_draws_each_kept_box_in_its_colour(model, trained, reference):
    path = gt_instances(trained)[3][0]
    img = mmcv.imread(path)
    drawn = model.show_result(path, reference[3], score_thr=0.3, bbox_color=RED, thickness=1)
    assert drawn.shape == img.shape and drawn.dtype == np.uint8
    boxes = kept(reference[3], 0.3)
    assert boxes
    shares = [edge_share(drawn, box, (0, 0, 255)) for _, box in boxes]  # boxes and labels overlap a little
    assert min(shares) > 0.3 and np.mean(shares) > 0.5, shares
    # nothing above a threshold of 1: the image comes back unchanged
    assert np.array_equal(model.show_result(img, reference[3], score_thr=1.0), img)
    # the 'coco' palette colours class k with COCO's k-th colour (RGB)
    coco = model.show_result(img, reference[3], score_thr=0.3, bbox_color='coco', thickness=1)
    shares = [edge_share(coco, box, COCO_PALETTE[c][::-1]) for c, box in boxes]
    assert min(shares) > 0.3 and np.mean(shares) > 0.5, shares


def test_show_result_out_file_and_pyplot(model, trained, reference, tmp_path):
    path = gt_instances(trained)[1][0]
    out = str(tmp_path / 'drawn.png')
    assert model.show_result(path, reference[1], out_file=out) is None
    assert np.array_equal(mmcv.imread(out), model.show_result(path, reference[1]))
    pyplot = str(tmp_path / 'pyplot.png')
    show_result_pyplot(model, path, reference[1], score_thr=0.5, palette='coco', out_file=pyplot)
    expected = model.show_result(path, reference[1], score_thr=0.5, bbox_color='coco', text_color=(200, 200, 200),
                                 mask_color='coco')
    assert np.array_equal(mmcv.imread(pyplot), expected)
    if not os.environ.get('DISPLAY'):
        with pytest.raises(ConfigError, match='no display'):
            show_result_pyplot(model, path, reference[1])


def run_demo(*args):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    env.pop('DISPLAY', None)
    return subprocess.run([sys.executable, 'demo/image_demo.py', *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)


def test_image_demo_writes_the_drawn_detections(model, trained, reference, tmp_path):
    path = gt_instances(trained)[2][0]
    out = str(tmp_path / 'demo.png')
    proc = run_demo(path, trained.config, trained.checkpoint, '--out-file', out, '--device', 'cpu',
                    '--palette', 'coco', '--score-thr', '0.5')
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = model.show_result(path, reference[2], score_thr=0.5, bbox_color='coco', text_color=(200, 200, 200),
                                 mask_color='coco')
    assert np.array_equal(mmcv.imread(out), expected)
    assert kept(reference[2], 0.5)
    refused = run_demo(path, trained.config, trained.checkpoint, '--async-test')
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        'error: --async-test: asynchronous inference is not supported; run without it']
    no_display = run_demo(path, trained.config, trained.checkpoint, '--device', 'cpu')
    assert no_display.returncode == 2 and len(no_display.stderr.strip().splitlines()) == 1
    assert 'no display' in no_display.stderr
