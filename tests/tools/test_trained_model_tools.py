"""tools/test.py's mmdetection v2.28 flags, eval_metric.py, publish_model.py and BatchNorm folding at inference
(--fuse-conv-bn), on a shapes model trained until it detects; each tool's output is checked against results
computed here from the checkpoint."""
import argparse
import glob
import hashlib
import json
import os
import pickle
import re
import subprocess
import sys

import mmcv
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from torch import nn

from helpers.tiny import ROOT
from helpers.tool_runs import load_tool
from helpers.trained import gt_instances, model, reference, trained  # noqa: F401 (fixtures)
from mixprec.apis import inference_detector, init_detector
from mixprec.checkpoint import CheckpointError, load_checkpoint
from mixprec.config import load_config
from mixprec.models import build_detector
from mixprec.registry import ConfigError
from mixprec.visualization import show_result

pytestmark = pytest.mark.slow


TEST = load_tool('tools/test.py')
EVAL_METRIC = load_tool('tools/analysis_tools/eval_metric.py')


def printed_metrics(text: str) -> dict:
    import ast
    return ast.literal_eval([line for line in text.splitlines() if line.startswith("{'bbox_mAP'")][-1])


@pytest.fixture(scope='module')
def tested(trained, tmp_path_factory):
    """One tools/test.py run with --eval, --out, --work-dir, --show-dir and --show-score-thr."""
    folder = tmp_path_factory.mktemp('tested')
    out, work, show = str(folder / 'results.pkl'), str(folder / 'work'), str(folder / 'show')
    import io
    from contextlib import redirect_stdout
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        TEST.main([trained.config, trained.checkpoint, '--eval', 'bbox', '--out', out, '--work-dir', work,
                   '--show-dir', show, '--show-score-thr', '0.6', '--gpu-id', '0'])
    return dict(out=out, work=work, show=show, metrics=printed_metrics(buffer.getvalue()))


def same_results(a, b) -> bool:
    return len(a) == len(b) and all(len(x) == len(y) and all(np.array_equal(p, q) for p, q in zip(x, y))
                                    for x, y in zip(a, b))


def test_test_tool_out_equals_in_process_results(tested, reference):
    results = pickle.load(open(tested['out'], 'rb'))
    assert same_results(results, reference)
    assert sum(len(r) for result in results for r in result) > 4 and tested['metrics']['bbox_mAP_50'] > 0.3


def test_test_tool_work_dir_holds_the_metrics_json(tested, trained):
    files = os.listdir(tested['work'])
    assert len(files) == 1 and re.fullmatch(r'eval_\d{8}_\d{6}\.json', files[0])
    saved = json.load(open(os.path.join(tested['work'], files[0])))
    assert saved['config'] == trained.config
    assert {k: (round(v, 4) if isinstance(v, float) else v) for k, v in saved['metric'].items()} == tested['metrics']


def test_test_tool_show_dir_draws_above_show_score_thr(tested, trained, reference):
    differs = 0
    for (path, _, _), result in zip(gt_instances(trained), reference):
        written = mmcv.imread(os.path.join(tested['show'], os.path.basename(path)))
        expected = show_result(path, result, ('circle', 'square', 'triangle'), score_thr=0.6, bbox_color=None,
                               text_color=None, mask_color=None)
        assert np.array_equal(written, expected)
        differs += not np.array_equal(written, show_result(path, result, ('circle', 'square', 'triangle'),
                                                           score_thr=0.3, bbox_color=None, text_color=None))
    assert differs  # some detection scores lie between 0.3 and 0.6: the threshold took effect


def test_eval_metric_equals_test_tool(tested, trained, capsys):
    capsys.readouterr()
    EVAL_METRIC.main([trained.config, tested['out'], '--eval', 'bbox'])
    assert printed_metrics(capsys.readouterr().out) == tested['metrics']
    # evaluation arguments from the config (--cfg-options) and from --eval-options reach COCOeval
    EVAL_METRIC.main([trained.config, tested['out'], '--eval', 'bbox', '--cfg-options', 'evaluation.iou_thrs=[0.5]'])
    assert printed_metrics(capsys.readouterr().out)['bbox_mAP'] == tested['metrics']['bbox_mAP_50']
    EVAL_METRIC.main([trained.config, tested['out'], '--eval', 'bbox', '--eval-options', 'iou_thrs=[0.75]'])
    assert printed_metrics(capsys.readouterr().out)['bbox_mAP'] == tested['metrics']['bbox_mAP_75']
    with pytest.raises(ConfigError, match='holds 3 results but the test dataset has 4 images'):
        short = os.path.join(os.path.dirname(tested['out']), 'short.pkl')
        pickle.dump(pickle.load(open(tested['out'], 'rb'))[:3], open(short, 'wb'))
        EVAL_METRIC.main([trained.config, short, '--eval', 'bbox'])


