"""Triton active (bilinear) shift, spec section 2, and the sparse shift of section 3.

Three kernels: the bilinear forward; `dx`, gathered (every input element
collects from the at most four outputs that read it, so no atomics and the
same bits every run); and `dtheta`, where each program reduces a fixed tile
to one partial per channel and a fixed-order `torch.sum` adds the partials.
The sparse shift reuses the integer shift kernel with `round(theta)` offsets
and the `dtheta` kernel for its straight-through gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _autotune
from ._triton_shift import (
    INTERPRET,
    alloc,
    check_input,
    check_stride,
    config_name,
    is_channels_last,
    layout_name,
    shift_by_offsets,
)
from .reference import out_hw


def _theta_tiles(interpret: bool = INTERPRET) -> tuple[int, int]:
    """Fixed `dtheta` tiles, not autotuned: the partial sums, and so the bits of the
    result, depend on the tile, and an autotuner may pick another one next run."""
    return (16, 64) if interpret else (16, 256)


_THETA_BLOCK_C, _THETA_BLOCK_P = _theta_tiles()


def _active_configs(interpret: bool = INTERPRET, channels_last: bool | None = None) -> list[dict]:
    """Tiles `(BLOCK_C, BLOCK_P)`, 4 warps; per layout, since each lane reads its own offset.

    Predicted, not yet measured: in channels-last a warp's lanes should run
    along channels (64 x 16, 32 x 32), whose four taps fall on the few pixels
    the channels' offsets reach, the lines that L1 then serves; in NCHW along a
    plane's rows (1 x 1024, 4 x 256). `channels_last=None`: both lists (to compile).
    """
    if interpret:
        return [{"BLOCK_C": 16, "BLOCK_P": 64, "num_warps": 4}]
    cl, nchw = [(64, 16), (32, 32)], [(1, 1024), (4, 256)]
    tiles = cl + nchw if channels_last is None else cl if channels_last else nchw
    return [{"BLOCK_C": c, "BLOCK_P": p, "num_warps": 4} for c, p in tiles]


_ACTIVE_CONFIGS = {cl: {config_name(c): c for c in _active_configs(channels_last=cl)}
                   for cl in (False, True)}


def _launch_tuned(kernel, op: str, x: torch.Tensor, c: int, p: int, n: int, stride: int,
                  args: tuple) -> None:
    """Launch `kernel` over (pixels, channels, batch) with the config the bounded autotuner keeps."""
    configs = _ACTIVE_CONFIGS[is_channels_last(x)]

    def run(name: str) -> None:
        cfg = configs[name]
        grid = (triton.cdiv(p, cfg["BLOCK_P"]), triton.cdiv(c, cfg["BLOCK_C"]), n)
        _autotune.launch(kernel, grid, *args, BLOCK_C=cfg["BLOCK_C"], BLOCK_P=cfg["BLOCK_P"],
                         STRIDE=stride, num_warps=cfg["num_warps"])

    run(_autotune.pick(
        (op, x.shape, x.stride(), x.dtype, x.device, stride),
        lambda: _autotune.shape_class(op, n * p, c=c, stride=stride, dtype=x.dtype, layout=layout_name(x)),
        list(configs), run, x.device))


@triton.jit
def _channel_theta(theta_ptr, c, c_ok, stc, stk):
    """Per-channel integer parts (a, b) and fractions (u, v) of theta, in fp32."""
    alpha = tl.load(theta_ptr + c * stc, mask=c_ok, other=0.0).to(tl.float32)
    beta = tl.load(theta_ptr + c * stc + stk, mask=c_ok, other=0.0).to(tl.float32)
    af = tl.floor(alpha)
    bf = tl.floor(beta)
    return af.to(tl.int32), bf.to(tl.int32), alpha - af, beta - bf


@triton.jit
def _tap(x_base, r, t, H, W, sxh, sxw, mask):
    """X(r, t) as fp32, zero outside the image."""
    ok = mask & (r >= 0) & (r < H) & (t >= 0) & (t < W)
    return tl.load(x_base + r * sxh + t * sxw, mask=ok, other=0.0).to(tl.float32)


@triton.jit(do_not_specialize=("H", "W", "Ho", "Wo"))
def _active_fwd_kernel(
    x_ptr, theta_ptr, y_ptr,
    C, H, W, Ho, Wo,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    stc, stk,
    STRIDE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c_ok = c < C
    mask = c_ok[:, None] & (p < Ho * Wo)[None, :]
    i = (p // Wo)[None, :]
    j = (p % Wo)[None, :]
    a, b, u, v = _channel_theta(theta_ptr, c, c_ok, stc, stk)
    a, b, u, v = a[:, None], b[:, None], u[:, None], v[:, None]
    r = i * STRIDE + a
    t = j * STRIDE + b
    x_base = x_ptr + n * sxn + c[:, None] * sxc
    x00 = _tap(x_base, r, t, H, W, sxh, sxw, mask)
    x01 = _tap(x_base, r, t + 1, H, W, sxh, sxw, mask)
    x10 = _tap(x_base, r + 1, t, H, W, sxh, sxw, mask)
    x11 = _tap(x_base, r + 1, t + 1, H, W, sxh, sxw, mask)
    y = (1 - u) * (1 - v) * x00 + (1 - u) * v * x01 + u * (1 - v) * x10 + u * v * x11
    tl.store(y_ptr + n * syn + c[:, None] * syc + i * syh + j * syw,
             y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_tap(g_base, r, t, Ho, Wo, sgh, sgw, mask, STRIDE: tl.constexpr):
    """g at output (r/s, t/s) when r, t are whole multiples of s in range, else 0."""
    ok = mask & (r >= 0) & (t >= 0) & (r % STRIDE == 0) & (t % STRIDE == 0)
    r = r // STRIDE
    t = t // STRIDE
    ok = ok & (r < Ho) & (t < Wo)
    return tl.load(g_base + r * sgh + t * sgw, mask=ok, other=0.0).to(tl.float32)


@triton.jit(do_not_specialize=("H", "W", "Ho", "Wo"))
def _active_dx_kernel(
    g_ptr, theta_ptr, dx_ptr,
    C, H, W, Ho, Wo,
    sgn, sgc, sgh, sgw,
    sdn, sdc, sdh, sdw,
    stc, stk,
    STRIDE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """dx[r, t] = sum over taps (di, dj) of weight * g[(r - a - di)/s, (t - b - dj)/s]."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c_ok = c < C
    mask = c_ok[:, None] & (p < H * W)[None, :]
    r = (p // W)[None, :]
    t = (p % W)[None, :]
    a, b, u, v = _channel_theta(theta_ptr, c, c_ok, stc, stk)
    a, b, u, v = a[:, None], b[:, None], u[:, None], v[:, None]
    ra = r - a
    tb = t - b
    g_base = g_ptr + n * sgn + c[:, None] * sgc
    g00 = _grad_tap(g_base, ra, tb, Ho, Wo, sgh, sgw, mask, STRIDE)
    g01 = _grad_tap(g_base, ra, tb - 1, Ho, Wo, sgh, sgw, mask, STRIDE)
    g10 = _grad_tap(g_base, ra - 1, tb, Ho, Wo, sgh, sgw, mask, STRIDE)
    g11 = _grad_tap(g_base, ra - 1, tb - 1, Ho, Wo, sgh, sgw, mask, STRIDE)
    dx = (1 - u) * (1 - v) * g00 + (1 - u) * v * g01 + u * (1 - v) * g10 + u * v * g11
    tl.store(dx_ptr + n * sdn + c[:, None] * sdc + r * sdh + t * sdw,
             dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=("H", "W", "Ho", "Wo", "P"))
def _active_dtheta_kernel(
    x_ptr, g_ptr, theta_ptr, part_ptr,
    C, H, W, Ho, Wo, P,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    stc, stk,
    STRIDE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Partial sums of dL/dalpha, dL/dbeta over one tile of P = N*Ho*Wo outputs.

    Writes `part[pid_p, 0, c]` (alpha) and `part[pid_p, 1, c]` (beta).
    """
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c_ok = c < C
    mask = c_ok[:, None] & (p < P)[None, :]
    hw = Ho * Wo
    n = (p // hw).to(tl.int64)[None, :]
    i = ((p % hw) // Wo)[None, :]
    j = (p % Wo)[None, :]
    a, b, u, v = _channel_theta(theta_ptr, c, c_ok, stc, stk)
    a, b, u, v = a[:, None], b[:, None], u[:, None], v[:, None]
    r = i * STRIDE + a
    t = j * STRIDE + b
    x_base = x_ptr + n * sxn + c[:, None] * sxc
    x00 = _tap(x_base, r, t, H, W, sxh, sxw, mask)
    x01 = _tap(x_base, r, t + 1, H, W, sxh, sxw, mask)
    x10 = _tap(x_base, r + 1, t, H, W, sxh, sxw, mask)
    x11 = _tap(x_base, r + 1, t + 1, H, W, sxh, sxw, mask)
    g = tl.load(g_ptr + n * sgn + c[:, None] * sgc + i * sgh + j * sgw, mask=mask, other=0.0)
    g = g.to(tl.float32)
    da = tl.sum(g * ((1 - v) * (x10 - x00) + v * (x11 - x01)), axis=1)
    db = tl.sum(g * ((1 - u) * (x01 - x00) + u * (x11 - x10)), axis=1)
    out = part_ptr + pid_p * 2 * C + c
    tl.store(out, da, mask=c_ok)
    tl.store(out + C, db, mask=c_ok)


# ----------------------------------------------------------------------------
# Host functions
# ----------------------------------------------------------------------------


def _check_theta(x: torch.Tensor, theta: torch.Tensor, stride: int) -> None:
    check_input(x)
    check_stride(stride)
    if theta.shape != (x.shape[1], 2):
        raise ValueError(f"`theta` must have shape (C, 2) = ({x.shape[1]}, 2), got {tuple(theta.shape)}.")
    if theta.device != x.device:
        raise ValueError(f"`theta` must be on {x.device} like `x`, got {theta.device}.")
    if not theta.is_floating_point():
        raise TypeError(f"`theta` must be a floating-point tensor, got {theta.dtype}.")


def active_forward(x: torch.Tensor, theta: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Bilinear shift of `x` by per-channel `theta` (no autograd)."""
    _check_theta(x, theta, stride)
    n, c, h, w = x.shape
    ho, wo = out_hw(h, w, stride)
    y = alloc((n, c, ho, wo), x, channels_last=is_channels_last(x))
    if y.numel() == 0:
        return y

    _launch_tuned(_active_fwd_kernel, "active_fwd", x, c, ho * wo, n, stride,
                  (x, theta, y, c, h, w, ho, wo, *x.stride(), *y.stride(), *theta.stride()))
    return y


def active_dx(g: torch.Tensor, theta: torch.Tensor, stride: int, hw: tuple[int, int]) -> torch.Tensor:
    """Transpose of the bilinear map: the input gradient on the grid `hw`."""
    n, c, ho, wo = g.shape
    h, w = hw
    dx = alloc((n, c, h, w), g, channels_last=is_channels_last(g))
    if dx.numel() == 0:
        return dx

    _launch_tuned(_active_dx_kernel, "active_dx", g, c, h * w, n, stride,
                  (g, theta, dx, c, h, w, ho, wo, *g.stride(), *dx.stride(), *theta.stride()))
    return dx


def active_dtheta(x: torch.Tensor, theta: torch.Tensor, g: torch.Tensor, stride: int) -> torch.Tensor:
    """dL/dtheta `(C, 2)` at the real-valued theta; deterministic (fixed tiles, no atomics)."""
    n, c, h, w = x.shape
    ho, wo = g.shape[-2:]
    p_total = n * ho * wo
    blocks_p = triton.cdiv(p_total, _THETA_BLOCK_P)
    part = alloc((blocks_p, 2, c), x, dtype=torch.float32)
    if p_total and c:
        grid = (blocks_p, triton.cdiv(c, _THETA_BLOCK_C))
        _autotune.launch(
            _active_dtheta_kernel, grid,
            x, g, theta, part, c, h, w, ho, wo, p_total,
            *x.stride(), *g.stride(), *theta.stride(),
            STRIDE=stride, BLOCK_C=_THETA_BLOCK_C, BLOCK_P=_THETA_BLOCK_P,
        )
    return part.sum(dim=0).t().to(theta.dtype)


class _ActiveShiftFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, theta, stride):
        ctx.save_for_backward(x, theta)
        ctx.stride = stride
        return active_forward(x, theta, stride)

    @staticmethod
    def backward(ctx, g):
        x, theta = ctx.saved_tensors
        dx = active_dx(g, theta, ctx.stride, tuple(x.shape[-2:])) if ctx.needs_input_grad[0] else None
        dtheta = active_dtheta(x, theta, g, ctx.stride) if ctx.needs_input_grad[1] else None
        return dx, dtheta, None


def _round_offsets(theta: torch.Tensor) -> torch.Tensor:
    """`(2, C)` int32 table of round(theta), half to even like the reference."""
    return torch.round(theta.detach()).t().to(torch.int32).contiguous()


class _SparseShiftFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, theta, stride):
        _check_theta(x, theta, stride)
        offsets = _round_offsets(theta)
        ctx.save_for_backward(x, theta, offsets)
        ctx.stride = stride
        return shift_by_offsets(x, offsets, stride)

    @staticmethod
    def backward(ctx, g):
        x, theta, offsets = ctx.saved_tensors
        dx = dtheta = None
        if ctx.needs_input_grad[0]:
            dx = shift_by_offsets(g, offsets, ctx.stride, transpose=True, hw=tuple(x.shape[-2:]))
        if ctx.needs_input_grad[1]:
            dtheta = active_dtheta(x, theta, g, ctx.stride)
        return dx, dtheta, None


def active_shift(x: torch.Tensor, theta: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Differentiable active (bilinear) shift, Triton backend (spec section 2)."""
    return _ActiveShiftFn.apply(x, theta, stride)


def sparse_shift(x: torch.Tensor, theta: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Differentiable sparse shift, Triton backend (spec section 3)."""
    return _SparseShiftFn.apply(x, theta, stride)
