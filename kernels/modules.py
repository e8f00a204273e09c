"""`nn.Module`s of the shift ops that run on the fastest backend (`kernels.dispatch`).

They take the same arguments and hold the same parameters as the portable
modules of `kernels.portable` (which the exported code uses), so state dicts
move between the two. `ShiftConv1x1` is a fixed shift and the 1x1 convolution
that reads it, run as one fused kernel where a backend has one: the builder
puts it in place of such pairs (`searchspace.rewrite.fuse_shift_conv`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import dispatch, portable
from .reference import shift_plan


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


class ActiveShift(portable.LearnedShift):
    """Active Shift Layer: learned real-valued per-channel offsets, bilinear (spec 2)."""

    def __init__(self, channels: int, stride: int = 1, init: str = "grid", nbhd: str = "8c",
                 backend: str | None = None):
        super().__init__(channels, stride, init, nbhd)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.active_shift(x, self.theta, self.stride, backend=self.backend)


class SparseShift(portable.LearnedShift):
    """Sparse Shift Layer: learned offsets, rounded in the forward pass (spec 3)."""

    def __init__(self, channels: int, stride: int = 1, init: str = "grid", nbhd: str = "8c",
                 backend: str | None = None):
        super().__init__(channels, stride, init, nbhd)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.sparse_shift(x, self.theta, self.stride, backend=self.backend)

    def l1(self) -> torch.Tensor:
        """`sum |alpha| + |beta|`: the penalty that pushes shifts to zero."""
        return self.theta.abs().sum()


class ShiftConv1x1(nn.Conv2d):
    """`conv1x1(shift(x))` for a fixed shift, as one op (the fused kernel where there is one).

    A 1x1 convolution (it *is* an `nn.Conv2d`, so hooks, proxies and BN folding
    see its weight) that reads its input through `shift`. A stride-s convolution
    after a stride-1 shift equals a stride-1 convolution after a stride-s shift,
    so the two strides combine. The state dict is the convolution's: fusing
    changes how a network runs, never its parameters.
    """

    def __init__(self, shift: Shift, conv: nn.Conv2d):
        if conv.kernel_size != (1, 1) or conv.groups != 1 or conv.padding != (0, 0) \
                or conv.stride[0] != conv.stride[1]:
            raise ValueError(f"ShiftConv1x1 fuses a plain 1x1 convolution, got {conv}.")
        super().__init__(conv.in_channels, conv.out_channels, 1, stride=conv.stride,
                         bias=conv.bias is not None, device=conv.weight.device,
                         dtype=conv.weight.dtype)
        self.weight, self.bias = conv.weight, conv.bias
        self.shift = shift
        self.plan, self.total_stride = shift.plan, shift.stride * conv.stride[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = dispatch.get_backend(x, self.shift.backend)
        if not b.fused_conv1x1:  # the shift, then torch's conv with its bias (no separate add)
            return F.conv2d(self.shift(x), self.weight, self.bias, self.stride)
        if self.bias is not None and b.shift_conv1x1_block is not None and not torch.is_grad_enabled():
            # inference with a folded BN: the bias in the kernel's epilogue, not a second pass
            return b.shift_conv1x1_block(x, self.plan, self.total_stride, self.weight, in_bias=None,
                                         bias=self.bias, relu=False, residual=None)
        y = b.shift_conv1x1(x, self.plan, self.total_stride, self.weight)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1).to(y.dtype)


class CscInference(nn.Module):
    """A csc block with BN folded, run as cuDNN's first 1x1 and one fused kernel (inference).

    `branch = relu(conv2(shift(relu(conv1(x) + b1))) + b2)`, `out = branch + shortcut(x)`:
    the first 1x1 runs without its bias; the fused kernel adds it and the ReLU
    as it loads the shifted tile, then the second 1x1's bias, the ReLU and the
    shortcut in its epilogue. The block's own modules (and state dict) are kept:
    where the backend has no fused block op, or autograd is on, it runs them.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        if not self.eligible(block):
            raise ValueError(f"CscInference needs a csc block with BN folded and its shift fused "
                             f"into conv2 (fold_bn, fuse_shift_conv), got {type(block).__name__}.")
        self.block = block

    @staticmethod
    def eligible(block: nn.Module) -> bool:
        """A folded csc block: conv1 -> ReLU -> ShiftConv1x1 -> ReLU (+ shortcut)."""
        names = ("conv1", "bn1", "act1", "shift", "pool", "conv2", "bn2", "act2", "shortcut")
        if not all(hasattr(block, n) for n in names):
            return False
        return (type(block.conv1) is nn.Conv2d and block.conv1.kernel_size == (1, 1)
                and block.conv1.stride == (1, 1) and block.conv1.groups == 1
                and isinstance(block.bn1, nn.Identity) and isinstance(block.bn2, nn.Identity)
                and isinstance(block.act1, nn.ReLU) and isinstance(block.act2, nn.ReLU)
                and isinstance(block.shift, nn.Identity) and isinstance(block.pool, nn.Identity)
                and isinstance(block.conv2, ShiftConv1x1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blk = self.block
        conv1, conv2 = blk.conv1, blk.conv2
        b = dispatch.get_backend(x, conv2.shift.backend)
        if b.shift_conv1x1_block is None or torch.is_grad_enabled():
            return blk(x)
        h = F.conv2d(x, conv1.weight)  # its bias goes in with the ReLU, as the shifted tile loads
        res = x if blk.shortcut is None else blk.shortcut(x)
        return b.shift_conv1x1_block(h, conv2.plan, conv2.total_stride, conv2.weight,
                                     in_bias=conv1.bias, bias=conv2.bias, relu=True, residual=res)


def spatial(kind: str, nbhd: str = "8c", init: str = "grid") -> Callable[[int, int], nn.Module]:
    """A block's spatial-op factory that builds the dispatching shift modules above."""
    return portable.spatial(kind, nbhd, init, shifts=(Shift, ActiveShift, SparseShift))


def shift_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learned-shift parameters of `model` (they get their own optimizer group)."""
    return [m.theta for m in model.modules() if isinstance(m, portable.LearnedShift)]


def active_shift_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The offsets of the active (bilinear) shifts only: the ones gradient normalisation scales."""
    return [m.theta for m in model.modules() if isinstance(m, (ActiveShift, portable.ActiveShift))]


def sparse_l1(model: nn.Module) -> torch.Tensor | float:
    """Sum of the L1 penalties of every sparse shift in `model` (0.0 when there are none)."""
    terms = [m.l1() for m in model.modules() if isinstance(m, (SparseShift, portable.SparseShift))]
    return torch.stack(terms).sum() if terms else 0.0


__all__ = ["Shift", "ActiveShift", "SparseShift", "ShiftConv1x1", "CscInference", "spatial",
           "shift_parameters", "active_shift_parameters", "sparse_l1"]
