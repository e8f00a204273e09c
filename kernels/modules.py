"""`nn.Module` wrappers of the shift ops, used by the builder and the exporter."""

from __future__ import annotations

import torch
from torch import nn

from . import dispatch
from .reference import NEIGHBOURHOODS, channel_offsets, shift_plan


class Shift(nn.Module):
    """Fixed integer shift over a neighbourhood with contiguous channel groups (spec 1)."""

    def __init__(self, channels: int, nbhd: str = "8c", stride: int = 1, dilation: int = 1,
                 backend: str | None = None):
        super().__init__()
        self.channels, self.nbhd, self.stride, self.dilation = channels, nbhd, stride, dilation
        self.plan = shift_plan(channels, nbhd, dilation)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.shift(x, self.plan, self.stride, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.channels}, nbhd={self.nbhd}, stride={self.stride}, dilation={self.dilation}"


class _LearnedShift(nn.Module):
    def __init__(self, channels: int, stride: int = 1, init: str = "grid", nbhd: str = "8c",
                 backend: str | None = None):
        super().__init__()
        self.channels, self.stride, self.init, self.nbhd = channels, stride, init, nbhd
        self.backend = backend
        # theta[c] = (alpha_c, beta_c): vertical and horizontal offsets of channel c.
        self.theta = nn.Parameter(torch.empty(channels, 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init == "uniform":
                self.theta.uniform_(-1.0, 1.0)
            else:
                self.theta.copy_(channel_offsets(shift_plan(self.channels, self.nbhd)))

    def extra_repr(self) -> str:
        return f"{self.channels}, stride={self.stride}, init={self.init}, nbhd={self.nbhd}"


class ActiveShift(_LearnedShift):
    """Active Shift Layer: learned real-valued per-channel offsets, bilinear (spec 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.active_shift(x, self.theta, self.stride, backend=self.backend)


class SparseShift(_LearnedShift):
    """Sparse Shift Layer: learned offsets, rounded in the forward pass (spec 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.sparse_shift(x, self.theta, self.stride, backend=self.backend)

    def l1(self) -> torch.Tensor:
        """`sum |alpha| + |beta|`: the penalty that pushes shifts to zero."""
        return self.theta.abs().sum()


def shift_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learned-shift parameters of `model` (they get their own optimizer group)."""
    return [m.theta for m in model.modules() if isinstance(m, _LearnedShift)]


def sparse_l1(model: nn.Module) -> torch.Tensor | float:
    """Sum of the L1 penalties of every sparse shift in `model` (0.0 when there are none)."""
    terms = [m.l1() for m in model.modules() if isinstance(m, SparseShift)]
    return torch.stack(terms).sum() if terms else 0.0


def shift_then_conv(shift: nn.Module, conv: nn.Conv2d, x: torch.Tensor, fuse: bool) -> torch.Tensor:
    """`conv(shift(x))`, through the fused shift+1x1 kernel when allowed.

    Fusion applies to a fixed `Shift` followed by a bias-free 1x1 convolution
    when a fast backend serves `x`; the strides combine (see
    `reference.shift_conv1x1`). On the reference backend the two modules run
    as modules, so module hooks see the convolution. State dicts never change:
    fusion is only how the two modules run.
    """
    if (fuse and isinstance(shift, Shift) and conv.kernel_size == (1, 1) and conv.bias is None
            and conv.groups == 1 and conv.padding == (0, 0)
            and dispatch.get_backend(x, shift.backend).name != "reference"):
        if conv.stride[0] != conv.stride[1]:
            return conv(shift(x))
        stride = shift.stride * conv.stride[0]
        return dispatch.shift_conv1x1(x, shift.plan, stride, conv.weight, backend=shift.backend)
    return conv(shift(x))


__all__ = ["Shift", "ActiveShift", "SparseShift", "shift_parameters", "sparse_l1",
           "shift_then_conv", "NEIGHBOURHOODS"]
