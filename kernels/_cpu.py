"""The CPU backend of the integer shift: a one-pass C++ kernel, or strided runs without a compiler.

The reference (`kernels.reference`) copies one slice per channel group and
zero-fills border strips: ~30 torch ops for an 8c shift, 5-30x a `clone` of
the same tensor on the CPU, where per-op dispatch dominates. Here:

- `shift_native`: `_cpu_shift.cpp`, built on first use with
  `torch.utils.cpp_extension` (ATen headers only; ~10-70 s once per machine and
  torch version, then cached). Every output element is written once, from its
  source or as a zero: one op, ~1x clone (benchmarks/RESULTS.md).
- `shift_runs`: torch ops only, the fallback where the kernel cannot be built.
  Groups whose copy (or zero strip) has the same size and whose offsets in
  memory step by a constant become one `as_strided` copy: an 8c shift is 4
  copies and 4 fills instead of 9 copies and ~20 fills.

`shift_fn`, `sparse_shift` and `shift_conv1x1` are the differentiable ops that
`kernels.dispatch` registers as the `cpu` backend, the default for CPU tensors.
"""

from __future__ import annotations

import functools
import re
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from shiftnas.files import cache_dir, file_lock

from . import reference as ref
from ._autotune import add_build_seconds
from .reference import ShiftGroup

_SOURCE = Path(__file__).with_name("_cpu_shift.cpp")


@functools.cache
def _kernel():
    """The C++ module, built once (then cached by torch); None, with a warning, if it cannot be."""
    t0 = time.perf_counter()
    try:
        from torch.utils import cpp_extension

        # The torch version is in the name: a kernel built against other headers never loads.
        name = "shiftnas_cpu_shift_" + re.sub(r"\W", "_", torch.__version__)
        build = cache_dir() / "torch_extensions" / name
        # torch serialises builds with a lock *file*, which a builder killed mid-build
        # leaves behind (every later process then waits forever). An flock dies with
        # its holder: under it, a leftover torch lock file can only be stale.
        with file_lock(build.parent / f"{name}.lock"):
            build.mkdir(parents=True, exist_ok=True)
            (build / "lock").unlink(missing_ok=True)
            return cpp_extension.load(name, [str(_SOURCE)], extra_cflags=_CFLAGS,
                                      build_directory=str(build))
    except Exception as exc:  # no compiler, no headers, a read-only cache: the runs serve
        warnings.warn(f"the CPU shift kernel could not be built ({type(exc).__name__}: {exc}); "
                      f"using strided copies instead, 2-6x slower at CIFAR sizes (it needs a "
                      f"C++ compiler and ninja: `pip install ninja`)", RuntimeWarning, stacklevel=2)
        return None
    finally:  # a trial that pays for the build reports it as compile time, not training
        add_build_seconds(time.perf_counter() - t0)


_CFLAGS = ["-O3"]  # no -march=native: the cached build may be shared by other machines


def native_available() -> bool:
    """Whether the C++ kernel is built and loaded (building it on the first call)."""
    return _kernel() is not None


@functools.lru_cache(maxsize=1024)
def _offsets(plan: tuple[ShiftGroup, ...], sign: int = 1) -> torch.Tensor:
    """The plan's per-channel `(dy, dx)` (times `sign`), as the kernel takes them."""
    return (sign * ref.channel_offsets(plan)).contiguous()


