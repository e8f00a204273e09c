"""Triton fused integer shift + 1x1 convolution as an implicit GEMM.

`y = conv1x1(weight)(shift(x, plan, stride))` with the pixels `M = N*Ho*Wo` as
GEMM rows, `C_out` as columns and `C_in` as the reduction. Each K-slice of
the A operand is loaded straight from `x` at its channel's offset, with zeros
outside the image, so the shifted tensor is never written.

Backward: `dW = g^T @ shift(x)` reuses the shifted loads, split over the
pixels into fixed partials that a fixed-order `torch.sum` adds (deterministic).
`dx = shift^T(g @ W)` is one GEMM too, over input pixels: a program owns a
K-tile that lies inside one shift group, so its whole tile reads `g` at one
offset, `(r - dy)/s, (t - dx)/s` (zero where that is not a whole in-range
index); the tiles come from a small table per plan.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._triton_shift import (
    INTERPRET,
    alloc,
    check_input,
    check_plan,
    check_stride,
    is_channels_last,
    plan_offsets,
)
from .precision import autocast_conv_args, conv_fp32_precision
from .reference import ShiftGroup, out_hw


def _dw_tiles(interpret: bool = INTERPRET) -> tuple[int, int, int]:
    """Fixed dW tiles (not autotuned): the split of the pixel reduction into
    partials decides the bits of dW, so it must not change between runs."""
    return (32, 32, 32) if interpret else (64, 64, 64)


def _dx_block_k(interpret: bool = INTERPRET) -> int:
    return 16 if interpret else 32


_DW_BLOCK_O, _DW_BLOCK_K, _DW_BLOCK_M = _dw_tiles()
_DX_BLOCK_K = _dx_block_k()  # fixed: the K-tile table is built for it
_DW_TARGET_PROGRAMS = 512  # enough programs to fill a GPU; a constant, so dW's bits do not depend on it


def _gemm_configs(interpret: bool = INTERPRET) -> list[triton.Config]:
    if interpret:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16})]
    shapes = [(128, 64, 32, 4, 3), (128, 128, 32, 8, 3), (64, 64, 32, 4, 4),
              (128, 32, 32, 4, 4), (64, 128, 64, 4, 3), (256, 64, 32, 8, 3)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for m, n, k, w, s in shapes]


def _dx_configs(interpret: bool = INTERPRET) -> list[triton.Config]:
    if interpret:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_O": 16})]
    shapes = [(64, 32, 4, 3), (128, 32, 4, 3), (128, 64, 4, 3), (64, 64, 4, 4), (256, 32, 8, 3)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_O": o}, num_warps=w, num_stages=s)
            for m, o, w, s in shapes]


@triton.jit
def _shifted_tile(x_ptr, off_ptr, row_base, ii, jj, m_ok, k, C_in, H, W, sxc, sxh, sxw):
    """A[m, k] = x[n_m, k, ii_m + dy_k, jj_m + dx_k], zero outside the image or the tile."""
    k_ok = k < C_in
    dy = tl.load(off_ptr + k, mask=k_ok, other=0)
    dx = tl.load(off_ptr + C_in + k, mask=k_ok, other=0)
    r = ii[:, None] + dy[None, :]
    t = jj[:, None] + dx[None, :]
    ok = m_ok[:, None] & k_ok[None, :] & (r >= 0) & (r < H) & (t >= 0) & (t < W)
    return tl.load(x_ptr + row_base[:, None] + k[None, :] * sxc + r * sxh + t * sxw, mask=ok, other=0.0)


@triton.autotune(configs=_gemm_configs(), key=["M", "C_in", "C_out", "sxc", "STRIDE"])
@triton.jit
def _shift_conv1x1_kernel(
    x_ptr, w_ptr, off_ptr, y_ptr,
    M, C_in, C_out, H, W, Ho, Wo,
    sxn, sxc, sxh, sxw,
    swo, swi,
    syn, syc, syh, syw,
    STRIDE: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Output-channel tiles vary fastest, so the programs that share one
    # activation tile run together and re-read it from L2.
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M
    hw = Ho * Wo
    nb = (m // hw).to(tl.int64)
    i = (m % hw) // Wo
    j = m % Wo
    o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_ok = o < C_out
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, C_in, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        a = _shifted_tile(x_ptr, off_ptr, nb * sxn, i * STRIDE, j * STRIDE, m_ok, k,
                          C_in, H, W, sxc, sxh, sxw)
        b = tl.load(w_ptr + o[None, :] * swo + k[:, None] * swi,
                    mask=(k < C_in)[:, None] & o_ok[None, :], other=0.0)
        if UPCAST:  # the interpreter's tl.dot misreads bfloat16
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    y = y_ptr + (nb * syn + i * syh + j * syw)[:, None] + o[None, :] * syc
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & o_ok[None, :])


@triton.jit
def _shift_conv1x1_dw_kernel(
    x_ptr, g_ptr, off_ptr, part_ptr,
    M, C_in, C_out, H, W, Ho, Wo, M_PER_SPLIT,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    STRIDE: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """part[split, o, k] = sum over this split's pixels m of g[m, o] * shift(x)[m, k]."""
    pid_k = tl.program_id(0)
    pid_o = tl.program_id(1)
    pid_s = tl.program_id(2)
    o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    o_ok = o < C_out
    hw = Ho * Wo
    m_lo = pid_s * M_PER_SPLIT
    m_hi = tl.minimum(m_lo + M_PER_SPLIT, M)
    acc = tl.zeros([BLOCK_O, BLOCK_K], dtype=tl.float32)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        m_ok = m < m_hi
        nb = (m // hw).to(tl.int64)
        i = (m % hw) // Wo
        j = m % Wo
        gt = tl.load(g_ptr + (nb * sgn + i * sgh + j * sgw)[None, :] + o[:, None] * sgc,
                     mask=o_ok[:, None] & m_ok[None, :], other=0.0)
        xs = _shifted_tile(x_ptr, off_ptr, nb * sxn, i * STRIDE, j * STRIDE, m_ok, k,
                           C_in, H, W, sxc, sxh, sxw)
        if UPCAST:
            gt = gt.to(tl.float32)
            xs = xs.to(tl.float32)
        acc = tl.dot(gt, xs, acc, input_precision=DOT_PRECISION)
    out = part_ptr + pid_s * C_out * C_in + o[:, None] * C_in + k[None, :]
    tl.store(out, acc, mask=o_ok[:, None] & (k < C_in)[None, :])


@triton.autotune(configs=_dx_configs(), key=["M", "C_in", "C_out", "sgc", "STRIDE"])
@triton.jit
def _shift_conv1x1_dx_kernel(
    g_ptr, w_ptr, tile_ptr, dx_ptr,
    M, C_in, C_out, H, W, Ho, Wo,
    sgn, sgc, sgh, sgw,
    swo, swi,
    sdn, sdc, sdh, sdw,
    STRIDE: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[m, k] = sum_o g[src(m), o] * W[o, k] for input pixels m and one K-tile of one group.

    `tile[pid_t] = (k0, k1, dy, dx)`: channels `[k0, k1)`, all shifted by (dy, dx).
    """
    pid_t = tl.program_id(0)
    pid_m = tl.program_id(1)
    k0 = tl.load(tile_ptr + pid_t * 4)
    k1 = tl.load(tile_ptr + pid_t * 4 + 1)
    dy = tl.load(tile_ptr + pid_t * 4 + 2)
    dx = tl.load(tile_ptr + pid_t * 4 + 3)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M
    hw = H * W
    nb = (m // hw).to(tl.int64)
    r = (m % hw) // W
    t = m % W
    rs = r - dy
    ts = t - dx
    ok = m_ok & (rs >= 0) & (ts >= 0) & (rs % STRIDE == 0) & (ts % STRIDE == 0)
    rs = rs // STRIDE
    ts = ts // STRIDE
    ok = ok & (rs < Ho) & (ts < Wo)
    g_row = nb * sgn + rs * sgh + ts * sgw
    k = k0 + tl.arange(0, BLOCK_K)
    k_ok = k < k1
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    for o0 in range(0, C_out, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)
        o_ok = o < C_out
        a = tl.load(g_ptr + g_row[:, None] + o[None, :] * sgc, mask=ok[:, None] & o_ok[None, :], other=0.0)
        b = tl.load(w_ptr + o[:, None] * swo + k[None, :] * swi, mask=o_ok[:, None] & k_ok[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    out = dx_ptr + (nb * sdn + r * sdh + t * sdw)[:, None] + k[None, :] * sdc
    tl.store(out, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & k_ok[None, :])


# ----------------------------------------------------------------------------
# Host functions
# ----------------------------------------------------------------------------


def _dot_meta(dtype: torch.dtype, interpret: bool = INTERPRET) -> dict:
    """tl.dot settings: for fp32, TF32 exactly when torch's convolutions use it (`precision`)."""
    tf32 = dtype == torch.float32 and not interpret and conv_fp32_precision() == "tf32"
    return {"DOT_PRECISION": "tf32" if tf32 else "ieee",
            "UPCAST": interpret and dtype == torch.bfloat16}


def _check(x: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int, weight: torch.Tensor) -> None:
    check_input(x)
    check_stride(stride)
    check_plan(plan, x.shape[1])
    if weight.dim() != 4 or weight.shape[1:] != (x.shape[1], 1, 1):
        raise ValueError(f"`weight` must have shape (C_out, {x.shape[1]}, 1, 1), got {tuple(weight.shape)}.")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise TypeError(f"`weight` must match `x` in dtype and device ({x.dtype}, {x.device}), "
                        f"got ({weight.dtype}, {weight.device}); cast one of them.")


def shift_conv1x1_forward(x: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int,
                          weight: torch.Tensor) -> torch.Tensor:
    """`conv1x1(weight)(shift(x, plan, stride))` in one kernel (no autograd)."""
    _check(x, plan, stride, weight)
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    ho, wo = out_hw(h, w, stride)
    m = n * ho * wo
    y = alloc((n, c_out, ho, wo), x, channels_last=is_channels_last(x))
    if y.numel() == 0:
        return y
    if c_in == 0:
        return y.zero_()

    def grid(meta):
        return (triton.cdiv(c_out, meta["BLOCK_N"]), triton.cdiv(m, meta["BLOCK_M"]))

    _shift_conv1x1_kernel[grid](
        x, weight, plan_offsets(plan, x.device), y,
        m, c_in, c_out, h, w, ho, wo,
        *x.stride(), weight.stride(0), weight.stride(1), *y.stride(),
        STRIDE=stride, **_dot_meta(x.dtype),
    )
    return y


def shift_conv1x1_dweight(x: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int,
                          g: torch.Tensor) -> torch.Tensor:
    """`dW = g^T @ shift(x)` as a `(C_out, C_in, 1, 1)` tensor in `x`'s dtype, deterministic."""
    n, c_in, h, w = x.shape
    c_out, ho, wo = g.shape[1:]
    m = n * ho * wo
    tiles = triton.cdiv(c_out, _DW_BLOCK_O) * triton.cdiv(c_in, _DW_BLOCK_K)
    splits = max(1, min(triton.cdiv(_DW_TARGET_PROGRAMS, tiles), triton.cdiv(m, 4 * _DW_BLOCK_M)))
    m_per_split = triton.cdiv(triton.cdiv(m, splits), _DW_BLOCK_M) * _DW_BLOCK_M
    splits = max(1, triton.cdiv(m, m_per_split))
    part = alloc((splits, c_out, c_in), x, dtype=torch.float32)
    if m and c_in and c_out:
        grid = (triton.cdiv(c_in, _DW_BLOCK_K), triton.cdiv(c_out, _DW_BLOCK_O), splits)
        _shift_conv1x1_dw_kernel[grid](
            x, g, plan_offsets(plan, x.device), part,
            m, c_in, c_out, h, w, ho, wo, m_per_split,
            *x.stride(), *g.stride(),
            STRIDE=stride, BLOCK_O=_DW_BLOCK_O, BLOCK_K=_DW_BLOCK_K, BLOCK_M=_DW_BLOCK_M,
            **_dot_meta(x.dtype),
        )
    else:
        part.zero_()
    return part.sum(dim=0).to(x.dtype).view(c_out, c_in, 1, 1)


@functools.lru_cache(maxsize=256)
def _k_tiles(plan: tuple[ShiftGroup, ...], block_k: int, device: torch.device) -> torch.Tensor:
    """`(T, 4)` int32 rows `(k0, k1, dy, dx)`: K-tiles of at most `block_k` channels, one group each."""
    rows = [(k0, min(k0 + block_k, g.c1), g.dy, g.dx)
            for g in plan for k0 in range(g.c0, g.c1, block_k)]
    return torch.tensor(rows, dtype=torch.int32).reshape(-1, 4).to(device)


def shift_conv1x1_dinput(g: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int,
                         weight: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """`dx = shift^T(conv1x1^T(g))` on the input grid `hw`, in one kernel."""
    n, c_out, ho, wo = g.shape
    c_in = weight.shape[1]
    h, w = hw
    dx = alloc((n, c_in, h, w), g, channels_last=is_channels_last(g))
    if dx.numel() == 0:
        return dx
    tiles = _k_tiles(plan, _DX_BLOCK_K, g.device)
    m = n * h * w

    def grid(meta):
        return (tiles.shape[0], triton.cdiv(m, meta["BLOCK_M"]))

    _shift_conv1x1_dx_kernel[grid](
        g, weight, tiles, dx,
        m, c_in, c_out, h, w, ho, wo,
        *g.stride(), weight.stride(0), weight.stride(1), *dx.stride(),
        STRIDE=stride, BLOCK_K=_DX_BLOCK_K, **_dot_meta(g.dtype),
    )
    return dx


class _ShiftConv1x1Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, plan, stride, weight):
        ctx.save_for_backward(x, weight)
        ctx.plan, ctx.stride = plan, stride
        return shift_conv1x1_forward(x, plan, stride, weight)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = shift_conv1x1_dinput(g, ctx.plan, ctx.stride, weight, tuple(x.shape[-2:]))
        if ctx.needs_input_grad[3]:
            dw = shift_conv1x1_dweight(x, ctx.plan, ctx.stride, g)
        return dx, None, None, dw


def shift_conv1x1(x: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int,
                  weight: torch.Tensor) -> torch.Tensor:
    """Differentiable fused shift + 1x1 convolution (Triton backend).

    Under autocast, `x` and `weight` are cast like a convolution's (`kernels.precision`).
    """
    x, weight = autocast_conv_args(x, weight)
    return _ShiftConv1x1Fn.apply(x, plan, stride, weight)
