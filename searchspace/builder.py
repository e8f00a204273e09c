"""The builder: a genome (`NetCfg`) becomes a `torch.nn.Module`.

One class per block family of SHIFT_SPEC.md section 4. Blocks take layer
classes (`norm_layer`, `act_layer`) and use module activations so that hooks
(zero-cost proxies, activation statistics) see every ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

from shiftnas.kernels import ActiveShift, Shift, SparseShift, shift_then_conv

from .genome import BlockCfg, NetCfg, mid_width, validate


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


def conv3x3(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, groups=groups, bias=False)


def avgpool2x2() -> nn.AvgPool2d:
    # ceil_mode keeps the spec's ceil(H / 2) on odd sizes, averaging only real pixels.
    return nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)


def make_spatial(b: BlockCfg, channels: int, stride: int = 1) -> nn.Module:
    """The block's spatial op on `channels` channels: a shift or a 3x3 baseline."""
    if b.kind == "fixed":
        return Shift(channels, b.nbhd, stride)
    if b.kind == "active":
        return ActiveShift(channels, stride, b.init, b.nbhd)
    if b.kind == "sparse":
        return SparseShift(channels, stride, b.init, b.nbhd)
    if b.kind == "dwconv3x3":
        return conv3x3(channels, channels, stride, groups=channels)
    return conv3x3(channels, channels, stride)


class Shortcut(nn.Module):
    """Projection shortcut: `[avgpool 2x2] -> conv1x1 (stride s) -> [BN]`."""

    def __init__(self, c_in: int, c_out: int, stride: int, down: str, norm_layer=None):
        super().__init__()
        pooled = stride > 1 and down == "avgpool"
        self.pool = avgpool2x2() if pooled else nn.Identity()
        self.conv = conv1x1(c_in, c_out, 1 if pooled else stride)
        self.bn = norm_layer(c_out) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.pool(x)))


def _needs_projection(c_in: int, c_out: int, stride: int) -> bool:
    return stride != 1 or c_in != c_out


class CscBlock(nn.Module):
    """ShiftResNet block: conv1x1 -> BN -> ReLU -> SHIFT -> conv1x1 -> BN (+ shortcut) -> ReLU."""

    def __init__(self, b: BlockCfg, c_in: int, c_out: int, norm_layer=nn.BatchNorm2d,
                 act_layer=nn.ReLU, fuse: bool = True):
        super().__init__()
        m, s = mid_width(b.e, c_out), b.stride
        self.fuse = fuse
        self.conv1, self.bn1, self.act1 = conv1x1(c_in, m), norm_layer(m), act_layer()
        self.shift = make_spatial(b, m, s if b.down == "shift" else 1)
        self.pool = avgpool2x2() if s > 1 and b.down == "avgpool" else nn.Identity()
        self.conv2 = conv1x1(m, c_out, s if b.down == "conv" else 1)
        self.bn2 = norm_layer(c_out)
        self.shortcut = (Shortcut(c_in, c_out, s, b.down, norm_layer)
                         if _needs_projection(c_in, c_out, s) else nn.Identity())
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        if isinstance(self.pool, nn.Identity):
            y = shift_then_conv(self.shift, self.conv2, y, self.fuse)
        else:
            y = self.conv2(self.pool(self.shift(y)))
        return self.act2(self.bn2(y) + self.shortcut(x))


