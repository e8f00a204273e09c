"""Pure-torch shift operations, exactly as docs/spec.md defines them.

These are the reference that every faster kernel is tested against, and the
path used on the CPU. The integer shift is a handful of slice copies into a
preallocated output (one read and one write of every element), not
`torch.roll` + masks + `cat`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .portable import OFFSETS


@dataclass(frozen=True)
class Neighbourhood:
    """A shift neighbourhood: non-centre offsets in spec order, plus the centre group."""

    name: str
    offsets: tuple[tuple[int, int], ...]  # non-centre (dy, dx), in the spec's order

    @property
    def groups(self) -> int:
        return len(self.offsets) + 1


NEIGHBOURHOODS: dict[str, Neighbourhood] = {
    name: Neighbourhood(name, tuple(offsets)) for name, offsets in OFFSETS.items()
}


class ShiftGroup(NamedTuple):
    """Channels `[c0, c1)` all shifted by `(dy, dx)`."""

    c0: int
    c1: int
    dy: int
    dx: int


def shift_plan(channels: int, nbhd: str, dilation: int = 1) -> tuple[ShiftGroup, ...]:
    """Contiguous channel groups of the spec (section 1), centre group last.

    With `m = channels // G`, non-centre group g takes `[g*m, (g+1)*m)`; the
    centre group takes the rest. Raises `ValueError` when `m == 0`.
    """
    nb = NEIGHBOURHOODS[nbhd]
    m = channels // nb.groups
    if m == 0:
        raise ValueError(
            f"a {nbhd} shift needs at least {nb.groups} channels (one per group), got {channels}."
        )
    plan = [ShiftGroup(g * m, (g + 1) * m, dy * dilation, dx * dilation)
            for g, (dy, dx) in enumerate(nb.offsets)]
    plan.append(ShiftGroup(len(nb.offsets) * m, channels, 0, 0))
    return tuple(plan)


def channel_offsets(plan: tuple[ShiftGroup, ...]) -> torch.Tensor:
    """Per-channel `(dy, dx)` of a plan as a `(C, 2)` int64 tensor."""
    out = torch.zeros(plan[-1].c1, 2, dtype=torch.int64)
    for g in plan:
        out[g.c0:g.c1, 0], out[g.c0:g.c1, 1] = g.dy, g.dx
    return out


def out_hw(h: int, w: int, stride: int) -> tuple[int, int]:
    return -(-h // stride), -(-w // stride)


def _span(n_in: int, n_out: int, off: int, s: int) -> tuple[int, int]:
    """Output range `[lo, hi)` whose source `i*s + off` lies inside `[0, n_in)`."""
    lo = max(0, -(off // s))
    hi = min(n_out, max(lo, (n_in - 1 - off) // s + 1))
    return lo, hi


def shift(x: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int = 1) -> torch.Tensor:
    """Integer shift, zero padding, `y[n,c,i,j] = x[n,c,i*s+dy_c, j*s+dx_c]` (spec section 1).

    One slice copy per group into an uninitialised output; only the border
    strips that no source covers are zeroed. Keeps channels-last layout.
    """
    n, c, h, w = x.shape
    ho, wo = out_hw(h, w, stride)
    fmt = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
    y = torch.empty((n, c, ho, wo), dtype=x.dtype, device=x.device, memory_format=fmt)
    for g in plan:
        r0, r1 = _span(h, ho, g.dy, stride)
        q0, q1 = _span(w, wo, g.dx, stride)
        yg = y[:, g.c0:g.c1]
        if r1 <= r0 or q1 <= q0:
            yg.zero_()
            continue
        yg[:, :, r0:r1, q0:q1] = x[:, g.c0:g.c1,
                                   r0 * stride + g.dy:(r1 - 1) * stride + g.dy + 1:stride,
                                   q0 * stride + g.dx:(q1 - 1) * stride + g.dx + 1:stride]
        # Zero only the border strips that exist: each call costs microseconds on small maps.
        if r0 > 0:
            yg[:, :, :r0].zero_()
        if r1 < ho:
            yg[:, :, r1:].zero_()
        if q0 > 0:
            yg[:, :, r0:r1, :q0].zero_()
        if q1 < wo:
            yg[:, :, r0:r1, q1:].zero_()
    return y


def shift_transpose(
    g: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int, hw: tuple[int, int]
) -> torch.Tensor:
    """The adjoint of `shift` (its backward): scatter `g` back to the input grid `hw`."""
    if stride == 1:
        return shift(g, tuple(p._replace(dy=-p.dy, dx=-p.dx) for p in plan), 1)
    h, w = hw
    n, c, ho, wo = g.shape
    fmt = torch.channels_last if _is_channels_last(g) else torch.contiguous_format
    dx = torch.empty((n, c, h, w), dtype=g.dtype, device=g.device, memory_format=fmt).zero_()
    for p in plan:
        r0, r1 = _span(h, ho, p.dy, stride)
        q0, q1 = _span(w, wo, p.dx, stride)
        if r1 > r0 and q1 > q0:
            dx[:, p.c0:p.c1,
               r0 * stride + p.dy:(r1 - 1) * stride + p.dy + 1:stride,
               q0 * stride + p.dx:(q1 - 1) * stride + p.dx + 1:stride] = g[:, p.c0:p.c1, r0:r1, q0:q1]
    return dx


class _ShiftFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, plan, stride):
        ctx.plan, ctx.stride, ctx.hw = plan, stride, x.shape[-2:]
        return shift(x, plan, stride)

    @staticmethod
    def backward(ctx, g):
        return shift_transpose(g, ctx.plan, ctx.stride, ctx.hw), None, None


def shift_fn(x: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int = 1) -> torch.Tensor:
    """Differentiable integer shift (reference backend)."""
    return _ShiftFn.apply(x, plan, stride)


def shift_conv1x1(
    x: torch.Tensor, plan: tuple[ShiftGroup, ...], stride: int, weight: torch.Tensor
) -> torch.Tensor:
    """`conv1x1(weight)` applied to `shift(x, plan, stride)`; the fused kernels' reference.

    A stride-s 1x1 convolution after a stride-1 shift equals a stride-1 1x1
    convolution after a stride-s shift, so one stride covers both.
    """
    return F.conv2d(shift_fn(x, plan, stride), weight)


# ----------------------------------------------------------------------------
# Per-channel integer offsets (sparse shift) and bilinear (active) shift
# ----------------------------------------------------------------------------


def gather_shift(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Integer shift with an arbitrary offset per channel (`oy`, `ox`: int64 `(C,)`), zero padded.

    Channels are sorted by offset so that equal offsets form contiguous groups,
    shifted by `shift_fn`'s slice copies, and put back in order: three copies
    of the tensor, a few ops per distinct offset, and autograd for free.
    """
    c = x.shape[1]
    keys = list(zip(oy.tolist(), ox.tolist()))
    order = sorted(range(c), key=keys.__getitem__)
    plan, start = [], 0
    for i in range(1, c + 1):
        if i == c or keys[order[i]] != keys[order[start]]:
            plan.append(ShiftGroup(start, i, *keys[order[start]]))
            start = i
    if order == list(range(c)):
        return shift_fn(x, tuple(plan), stride)
    idx = torch.tensor(order, device=x.device)
    inverse = torch.empty_like(idx)
    inverse[idx] = torch.arange(c, device=x.device)
    return shift_fn(x.index_select(1, idx), tuple(plan), stride).index_select(1, inverse)


