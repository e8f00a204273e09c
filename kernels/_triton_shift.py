"""Triton integer shift (spec section 1): forward and its transpose, plus shared host helpers.

One kernel serves both directions. Every output element is written exactly
once, zeros included, so a shift costs one read and one write of the tensor:
the bytes of a plain copy. Per-channel offsets come from a small int32 table
(`(2, C)`: dy row, then dx row) cached per plan and device, so arbitrary
channel groups, dilations and the sparse shift's rounded offsets share the code.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .reference import ShiftGroup, out_hw

# The kernels are defined as interpreted functions when this is set at import
# time; a later change of the environment does not recompile them.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Tests set this to fill every output with NaN before a kernel writes it, so
# an element the kernel forgets to write fails the comparison.
_poison = False


# ----------------------------------------------------------------------------
# Shared host helpers
# ----------------------------------------------------------------------------


def is_channels_last(x: torch.Tensor) -> bool:
    """Same rule as the reference: channels-last only when not also NCHW-contiguous."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def alloc(shape: tuple[int, ...], like: torch.Tensor, *, channels_last: bool = False,
          dtype: torch.dtype | None = None) -> torch.Tensor:
    """`torch.empty` on `like`'s device (NaN-filled when tests poison outputs)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt)
    if _poison:
        out.fill_(float("nan"))
    return out


def check_input(x: torch.Tensor, name: str = "x") -> None:
    """The rules every Triton shift op shares for its activation input."""
    if x.dim() != 4:
        raise ValueError(f"`{name}` must be a 4-d (N, C, H, W) tensor, got shape {tuple(x.shape)}.")
    if x.dtype not in DTYPES:
        raise TypeError(f"`{name}` must be float32, float16 or bfloat16, got {x.dtype}.")
    if not (x.is_cuda or INTERPRET):
        raise RuntimeError(
            f"the Triton shift kernels need a CUDA tensor (or TRITON_INTERPRET=1 set before "
            f"import), got `{name}` on {x.device}; use the reference backend instead."
        )


def check_stride(stride: int) -> None:
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"`stride` must be an int >= 1, got {stride!r}.")


def check_plan(plan: tuple[ShiftGroup, ...], channels: int) -> None:
    if not plan or plan[0].c0 != 0 or plan[-1].c1 != channels:
        raise ValueError(
            f"the shift plan must cover channels [0, {channels}), got "
            f"[{plan[0].c0 if plan else 0}, {plan[-1].c1 if plan else 0}); build it with "
            f"`shift_plan({channels}, nbhd)`."
        )


@functools.lru_cache(maxsize=256)
def plan_offsets(plan: tuple[ShiftGroup, ...], device: torch.device, sign: int = 1) -> torch.Tensor:
    """`(2, C)` int32 table of per-channel (dy, dx) times `sign`, on `device` (cached)."""
    table = torch.zeros(2, plan[-1].c1, dtype=torch.int32)
    for g in plan:
        table[0, g.c0:g.c1], table[1, g.c0:g.c1] = sign * g.dy, sign * g.dx
    return table.to(device)


def _shift_configs(interpret: bool = INTERPRET) -> list[triton.Config]:
    """Tiles `(BLOCK_C, BLOCK_P)`: narrow-and-long suits NCHW, wide suits channels-last."""
    if interpret:  # one config: the interpreter runs each program in numpy, so fewer is faster
        return [triton.Config({"BLOCK_C": 16, "BLOCK_P": 64})]
    tiles = [(1, 1024), (2, 512), (4, 256), (32, 32), (64, 16), (128, 8)]
    return [triton.Config({"BLOCK_C": c, "BLOCK_P": p}, num_warps=4) for c, p in tiles]


# ----------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------


@triton.autotune(configs=_shift_configs(), key=["C", "H_dst", "W_dst", "sxc", "STRIDE"])
@triton.jit
def _shift_kernel(
    x_ptr, y_ptr, off_ptr,
    C, H_src, W_src, H_dst, W_dst,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    STRIDE: tl.constexpr, TRANSPOSE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """y[n, c, i, j] = x[n, c, i*s + dy_c, j*s + dx_c] (or the transposed map), zero outside.

    Forward: `x` is the input (H_src x W_src), `y` the output grid. TRANSPOSE:
    `x` is the output gradient and `y` the input gradient; an input position
    (r, t) receives g[(r - dy)/s, (t - dx)/s] when that is a whole, in-range index.
    """
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c_ok = c < C
    p_ok = p < H_dst * W_dst
    i = (p // W_dst)[None, :]
    j = (p % W_dst)[None, :]
    dy = tl.load(off_ptr + c, mask=c_ok, other=0)[:, None]
    dx = tl.load(off_ptr + C + c, mask=c_ok, other=0)[:, None]
    if TRANSPOSE:
        r = i - dy
        t = j - dx
        ok = (r >= 0) & (t >= 0) & (r % STRIDE == 0) & (t % STRIDE == 0)
        r = r // STRIDE
        t = t // STRIDE
        ok = ok & (r < H_src) & (t < W_src)
    else:
        r = i * STRIDE + dy
        t = j * STRIDE + dx
        ok = (r >= 0) & (r < H_src) & (t >= 0) & (t < W_src)
    inside = c_ok[:, None] & p_ok[None, :]
    val = tl.load(x_ptr + n * sxn + c[:, None] * sxc + r * sxh + t * sxw, mask=inside & ok, other=0.0)
    tl.store(y_ptr + n * syn + c[:, None] * syc + i * syh + j * syw, val, mask=inside)


# ----------------------------------------------------------------------------
# Host functions and autograd
# ----------------------------------------------------------------------------


def shift_by_offsets(x: torch.Tensor, offsets: torch.Tensor, stride: int,
                     transpose: bool = False, hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Launch the shift kernel with a `(2, C)` int32 offset table on `x`'s device.

    `transpose=True` is the adjoint: `x` is a gradient on the output grid and
    the result lives on the input grid `hw`. The result keeps `x`'s layout.
    """
    n, c, h_src, w_src = x.shape
    h_dst, w_dst = hw if transpose else out_hw(h_src, w_src, stride)
    if transpose and out_hw(h_dst, w_dst, stride) != (h_src, w_src):
        raise ValueError(f"input size {hw} does not map to gradient size {(h_src, w_src)} "
                         f"at stride {stride}.")
    y = alloc((n, c, h_dst, w_dst), x, channels_last=is_channels_last(x))
    if y.numel() == 0:
        return y

    def grid(meta):
        return (triton.cdiv(h_dst * w_dst, meta["BLOCK_P"]), triton.cdiv(c, meta["BLOCK_C"]), n)

    _shift_kernel[grid](
        x, y, offsets,
        c, h_src, w_src, h_dst, w_dst,
        *x.stride(), *y.stride(),
        STRIDE=stride, TRANSPOSE=transpose,
    )
    return y


