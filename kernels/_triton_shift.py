"""Triton integer shift (spec section 1): forward and its transpose, plus shared host helpers.

Every output element is written exactly once, zeros included, so a shift costs
one read and one write of the tensor: the bytes of a plain copy. Three kernels,
picked by layout:

- **channels-last** (`_shift_cl_kernel`, the layout GPU networks run in): a
  pixel's channels are contiguous and a channel group shares one offset, so a
  tile of pixels x channels is a few shifted rectangles. The kernel moves the
  bytes as 32-bit words (one fp32 or two bf16 / fp16 channels; any dtype, one
  binary) in 16-byte chunks; each chunk is loaded whole at the offset of each
  group it meets (one load when the groups align to chunks, two when a group
  boundary falls inside it; `GPC` is the most any chunk needs) and a
  precomputed bit mask per word keeps each group's channels (`val |= v & m`).
  The chunk's groups, offsets and masks are read once per program, not per
  element; a program owns whole rows of one image, so a pixel's row and column
  are a shift and a mask. Loads and stores are 16-byte vectors (`LDG.E.128` /
  `STG.E.128` in the sm_90a SASS), ~300 instructions per thread for 64 bytes.
  16-bit tensors with an odd channel count (words would straddle pixels) take
  the per-channel gather.
- **NCHW** (`_shift_plane_kernel`): a program copies a tile of whole (n, c)
  planes, one offset per plane; rows are contiguous runs.
- anything else, and arbitrary per-channel offsets (the sparse shift's
  rounded offsets) in channels-last: `_shift_gather_kernel`, one offset
  lookup per channel.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import _autotune
from .reference import ShiftGroup, out_hw

# The kernels are defined as interpreted functions when this is set at import
# time; a later change of the environment does not recompile them.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
VECTOR_BYTES = 16  # one LDG.E.128 / STG.E.128 per thread and chunk

# Tests set this to fill every output with NaN before a kernel writes it, so
# an element the kernel forgets to write fails the comparison.
_poison = False


# ----------------------------------------------------------------------------
# Shared host helpers
# ----------------------------------------------------------------------------


def is_channels_last(x: torch.Tensor) -> bool:
    """Same rule as the reference: channels-last only when not also NCHW-contiguous."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def layout_name(x: torch.Tensor) -> str:
    return "cl" if is_channels_last(x) else "nchw" if x.is_contiguous() else "strided"


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


@functools.lru_cache(maxsize=1024)  # a valid plan is checked once (a bad one raises every time)
def check_plan(plan: tuple[ShiftGroup, ...], channels: int) -> None:
    """A plan's groups must tile `[0, channels)` in order (as `shift_plan` builds them)."""
    if not plan or plan[0].c0 != 0 or plan[-1].c1 != channels:
        raise ValueError(
            f"the shift plan must cover channels [0, {channels}), got "
            f"[{plan[0].c0 if plan else 0}, {plan[-1].c1 if plan else 0}); build it with "
            f"`shift_plan({channels}, nbhd)`."
        )
    for a, b in zip(plan, plan[1:]):
        if a.c1 != b.c0 or a.c0 >= a.c1:
            raise ValueError(f"the shift plan's groups must be non-empty and contiguous in channel "
                             f"order, got {a} then {b}; build it with `shift_plan({channels}, nbhd)`.")


def vector_lanes(dtype: torch.dtype) -> int:
    """Elements per 16-byte vector: 8 for bf16 / fp16, 4 for fp32."""
    return VECTOR_BYTES // torch.empty((), dtype=dtype).element_size()


@functools.lru_cache(maxsize=256)
def plan_offsets(plan: tuple[ShiftGroup, ...], device: torch.device, sign: int = 1) -> torch.Tensor:
    """`(2, C)` int32 table of per-channel (dy, dx) times `sign`, on `device` (cached)."""
    table = torch.zeros(2, plan[-1].c1, dtype=torch.int32)
    for g in plan:
        table[0, g.c0:g.c1], table[1, g.c0:g.c1] = sign * g.dy, sign * g.dx
    return table.to(device)