def _bilinear_taps(x: torch.Tensor, theta: torch.Tensor, stride: int):
    """The four taps X(a,b), X(a,b+1), X(a+1,b), X(a+1,b+1) and the fractions u, v."""
    a = torch.floor(theta[:, 0]).detach()
    b = torch.floor(theta[:, 1]).detach()
    u = (theta[:, 0] - a).to(x.dtype)[None, :, None, None]
    v = (theta[:, 1] - b).to(x.dtype)[None, :, None, None]
    a, b = a.long(), b.long()
    taps = [gather_shift(x, a + di, b + dj, stride) for di in (0, 1) for dj in (0, 1)]
    return taps, u, v


def active_shift(x: torch.Tensor, theta: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Active (bilinear) shift, spec section 2; `theta[c] = (alpha_c, beta_c)`.

    Plain torch ops, so autograd yields exactly the spec's gradients (the
    derivative of u = alpha - floor(alpha) is 1).
    """
    (x00, x01, x10, x11), u, v = _bilinear_taps(x, theta, stride)
    return (1 - u) * (1 - v) * x00 + (1 - u) * v * x01 + u * (1 - v) * x10 + u * v * x11


def active_shift_theta_grad(x: torch.Tensor, theta: torch.Tensor, g: torch.Tensor, stride: int) -> torch.Tensor:
    """`dL/dtheta` of the active shift (spec section 2) as a `(C, 2)` tensor."""
    (x00, x01, x10, x11), u, v = _bilinear_taps(x, theta, stride)
    # Reduce over N*H*W in fp32 at least: fp16 sums of that length lose digits or overflow.
    acc = torch.promote_types(x.dtype, torch.float32)
    da = (g * ((1 - v) * (x10 - x00) + v * (x11 - x01))).sum(dim=(0, 2, 3), dtype=acc)
    db = (g * ((1 - u) * (x01 - x00) + u * (x11 - x10))).sum(dim=(0, 2, 3), dtype=acc)
    return torch.stack([da, db], dim=1).to(theta.dtype)


class _SparseShiftFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, theta, stride):
        ctx.save_for_backward(x, theta)
        ctx.stride = stride
        r = torch.round(theta).long()
        return gather_shift(x, r[:, 0], r[:, 1], stride)

    @staticmethod
    def backward(ctx, g):
        x, theta = ctx.saved_tensors
        r = torch.round(theta).long()
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            (dx,) = torch.autograd.grad(gather_shift(xd, r[:, 0], r[:, 1], ctx.stride), xd, g)
        dtheta = active_shift_theta_grad(x, theta, g, ctx.stride) if ctx.needs_input_grad[1] else None
        return dx, dtheta, None


def sparse_shift(x: torch.Tensor, theta: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Sparse (quantised) shift, spec section 3.

    Forward: the integer shift by `round(theta)` (half to even). Backward: `dx`
    is the exact adjoint of that integer shift; `dtheta` is the active shift's
    gradient at the real-valued position (straight-through).
    """
    return _SparseShiftFn.apply(x, theta, stride)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
