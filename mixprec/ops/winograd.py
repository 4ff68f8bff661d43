"""3x3 stride-1 convolutions as Winograd F(4x4, 3x3) for fp32 on the CPU.

A direct 3x3 convolution costs 9 multiply-adds per input channel, output channel and output pixel;
oneDNN already runs it near the CPU's fp32 peak, so the only way to make it faster is to do less
arithmetic. Winograd's minimal filtering algorithm (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2015) computes each 4x4 output tile from a 6x6 input tile with 36
multiplications per channel pair instead of 144: the input tile d and the filter g are mapped to
V = B^T d B and U = G g G^T (6x6 each), multiplied pointwise and summed over input channels, which
for all tiles at once is 36 independent matrix products [tiles, C_in] @ [C_in, C_out], and mapped
back by Y = A^T M A. The products are 4x fewer flops than the direct convolution; the transforms
are cheap matrix products of their own.

Backward stays in the Winograd domain: the input gradient of a stride-1, padding-1 3x3 convolution
is the same kind of convolution of the output gradient with the flipped, transposed filter, and the
filter gradient is G^T (sum over tiles of (A dY A^T) * V) G, the adjoint of the forward map, again
36 matrix products. Results equal the direct convolution up to float rounding (the transforms'
coefficients, up to 5 and 1/24, make it a few times larger than the direct sum's; the tests bound it).

The operator is :func:`conv3x3`; :func:`mixprec.ops.conv.conv2d` sends a convolution here where
:func:`applies` says it pays, and ``place_model`` decides once which convolutions may (the
``cpu_winograd`` config key).
"""
from __future__ import annotations

import functools
import threading
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor

TILE = 4  # output tile side m in F(m x m, 3 x 3)
_WINDOW = TILE + 2  # input tile side


