"""ReLU followed by 2x2 max-pooling, forward and backward each in one pass.

Why this op: on an H200 (results/nvidia-h200/README.md) a CUDA profile of the seed network at
batch 512 (bf16, eager, channels_last) spent 20.5 % of GPU time in cuDNN's nhwcAddPaddingKernel
(gone with aligned channels), 15.5 % in max-pool backward and 8.3 % in max-pool forward: pooling
is what is left. Eager runs ReLU (reads and writes the full map), max-pool (reads it again, writes
the pooled map and int64 indices: 8 bytes per output), then in backward ReLU's mask pass and a
zero-filled scatter. relu(max(window)) == max(relu(window)), so one kernel pools the conv output
directly and keeps a 1-byte code per output: the window position 0-3 of the maximum, or 4 when the
maximum is <= 0 (ReLU passes no gradient there). The backward reads the code and the output
gradient and writes every input gradient once.

Ties go to the first maximum in row-major window order, as torch's max-pool does, so values and
gradients equal F.max_pool2d(F.relu(x), 2) exactly.
"""

import torch
import triton
import triton.language as tl
from torch import nn

NO_GRADIENT = 4  # code of a window whose maximum is <= 0


def relu_maxpool_reference(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.max_pool2d(nn.functional.relu(x), 2)


@triton.jit
def _output_position(index, C, HO, WO, CHANNELS_LAST: tl.constexpr):
    """(b, c, ho, wo) of the index-th output in memory order, so consecutive programs touch
    consecutive memory in either layout."""
    if CHANNELS_LAST:
        c = index % C
        wo = (index // C) % WO
        ho = (index // (C * WO)) % HO
        b = index // (C * WO * HO)
    else:
        wo = index % WO
        ho = (index // WO) % HO
        c = (index // (WO * HO)) % C
        b = index // (WO * HO * C)
    return b, c, ho, wo


@triton.jit
def _forward_kernel(x, y, code, C, HO, WO, n, s_xb, s_xc, s_xh, s_xw, s_yb, s_yc, s_yh, s_yw,
                    CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = index < n
    b, c, ho, wo = _output_position(index, C, HO, WO, CHANNELS_LAST)
    corner = x + b * s_xb + c * s_xc + 2 * ho * s_xh + 2 * wo * s_xw
    best = tl.load(corner, mask=inside, other=0.0).to(tl.float32)
    best_at = tl.zeros([BLOCK], dtype=tl.int32)
    for k in tl.static_range(1, 4):
        value = tl.load(corner + (k // 2) * s_xh + (k % 2) * s_xw, mask=inside, other=0.0).to(tl.float32)
        better = value > best
        best = tl.where(better, value, best)
        best_at = tl.where(better, k, best_at)
    best_at = tl.where(best > 0, best_at, 4)
    out = b * s_yb + c * s_yc + ho * s_yh + wo * s_yw
    tl.store(y + out, tl.maximum(best, 0.0).to(y.dtype.element_ty), mask=inside)
    tl.store(code + out, best_at.to(tl.uint8), mask=inside)


@triton.jit
def _backward_kernel(grad_y, code, grad_x, C, HO, WO, n, s_gb, s_gc, s_gh, s_gw, s_kb, s_kc, s_kh, s_kw,
                     s_xb, s_xc, s_xh, s_xw, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = index < n
    b, c, ho, wo = _output_position(index, C, HO, WO, CHANNELS_LAST)
    grad = tl.load(grad_y + b * s_gb + c * s_gc + ho * s_gh + wo * s_gw, mask=inside, other=0.0)
    at = tl.load(code + b * s_kb + c * s_kc + ho * s_kh + wo * s_kw, mask=inside, other=4).to(tl.int32)
    corner = grad_x + b * s_xb + c * s_xc + 2 * ho * s_xh + 2 * wo * s_xw
    for k in tl.static_range(4):
        value = tl.where(at == k, grad, 0.0).to(grad_x.dtype.element_ty)
        tl.store(corner + (k // 2) * s_xh + (k % 2) * s_xw, value, mask=inside)


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


def relu_maxpool_forward(x: torch.Tensor, block: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled output, 1-byte window codes), both in x's memory format."""
    if x.dim() != 4 or x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"relu_maxpool expects [B, C, H, W] with H, W >= 2, got {tuple(x.shape)}")
    B, C, H, W = x.shape
    layout = _layout(x)
    y = torch.empty((B, C, H // 2, W // 2), dtype=x.dtype, device=x.device, memory_format=layout)
    code = torch.empty(y.shape, dtype=torch.uint8, device=x.device, memory_format=layout)
    n = y.numel()
    _forward_kernel[(triton.cdiv(n, block),)](x, y, code, C, H // 2, W // 2, n, *x.stride(), *y.stride(),
                                              CHANNELS_LAST=layout == torch.channels_last, BLOCK=block)
    return y, code


def relu_maxpool_backward(grad_y: torch.Tensor, code: torch.Tensor, input_shape, dtype, block: int = 1024):
    """The input gradient, laid out like the codes (so like the forward input)."""
    layout = _layout(code)
    B, C, H, W = input_shape
    grad_x = torch.empty(input_shape, dtype=dtype, device=grad_y.device, memory_format=layout)
    if H % 2 or W % 2:  # the last row/column that floor pooling drops gets no gradient
        grad_x.zero_()
    n = code.numel()
    _backward_kernel[(triton.cdiv(n, block),)](grad_y, code, grad_x, C, H // 2, W // 2, n, *grad_y.stride(),
                                               *code.stride(), *grad_x.stride(),
                                               CHANNELS_LAST=layout == torch.channels_last, BLOCK=block)
    return grad_x


class ReLUMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y, code = relu_maxpool_forward(x)
        ctx.save_for_backward(code)
        ctx.input_shape, ctx.input_dtype = x.shape, x.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (code,) = ctx.saved_tensors
        return relu_maxpool_backward(grad_y, code, ctx.input_shape, ctx.input_dtype)


class ReLUMaxPool2d(nn.Module):
    """Drop-in for nn.ReLU() followed by nn.MaxPool2d(2). torch.compile runs it as it is, between
    the graphs it compiles around it (a graph break per layer), rather than tracing the launch."""

    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ReLUMaxPool.apply(x)
