"""The sparse-matrix RoIAlign equals torchvision's roi_align, values and gradients."""
import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from mixprec.models.task_modules import roi_align as roi_align_module
from mixprec.models.task_modules.roi_align import roi_align, sparse_roi_align


def random_rois(n, num_imgs, size, gen):
    xy = torch.rand(n, 2, generator=gen) * size * 1.1 - 0.05 * size
    wh = torch.rand(n, 2, generator=gen) * size * 0.6
    wh[:3] = torch.tensor([[0.0, 0.0], [0.3, 40.0], [200.0, 2.0]])
    batch = torch.randint(0, num_imgs, (n, 1), generator=gen).float()
    return torch.cat([batch, xy, xy + wh], dim=1)


@pytest.mark.parametrize('sampling_ratio', [0, 2, 1])
@pytest.mark.parametrize('aligned', [True, False])
def test_matches_torchvision(sampling_ratio, aligned):
    gen = torch.Generator().manual_seed(sampling_ratio * 10 + aligned)
    feats = torch.randn(3, 5, 12, 17, generator=gen, requires_grad=True)
    rois = random_rois(40, 3, 68, gen)
    expected = tv_roi_align(feats, rois, (7, 7), 0.25, sampling_ratio, aligned)
    got = sparse_roi_align(feats, rois, (7, 7), 0.25, sampling_ratio, aligned)
    assert torch.allclose(got, expected, atol=1e-5)
    grad = torch.randn(expected.shape, generator=gen)
    g_expected, = torch.autograd.grad(expected, feats, grad)
    g_got, = torch.autograd.grad(got, feats, grad)
    assert torch.allclose(g_got, g_expected, atol=1e-5)


def _spy(monkeypatch, name):
    """Record each call of ``roi_align_module.<name>`` (the module-level function ``roi_align`` calls)."""
    calls = []
    real = getattr(roi_align_module, name)

    def spy(*args, **kwargs):
        calls.append(args[0].dtype)
        return real(*args, **kwargs)

    monkeypatch.setattr(roi_align_module, name, spy)
    return calls


def test_dispatch_and_empty(monkeypatch):
    feats = torch.randn(1, 2, 8, 8, requires_grad=True)
    assert sparse_roi_align(feats, torch.zeros(0, 5), (7, 7), 1.0).shape == (0, 2, 7, 7)
    rois = torch.tensor([[0.0, 1.0, 1.0, 6.0, 5.0]])
    expected = tv_roi_align(feats, rois, (2, 2), 1.0, 0, True)
    sparse_calls = _spy(monkeypatch, 'sparse_roi_align')
    tv_calls = _spy(monkeypatch, 'tv_roi_align')
    with torch.no_grad():  # inference: torchvision's kernel itself, bit for bit
        assert torch.equal(roi_align(feats, rois, (2, 2), 1.0), expected)
    assert (sparse_calls, tv_calls) == ([], [torch.float32])
    # training on the CPU in fp32: the sparse form, same numbers
    assert torch.allclose(roi_align(feats, rois, (2, 2), 1.0), expected, atol=1e-6)
    assert (sparse_calls, tv_calls) == ([torch.float32], [torch.float32])
    # features that need no gradient, or another dtype: torchvision's kernel
    roi_align(feats.detach(), rois, (2, 2), 1.0)
    roi_align(feats.detach().double().requires_grad_(), rois.double(), (2, 2), 1.0)
    assert (sparse_calls, tv_calls) == ([torch.float32], [torch.float32, torch.float32, torch.float64])