@dataclass(frozen=True)
class GroupTables:
    """A plan as the grouped kernels read it, for one vector width.

    `gid[c]`: the group of channel c; `offsets[g] = (dy, dx)` of group g (times
    the sign); `per_chunk`: the most groups any `lanes`-wide chunk of channels
    touches (the `GPC` loads per chunk).
    """

    gid: torch.Tensor  # (C,) int32
    offsets: torch.Tensor  # (G, 2) int32, row-major: dy, dx
    per_chunk: int
    groups: int


def channel_groups(plan: tuple[ShiftGroup, ...]) -> list[int]:
    gid = [0] * plan[-1].c1
    for g, grp in enumerate(plan):
        gid[grp.c0:grp.c1] = [g] * (grp.c1 - grp.c0)
    return gid


def chunk_groups(plan: tuple[ShiftGroup, ...], lanes: int) -> int:
    """The most groups that one chunk `[q*lanes, (q+1)*lanes)` of channels meets."""
    gid = channel_groups(plan)
    return max(gid[min(q + lanes, len(gid)) - 1] - gid[q] + 1 for q in range(0, len(gid), lanes))


@functools.lru_cache(maxsize=256)
def group_tables(plan: tuple[ShiftGroup, ...], device: torch.device, lanes: int,
                 sign: int = 1) -> GroupTables:
    gid = torch.tensor(channel_groups(plan), dtype=torch.int32)
    offsets = torch.tensor([[sign * g.dy, sign * g.dx] for g in plan], dtype=torch.int32)
    return GroupTables(gid.to(device), offsets.to(device), chunk_groups(plan, lanes), len(plan))


WORD_BYTES = 4  # the channels-last shift moves 32-bit words
WORDS = VECTOR_BYTES // WORD_BYTES  # words per 16-byte chunk


@dataclass(frozen=True)
class WordTables:
    """A plan as `_shift_cl_kernel` reads it: channels packed into 32-bit words (1 fp32 or 2 bf16).

    Chunk q is words `[4q, 4q + 4)` (16 bytes). `first[q]` / `last[q]`: the
    first and last group its channels meet; `masks[k, w]`: the bits of word w
    that belong to group `first[q] + k`; `offsets[g]`: (dy, dx) of group g.
    """

    first: torch.Tensor  # (Q,) int32
    last: torch.Tensor  # (Q,) int32
    masks: torch.Tensor  # (GPC, words) int32
    offsets: torch.Tensor  # (G, 2) int32
    per_chunk: int  # GPC
    words: int


@functools.lru_cache(maxsize=256)
def word_tables(plan: tuple[ShiftGroup, ...], device: torch.device, element_bytes: int,
                sign: int = 1) -> WordTables:
    gid = channel_groups(plan)
    per_word = WORD_BYTES // element_bytes
    words = len(gid) // per_word
    lanes = WORDS * per_word  # channels per chunk
    first = [gid[c] for c in range(0, len(gid), lanes)]
    last = [gid[min(c + lanes, len(gid)) - 1] for c in range(0, len(gid), lanes)]
    gpc = max(b - a + 1 for a, b in zip(first, last))
    masks = torch.zeros(gpc, words, dtype=torch.int64)
    bits = 8 * element_bytes
    for w in range(words):
        q = w // WORDS
        for e in range(per_word):
            k = gid[w * per_word + e] - first[q]
            masks[k, w] |= ((1 << bits) - 1) << (bits * e)  # little-endian: element e at bit 16e
    masks = torch.where(masks >= 2**31, masks - 2**32, masks).to(torch.int32)
    offsets = torch.tensor([[sign * g.dy, sign * g.dx] for g in plan], dtype=torch.int32)
    t = lambda v: torch.tensor(v, dtype=torch.int32).to(device)  # noqa: E731
    return WordTables(t(first), t(last), masks.to(device), offsets.to(device), gpc, words)


def negate(plan: tuple[ShiftGroup, ...]) -> tuple[ShiftGroup, ...]:
    return tuple(g._replace(dy=-g.dy, dx=-g.dx) for g in plan)


# ----------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------