def test_test_tool_deprecated_options_and_cfg_options(tested, trained, reference, tmp_path, capsys):
    with pytest.warns(UserWarning, match='--options is deprecated'):
        TEST.main([trained.config, trained.checkpoint, '--eval', 'bbox', '--options', 'iou_thrs=[0.5]'])
    assert printed_metrics(capsys.readouterr().out)['bbox_mAP'] == tested['metrics']['bbox_mAP_50']
    out = str(tmp_path / 'top1.pkl')
    TEST.main([trained.config, trained.checkpoint, '--out', out, '--cfg-options', 'model.test_cfg.rcnn.max_per_img=1'])
    for result, ref in zip(pickle.load(open(out, 'rb')), reference):
        assert sum(len(r) for r in result) == 1
        label = max((r[0, 4], c) for c, r in enumerate(ref) if len(r))[1]
        assert np.array_equal(result[label][0], ref[label][0])


def gt_results(trained) -> list:
    """Perfect results built from the ground truth: boxes (score 1) and RLE masks per class."""
    coco = json.load(open(os.path.join(trained.folder, 'shapes', 'annotations', 'instances_train.json')))
    cats = sorted(c['id'] for c in coco['categories'])
    results = []
    for image in coco['images']:
        boxes, masks = [[] for _ in cats], [[] for _ in cats]
        for ann in coco['annotations']:
            if ann['image_id'] != image['id'] or ann['iscrowd']:
                continue
            c = cats.index(ann['category_id'])
            x, y, w, h = ann['bbox']
            boxes[c].append([x, y, x + w, y + h, 1.0])
            segm = ann['segmentation']
            rles = mask_util.frPyObjects(segm, image['height'], image['width'])
            rle = mask_util.merge(rles) if isinstance(rles, list) else rles
            rle['counts'] = rle['counts'].decode() if isinstance(rle['counts'], bytes) else rle['counts']
            masks[c].append(rle)
        results.append(([np.array(b, dtype=np.float32).reshape(-1, 5) for b in boxes], masks))
    return results


def test_eval_metric_bbox_and_segm_on_perfect_results(trained, tmp_path, capsys):
    path = str(tmp_path / 'gt.pkl')
    pickle.dump(gt_results(trained), open(path, 'wb'))
    capsys.readouterr()
    EVAL_METRIC.main([trained.config, path, '--eval', 'bbox', 'segm'])
    metrics = printed_metrics(capsys.readouterr().out)
    assert metrics['bbox_mAP'] == 1.0 and metrics['segm_mAP'] == 1.0


def test_publish_model_drops_optimizer_and_names_the_hash(trained, tmp_path):
    source = torch.load(trained.checkpoint, weights_only=True)
    assert 'optimizer' in source
    proc = subprocess.run([sys.executable, 'tools/model_converters/publish_model.py', trained.checkpoint,
                           str(tmp_path / 'faster_shapes.pth')], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (published,) = glob.glob(str(tmp_path / 'faster_shapes-*.pth'))
    assert os.listdir(tmp_path) == [os.path.basename(published)]
    sha = hashlib.sha256(open(published, 'rb').read()).hexdigest()
    assert published == str(tmp_path / f'faster_shapes-{sha[:8]}.pth') and proc.stdout.strip() == published
    ckpt = torch.load(published, weights_only=True)
    assert set(ckpt) == {'meta', 'state_dict'} and ckpt['meta']['CLASSES'] == source['meta']['CLASSES']
    assert ckpt['state_dict'].keys() == source['state_dict'].keys()
    assert all(torch.equal(ckpt['state_dict'][k], v) for k, v in source['state_dict'].items())


def fp32_model(trained):
    cfg = load_config(trained.config)
    cfg.pop('fp16')
    return init_detector(cfg, trained.checkpoint, device='cpu')


def unfolded_fp32_model(trained):
    """The fp32 model as ``init_detector`` builds it, without ``place_model``'s passes: every BatchNorm runs."""
    cfg = load_config(trained.config)
    cfg.pop('fp16')
    model = build_detector(dict(cfg.model, backbone=dict(cfg.model.backbone, init_cfg=None)))
    ckpt = load_checkpoint(model, trained.checkpoint, map_location='cpu', strict=True)
    model.cfg, model.CLASSES = cfg, tuple(ckpt['meta']['CLASSES'])
    return model.eval()


def count_batch_norm_calls(monkeypatch) -> list:
    calls = []
    real = torch.nn.modules.batchnorm.F.batch_norm
    monkeypatch.setattr(torch.nn.modules.batchnorm.F, 'batch_norm', lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_inference_folds_every_batchnorm_and_keeps_the_outputs(trained, model, one_thread, monkeypatch):
    unfused = unfolded_fp32_model(trained)
    fused = fp32_model(trained)  # init_detector: place_model folds each BatchNorm into its conv
    assert sum(isinstance(m, nn.BatchNorm2d) for m in unfused.modules()) == 20  # ResNet-18 has 20 BNs
    calls = count_batch_norm_calls(monkeypatch)
    path = gt_instances(trained)[2][0]
    # BN in inference mode is affine per channel: the folded convolution gives the same features
    img = torch.from_numpy(mmcv.imnormalize(mmcv.imread(path).astype(np.float32), np.array([123.675, 116.28, 103.53]),
                                            np.array([58.395, 57.12, 57.375]), True)).permute(2, 0, 1)[None]
    with torch.no_grad():
        features = fused.extract_feat(img)
        assert calls == []  # not one BatchNorm ran as a layer
        for a, b in zip(unfused.extract_feat(img), features):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max())), float((a - b).abs().max())
        assert len(calls) == 20
    ref, res = inference_detector(unfused, path), inference_detector(fused, path)
    assert [len(r) for r in ref] == [len(r) for r in res]
    assert all(np.allclose(r, s, atol=1e-2) for r, s in zip(ref, res))