@functools.lru_cache(maxsize=None)
def _matrices() -> tuple[Tensor, Tensor, Tensor]:
    """Lavin's F(4, 3) transforms, each as a Kronecker product acting on a flattened tile:
    input [36, 36] (B^T (x) B^T), filter [36, 9] (G (x) G), output [16, 36] (A^T (x) A^T).
    The filter transform of a 3x3 filter rotated by 180 degrees is ``G (x) G`` with its columns
    reversed (the rotation reverses the 9 flattened taps)."""
    bt = torch.tensor([[4, 0, -5, 0, 1, 0],
                       [0, -4, -4, 1, 1, 0],
                       [0, 4, -4, -1, 1, 0],
                       [0, -2, -1, 2, 1, 0],
                       [0, 2, -1, -2, 1, 0],
                       [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
    g = torch.tensor([[1 / 4, 0, 0],
                      [-1 / 6, -1 / 6, -1 / 6],
                      [-1 / 6, 1 / 6, -1 / 6],
                      [1 / 24, 1 / 12, 1 / 6],
                      [1 / 24, -1 / 12, 1 / 6],
                      [0, 0, 1]], dtype=torch.float64)
    at = torch.tensor([[1, 1, 1, 1, 1, 0],
                       [0, 1, -1, 2, -2, 0],
                       [0, 1, 1, 4, 4, 0],
                       [0, 1, -1, 8, -8, 1]], dtype=torch.float64)
    return tuple(torch.kron(m, m).float() for m in (bt, g, at))


MIN_CHANNELS = 128  # narrower convolutions: the transforms cost more than the products save
MIN_OUTPUT_PIXELS = 1024  # N * H * W; fewer tiles: the same


def eligible(weight_shape: Sequence[int], stride, padding, dilation, groups: int) -> bool:
    """Whether a convolution of this configuration can run as Winograd F(4x4, 3x3): a 3x3 kernel
    with stride 1, padding 1, no dilation or groups, at least ``MIN_CHANNELS`` in and out."""
    return (len(weight_shape) == 4 and tuple(weight_shape[-2:]) == (3, 3) and groups == 1
            and tuple(stride) == (1, 1) and tuple(padding) == (1, 1) and tuple(dilation) == (1, 1)
            and min(weight_shape[:2]) >= MIN_CHANNELS)


def applies(x: Tensor, weight: Tensor, stride, padding, dilation, groups: int) -> bool:
    """Whether ``F.conv2d(x, weight, ...)`` runs faster here as Winograd with the same result: an
    :func:`eligible` fp32 CPU convolution with at least ``MIN_OUTPUT_PIXELS`` output pixels, whose
    direct result would be channels_last as the Winograd one is (x or the weight channels_last,
    as ``place_model`` leaves them: an NCHW model keeps NCHW outputs, which its code may ``view``)."""
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.dim() == 4 and eligible(weight.shape, stride, padding, dilation, groups)
            and x.shape[0] * x.shape[-2] * x.shape[-1] >= MIN_OUTPUT_PIXELS
            and (x.is_contiguous(memory_format=torch.channels_last)
                 or weight.is_contiguous(memory_format=torch.channels_last)))


def _filter_transform(weight: Tensor, adjoint: bool, taps: Tensor, out: Tensor) -> Tensor:
    """U [36, C_out, C_in] of a [C_out, C_in, 3, 3] weight; with ``adjoint``, U [36, C_in, C_out]
    of the rotated, transposed weight whose convolution is the input gradient. Computed in the
    flat scratch views ``taps`` and ``out``."""
    _, kg, _ = _matrices()
    c_out, c_in = weight.shape[:2]
    if adjoint:
        c_out, c_in = c_in, c_out
        kg = kg.flip(1)
    taps = taps.view(3, 3, c_out, c_in)
    taps.copy_(weight.permute(2, 3, 1, 0) if adjoint else weight.permute(2, 3, 0, 1))
    return torch.mm(kg, taps.view(9, -1), out=out.view(36, -1)).view(36, c_out, c_in)


_BLOCK_FLOATS = 1 << 20  # transformed values a block holds at once (4 MB, near the cache)


class _Scratch(threading.local):
    """A float32 buffer each thread reuses for the transforms' temporaries.

    Allocated afresh for every block (thousands a step, megabytes each), they fragmented the heap
    between the activations, growing the peak memory although no more tensors were alive at once.
    The buffer is at least ``_MAPPED_FLOATS`` so that malloc maps it outside the heap (glibc's mmap
    threshold is at most 32 MB); pages it never touches cost no memory. A smaller one, grown on
    demand inside the heap, still left holes.
    """
    buffer: Optional[Tensor] = None


_SCRATCH = _Scratch()
_MAPPED_FLOATS = 9 << 20  # 36 MB


def _scratch(*sizes: int) -> list[Tensor]:
    """Flat, disjoint float32 views of ``sizes`` elements each into this thread's scratch buffer."""
    if _SCRATCH.buffer is None or _SCRATCH.buffer.numel() < sum(sizes):
        _SCRATCH.buffer = None
        with torch.inference_mode(False):  # made under inference_mode, training could not write it
            _SCRATCH.buffer = torch.empty(max(sum(sizes), _MAPPED_FLOATS))
    views, start = [], 0
    for size in sizes:
        views.append(_SCRATCH.buffer[start:start + size])
        start += size
    return views


class _Blocks:
    """The tiles of an [N, H, W, C] map in blocks of whole images, or of tile rows of one image,
    holding about ``_BLOCK_FLOATS`` transformed values each; ``max_tiles`` bounds a block's tiles."""

    def __init__(self, n: int, h: int, w: int, channels: int) -> None:
        self.n = n
        self.tiles_h, self.tiles_w = -(-h // TILE), -(-w // TILE)
        rows = max(1, _BLOCK_FLOATS // (36 * self.tiles_w * channels))
        self.images = rows // self.tiles_h if rows >= self.tiles_h else 0
        self.rows = self.tiles_h if self.images else rows
        self.max_tiles = max(self.images, 1) * self.rows * self.tiles_w

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        if self.images:
            for start in range(0, self.n, self.images):
                yield slice(start, min(start + self.images, self.n)), slice(0, self.tiles_h)
        else:
            for image in range(self.n):
                for start in range(0, self.tiles_h, self.rows):
                    yield slice(image, image + 1), slice(start, min(start + self.rows, self.tiles_h))

    def padded_size(self, channels: int) -> int:
        """Elements of one block's input rows with their padding."""
        return max(self.images, 1) * (self.rows * TILE + 2) * (self.tiles_w * TILE + 2) * channels


def _input_transform(x_nhwc: Tensor, blocks: _Blocks, images: slice, tile_rows: slice,
                     padded: Tensor, windows: Tensor, out: Tensor) -> Tensor:
    """V [36, tiles, C] of one block of tiles of [N, H, W, C] under zero padding 1 (and to whole
    tiles), computed in the flat scratch views ``padded``, ``windows`` and ``out``."""
    kb, _, _ = _matrices()
    _, h, w, c = x_nhwc.shape
    n, rows = images.stop - images.start, tile_rows.stop - tile_rows.start
    tiles = n * rows * blocks.tiles_w
    top, bottom = tile_rows.start * TILE - 1, tile_rows.stop * TILE + 1
    first, last = max(top, 0), min(bottom, h)
    block = padded[:n * (bottom - top) * (blocks.tiles_w * TILE + 2) * c].view(n, bottom - top, -1, c)
    block[:, :first - top].zero_()
    block[:, last - top:].zero_()
    block[:, :, 0].zero_()
    block[:, :, w + 1:].zero_()
    block[:, first - top:last - top, 1:w + 1].copy_(x_nhwc[images, first:last])
    d = windows[:36 * tiles * c].view(_WINDOW, _WINDOW, n, rows, blocks.tiles_w, c)
    d.copy_(block.unfold(1, _WINDOW, TILE).unfold(2, _WINDOW, TILE).permute(4, 5, 0, 1, 2, 3))
    return torch.mm(kb, d.view(36, -1), out=out[:36 * tiles * c].view(36, -1)).view(36, tiles, c)


def _forward_nhwc(x_nhwc: Tensor, weight: Tensor, bias: Optional[Tensor], adjoint: bool = False) -> Tensor:
    """Winograd convolution of [N, H, W, C_in] with a [C_out, C_in, 3, 3] weight -> [N, C_out, H, W]
    (channels_last); with ``adjoint``, of [N, H, W, C_out] with the rotated, transposed weight ->
    [N, C_in, H, W] (the input gradient)."""
    _, _, ka = _matrices()
    n, h, w, c_in = x_nhwc.shape
    c_out = weight.shape[1 if adjoint else 0]
    blocks = _Blocks(n, h, w, max(c_in, c_out))
    th, tw, t = blocks.tiles_h, blocks.tiles_w, blocks.max_tiles
    cropped = th * TILE != h or tw * TILE != w
    # windows is dead once v is computed, v once m is: m and o reuse their space.
    taps, u, padded, windows_m, v_o, whole = _scratch(
        9 * c_out * c_in, 36 * c_out * c_in, blocks.padded_size(c_in), 36 * t * max(c_in, c_out),
        max(36 * c_in, TILE * TILE * c_out) * t, TILE * TILE * t * c_out if cropped else 0)
    u_t = _filter_transform(weight, adjoint, taps, u).transpose(1, 2)
    y = torch.empty((n, c_out, h, w), dtype=x_nhwc.dtype, memory_format=torch.channels_last)
    y_nhwc = y.permute(0, 2, 3, 1)
    for images, rows in blocks:
        n_block, rows_block = images.stop - images.start, rows.stop - rows.start
        v_block = _input_transform(x_nhwc, blocks, images, rows, padded, windows_m, v_o)
        m_block = torch.bmm(v_block, u_t, out=windows_m[:v_block.shape[1] * 36 * c_out].view(36, -1, c_out))
        o_block = torch.mm(ka, m_block.view(36, -1), out=v_o[:m_block.numel() // 36 * TILE * TILE].view(16, -1))
        o_block = o_block.view(TILE, TILE, n_block, rows_block, tw, c_out).permute(2, 3, 0, 4, 1, 5)
        if not cropped:
            y_nhwc[images, rows.start * TILE:rows.stop * TILE].view(n_block, rows_block, TILE, tw, TILE,
                                                                     c_out).copy_(o_block)
            continue
        block_rows = whole[:o_block.numel()].view(n_block, rows_block * TILE, tw * TILE, c_out)
        block_rows.view(n_block, rows_block, TILE, tw, TILE, c_out).copy_(o_block)
        top, bottom = rows.start * TILE, min(rows.stop * TILE, h)
        y_nhwc[images, top:bottom].copy_(block_rows[:, :bottom - top, :w])
    if bias is not None:
        y.permute(0, 2, 3, 1).add_(bias)
    return y


def _nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


def conv3x3_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3x3 weight, without autograd."""
    return _forward_nhwc(_nhwc(x), weight, bias)


def _filter_gradient(grad_nhwc: Tensor, x_nhwc: Tensor) -> Tensor:
    """[C_out, C_in, 3, 3] weight gradient: G^T (sum over tiles of (A dY A^T) * V) G."""
    _, kg, ka = _matrices()
    n, h, w, c_out = grad_nhwc.shape
    c_in = x_nhwc.shape[-1]
    blocks = _Blocks(n, h, w, max(c_in, c_out))
    tw, t = blocks.tiles_w, blocks.max_tiles
    # The output-gradient tiles are dead once transformed, the padded rows once copied to them:
    # the input transform's windows and its result reuse their space.
    shared = max(36 * c_in, TILE * TILE * c_out) * t
    grad_u, taps, padded, tiles_windows, rows_v, grad_m = _scratch(
        36 * c_out * c_in, 9 * c_out * c_in, blocks.padded_size(c_in), shared, shared, 36 * t * c_out)
    grad_u = grad_u.view(36, c_out, c_in).zero_()
    for images, rows in blocks:
        n_block, rows_block = images.stop - images.start, rows.stop - rows.start
        tiles = n_block * rows_block * tw
        top, bottom = rows.start * TILE, min(rows.stop * TILE, h)
        source = grad_nhwc[images, top:bottom]
        if bottom - top != rows_block * TILE or w != tw * TILE:  # zero-pad to whole tiles
            whole = rows_v[:TILE * TILE * tiles * c_out].view(n_block, rows_block * TILE, tw * TILE, c_out)
            whole.zero_()
            whole[:, :bottom - top, :w].copy_(source)
            source = whole
        g = tiles_windows[:TILE * TILE * tiles * c_out].view(TILE, TILE, n_block, rows_block, tw, c_out)
        g.permute(2, 3, 0, 4, 1, 5).copy_(source.reshape(n_block, rows_block, TILE, tw, TILE, c_out))
        g_m = torch.mm(ka.t(), g.view(TILE * TILE, -1), out=grad_m[:36 * tiles * c_out].view(36, -1))
        v_block = _input_transform(x_nhwc, blocks, images, rows, padded, tiles_windows, rows_v)
        grad_u.baddbmm_(g_m.view(36, tiles, c_out).transpose(1, 2), v_block)
    return torch.mm(kg.t(), grad_u.view(36, -1), out=taps.view(9, -1)).view(3, 3, c_out, c_in).permute(2, 3, 0, 1)


def conv3x3_backward(grad: Tensor, x: Tensor, weight: Tensor, output_mask) -> tuple:
    """``(grad_x, grad_weight, grad_bias)`` of :func:`conv3x3_forward`, None where the mask is False,
    as ``torch.ops.aten.convolution_backward`` returns them."""
    need_x, need_w, need_b = output_mask
    grad_nhwc = _nhwc(grad)
    grad_x = grad_w = grad_b = None
    if need_x:
        grad_x = _forward_nhwc(grad_nhwc, weight, None, adjoint=True)
    if need_w:
        grad_w = _filter_gradient(grad_nhwc, _nhwc(x)).contiguous(memory_format=_memory_format(weight))
    if need_b:
        grad_b = grad_nhwc.sum(dim=(0, 1, 2))
    return grad_x, grad_w, grad_b


def _memory_format(t: Tensor) -> torch.memory_format:
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class _WinogradConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return conv3x3_forward(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        mask = (need_x, need_w, need_b and ctx.has_bias)
        if torch.is_grad_enabled():  # create_graph=True: PyTorch's own backward, differentiable again
            return torch.ops.aten.convolution_backward(grad, x, weight, [weight.size(0)], [1, 1], [1, 1], [1, 1],
                                                       False, [0, 0], 1, list(mask))
        return conv3x3_backward(grad, x, weight, mask)


def conv3x3(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3x3 weight as Winograd F(4x4, 3x3), with its
    own backward; [N, C_in, H, W] -> [N, C_out, H, W] in channels_last."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _WinogradConv3x3.apply(x, weight, bias)
    return conv3x3_forward(x, weight, bias)
