"""Shift ops in plain torch that export to a handful of standard ONNX operators.

This module imports only torch: `shiftnas export` copies it verbatim into the
exported `model.py`, and the builder's dispatching shift modules
(`shiftnas.kernels.modules`) share its parameters and initialisation. Every op
follows docs/spec.md:

- fixed shift: zero pad once, one strided slice per contiguous channel group,
  concat (ONNX: Pad, Slice, Concat);
- active shift: the bilinear map of spec section 2 as two per-channel sampling
  matrices, ``y = M_rows @ x @ M_cols^T`` (ONNX: Floor, Equal, MatMul);
- sparse shift: the integer shift by ``round(theta)`` (half to even, like
  ``torch.round`` and ONNX ``Round``) as one gather (ONNX: GatherElements), with
  a straight-through backward in training (the active shift's matrices).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# Non-centre offsets (dy, dx) of each neighbourhood, in the spec's order (section 1).
OFFSETS: dict[str, list[tuple[int, int]]] = {
    "4c": [(-1, 0), (0, -1), (0, 1), (1, 0)],
    "8c": [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)],
    "5x5": [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy, dx) != (0, 0)],
}

def shift_plan(channels: int, nbhd: str) -> list[tuple[int, int, int, int]]:
    """Contiguous channel groups `(c0, c1, dy, dx)`: with m = C // G, non-centre group g
    takes channels [g*m, (g+1)*m) in the neighbourhood's order; the centre group the rest."""
    offsets = OFFSETS[nbhd]
    m = channels // (len(offsets) + 1)
    if m == 0:
        raise ValueError(f"a {nbhd} shift needs at least {len(offsets) + 1} channels, got {channels}")
    plan = [(g * m, (g + 1) * m, dy, dx) for g, (dy, dx) in enumerate(offsets)]
    return plan + [(len(offsets) * m, channels, 0, 0)]


class Shift(nn.Module):
    """Fixed integer shift (spec 1): y[n,c,i,j] = x[n,c,i*s+dy_c, j*s+dx_c], zero outside.

    Zero pad by the largest offset, then one strided slice per channel group and a
    concat: plain Pad/Slice/Concat in ONNX. No parameters.
    """

    def __init__(self, channels: int, nbhd: str = "8c", stride: int = 1):
        super().__init__()
        self.channels, self.nbhd, self.stride = channels, nbhd, stride
        self.groups = shift_plan(channels, nbhd)
        self.pad = max(max(abs(dy), abs(dx)) for _, _, dy, dx in self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, s = self.pad, self.stride
        h, w = x.shape[-2:]
        xp = F.pad(x, (p, p, p, p))
        # Rows p+dy, p+dy+s, ... (ceil(h / s) of them) are the sources i*s + dy.
        return torch.cat(
            [xp[:, c0:c1, p + dy:p + dy + h:s, p + dx:p + dx + w:s] for c0, c1, dy, dx in self.groups],
            dim=1,
        )

    def extra_repr(self) -> str:
        return f"{self.channels}, nbhd={self.nbhd}, stride={self.stride}"


def sampling_matrix(offset: torch.Tensor, n_in: int, n_out: int, stride: int) -> torch.Tensor:
    """Per-channel bilinear sampling weights `(C, n_out, n_in)` along one axis.

    Output index i reads the real position p = i*stride + offset_c: weight 1-u at
    floor(p) and u at floor(p)+1 (u = p - floor(p)); taps outside [0, n_in) are
    simply absent, which is the spec's zero padding. u's derivative is 1, so
    autograd gives spec section 2's gradients.
    """
    a = torch.floor(offset).detach()
    u = (offset - a)[:, None, None]
    src = torch.arange(n_out, device=offset.device, dtype=offset.dtype) * stride
    pos = (a[:, None] + src[None, :])[:, :, None]  # (C, n_out, 1), integers
    grid = torch.arange(n_in, device=offset.device, dtype=offset.dtype)[None, None, :]
    return (1 - u) * (grid == pos).to(offset.dtype) + u * (grid == pos + 1).to(offset.dtype)


def bilinear_shift(x: torch.Tensor, theta: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Active shift (spec 2), theta[c] = (alpha_c, beta_c): y = M_rows @ x @ M_cols^T."""
    h, w = x.shape[-2:]
    ho, wo = (h + stride - 1) // stride, (w + stride - 1) // stride
    rows = sampling_matrix(theta[:, 0], h, ho, stride).to(x.dtype)  # (C, Ho, H)
    cols = sampling_matrix(theta[:, 1], w, wo, stride).to(x.dtype)  # (C, Wo, W)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(1, 2))


def integer_shift(x: torch.Tensor, offsets: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Spec section 1 with an arbitrary integer offset per channel (`offsets`: `(C, 2)`,
    vertical then horizontal): one gather of each output's source, zero outside.

    Offsets are data (a sparse shift's rounded theta), not a plan: the indices come
    from them by arithmetic, so the graph (ONNX: GatherElements and a mask) does not
    depend on their values, and ONNX Runtime folds it once for constant offsets.
    """
    n, c, h, w = x.shape
    ho, wo = (h + stride - 1) // stride, (w + stride - 1) // stride
    off = offsets.to(torch.int64)
    rows = torch.arange(ho, device=x.device)[None, :] * stride + off[:, :1]  # (C, Ho)
    cols = torch.arange(wo, device=x.device)[None, :] * stride + off[:, 1:]  # (C, Wo)
    inside = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :])
    src = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]  # (C, Ho, Wo)
    y = torch.gather(x.reshape(n, c, h * w), 2, src.reshape(1, c, ho * wo).expand(n, -1, -1))
    return y.reshape(n, c, ho, wo) * inside.to(x.dtype)