def test_test_tool_fuse_conv_bn(trained, tmp_path, one_thread):
    out = str(tmp_path / 'fused.pkl')
    # fp32 (fp16=None): the fused run (mmdetection's flag; folding is always on) gives the unfused model's detections
    TEST.main([trained.config, trained.checkpoint, '--out', out, '--fuse-conv-bn', '--cfg-options', 'fp16=None'])
    unfused = unfolded_fp32_model(trained)
    for result, (path, _, _) in zip(pickle.load(open(out, 'rb')), gt_instances(trained)):
        ref = inference_detector(unfused, path)
        assert [len(r) for r in ref] == [len(r) for r in result]
        assert all(np.allclose(r, s, atol=1e-2) for r, s in zip(ref, result))


def test_trusted_checkpoint_and_meta_classes(trained, reference, tmp_path, capsys):
    ckpt = torch.load(trained.checkpoint, weights_only=True)
    ckpt['meta']['CLASSES'] = ('disc', 'box', 'wedge')
    ckpt['meta']['note'] = argparse.Namespace(origin='a pickled object')
    renamed = str(tmp_path / 'renamed.pth')
    torch.save(ckpt, renamed)
    show = str(tmp_path / 'show')
    with pytest.raises(CheckpointError, match='--trusted-checkpoint'):
        TEST.main([trained.config, renamed, '--show-dir', show])
    TEST.main([trained.config, renamed, '--show-dir', show, '--trusted-checkpoint'])
    path = gt_instances(trained)[3][0]
    written = mmcv.imread(os.path.join(show, os.path.basename(path)))
    kwargs = dict(score_thr=0.3, bbox_color=None, text_color=None, mask_color=None)
    assert np.array_equal(written, show_result(path, reference[3], ('disc', 'box', 'wedge'), **kwargs))
    assert not np.array_equal(written, show_result(path, reference[3], ('circle', 'square', 'triangle'), **kwargs))
    model = init_detector(trained.config, renamed, device='cpu', trusted=True)
    assert model.CLASSES == ('disc', 'box', 'wedge')
    ckpt['meta']['CLASSES'] = ('disc', 'box')
    torch.save(ckpt, renamed)
    with pytest.raises(ConfigError, match="meta.CLASSES has 2 classes, the test dataset 3"):
        TEST.main([trained.config, renamed, '--show-dir', show, '--trusted-checkpoint'])


@pytest.mark.parametrize('extra, message', [
    ([], 'nothing to do: give at least one of --out, --eval, --format-only, --show, --show-dir'),
    (['--eval', 'bbox', '--format-only'], '--eval and --format-only are exclusive'),
    (['--out', 'results.json'], '--out results.json: the output file must end in .pkl or .pickle'),
    (['--eval', 'bbox', '--options', 'a=1', '--eval-options', 'b=2'],
     '--options and --eval-options cannot both be given (--options is the deprecated name)'),
    (['--eval', 'bbox', '--gpu-collect'], '--gpu-collect and --tmpdir gather the results of a distributed test; '
                                          'they need --launcher pytorch (tools/dist_test.sh)'),
    (['--eval', 'bbox', '--tmpdir', 'x'], '--gpu-collect and --tmpdir gather'),
])
def test_test_tool_argument_errors(trained, extra, message, monkeypatch):
    with pytest.raises(ConfigError) as info:
        TEST.main([trained.config, trained.checkpoint, *extra])
    assert str(info.value).startswith(message) and '\n' not in str(info.value)
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    with pytest.raises(ConfigError, match=r'^--show: no display to open a window on \(DISPLAY is not set\); '
                                          r'use --show-dir DIR'):
        TEST.main([trained.config, trained.checkpoint, '--show'])


def test_test_tool_errors_print_one_line(trained):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, 'tools/test.py', trained.config, trained.checkpoint, '--eval', 'bbox',
                           '--format-only'], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == ['error: --eval and --format-only are exclusive']
    proc = subprocess.run([sys.executable, 'tools/test.py', trained.config, trained.checkpoint, '--eval', 'mAP'],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 2 and "invalid choice: 'mAP'" in proc.stderr.strip().splitlines()[-1]
