"""Triton fused integer shift + 1x1 convolution as an implicit GEMM, forward and backward.

`y = conv1x1(weight)(shift(x, plan, stride))` with the pixels `M = N*Ho*Wo` as
GEMM rows, `C_out` as columns and `C_in` as the reduction; the shifted tensor
is never written.

**A tiles are shifted block loads.** A K tile is `BLOCK_K` consecutive input
channels, cut into 16-byte chunks (8 bf16 channels). In channels-last each
chunk of each row is one 16-byte load at its group's offset, masked where the
source pixel is outside the image; a chunk that a group boundary crosses
(a 64-channel 8c layer has groups of 7) is loaded once per group it meets and
each lane keeps its own group's value (`GPC` loads, 2 for the spec's 8c
plans unless the group size is a multiple of 8, when every chunk lies in one
group). The tile then goes to `tl.dot` (wgmma on sm_90). Padding each group
to whole K tiles instead would waste MMA work: with groups of 7 in K tiles of
16, 9 tiles of 16 do the work of 64 channels (2.25x), and at 64x512x14x14 the
GEMM is compute-bound already (6.6 GFLOP vs 26 MB).

**Block path.** For a csc block at inference (BN folded), the loads can apply
the first BN's bias and ReLU (`in_bias`: `relu(h + b)` inside the image, 0
outside, as the spec's zero padding of the activated map), and the epilogue
the second BN's bias, ReLU and the shortcut: the block is then cuDNN's first
1x1 and this one kernel.

Backward: `dW = g^T @ shift(x)` builds the same shifted tiles as its B
operand, split over the pixels into fixed partials that a fixed-order
`torch.sum` adds (deterministic). `dx = shift^T(g @ W)` shifts by the GEMM's
output column, so its N tiles lie inside one group: a program owns a tile of
input pixels and walks the group tiles (`(k0, k1, dy, dx)` rows of a small
table), reading `g` at each group's offset, which the neighbouring groups'
reads leave in L1; against it stands the two-kernel form, cuDNN's 1x1
transpose then the channels-last shift, and the bounded autotuner
(`kernels._autotune`) keeps whichever is faster per shape class.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import _autotune
from ._triton_shift import (
    INTERPRET,
    alloc,
    check_input,
    check_plan,
    check_stride,
    config_name,
    group_tables,
    is_channels_last,
    layout_name,
    shift_plan_apply,
    shift_transpose,
    vector_lanes,
)
from .precision import autocast_conv_args, conv_fp32_precision
from .reference import ShiftGroup, out_hw

TWO_PASS = "two-pass"  # the candidate name of the unfused form (shift, then cuDNN's 1x1)


def _dw_tiles(interpret: bool = INTERPRET) -> tuple[int, int, int]:
    """Fixed dW tiles `(BLOCK_O, BLOCK_K, BLOCK_M)` (not autotuned): the split of the pixel
    reduction into partials decides the bits of dW, so it must not change between runs.

    64 x 32 x 64, 4 warps: 72 registers and no spills for sm_90a in bf16; the
    64 x 64 x 64 tile it replaces took 255 registers and spilled 308 bytes per
    thread (ptxas, triton 3.9), from the shifted B tile held in registers.
    """
    return (32, 32, 32) if interpret else (64, 32, 64)


_DW_BLOCK_O, _DW_BLOCK_K, _DW_BLOCK_M = _dw_tiles()
_DW_TARGET_PROGRAMS = 512  # enough programs to fill a GPU; a constant, so dW's bits do not depend on it


def _gemm_configs(interpret: bool = INTERPRET) -> list[dict]:
    """Forward tiles `(BLOCK_M, BLOCK_N, BLOCK_K)`, warps, stages. Predicted, not yet measured
    (registers: ptxas for sm_90a, bf16, plain / with the block path's prologue and epilogue):

    - 128 x 64 x 32, 4 warps: C_out <= 64 (one N tile: every A tile is read
      once); 157 / 203 registers. K = 64 took 255 and spilled.
    - 128 x 128 x 32, 8 warps: C_out = 128; 127 / 171 registers.
    - 64 x 256 x 32, 8 warps: C_out >= 256, where the GEMM is compute-bound
      (64x512x14x14: 6.6 GFLOP over 26 MB) and the widest wgmma N halves the
      A re-reads from L2; 127 / 168 registers (128 x 256 spilled with the prologue).
    - 64 x 64 x 32, 4 warps: small M (batch-1 inference: 1024 rows are 16
      programs at 64 rows, 8 at 128), where filling the SMs beats tile efficiency.
    """
    if interpret:
        return [{"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 4, "num_stages": 1}]
    shapes = [(128, 64, 32, 4, 3), (128, 128, 32, 8, 3), (64, 256, 32, 8, 3), (64, 64, 32, 4, 3)]
    return [{"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "num_warps": w, "num_stages": s}
            for m, n, k, w, s in shapes]


def _dx_configs(interpret: bool = INTERPRET) -> list[dict]:
    """dx tiles `(BLOCK_M, BLOCK_N, BLOCK_O)`: pixels, channels of one group, reduction. Predicted:

    - 128 x 16 x 64, 4 warps, no pipelining: groups of <= 16 channels (8c at
      C <= 144, every 5x5 layer up to 400); unpipelined, g's rows come in
      through L1 (`LDG.E.128`, where `cp.async` would bypass it), so the
      other groups' reads of the same rows hit L1 (211 registers, no spills);
    - 64 x 64 x 64, 8 warps: groups of ~56 channels (8c at C = 512): N = 64
      pads 56 to 64 (1.14x MMA), 122 registers;
    - and the two-pass form (cuDNN 1x1 transpose, then the shift), where G
      groups re-reading g cost more than writing and reading g @ W once.
    """
    if interpret:
        return [{"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_O": 16, "num_warps": 4, "num_stages": 1}]
    shapes = [(128, 16, 64, 4, 1), (64, 64, 64, 8, 2)]
    return [{"BLOCK_M": m, "BLOCK_N": n, "BLOCK_O": o, "num_warps": w, "num_stages": s}
            for m, n, o, w, s in shapes]


_GEMM_CONFIGS = {config_name(c): c for c in _gemm_configs()}
_DX_CONFIGS = {config_name(c): c for c in _dx_configs()}


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------


@triton.jit
def _shifted_tile(x_ptr, gid_ptr, goff_ptr, in_bias_ptr, x_row, ii, jj, m_ok, k0,
                  C_in, H, W, sxc, sxh, sxw,
                  GPC: tl.constexpr, IN_BIAS_RELU: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, VEC: tl.constexpr):
    """`A[m, k] = act(x[n_m, k, ii_m + dy_k, jj_m + dx_k])` for k in [k0, k0 + BLOCK_K), 0 outside.

    `x_row`: pointers to each row's image; `(ii, jj)`: its unshifted source
    position; `act` is the identity, or `relu(. + in_bias[k])` (the folded BN
    and ReLU before the shift). One 16-byte load per row, chunk and group met.
    """
    NCH: tl.constexpr = BLOCK_K // VEC
    chunk = k0 // VEC + tl.arange(0, NCH)
    c = chunk[:, None] * VEC + tl.arange(0, VEC)[None, :]  # [NCH, VEC]
    c_ok = c < C_in
    gid = tl.load(gid_ptr + c, mask=c_ok, other=-1)
    g_first = tl.load(gid_ptr + chunk * VEC, mask=chunk * VEC < C_in, other=0)
    g_last = tl.max(gid, axis=1)
    if IN_BIAS_RELU:
        bias = tl.load(in_bias_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    a = tl.zeros([BLOCK_M, NCH, VEC], dtype=x_ptr.dtype.element_ty)
    for q in tl.static_range(GPC):
        g = g_first + q
        has = g <= g_last
        dy = tl.load(goff_ptr + 2 * g, mask=has, other=0)
        dx = tl.load(goff_ptr + 2 * g + 1, mask=has, other=0)
        r = ii[:, None] + dy[None, :]
        t = jj[:, None] + dx[None, :]
        ok = m_ok[:, None] & has[None, :] & (r >= 0) & (r < H) & (t >= 0) & (t < W)
        src = x_row[:, None] + r * sxh + t * sxw
        v = tl.load(src[:, :, None] + c[None, :, :] * sxc, mask=ok[:, :, None] & c_ok[None, :, :],
                    other=0.0)
        if IN_BIAS_RELU:
            v = tl.where(ok[:, :, None], tl.maximum(v.to(tl.float32) + bias[None, :, :], 0.0), 0.0)
            v = v.to(x_ptr.dtype.element_ty)
        a = tl.where((gid == g[:, None])[None, :, :], v, a)
    return tl.reshape(a, (BLOCK_M, BLOCK_K))


@triton.jit(do_not_specialize=("M", "H", "W", "Ho", "Wo"))
def _shift_conv1x1_kernel(
    x_ptr, w_ptr, gid_ptr, goff_ptr, y_ptr, in_bias_ptr, bias_ptr, res_ptr,
    M, C_in, C_out, H, W, Ho, Wo,
    sxn, sxc, sxh, sxw,
    swo, swi,
    syn, syc, syh, syw,
    srn, src, srh, srw,
    STRIDE: tl.constexpr, GPC: tl.constexpr, VEC: tl.constexpr,
    IN_BIAS_RELU: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, HAS_RES: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """`y = [relu](shift(act(x)) @ W^T [+ bias]) [+ res]`, one BLOCK_M x BLOCK_N output tile."""
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
    x_row = x_ptr + nb * sxn
    o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_ok = o < C_out
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, C_in, BLOCK_K):
        a = _shifted_tile(x_ptr, gid_ptr, goff_ptr, in_bias_ptr, x_row, i * STRIDE, j * STRIDE, m_ok,
                          k0, C_in, H, W, sxc, sxh, sxw, GPC, IN_BIAS_RELU, BLOCK_M, BLOCK_K, VEC)
        k = k0 + tl.arange(0, BLOCK_K)
        b = tl.load(w_ptr + o[None, :] * swo + k[:, None] * swi,
                    mask=(k < C_in)[:, None] & o_ok[None, :], other=0.0)
        if UPCAST:  # the interpreter's tl.dot misreads bfloat16
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    out_ok = m_ok[:, None] & o_ok[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o, mask=o_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    if HAS_RES:
        res = res_ptr + (nb * srn + i * srh + j * srw)[:, None] + o[None, :] * src
        acc += tl.load(res, mask=out_ok, other=0.0).to(tl.float32)
    y = y_ptr + (nb * syn + i * syh + j * syw)[:, None] + o[None, :] * syc
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=out_ok)


@triton.jit(do_not_specialize=("M", "H", "W", "Ho", "Wo", "M_PER_SPLIT"))
def _shift_conv1x1_dw_kernel(
    x_ptr, g_ptr, gid_ptr, goff_ptr, part_ptr,
    M, C_in, C_out, H, W, Ho, Wo, M_PER_SPLIT,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    STRIDE: tl.constexpr, GPC: tl.constexpr, VEC: tl.constexpr, SHIFTED_A: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """part[split, o, k] = sum over this split's pixels m of g[m, o] * shift(x)[m, k].

    `g^T @ shift(x)`, a BLOCK_O x BLOCK_K tile (wgmma's 64 rows are output
    channels); with SHIFTED_A, `shift(x)^T @ g` instead, the form that fp32
    needs: Triton 3.9's dot-operand pass fails on the other with a TF32 dot.
    """
    pid_k = tl.program_id(0)
    pid_o = tl.program_id(1)
    pid_s = tl.program_id(2)
    o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    k0 = pid_k * BLOCK_K
    o_ok = o < C_out
    hw = Ho * Wo
    m_lo = pid_s * M_PER_SPLIT
    m_hi = tl.minimum(m_lo + M_PER_SPLIT, M)
    if SHIFTED_A:
        acc = tl.zeros([BLOCK_K, BLOCK_O], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_O, BLOCK_K], dtype=tl.float32)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        m_ok = m < m_hi
        nb = (m // hw).to(tl.int64)
        i = (m % hw) // Wo
        j = m % Wo
        g_row = nb * sgn + i * sgh + j * sgw
        xs = _shifted_tile(x_ptr, gid_ptr, goff_ptr, x_ptr, x_ptr + nb * sxn, i * STRIDE, j * STRIDE,
                           m_ok, k0, C_in, H, W, sxc, sxh, sxw, GPC, False, BLOCK_M, BLOCK_K, VEC)
        if SHIFTED_A:
            gm = tl.load(g_ptr + g_row[:, None] + o[None, :] * sgc, mask=m_ok[:, None] & o_ok[None, :],
                         other=0.0)
            if UPCAST:
                gm = gm.to(tl.float32)
                xs = xs.to(tl.float32)
            acc = tl.dot(tl.trans(xs), gm, acc, input_precision=DOT_PRECISION)
        else:
            gt = tl.load(g_ptr + g_row[None, :] + o[:, None] * sgc, mask=o_ok[:, None] & m_ok[None, :],
                         other=0.0)
            if UPCAST:
                gt = gt.to(tl.float32)
                xs = xs.to(tl.float32)
            acc = tl.dot(gt, xs, acc, input_precision=DOT_PRECISION)
    k = k0 + tl.arange(0, BLOCK_K)
    out = part_ptr + pid_s * C_out * C_in
    if SHIFTED_A:
        tl.store(out + o[None, :] * C_in + k[:, None], acc, mask=o_ok[None, :] & (k < C_in)[:, None])
    else:
        tl.store(out + o[:, None] * C_in + k[None, :], acc, mask=o_ok[:, None] & (k < C_in)[None, :])


@triton.jit(do_not_specialize=("M", "T", "H", "W", "Ho", "Wo"))
def _shift_conv1x1_dx_kernel(
    g_ptr, w_ptr, tile_ptr, dx_ptr,
    M, T, C_in, C_out, H, W, Ho, Wo,
    sgn, sgc, sgh, sgw,
    swo, swi,
    sdn, sdc, sdh, sdw,
    STRIDE: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr,
):
    """dx[m, k] = sum_o g[src_g(m), o] * W[o, k] for one tile of input pixels m, every channel k.

    `tile[t] = (k0, k1, dy, dx)`: channels `[k0, k1)` (at most BLOCK_N, one
    group), all read from g at ((r - dy)/s, (t - dx)/s), zero where that is
    not a whole, in-range index. The program walks every tile, so the rows of
    g that the groups share are read from DRAM once and then from L1.
    """
    pid_m = tl.program_id(0)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M
    hw = H * W
    nb = (m // hw).to(tl.int64)
    r = (m % hw) // W
    t = m % W
    g_img = g_ptr + nb * sgn
    out_row = dx_ptr + nb * sdn + r * sdh + t * sdw
    for tile in range(0, T):
        k0 = tl.load(tile_ptr + tile * 4)
        k1 = tl.load(tile_ptr + tile * 4 + 1)
        dy = tl.load(tile_ptr + tile * 4 + 2)
        dx = tl.load(tile_ptr + tile * 4 + 3)
        rs = r - dy
        ts = t - dx
        ok = m_ok & (rs >= 0) & (ts >= 0)
        if STRIDE > 1:
            ok = ok & (rs % STRIDE == 0) & (ts % STRIDE == 0)
            rs = rs // STRIDE
            ts = ts // STRIDE
        ok = ok & (rs < Ho) & (ts < Wo)
        g_row = g_img + rs * sgh + ts * sgw
        k = k0 + tl.arange(0, BLOCK_N)
        k_ok = k < k1
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for o0 in range(0, C_out, BLOCK_O):
            o = o0 + tl.arange(0, BLOCK_O)
            o_ok = o < C_out
            a = tl.load(g_row[:, None] + o[None, :] * sgc, mask=ok[:, None] & o_ok[None, :], other=0.0)
            b = tl.load(w_ptr + o[:, None] * swo + k[None, :] * swi,
                        mask=o_ok[:, None] & k_ok[None, :], other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        tl.store(out_row[:, None] + k[None, :] * sdc, acc.to(dx_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & k_ok[None, :])


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


def _check_vector(v: torch.Tensor | None, name: str, size: int, like: torch.Tensor) -> None:
    if v is not None and (v.shape != (size,) or v.device != like.device or not v.is_floating_point()):
        raise ValueError(f"`{name}` must be a float ({size},) tensor on {like.device}, got "
                         f"{tuple(v.shape)} {v.dtype} on {v.device}.")


def _tune_key(op: str, m: int, x: torch.Tensor, c_out: int, stride: int, plan, **flags) -> str:
    tables = group_tables(plan, x.device, vector_lanes(x.dtype))
    return _autotune.shape_class(op, m, c_in=x.shape[1], c_out=c_out, stride=stride, dtype=x.dtype,
                                 layout=layout_name(x), groups=tables.groups, gpc=tables.per_chunk,
                                 **flags)


def _two_pass_forward(x, plan, stride, weight, in_bias, bias, relu, residual) -> torch.Tensor:
    """The same function unfused: [relu(x + in_bias)] -> shift -> cuDNN 1x1 [+ bias] -> [relu] [+ res]."""
    if in_bias is not None:
        x = torch.relu(x + in_bias.view(1, -1, 1, 1).to(x.dtype))
    y = F.conv2d(shift_plan_apply(x, plan, stride), weight, None if bias is None else bias.to(x.dtype))
    if relu:
        y = torch.relu_(y)
    return y if residual is None else y.add_(residual)


def shift_conv1x1_forward(x: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int,
                          weight: torch.Tensor, *, in_bias: torch.Tensor | None = None,
                          bias: torch.Tensor | None = None, relu: bool = False,
                          residual: torch.Tensor | None = None, config: str | None = None) -> torch.Tensor:
    """`[relu](conv1x1(weight, bias)(shift(act(x), plan, stride))) [+ residual]` (no autograd).

    `act(x) = relu(x + in_bias)` when `in_bias` is given (a folded BN and ReLU
    before the shift), else `x`. `config` forces one candidate by name (tests);
    otherwise the bounded autotuner picks one per shape class.
    """
    _check(x, plan, stride, weight)
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    ho, wo = out_hw(h, w, stride)
    _check_vector(in_bias, "in_bias", c_in, x)
    _check_vector(bias, "bias", c_out, x)
    if residual is not None and (residual.shape != (n, c_out, ho, wo) or residual.dtype != x.dtype
                                 or residual.device != x.device):
        raise ValueError(f"`residual` must be a {x.dtype} tensor of shape {(n, c_out, ho, wo)} on "
                         f"{x.device}, got {residual.dtype} {tuple(residual.shape)} on {residual.device}.")
    m = n * ho * wo
    if m == 0 or c_out == 0:
        return alloc((n, c_out, ho, wo), x, channels_last=is_channels_last(x))
    if c_in == 0:
        return _two_pass_forward(x, plan, stride, weight, in_bias, bias, relu, residual)
    vec = vector_lanes(x.dtype)
    tables = group_tables(plan, x.device, vec)
    gid, goff = tables.gid, tables.offsets
    dummy = x  # never read: the flag that would read it is off

    def fused(cfg: dict) -> torch.Tensor:
        y = alloc((n, c_out, ho, wo), x, channels_last=is_channels_last(x))
        res = residual if residual is not None else y
        grid = (triton.cdiv(c_out, cfg["BLOCK_N"]), triton.cdiv(m, cfg["BLOCK_M"]))
        _autotune.launch(
            _shift_conv1x1_kernel, grid,
            x, weight, gid, goff, y,
            dummy if in_bias is None else in_bias, dummy if bias is None else bias, res,
            m, c_in, c_out, h, w, ho, wo,
            *x.stride(), weight.stride(0), weight.stride(1), *y.stride(), *res.stride(),
            STRIDE=stride, GPC=tables.per_chunk, VEC=vec, IN_BIAS_RELU=in_bias is not None,
            HAS_BIAS=bias is not None, RELU=relu, HAS_RES=residual is not None,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=max(cfg["BLOCK_K"], vec),
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **_dot_meta(x.dtype),
        )
        return y

    def run(name: str) -> torch.Tensor:
        if name == TWO_PASS:
            return _two_pass_forward(x, plan, stride, weight, in_bias, bias, relu, residual)
        return fused(_GEMM_CONFIGS[name])

    if config is None:
        flags = (in_bias is not None, bias is not None, relu, residual is not None)
        # A tile more than twice as wide as the layer is mostly padding: not worth its compile.
        widest = max(64, triton.next_power_of_2(c_out))
        names = [k for k, c in _GEMM_CONFIGS.items() if c["BLOCK_N"] <= widest] + [TWO_PASS]
        config = _autotune.pick(
            ("fused_fwd", x.shape, x.stride(), x.dtype, x.device, c_out, plan, stride, flags),
            lambda: _tune_key("fused_fwd", m, x, c_out, stride, plan, in_bias=flags[0], bias=flags[1],
                              relu=relu, res=flags[3]),
            names, run, x.device)
    return run(config)


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
        vec = vector_lanes(x.dtype)
        tables = group_tables(plan, x.device, vec)
        grid = (triton.cdiv(c_in, _DW_BLOCK_K), triton.cdiv(c_out, _DW_BLOCK_O), splits)
        _autotune.launch(
            _shift_conv1x1_dw_kernel, grid,
            x, g, tables.gid, tables.offsets, part,
            m, c_in, c_out, h, w, ho, wo, m_per_split,
            *x.stride(), *g.stride(),
            STRIDE=stride, GPC=tables.per_chunk, VEC=vec, SHIFTED_A=x.dtype == torch.float32,
            BLOCK_O=_DW_BLOCK_O, BLOCK_K=_DW_BLOCK_K, BLOCK_M=_DW_BLOCK_M, **_dot_meta(x.dtype),
        )
    else:
        part.zero_()
    return part.sum(dim=0).to(x.dtype).view(c_out, c_in, 1, 1)


@functools.lru_cache(maxsize=256)
def _k_tiles(plan: tuple[ShiftGroup, ...], block_n: int, device: torch.device) -> torch.Tensor:
    """`(T, 4)` int32 rows `(k0, k1, dy, dx)`: channel tiles of at most `block_n`, one group each."""
    rows = [(k0, min(k0 + block_n, g.c1), g.dy, g.dx)
            for g in plan for k0 in range(g.c0, g.c1, block_n)]
    return torch.tensor(rows, dtype=torch.int32).reshape(-1, 4).to(device)


def shift_conv1x1_dinput(g: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int,
                         weight: torch.Tensor, hw: tuple[int, int], *,
                         config: str | None = None) -> torch.Tensor:
    """`dx = shift^T(conv1x1^T(g))` on the input grid `hw`: one fused kernel or the two-pass form."""
    n, c_out, ho, wo = g.shape
    c_in = weight.shape[1]
    h, w = hw
    m = n * h * w

    def fused(cfg: dict) -> torch.Tensor:
        dx = alloc((n, c_in, h, w), g, channels_last=is_channels_last(g))
        tiles = _k_tiles(plan, cfg["BLOCK_N"], g.device)
        _autotune.launch(
            _shift_conv1x1_dx_kernel, (triton.cdiv(m, cfg["BLOCK_M"]),),
            g, weight, tiles, dx,
            m, tiles.shape[0], c_in, c_out, h, w, ho, wo,
            *g.stride(), weight.stride(0), weight.stride(1), *dx.stride(),
            STRIDE=stride, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_O=cfg["BLOCK_O"],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **_dot_meta(g.dtype),
        )
        return dx

    def two_pass() -> torch.Tensor:
        z = F.conv2d(g, weight.transpose(0, 1))  # g @ W on the output grid, cuDNN's 1x1
        return shift_transpose(z, plan, stride, hw)

    if m == 0 or c_in == 0:
        return alloc((n, c_in, h, w), g, channels_last=is_channels_last(g))
    if c_out == 0:
        return alloc((n, c_in, h, w), g, channels_last=is_channels_last(g)).zero_()

    def run(name: str) -> torch.Tensor:
        return two_pass() if name == TWO_PASS else fused(_DX_CONFIGS[name])

    if config is None:
        config = _autotune.pick(
            ("fused_dx", g.shape, g.stride(), g.dtype, g.device, c_in, plan, stride, hw),
            lambda: _autotune.shape_class("fused_dx", m, c_in=c_in, c_out=c_out, stride=stride,
                                          dtype=g.dtype, layout=layout_name(g), groups=len(plan),
                                          widest=max(p.c1 - p.c0 for p in plan)),
            [*_DX_CONFIGS, TWO_PASS], run, g.device)
    return run(config)


class _ShiftConv1x1Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, plan, stride, weight):
        ctx.save_for_backward(x, weight)
        ctx.plan, ctx.stride = plan, stride
        return shift_conv1x1_forward(x, plan, stride, weight)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        g = g.contiguous(memory_format=torch.channels_last) if is_channels_last(x) else g.contiguous()
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


def shift_conv1x1_block(h: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int,
                        weight: torch.Tensor, *, in_bias: torch.Tensor | None, bias: torch.Tensor | None,
                        relu: bool, residual: torch.Tensor | None) -> torch.Tensor:
    """Inference only: `[relu](conv1x1(weight, bias)(shift(relu(h + in_bias)))) [+ residual]`.

    The second half of a folded csc block in one kernel (`h` is the first 1x1's
    output without its bias). No autograd: call it under `torch.no_grad()`.
    """
    h, weight = autocast_conv_args(h, weight)
    if residual is not None and residual.dtype != h.dtype:
        # Under autocast the eager block adds a bf16 branch to an fp32 shortcut, in fp32.
        y = shift_conv1x1_forward(h, plan, stride, weight, in_bias=in_bias, bias=bias, relu=relu)
        return y + residual
    return shift_conv1x1_forward(h, plan, stride, weight, in_bias=in_bias, bias=bias, relu=relu,
                                 residual=residual)