def _dense(x: torch.Tensor) -> torch.Tensor:
    """`x` itself when it is NCHW- or channels-last-contiguous, else an NCHW copy."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def shift_native(x: torch.Tensor, offsets: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """The C++ kernel: `offsets` is int64 `(C, 2)`, any offset per channel. Needs `native_available()`."""
    return _kernel().shift(x, offsets, stride)


def shift_transpose_native(g: torch.Tensor, offsets: torch.Tensor, stride: int,
                           hw: tuple[int, int]) -> torch.Tensor:
    """The adjoint of `shift_native`: the opposite shift at stride 1, a scatter into zeros above."""
    if stride == 1:
        return _kernel().shift(g, (-offsets).contiguous(), 1)
    return _kernel().shift_transpose(g, offsets, stride, hw[0], hw[1])


# ----------------------------------------------------------------------------
# Strided runs: the torch-only path
# ----------------------------------------------------------------------------


class Run(NamedTuple):
    """One `as_strided` copy (`src` set) or zero-fill (`src` None) covering several groups."""

    size: tuple[int, ...]
    dst: tuple[tuple[int, ...], int]  # (strides, storage offset) in the output
    src: tuple[tuple[int, ...], int] | None  # the same in the input (offset from its own)


def _dense_strides(c: int, h: int, w: int, channels_last: bool) -> tuple[int, int, int, int]:
    return (h * w * c, 1, w * c, c) if channels_last else (c * h * w, h * w, w, 1)


def _chains(points: list[tuple[int, ...]]) -> list[tuple[tuple[int, ...], tuple[int, ...], int]]:
    """Greedy cover of `points` (in order) by arithmetic sequences: `(start, step, length)`.

    A step must be >= 0 in every component (views have no negative strides)
    and > 0 in the first (the output), so that no element is written twice.
    """
    out: list[tuple[tuple[int, ...], tuple[int, ...], int]] = []
    for p in points:
        if out:
            start, step, k = out[-1]
            d = tuple(a - b - k_step * (k - 1) for a, b, k_step in zip(p, start, step))
            if k == 1 and d[0] > 0 and min(d) >= 0:
                out[-1] = (start, d, 2)
                continue
            if k > 1 and d == step:
                out[-1] = (start, step, k + 1)
                continue
        out.append((p, (0,) * len(p), 1))
    return out


def _merge(items: list[tuple[tuple[int, ...], tuple[int, ...]]]):
    """Items `(size, offsets)` of one kind -> 2-level runs `(size, start, outer, k2, inner, k1)`.

    Items of equal size whose offsets are affine in their order become one
    chain; consecutive chains of equal step and length whose starts are affine
    again become one run. In plan order this finds, for 8c in NCHW, the four
    corners as one 2x2 run and the two vertical and two horizontal edges as
    one run each.
    """
    by_size: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for size, offs in items:
        by_size.setdefault(size, []).append(offs)
    runs = []
    for size, points in by_size.items():
        chains = _chains(points)
        i = 0
        while i < len(chains):
            j = i + 1  # chains[i:j] share step and length
            while j < len(chains) and chains[j][1:] == chains[i][1:]:
                j += 1
            for start, outer, k2 in _chains([c[0] for c in chains[i:j]]):
                runs.append((size, start, outer, k2, chains[i][1], chains[i][2]))
            i = j
    return runs


@functools.lru_cache(maxsize=1024)
def plan_runs(plan: tuple[ShiftGroup, ...], stride: int, shape: tuple[int, int, int, int],
              channels_last: bool) -> tuple[tuple[Run, ...], tuple[Run, ...]]:
    """The shift of an input of `shape` as (copies, zero-fills) over the output, cached.

    Per group: the rectangle of outputs with a source in the image (one copy)
    and the strips around it (zeros); then `_merge` joins groups into runs.
    Offsets are storage offsets in the output and input layouts.
    """
    n, c, h, w = shape
    ho, wo = ref.out_hw(h, w, stride)
    ys = _dense_strides(c, ho, wo, channels_last)
    xs = _dense_strides(c, h, w, channels_last)

    def at(st, ch, i, j):
        return ch * st[1] + i * st[2] + j * st[3]

    copies, fills = [], []
    for g in plan:
        m = g.c1 - g.c0
        r0, r1 = ref._span(h, ho, g.dy, stride)
        q0, q1 = ref._span(w, wo, g.dx, stride)
        if r1 <= r0 or q1 <= q0:  # the shift moves the whole group out of the image
            fills.append(((m, ho, wo), (at(ys, g.c0, 0, 0),)))
            continue
        copies.append(((m, r1 - r0, q1 - q0),
                       (at(ys, g.c0, r0, q0), at(xs, g.c0, r0 * stride + g.dy, q0 * stride + g.dx))))
        # Left and right strips span every row, so they match between groups of any dy.
        for size, (i, j) in (((m, r0, wo), (0, 0)), ((m, ho - r1, wo), (r1, 0)),
                             ((m, ho, q0), (0, 0)), ((m, ho, wo - q1), (0, q1))):
            if min(size) > 0:
                fills.append((size, (at(ys, g.c0, i, j),)))

    def view(size, base, step2, k2, step1, k1, strides, sx):
        inner = (strides[1], sx * strides[2], sx * strides[3])
        return (n, k2, k1, *size), (strides[0], step2, step1, *inner), base

    copy_runs, fill_runs = [], []
    for size, start, outer, k2, inner, k1 in _merge(copies):
        shp, dst, d0 = view(size, start[0], outer[0], k2, inner[0], k1, ys, 1)
        _, src, s0 = view(size, start[1], outer[1], k2, inner[1], k1, xs, stride)
        copy_runs.append(Run(shp, (dst, d0), (src, s0)))
    for size, start, outer, k2, inner, k1 in _merge(fills):
        shp, dst, d0 = view(size, start[0], outer[0], k2, inner[0], k1, ys, 1)
        fill_runs.append(Run(shp, (dst, d0), None))
    return tuple(copy_runs), tuple(fill_runs)


# Zero the whole output first (one memset) rather than strip by strip when it
# is this small: each fill op costs ~4 us of dispatch, a memset of 64 KiB less.
_MEMSET_BYTES_PER_FILL = 64 << 10


def shift_runs(x: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int = 1) -> torch.Tensor:
    """`reference.shift` as a few strided copies (see `plan_runs`); torch ops only."""
    x = _dense(x)
    n, c, h, w = x.shape
    cl = ref._is_channels_last(x)
    copies, fills = plan_runs(plan, stride, (n, c, h, w), cl)
    fmt = torch.channels_last if cl else torch.contiguous_format
    y = torch.empty((n, c, *ref.out_hw(h, w, stride)), dtype=x.dtype, device=x.device,
                    memory_format=fmt)
    memset = y.numel() * y.element_size() <= len(fills) * _MEMSET_BYTES_PER_FILL
    if memset:
        y.zero_()
    off = x.storage_offset()
    for r in copies:
        y.as_strided(r.size, *r.dst).copy_(x.as_strided(r.size, r.src[0], r.src[1] + off))
    if not memset:
        for r in fills:
            y.as_strided(r.size, *r.dst).zero_()
    return y


def shift_transpose_runs(g: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int,
                         hw: tuple[int, int]) -> torch.Tensor:
    """The adjoint of `shift_runs`: the opposite shift at stride 1, a scatter into zeros above."""
    if stride == 1:
        return shift_runs(g, tuple(p._replace(dy=-p.dy, dx=-p.dx) for p in plan), 1)
    g = _dense(g)
    n, c = g.shape[:2]
    cl = ref._is_channels_last(g)
    copies, _ = plan_runs(plan, stride, (n, c, *hw), cl)
    fmt = torch.channels_last if cl else torch.contiguous_format
    dx = torch.empty((n, c, *hw), dtype=g.dtype, device=g.device, memory_format=fmt).zero_()
    off = g.storage_offset()
    for r in copies:  # each copy run backwards: output view -> input view
        dx.as_strided(r.size, *r.src).copy_(g.as_strided(r.size, r.dst[0], r.dst[1] + off))
    return dx


# ----------------------------------------------------------------------------
# The backend's ops
# ----------------------------------------------------------------------------


def shift(x: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int = 1) -> torch.Tensor:
    """Integer shift (spec section 1): the C++ kernel where it builds, else `shift_runs`."""
    k = _kernel()
    if k is None:
        return shift_runs(x, plan, stride)
    return k.shift(x, _offsets(plan), stride)


def shift_transpose(g: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int,
                    hw: tuple[int, int]) -> torch.Tensor:
    """The adjoint of `shift` (its backward)."""
    k = _kernel()
    if k is None:
        return shift_transpose_runs(g, plan, stride, hw)
    if stride == 1:
        return k.shift(g, _offsets(plan, -1), 1)
    return k.shift_transpose(g, _offsets(plan), stride, hw[0], hw[1])


class _ShiftFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, plan, stride):
        ctx.plan, ctx.stride, ctx.hw = plan, stride, tuple(x.shape[-2:])
        return shift(x, plan, stride)

    @staticmethod
    def backward(ctx, g):
        return shift_transpose(g, ctx.plan, ctx.stride, ctx.hw), None, None


def shift_fn(x: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int = 1) -> torch.Tensor:
    """Differentiable integer shift (the `cpu` backend's `shift`)."""
    if torch.compiler.is_compiling():  # Inductor fuses the reference's slices; the kernel is opaque
        return ref.shift_fn(x, plan, stride)
    if torch.is_grad_enabled() and x.requires_grad:
        return _ShiftFn.apply(x, plan, stride)
    # Inference skips autograd.Function.apply: ~5 us a call, as much as a small shift.
    return shift(x, plan, stride)


def shift_conv1x1(x: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int,
                  weight: torch.Tensor) -> torch.Tensor:
    """`conv1x1(weight)(shift(x, plan, stride))`: the shift, then torch's 1x1 convolution."""
    return F.conv2d(shift_fn(x, plan, stride), weight)


class _GatherFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, offsets, stride):
        ctx.offsets, ctx.stride, ctx.hw = offsets, stride, tuple(x.shape[-2:])
        return shift_native(x, offsets, stride)

    @staticmethod
    def backward(ctx, g):
        return shift_transpose_native(g, ctx.offsets, ctx.stride, ctx.hw), None, None


