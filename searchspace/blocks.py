"""The block families of docs/spec.md section 4, the stems and the network around them.

Blocks take explicit channels, a middle width, a spatial-op factory, a stride
and where the stride is taken (timm-style); nothing here sees a genome, and
every `forward` is plain torch. This module imports only torch: `shiftnas
export` copies it verbatim into the exported `model.py`, so the exported
network *is* the builder's.

Blocks declare the module pairs that rewrites act on (`shiftnas.searchspace.rewrite`):

- `FOLDS`: (conv, bn) where the BN directly follows the convolution, so
  BatchNorm can be folded into it for inference;
- `fusable`: (spatial op, 1x1 conv) where the convolution reads the op's
  output directly, so a fixed shift and the convolution can run as one kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

OpFactory = Callable[[int, int], nn.Module]  # (channels, stride) -> a block's spatial op


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def avgpool2x2() -> nn.AvgPool2d:
    # ceil_mode keeps the spec's ceil(H / 2) on odd sizes, averaging only real pixels.
    return nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)


class Shortcut(nn.Module):
    """Projection shortcut: [avgpool 2x2] -> conv1x1 (stride s) -> [BN]."""

    FOLDS = (("conv", "bn"),)

    def __init__(self, c_in: int, c_out: int, stride: int, down: str, bn: bool = True):
        super().__init__()
        pooled = stride > 1 and down == "avgpool"
        self.pool = avgpool2x2() if pooled else nn.Identity()
        self.conv = conv1x1(c_in, c_out, 1 if pooled else stride)
        self.bn = nn.BatchNorm2d(c_out) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.pool(x)))


def projection(c_in: int, c_out: int, stride: int, down: str, bn: bool = True) -> Shortcut | None:
    """The projection a block needs when its shapes change (None: the identity shortcut)."""
    return Shortcut(c_in, c_out, stride, down, bn) if stride != 1 or c_in != c_out else None


class _ShiftBody(nn.Module):
    """conv1x1 -> BN -> ReLU -> SPATIAL [-> avgpool 2x2] -> conv1x1: the body csc and asl_preact share."""

    FOLDS = (("conv1", "bn1"),)

    def __init__(self, c_in: int, c_out: int, mid: int, op: OpFactory, stride: int, down: str):
        super().__init__()
        self.conv1, self.bn1, self.act1 = conv1x1(c_in, mid), nn.BatchNorm2d(mid), nn.ReLU()
        self.shift = op(mid, stride if down == "shift" else 1)
        self.pool = avgpool2x2() if stride > 1 and down == "avgpool" else nn.Identity()
        self.conv2 = conv1x1(mid, c_out, stride if down == "conv" else 1)
        self.fusable = (("shift", "conv2"),) if isinstance(self.pool, nn.Identity) else ()

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.pool(self.shift(self.act1(self.bn1(self.conv1(x))))))


class CscBlock(_ShiftBody):
    """ShiftResNet block (Wu et al.'s released code): the branch conv1x1 -> BN -> ReLU -> SHIFT ->
    conv1x1 -> BN -> ReLU is added to the shortcut, with no ReLU after the sum."""

    FOLDS = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, c_in: int, c_out: int, mid: int, op: OpFactory, stride: int = 1,
                 down: str = "conv"):
        super().__init__(c_in, c_out, mid, op, stride, down)
        self.bn2, self.act2 = nn.BatchNorm2d(c_out), nn.ReLU()
        self.shortcut = projection(c_in, c_out, stride, down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.act2(self.bn2(self.body(x)))
        return branch + (x if self.shortcut is None else self.shortcut(x))


class AslPreactBlock(_ShiftBody):
    """AS-ResNet pre-activation block: a = ReLU(BN(x)); conv1x1 -> BN -> ReLU -> SHIFT -> conv1x1;
    plus x, or a projection of a (no BN) when the shapes change."""

    def __init__(self, c_in: int, c_out: int, mid: int, op: OpFactory, stride: int = 1,
                 down: str = "shift"):
        super().__init__(c_in, c_out, mid, op, stride, down)
        self.bn0, self.act0 = nn.BatchNorm2d(c_in), nn.ReLU()
        self.shortcut = projection(c_in, c_out, stride, down, bn=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act0(self.bn0(x))
        return self.body(a) + (x if self.shortcut is None else self.shortcut(a))


class Bottleneck3Block(nn.Module):
    """Multi-shift residual block: three [SHIFT] + conv1x1 stages, an inner residual around the
    middle one; `single` placement keeps only the middle shift, `multi` all three."""

    FOLDS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, c_in: int, c_out: int, mid: int, op: OpFactory, placement: str = "single",
                 stride: int = 1, down: str = "avgpool"):
        super().__init__()
        multi = placement == "multi"
        self.shift0 = op(c_in, stride if down == "shift" else 1) if multi else nn.Identity()
        self.conv1 = conv1x1(c_in, mid, stride if down == "conv" else 1)
        self.bn1, self.act1 = nn.BatchNorm2d(mid), nn.ReLU()
        self.pool = avgpool2x2() if stride > 1 and down == "avgpool" else nn.Identity()
        self.shift = op(mid, 1)
        self.conv2, self.bn2, self.act2 = conv1x1(mid, mid), nn.BatchNorm2d(mid), nn.ReLU()
        self.shift2 = op(mid, 1) if multi else nn.Identity()
        self.conv3, self.bn3 = conv1x1(mid, c_out), nn.BatchNorm2d(c_out)
        self.shortcut = projection(c_in, c_out, stride, down)
        self.act3 = nn.ReLU()
        self.fusable = (("shift0", "conv1"), ("shift", "conv2"), ("shift2", "conv3"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.pool(self.act1(self.bn1(self.conv1(self.shift0(x)))))
        y = self.act2(self.bn2(self.conv2(self.shift(r))) + r)
        y = self.bn3(self.conv3(self.shift2(y)))
        return self.act3(y + (x if self.shortcut is None else self.shortcut(x)))


class BasicBlock(nn.Module):
    """ResNet basic block (the baseline): conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + shortcut, ReLU.

    With `mult` R >= 1 each 3x3 convolution is separable (docs/spec.md section 7): its
    input repeated R times (channel t*C + i is copy t of channel i), the spatial op
    `shift{1,2}` over the R*C copies (taking the stride), then the 1x1 `conv{1,2}`.
    """

    FOLDS = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, c_in: int, c_out: int, stride: int = 1, down: str = "conv",
                 op: OpFactory | None = None, mult: int = 0):
        super().__init__()
        self.mult = mult
        if mult:
            self.shift1, self.conv1 = op(mult * c_in, stride), conv1x1(mult * c_in, c_out)
            self.shift2, self.conv2 = op(mult * c_out, 1), conv1x1(mult * c_out, c_out)
            self.fusable = (("shift1", "conv1"), ("shift2", "conv2"))
        else:
            self.shift1, self.shift2 = nn.Identity(), nn.Identity()
            self.conv1, self.conv2 = conv3x3(c_in, c_out, stride), conv3x3(c_out, c_out)
        self.bn1, self.act1 = nn.BatchNorm2d(c_out), nn.ReLU()
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = projection(c_in, c_out, stride, down)
        self.act2 = nn.ReLU()

    def copies(self, x: torch.Tensor) -> torch.Tensor:
        """`mult` copies of `x` along the channels, copy-major (the spatial op's input)."""
        return x.repeat(1, self.mult, 1, 1) if self.mult > 1 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(self.shift1(self.copies(x)))))
        y = self.bn2(self.conv2(self.shift2(self.copies(y))))
        return self.act2(y + (x if self.shortcut is None else self.shortcut(x)))


