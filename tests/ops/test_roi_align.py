"""RoIAlign on the CPU (a sparse product) equals torchvision's roi_align, values and gradients, on one level and
on a pyramid."""
import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from mixprec.ops import roi_align_levels


def one_level(features, rois, output_size, spatial_scale, sampling_ratio=0, aligned=True):
    """torchvision's ``roi_align`` signature through the pyramid entry point, every RoI on one level."""
    levels = torch.zeros(rois.size(0), dtype=torch.long)
    return roi_align_levels([features], rois, levels, output_size, [spatial_scale], sampling_ratio, aligned)


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
    got = one_level(feats, rois, (7, 7), 0.25, sampling_ratio, aligned)
    assert torch.allclose(got, expected, atol=1e-5)
    grad = torch.randn(expected.shape, generator=gen)
    g_expected, = torch.autograd.grad(expected, feats, grad)
    g_got, = torch.autograd.grad(got, feats, grad)
    assert torch.allclose(g_got, g_expected, atol=1e-5)


@pytest.mark.parametrize('channels_last', [False, True])
def test_pyramid_in_one_product_matches_torchvision_level_by_level(channels_last):
    """RoIs on four levels of two images, in no particular order, mixed grid sizes (adaptive
    sampling): each RoI's cells and each level's gradient equal torchvision's on that level."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(2, 6, 32, 24), (2, 6, 16, 12), (2, 6, 8, 6), (2, 6, 4, 3)]
    feats = [torch.randn(s, generator=gen) for s in shapes]
    if channels_last:
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    feats = [f.requires_grad_() for f in feats]
    rois = random_rois(60, 2, 100, gen)
    levels = torch.randint(0, 4, (60,), generator=gen)
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    got = roi_align_levels(feats, rois, levels, (7, 7), scales)
    assert got.shape == (60, 6, 7, 7) and got.dtype == torch.float32
    grad = torch.randn(got.shape, generator=gen)
    got_grads = torch.autograd.grad(got, feats, grad)
    grids = torch.ceil((rois[:, 3] - rois[:, 1]) / 28)  # adaptive grids on level 0 (a few each level)
    assert len(set(levels.tolist())) == 4 and len(set(grids.tolist())) > 2
    for level, (feat, scale) in enumerate(zip(feats, scales)):
        inds = torch.nonzero(levels == level).squeeze(1)
        expected = tv_roi_align(feat, rois[inds], (7, 7), scale, 0, True)
        assert torch.allclose(got[inds], expected, atol=1e-5)
        expected_grad, = torch.autograd.grad(expected, feat, grad[inds])
        assert torch.allclose(got_grads[level], expected_grad, atol=1e-5)


def test_half_features_are_pooled_in_fp32_and_get_half_gradients():
    gen = torch.Generator().manual_seed(5)
    feat = torch.randn(1, 4, 16, 16, generator=gen).bfloat16().requires_grad_()
    rois = torch.tensor([[0.0, 1.5, 2.0, 40.0, 33.0], [0.0, 10.0, 12.0, 20.0, 60.0]])
    got = roi_align_levels([feat], rois, torch.zeros(2, dtype=torch.long), (7, 7), [0.25])
    expected = tv_roi_align(feat.detach().float(), rois, (7, 7), 0.25, 0, True)
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-6)
    grad, = torch.autograd.grad(got.sum(), feat)
    assert grad.dtype == torch.bfloat16 and grad.shape == feat.shape


def test_no_rois_and_inference():
    feats = torch.randn(1, 2, 8, 8, requires_grad=True)
    assert one_level(feats, torch.zeros(0, 5), (7, 7), 1.0).shape == (0, 2, 7, 7)
    rois = torch.tensor([[0.0, 1.0, 1.0, 6.0, 5.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    with torch.no_grad():  # inference takes the same sparse path (faster than the kernel on the CPU)
        got = roi_align_levels([feats], rois, torch.zeros(2, dtype=torch.long), (2, 2), [1.0])
    assert not got.requires_grad
    assert torch.allclose(got, tv_roi_align(feats, rois, (2, 2), 1.0, 0, True), atol=1e-6)
    assert torch.equal(got[1], torch.zeros(2, 2, 2))  # an empty RoI has no samples: zeros, as torchvision