def gather_shift(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """`reference.gather_shift` (any integer offset per channel), differentiable in `x`.

    The kernel takes per-channel offsets, so channels are not sorted into
    groups and put back (the reference's two extra copies of the tensor).
    """
    if _kernel() is None:
        return ref.gather_shift(x, oy, ox, stride)
    offsets = torch.stack([oy, ox], dim=1).to(device="cpu", dtype=torch.int64).contiguous()
    return _GatherFn.apply(x, offsets, stride)


class _SparseShiftFn(torch.autograd.Function):
    """`reference._SparseShiftFn` with the integer shift and its adjoint done by the kernel."""

    @staticmethod
    def forward(ctx, x, theta, stride):
        ctx.save_for_backward(x, theta)
        ctx.offsets, ctx.stride = torch.round(theta).long().contiguous(), stride
        return shift_native(x, ctx.offsets, stride)

    @staticmethod
    def backward(ctx, g):
        x, theta = ctx.saved_tensors
        dx = shift_transpose_native(g, ctx.offsets, ctx.stride, tuple(x.shape[-2:]))
        # A frozen shift (theta without grad) skips the bilinear reduction: most of the step.
        dtheta = (ref.active_shift_theta_grad(x, theta, g, ctx.stride)
                  if ctx.needs_input_grad[1] else None)
        return dx, dtheta, None


def sparse_shift(x: torch.Tensor, theta: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Sparse shift (spec section 3): forward by `round(theta)` in one pass, straight-through backward."""
    if _kernel() is None or torch.compiler.is_compiling():
        return ref.sparse_shift(x, theta, stride)
    return _SparseShiftFn.apply(x, theta, stride)


def supports(x: torch.Tensor) -> bool:
    """The backend runs on CPU tensors."""
    return x.device.type == "cpu"