# Block family (the genome's `family`) -> its class.
BLOCKS: dict[str, type[nn.Module]] = {
    "csc": CscBlock,
    "asl_preact": AslPreactBlock,
    "bottleneck3": Bottleneck3Block,
    "basic": BasicBlock,
}


class Stem(nn.Sequential):
    """The layers before the first stage, by name:

    conv3x3: conv3x3 -> BN -> ReLU; conv3x3_nobn: conv3x3; conv3x3s2_nobn: conv3x3 stride 2;
    conv7x7s2_maxpool: conv7x7 stride 2 -> BN -> ReLU -> maxpool 3x3 stride 2.
    """

    FOLDS = (("0", "1"),)

    def __init__(self, in_chans: int, width: int, kind: str = "conv3x3"):
        if kind == "conv3x3":
            layers = [conv3x3(in_chans, width), nn.BatchNorm2d(width), nn.ReLU()]
        elif kind == "conv3x3_nobn":
            layers = [conv3x3(in_chans, width)]
        elif kind == "conv3x3s2_nobn":
            layers = [conv3x3(in_chans, width, 2)]
        elif kind == "conv7x7s2_maxpool":
            layers = [nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False),
                      nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)]
        else:
            raise ValueError(f"unknown stem {kind!r}")
        super().__init__(*layers)


class ShiftNet(nn.Module):
    """Stem, stages of blocks, [BN -> ReLU for pre-activation networks], global pool, Linear."""

    def __init__(self, stem: nn.Module, stages: list[list[nn.Module]], width: int, classes: int,
                 preact_head: bool = False):
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*[nn.Sequential(*blocks) for blocks in stages])
        self.head_norm = nn.BatchNorm2d(width) if preact_head else nn.Identity()
        self.head_act = nn.ReLU() if preact_head else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_act(self.head_norm(self.stages(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.forward_features(x)), 1))