def shift_forward(x: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int = 1) -> torch.Tensor:
    """Integer shift of `x` by `plan` (no autograd); checks its arguments."""
    check_input(x)
    check_stride(stride)
    check_plan(plan, x.shape[1])
    return shift_by_offsets(x, plan_offsets(plan, x.device), stride)


def shift_transpose(g: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int,
                    hw: tuple[int, int]) -> torch.Tensor:
    """The adjoint of `shift_forward` (its backward), onto the input grid `hw`."""
    check_input(g, "g")
    check_stride(stride)
    check_plan(plan, g.shape[1])
    if stride == 1:  # the opposite shift: the same gather, no divisibility tests
        return shift_by_offsets(g, plan_offsets(plan, g.device, -1), 1)
    return shift_by_offsets(g, plan_offsets(plan, g.device), stride, transpose=True, hw=hw)


class _ShiftFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, plan, stride):
        ctx.plan, ctx.stride, ctx.hw = plan, stride, tuple(x.shape[-2:])
        return shift_forward(x, plan, stride)

    @staticmethod
    def backward(ctx, g):
        return shift_transpose(g, ctx.plan, ctx.stride, ctx.hw), None, None


def shift(x: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int = 1) -> torch.Tensor:
    """Differentiable integer shift (Triton backend), spec section 1."""
    return _ShiftFn.apply(x, plan, stride)