def _cl_configs(interpret: bool = INTERPRET) -> list[dict]:
    """Channels-last tiles: `BLOCK_P` pixels x `BLOCK_C` 32-bit words of channels, 4 warps.

    Predicted, not yet measured: 64 x 32 (8 KB: 64 bf16 channels, a whole
    pixel of the C = 64 layers) and 32 x 64 (C = 128), each 56 registers and
    ~420 SASS instructions per thread for 4 output vectors; 16 x 128 for the
    wide layers (C >= 256). Every tile moves 8 KB, ~8 programs per SM keep
    ~64 KB in flight (HBM latency x bandwidth per SM is ~36 KB).
    """
    if interpret:  # one config: the interpreter runs each program in numpy, so fewer is faster
        return [{"BLOCK_P": 64, "BLOCK_C": 8, "num_warps": 4}]
    return [{"BLOCK_P": p, "BLOCK_C": c, "num_warps": 4} for p, c in ((64, 32), (32, 64), (16, 128))]


def config_name(cfg: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in cfg.items())


_CL_CONFIGS = {config_name(cfg): cfg for cfg in _cl_configs()}


def _plane_tile(h: int, w: int, interpret: bool = INTERPRET) -> tuple[int, int, int]:
    """NCHW tile `(PLANES, BLOCK_H, BLOCK_W)`: rows as wide as the map (<= 128), ~1024 elements.

    A heuristic, not tuned: a plane's rows are its contiguous runs, so the tile
    spans them whole, stacks rows, then whole planes (a 7x7 map is 49 elements:
    one plane per program would leave 95% of a 1024-element tile idle).
    """
    budget = 256 if interpret else 1024
    bw = min(128, max(8, triton.next_power_of_2(w)))
    bh = max(1, min(budget // bw, triton.next_power_of_2(h)))
    return max(1, budget // (bh * bw)), bh, bw


def _gather_tile(channels_last: bool, interpret: bool = INTERPRET) -> tuple[int, int]:
    """`(BLOCK_C, BLOCK_P)` of the per-channel gather (sparse shift in channels-last, odd strides).

    A heuristic, not tuned: in channels-last the lanes run along channels (64 x 16),
    otherwise along pixels (4 x 256), the two tiles the old integer shift's
    autotuner chose between.
    """
    if interpret:
        return 16, 64
    return (64, 16) if channels_last else (4, 256)


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------


# Map sides and pixel counts take any value: not specialising them (on divisibility by 16,
# or equality to 1) lets one binary serve every map size, where each new side would compile
# anew; the vector widths come from the channel counts and strides, which stay specialised.
_SIDES = ("H_src", "W_src", "H_dst", "W_dst")


@triton.jit
def _source(i, j, dy, dx, H_src, W_src, STRIDE: tl.constexpr, TRANSPOSE: tl.constexpr):
    """Source row / column of destination (i, j) for offset (dy, dx), and whether it exists.

    Forward: (i*s + dy, j*s + dx). Transposed (the input gradient of a stride-s
    shift, on the input grid): ((i - dy)/s, (j - dx)/s) when both divide exactly.
    """
    if TRANSPOSE:
        r = i - dy
        t = j - dx
        ok = (r >= 0) & (t >= 0)
        if STRIDE > 1:
            ok = ok & (r % STRIDE == 0) & (t % STRIDE == 0)
            r = r // STRIDE
            t = t // STRIDE
        ok = ok & (r < H_src) & (t < W_src)
    else:
        r = i * STRIDE + dy
        t = j * STRIDE + dx
        ok = (r >= 0) & (r < H_src) & (t >= 0) & (t < W_src)
    return r, t, ok


@triton.jit(do_not_specialize=_SIDES)
def _shift_cl_kernel(
    x_ptr, y_ptr, first_ptr, last_ptr, mask_ptr, goff_ptr,
    CW, H_src, W_src, H_dst, W_dst,
    sxn, sxh, sxw,
    syn, syh, syw,
    STRIDE: tl.constexpr, TRANSPOSE: tl.constexpr, GPC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Channels-last shift of `BLOCK_P` pixels of one image x `BLOCK_C` words of channels.

    `x` and `y` are (N, H, W, CW) int32 views: the kernel moves bytes, whatever
    the dtype. The pixels are `BLOCK_P // BLOCK_W` rows of `BLOCK_W` (a power
    of two), so a pixel's row and column are a shift and a mask, not a
    division. The tile is `[pixels, chunks, 4 words]`: for k < GPC every
    16-byte chunk is loaded whole at the offset of the k-th group it meets
    (masked off where it has none, or the source is outside the image), and
    the bits of that group's channels are kept (`val |= v & mask`).
    """
    NCH: tl.constexpr = BLOCK_C // 4
    BLOCK_H: tl.constexpr = BLOCK_P // BLOCK_W
    pid_t = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    pid_c = tl.program_id(2)
    tiles_w = tl.cdiv(W_dst, BLOCK_W)
    q = tl.arange(0, BLOCK_P)
    i = (pid_t // tiles_w) * BLOCK_H + q // BLOCK_W
    j = (pid_t % tiles_w) * BLOCK_W + q % BLOCK_W
    p_ok = (i < H_dst) & (j < W_dst)
    chunk = pid_c * NCH + tl.arange(0, NCH)
    c = chunk[:, None] * 4 + tl.arange(0, 4)[None, :]  # [NCH, 4] words
    c_ok = c < CW
    ch_ok = chunk * 4 < CW
    g_first = tl.load(first_ptr + chunk, mask=ch_ok, other=0)  # once per program, per chunk
    g_last = tl.load(last_ptr + chunk, mask=ch_ok, other=-1)
    x_img = x_ptr + n * sxn
    val = tl.zeros([BLOCK_P, NCH, 4], dtype=tl.int32)
    for k in tl.static_range(GPC):
        g = g_first + k
        has = g <= g_last  # [NCH]
        dy = tl.load(goff_ptr + 2 * g, mask=has, other=0)
        dx = tl.load(goff_ptr + 2 * g + 1, mask=has, other=0)
        r, t, ok = _source(i[:, None], j[:, None], dy[None, :], dx[None, :], H_src, W_src,
                           STRIDE, TRANSPOSE)
        ok = ok & p_ok[:, None] & has[None, :]  # [BLOCK_P, NCH]: one mask per 16-byte chunk
        src = x_img + r * sxh + t * sxw
        v = tl.load(src[:, :, None] + c[None, :, :], mask=ok[:, :, None] & c_ok[None, :, :], other=0)
        if GPC == 1:
            val = v
        else:
            bits = tl.load(mask_ptr + k * CW + c, mask=c_ok, other=0)
            val = val | (v & bits[None, :, :])
    dst = y_ptr + n * syn + i * syh + j * syw
    tl.store(dst[:, None, None] + c[None, :, :], val, mask=p_ok[:, None, None] & c_ok[None, :, :])


@triton.jit(do_not_specialize=("NC", "C", *_SIDES))
def _shift_plane_kernel(
    x_ptr, y_ptr, off_ptr,
    NC, C, H_src, W_src, H_dst, W_dst,
    sxn, sxc, sxh,
    syn, syc, syh,
    STRIDE: tl.constexpr, TRANSPOSE: tl.constexpr,
    PLANES: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """NCHW (column stride 1): a `BLOCK_H x BLOCK_W` tile of `PLANES` (n, c) planes, one offset each."""
    pid_t = tl.program_id(0)
    q = tl.program_id(1) * PLANES + tl.arange(0, PLANES)
    q_ok = q < NC
    n = (q // C).to(tl.int64)
    ch = q % C
    dy = tl.load(off_ptr + ch, mask=q_ok, other=0)[:, None, None]
    dx = tl.load(off_ptr + C + ch, mask=q_ok, other=0)[:, None, None]
    tiles_w = tl.cdiv(W_dst, BLOCK_W)
    i = (pid_t // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)[None, :, None]
    j = (pid_t % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, None, :]
    inside = q_ok[:, None, None] & (i < H_dst) & (j < W_dst)
    r, t, ok = _source(i, j, dy, dx, H_src, W_src, STRIDE, TRANSPOSE)
    x_plane = (x_ptr + n * sxn + ch * sxc)[:, None, None]
    v = tl.load(x_plane + r * sxh + t, mask=inside & ok, other=0.0)
    y_plane = (y_ptr + n * syn + ch * syc)[:, None, None]
    tl.store(y_plane + i * syh + j, v, mask=inside)


@triton.jit(do_not_specialize=("C", *_SIDES))
def _shift_gather_kernel(
    x_ptr, y_ptr, off_ptr,
    C, H_src, W_src, H_dst, W_dst,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    STRIDE: tl.constexpr, TRANSPOSE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Any strides, any per-channel offsets (a `(2, C)` table): one lookup per channel of the tile."""
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
    r, t, ok = _source(i, j, dy, dx, H_src, W_src, STRIDE, TRANSPOSE)
    inside = c_ok[:, None] & p_ok[None, :]
    val = tl.load(x_ptr + n * sxn + c[:, None] * sxc + r * sxh + t * sxw, mask=inside & ok, other=0.0)
    tl.store(y_ptr + n * syn + c[:, None] * syc + i * syh + j * syw, val, mask=inside)


# ----------------------------------------------------------------------------
# Host functions and autograd
# ----------------------------------------------------------------------------


def _dst_hw(x: torch.Tensor, stride: int, transpose: bool, hw: tuple[int, int] | None) -> tuple[int, int]:
    h_src, w_src = x.shape[-2:]
    if not transpose:
        return out_hw(h_src, w_src, stride)
    if hw is None or out_hw(*hw, stride) != (h_src, w_src):
        raise ValueError(f"input size {hw} does not map to gradient size {(h_src, w_src)} "
                         f"at stride {stride}.")
    return hw


def cl_tile_width(w: int, block_p: int) -> int:
    """Pixels per tile row: the map's width rounded up to a power of two, at most `block_p`."""
    return min(block_p, triton.next_power_of_2(max(w, 1)))


def launch_cl_shift(x: torch.Tensor, y: torch.Tensor, tables: WordTables, stride: int,
                    transpose: bool, config: dict | None = None) -> None:
    """Run `_shift_cl_kernel` from channels-last `x` into channels-last `y` (one config, or tuned).

    Both are moved as int32 words: `words_ok(x)` must hold.
    """
    n, c, h_src, w_src = x.shape
    h_dst, w_dst = y.shape[-2:]
    xw = x.permute(0, 2, 3, 1).view(torch.int32)  # (N, H, W, CW), no copy
    yw = y.permute(0, 2, 3, 1).view(torch.int32)

    def run(cfg: dict) -> None:
        bw = cl_tile_width(w_dst, cfg["BLOCK_P"])
        tiles = triton.cdiv(h_dst, cfg["BLOCK_P"] // bw) * triton.cdiv(w_dst, bw)
        _autotune.launch(
            _shift_cl_kernel, (tiles, n, triton.cdiv(tables.words, cfg["BLOCK_C"])),
            xw, yw, tables.first, tables.last, tables.masks, tables.offsets,
            tables.words, h_src, w_src, h_dst, w_dst,
            xw.stride(0), xw.stride(1), xw.stride(2), yw.stride(0), yw.stride(1), yw.stride(2),
            STRIDE=stride, TRANSPOSE=transpose, GPC=tables.per_chunk,
            BLOCK_P=cfg["BLOCK_P"], BLOCK_W=bw, BLOCK_C=cfg["BLOCK_C"], num_warps=cfg["num_warps"],
        )

    if config is not None:
        run(config)
        return
    configs = _CL_CONFIGS
    name = _autotune.pick(
        ("shift_cl", x.shape, x.dtype, x.device, tables.per_chunk, stride, transpose),
        lambda: _autotune.shape_class("shift_cl", n * h_dst * w_dst, bytes=c * x.element_size(),
                                      h=h_dst, w=w_dst, stride=stride, transpose=transpose,
                                      gpc=tables.per_chunk),
        list(configs), lambda k: run(configs[k]), x.device)
    run(configs[name])


def words_ok(x: torch.Tensor) -> bool:
    """Channels-last with a pixel's channels a whole number of 32-bit words (even C in bf16)."""
    return is_channels_last(x) and (x.shape[1] * x.element_size()) % WORD_BYTES == 0


def _launch_plane(x: torch.Tensor, y: torch.Tensor, offsets: torch.Tensor, stride: int,
                  transpose: bool) -> None:
    n, c, h_src, w_src = x.shape
    h_dst, w_dst = y.shape[-2:]
    planes, bh, bw = _plane_tile(h_dst, w_dst)
    grid = (triton.cdiv(h_dst, bh) * triton.cdiv(w_dst, bw), triton.cdiv(n * c, planes))
    _autotune.launch(
        _shift_plane_kernel, grid,
        x, y, offsets,
        n * c, c, h_src, w_src, h_dst, w_dst,
        x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2),
        STRIDE=stride, TRANSPOSE=transpose, PLANES=planes, BLOCK_H=bh, BLOCK_W=bw,
    )


def _launch_gather(x: torch.Tensor, y: torch.Tensor, offsets: torch.Tensor, stride: int,
                   transpose: bool) -> None:
    n, c, h_src, w_src = x.shape
    h_dst, w_dst = y.shape[-2:]
    bc, bp = _gather_tile(is_channels_last(x))
    grid = (triton.cdiv(h_dst * w_dst, bp), triton.cdiv(c, bc), n)
    _autotune.launch(
        _shift_gather_kernel, grid,
        x, y, offsets,
        c, h_src, w_src, h_dst, w_dst,
        *x.stride(), *y.stride(),
        STRIDE=stride, TRANSPOSE=transpose, BLOCK_C=bc, BLOCK_P=bp,
    )


def _plane_ready(x: torch.Tensor) -> bool:
    return x.is_contiguous() and x.stride(3) == 1


def shift_by_offsets(x: torch.Tensor, offsets: torch.Tensor, stride: int,
                     transpose: bool = False, hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Shift `x` by a `(2, C)` int32 table of per-channel offsets on `x`'s device.

    `transpose=True` is the adjoint: `x` is a gradient on the output grid and
    the result lives on the input grid `hw`. The result keeps `x`'s layout.
    NCHW runs the plane kernel; other layouts the per-channel gather.
    """
    n, c = x.shape[:2]
    h_dst, w_dst = _dst_hw(x, stride, transpose, hw)
    y = alloc((n, c, h_dst, w_dst), x, channels_last=is_channels_last(x))
    if y.numel() == 0:
        return y
    if _plane_ready(x):
        _launch_plane(x, y, offsets, stride, transpose)
    else:
        _launch_gather(x, y, offsets, stride, transpose)
    return y


def shift_plan_apply(x: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int, *,
                     transpose: bool = False, hw: tuple[int, int] | None = None) -> torch.Tensor:
    """The integer shift by `plan` (or its transpose onto `hw`), on the kernel that suits `x`'s layout:
    channels-last words where the plan allows them, else `shift_by_offsets`."""
    if not words_ok(x):
        return shift_by_offsets(x, plan_offsets(plan, x.device), stride, transpose, hw)
    n, c = x.shape[:2]
    h_dst, w_dst = _dst_hw(x, stride, transpose, hw)
    y = alloc((n, c, h_dst, w_dst), x, channels_last=is_channels_last(x))
    if y.numel() > 0:
        launch_cl_shift(x, y, word_tables(plan, x.device, x.element_size()), stride, transpose)
    return y


def shift_forward(x: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int = 1) -> torch.Tensor:
    """Integer shift of `x` by `plan` (no autograd); checks its arguments."""
    check_input(x)
    check_stride(stride)
    check_plan(plan, x.shape[1])
    return shift_plan_apply(x, plan, stride)


def shift_transpose(g: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int,
                    hw: tuple[int, int]) -> torch.Tensor:
    """The adjoint of `shift_forward` (its backward), onto the input grid `hw`."""
    check_input(g, "g")
    check_stride(stride)
    check_plan(plan, g.shape[1])
    if stride == 1:  # the opposite shift: the same gather, no divisibility tests
        return shift_plan_apply(g, negate(plan), 1)
    return shift_plan_apply(g, plan, stride, transpose=True, hw=hw)


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