class AslPreactBlock(nn.Module):
    """AS-ResNet pre-activation block: a = ReLU(BN(x)); conv1x1 -> BN -> ReLU -> SHIFT -> conv1x1; + shortcut."""

    def __init__(self, b: BlockCfg, c_in: int, c_out: int, norm_layer=nn.BatchNorm2d,
                 act_layer=nn.ReLU, fuse: bool = True):
        super().__init__()
        m, s = mid_width(b.e, c_out), b.stride
        self.fuse = fuse
        self.bn0, self.act0 = norm_layer(c_in), act_layer()
        self.conv1, self.bn1, self.act1 = conv1x1(c_in, m), norm_layer(m), act_layer()
        self.shift = make_spatial(b, m, s if b.down == "shift" else 1)
        self.pool = avgpool2x2() if s > 1 and b.down == "avgpool" else nn.Identity()
        self.conv2 = conv1x1(m, c_out, s if b.down == "conv" else 1)
        # The projection reads the pre-activated input and has no BN (spec).
        self.shortcut = (Shortcut(c_in, c_out, s, b.down, None)
                         if _needs_projection(c_in, c_out, s) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act0(self.bn0(x))
        y = self.act1(self.bn1(self.conv1(a)))
        if isinstance(self.pool, nn.Identity):
            y = shift_then_conv(self.shift, self.conv2, y, self.fuse)
        else:
            y = self.conv2(self.pool(self.shift(y)))
        return y + (x if self.shortcut is None else self.shortcut(a))


class Bottleneck3Block(nn.Module):
    """Multi-shift residual block: three shift+1x1 stages, an inner residual around the middle one."""

    def __init__(self, b: BlockCfg, c_in: int, c_out: int, norm_layer=nn.BatchNorm2d,
                 act_layer=nn.ReLU, fuse: bool = True):
        super().__init__()
        m, s = mid_width(b.e, c_out), b.stride
        multi = b.placement == "multi"
        self.fuse = fuse
        self.shift0 = make_spatial(b, c_in, s if b.down == "shift" else 1) if multi else nn.Identity()
        self.conv1 = conv1x1(c_in, m, s if b.down == "conv" else 1)
        self.bn1, self.act1 = norm_layer(m), act_layer()
        self.pool = avgpool2x2() if s > 1 and b.down == "avgpool" else nn.Identity()
        self.shift = make_spatial(b, m)
        self.conv2, self.bn2, self.act2 = conv1x1(m, m), norm_layer(m), act_layer()
        self.shift2 = make_spatial(b, m) if multi else nn.Identity()
        self.conv3, self.bn3 = conv1x1(m, c_out), norm_layer(c_out)
        self.shortcut = (Shortcut(c_in, c_out, s, b.down, norm_layer)
                         if _needs_projection(c_in, c_out, s) else nn.Identity())
        self.act3 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.pool(self.act1(self.bn1(shift_then_conv(self.shift0, self.conv1, x, self.fuse))))
        y = self.act2(self.bn2(shift_then_conv(self.shift, self.conv2, r, self.fuse)) + r)
        y = self.bn3(shift_then_conv(self.shift2, self.conv3, y, self.fuse))
        return self.act3(y + self.shortcut(x))


class BasicBlock(nn.Module):
    """ResNet basic block (the baseline): two 3x3 convolutions with BN/ReLU, csc shortcut."""

    def __init__(self, b: BlockCfg, c_in: int, c_out: int, norm_layer=nn.BatchNorm2d,
                 act_layer=nn.ReLU, fuse: bool = True):
        super().__init__()
        s = b.stride
        self.conv1, self.bn1, self.act1 = conv3x3(c_in, c_out, s), norm_layer(c_out), act_layer()
        self.conv2, self.bn2 = conv3x3(c_out, c_out), norm_layer(c_out)
        self.shortcut = (Shortcut(c_in, c_out, s, b.down, norm_layer)
                         if _needs_projection(c_in, c_out, s) else nn.Identity())
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(y + self.shortcut(x))


BLOCKS: dict[str, type[nn.Module]] = {
    "csc": CscBlock,
    "asl_preact": AslPreactBlock,
    "bottleneck3": Bottleneck3Block,
    "basic": BasicBlock,
}


def make_stem(net: NetCfg, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU) -> nn.Sequential:
    c, w = net.in_chans, net.stem_width
    if net.stem == "conv3x3":
        return nn.Sequential(conv3x3(c, w), norm_layer(w), act_layer())
    if net.stem == "conv3x3_nobn":
        return nn.Sequential(conv3x3(c, w))
    if net.stem == "conv3x3s2_nobn":
        return nn.Sequential(conv3x3(c, w, 2))
    return nn.Sequential(  # conv7x7s2_maxpool
        nn.Conv2d(c, w, 7, stride=2, padding=3, bias=False), norm_layer(w), act_layer(),
        nn.MaxPool2d(3, stride=2, padding=1),
    )


class ShiftNet(nn.Module):
    """A network built from a `NetCfg`: stem, stages of blocks, [BN-ReLU], pool, Linear."""

    def __init__(self, net: NetCfg, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU, fuse: bool = True):
        super().__init__()
        self.cfg = net
        self.stem = make_stem(net, norm_layer, act_layer)
        stages, c_in = [], net.stem_width
        for st in net.stages:
            blocks = []
            for b in st.blocks:
                blocks.append(BLOCKS[b.family](b, c_in, st.width, norm_layer, act_layer, fuse))
                c_in = st.width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head_norm = norm_layer(c_in) if net.preact_head else nn.Identity()
        self.head_act = act_layer() if net.preact_head else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, net.classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_act(self.head_norm(self.stages(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.forward_features(x)), 1))


def build_model(net: NetCfg, *, fuse: bool = True, norm_layer=nn.BatchNorm2d,
                act_layer=nn.ReLU) -> ShiftNet:
    """Validate `net` against the spec and build it.

    `fuse` lets a fixed shift followed by a 1x1 convolution run as one fused
    kernel when a fast backend serves the input (never on the CPU reference).
    """
    return ShiftNet(validate(net), norm_layer, act_layer, fuse)