class LearnedShift(nn.Module):
    """Per-channel learned offsets theta[c] = (alpha_c, beta_c): vertical, then horizontal.

    `init="grid"` starts every channel at its neighbourhood group's offset (the
    fixed shift's), `init="uniform"` at uniform(-1, 1) as in the ASL paper.
    """

    def __init__(self, channels: int, stride: int = 1, init: str = "grid", nbhd: str = "8c"):
        super().__init__()
        self.channels, self.stride, self.init, self.nbhd = channels, stride, init, nbhd
        self.theta = nn.Parameter(torch.empty(channels, 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init == "uniform":
                self.theta.uniform_(-1.0, 1.0)
            else:
                for c0, c1, dy, dx in shift_plan(self.channels, self.nbhd):
                    self.theta[c0:c1, 0], self.theta[c0:c1, 1] = float(dy), float(dx)

    def extra_repr(self) -> str:
        return f"{self.channels}, stride={self.stride}, init={self.init}, nbhd={self.nbhd}"


class ActiveShift(LearnedShift):
    """Active Shift Layer (spec 2): learned real-valued offsets, bilinear interpolation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bilinear_shift(x, self.theta, self.stride)


class SparseShift(LearnedShift):
    """Sparse Shift Layer (spec 3): integer shift by round(theta) (half to even).

    In training the backward is straight-through: dx is the adjoint of the rounded
    shift, dtheta the active shift's gradient at the real-valued theta.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = integer_shift(x, torch.round(self.theta), self.stride)
        if self.training and self.theta.requires_grad:
            real = bilinear_shift(x.detach(), self.theta, self.stride)
            y = y + (real - real.detach())  # adds exactly 0; carries dtheta
        return y

    def l1(self) -> torch.Tensor:
        """`sum |alpha| + |beta|`: the penalty that pushes shifts to zero."""
        return self.theta.abs().sum()


def spatial(kind: str, nbhd: str = "8c", init: str = "grid",
            shifts: tuple[type, type, type] = (Shift, ActiveShift, SparseShift),
            ) -> Callable[[int, int], nn.Module]:
    """The factory of a block's spatial op: a shift, or a 3x3 convolution baseline.

    `shifts` are the (fixed, active, sparse) classes to build; the builder passes
    its dispatching ones, which take the same arguments.
    """
    fixed, active, sparse = shifts

    def make(channels: int, stride: int) -> nn.Module:
        if kind == "fixed":
            return fixed(channels, nbhd, stride)
        if kind == "active":
            return active(channels, stride, init, nbhd)
        if kind == "sparse":
            return sparse(channels, stride, init, nbhd)
        if kind in ("dwconv3x3", "conv3x3"):
            groups = channels if kind == "dwconv3x3" else 1
            return nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=groups,
                             bias=False)
        raise ValueError(f"unknown spatial op {kind!r}")

    return make
