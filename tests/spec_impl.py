"""A functional float64 implementation of docs/spec.md, written from the spec alone.

Nothing here imports the builder, the blocks or the kernels: the shifts (sections
1-3), the block families (section 4) and the skeletons (section 6) are written
out again as plain functions of an input tensor, a genome (`NetCfg`, the
description of *which* network) and a state dict (the weights, by the builder's
parameter names). Tests compare the builder's logits with these.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-5  # BatchNorm2d's default


# ----------------------------------------------------------------------------
# Section 1-3: shifts
# ----------------------------------------------------------------------------


def offsets(nbhd: str) -> list[tuple[int, int]]:
    """Non-centre offsets in the spec's order (section 1's table)."""
    if nbhd == "4c":
        return [(-1, 0), (0, -1), (0, 1), (1, 0)]
    r = {"8c": 1, "5x5": 2}[nbhd]
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]


def channel_offsets(c: int, nbhd: str) -> list[tuple[int, int]]:
    """(dy, dx) of every channel: contiguous groups of m = C // G, the centre takes the rest."""
    offs = offsets(nbhd)
    m = c // (len(offs) + 1)
    assert m > 0
    return [offs[ch // m] if ch < len(offs) * m else (0, 0) for ch in range(c)]


def _tap(x: torch.Tensor, ch: int, dy: int, dx: int, s: int) -> torch.Tensor:
    """X[n, ch, i*s + dy, j*s + dx] for every output (i, j), zero outside the image."""
    n, _, h, w = x.shape
    ho, wo = math.ceil(h / s), math.ceil(w / s)
    out = x.new_zeros(n, ho, wo)
    for i in range(ho):
        r = i * s + dy
        if not 0 <= r < h:
            continue
        cols = [j * s + dx for j in range(wo)]
        ok = [j for j, t in enumerate(cols) if 0 <= t < w]
        if ok:
            out[:, i, ok] = x[:, ch, r, [cols[j] for j in ok]]
    return out


def shift(x: torch.Tensor, per_channel: list[tuple[int, int]], s: int) -> torch.Tensor:
    return torch.stack([_tap(x, ch, dy, dx, s) for ch, (dy, dx) in enumerate(per_channel)], 1)


def active_shift(x: torch.Tensor, theta: torch.Tensor, s: int) -> torch.Tensor:
    """Section 2: bilinear taps at p = i*s + alpha, q = j*s + beta, zero outside."""
    chans = []
    for ch in range(x.shape[1]):
        alpha, beta = float(theta[ch, 0]), float(theta[ch, 1])
        a, b = math.floor(alpha), math.floor(beta)
        u, v = alpha - a, beta - b
        chans.append((1 - u) * (1 - v) * _tap(x, ch, a, b, s) + (1 - u) * v * _tap(x, ch, a, b + 1, s)
                     + u * (1 - v) * _tap(x, ch, a + 1, b, s) + u * v * _tap(x, ch, a + 1, b + 1, s))
    return torch.stack(chans, 1)


def sparse_shift(x: torch.Tensor, theta: torch.Tensor, s: int) -> torch.Tensor:
    """Section 3: the integer shift by round(theta), halves to even (Python's `round` does that)."""
    return shift(x, [(round(float(a)), round(float(b))) for a, b in theta], s)


# ----------------------------------------------------------------------------
# Section 4: blocks
# ----------------------------------------------------------------------------


class Weights:
    """The state dict under a module path: `w["conv1.weight"]`."""

    def __init__(self, sd: dict[str, torch.Tensor], prefix: str):
        self.sd, self.prefix = sd, prefix

    def __getitem__(self, k: str) -> torch.Tensor:
        return self.sd[f"{self.prefix}.{k}"]

    def sub(self, k: str) -> Weights:
        return Weights(self.sd, f"{self.prefix}.{k}")


def bn(x: torch.Tensor, w: Weights) -> torch.Tensor:
    """Inference BatchNorm: (x - running mean) / sqrt(running var + eps) * weight + bias."""
    mean, var, g, b = (w[k][:, None, None] for k in ("running_mean", "running_var", "weight", "bias"))
    return (x - mean) / torch.sqrt(var + EPS) * g + b


def conv(x: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
    k = weight.shape[-1]
    groups = x.shape[1] // weight.shape[1]
    return F.conv2d(x, weight, stride=stride, padding=k // 2, groups=groups)


def avgpool2x2(x: torch.Tensor) -> torch.Tensor:
    """2x2 average over the real pixels of each window; the output side is ceil(H / 2)."""
    n, c, h, w = x.shape
    xp = F.pad(x, (0, w % 2, 0, h % 2))
    ones = F.pad(torch.ones(1, 1, h, w, dtype=x.dtype), (0, w % 2, 0, h % 2))
    return F.avg_pool2d(xp, 2) / F.avg_pool2d(ones, 2)


def spatial(x: torch.Tensor, b, w: Weights, name: str, s: int) -> torch.Tensor:
    """The block's spatial op at stride s: a shift of section 1-3, or a 3x3 baseline conv."""
    if b.kind == "fixed":
        return shift(x, channel_offsets(x.shape[1], b.nbhd), s)
    if b.kind == "active":
        return active_shift(x, w[f"{name}.theta"], s)
    if b.kind == "sparse":
        return sparse_shift(x, w[f"{name}.theta"], s)
    return conv(x, w[f"{name}.weight"], s)  # dwconv3x3 (grouped) or conv3x3


def shortcut(x: torch.Tensor, w: Weights, b, c_in: int, c_out: int, with_bn: bool) -> torch.Tensor:
    """Identity when s = 1 and C_in = C_out; else [avgpool] -> conv1x1 (stride s) -> [BN]."""
    s = b.stride
    if s == 1 and c_in == c_out:
        return x
    if s > 1 and b.down == "avgpool":
        x, s = avgpool2x2(x), 1
    y = conv(x, w["shortcut.conv.weight"], s)
    return bn(y, w.sub("shortcut.bn")) if with_bn else y


def mid(e: float, c_out: int) -> int:
    return max(1, math.floor(e * c_out + 0.5))


def _conv1_shift_conv2(a: torch.Tensor, b, w: Weights) -> torch.Tensor:
    s = b.stride
    assert w["conv1.weight"].shape[0] == mid(b.e, w["conv2.weight"].shape[0])  # M = round(e C_out)
    y = F.relu(bn(conv(a, w["conv1.weight"]), w.sub("bn1")))
    y = spatial(y, b, w, "shift", s if b.down == "shift" else 1)
    if s > 1 and b.down == "avgpool":
        y = avgpool2x2(y)
    return conv(y, w["conv2.weight"], s if b.down == "conv" else 1)


def csc(x, b, w, c_in, c_out):
    """branch = ReLU(BN(conv1x1(SHIFT(ReLU(BN(conv1x1(x))))))); out = branch + shortcut."""
    branch = F.relu(bn(_conv1_shift_conv2(x, b, w), w.sub("bn2")))
    return branch + shortcut(x, w, b, c_in, c_out, with_bn=True)


def asl_preact(x, b, w, c_in, c_out):
    """a = ReLU(BN(x)); conv1x1(ASL(ReLU(BN(conv1x1(a))))) + (x, or conv1x1(a) without BN)."""
    a = F.relu(bn(x, w.sub("bn0")))
    y = _conv1_shift_conv2(a, b, w)
    return y + (x if b.stride == 1 and c_in == c_out else shortcut(a, w, b, c_in, c_out, False))


def bottleneck3(x, b, w, c_in, c_out):
    s, multi = b.stride, b.placement == "multi"
    assert w["conv1.weight"].shape[0] == mid(b.e, c_out)
    r = spatial(x, b, w, "shift0", s if b.down == "shift" else 1) if multi else x
    r = F.relu(bn(conv(r, w["conv1.weight"], s if b.down == "conv" else 1), w.sub("bn1")))
    if s > 1 and b.down == "avgpool":
        r = avgpool2x2(r)
    y = F.relu(bn(conv(spatial(r, b, w, "shift", 1), w["conv2.weight"]), w.sub("bn2")) + r)
    y = bn(conv(spatial(y, b, w, "shift2", 1) if multi else y, w["conv3.weight"]), w.sub("bn3"))
    return F.relu(y + shortcut(x, w, b, c_in, c_out, with_bn=True))


def basic(x, b, w, c_in, c_out):
    """ResNet: ReLU(BN(conv3x3)) -> BN(conv3x3), + the csc shortcut, ReLU."""
    y = F.relu(bn(conv(x, w["conv1.weight"], b.stride), w.sub("bn1")))
    y = bn(conv(y, w["conv2.weight"]), w.sub("bn2"))
    return F.relu(y + shortcut(x, w, b, c_in, c_out, with_bn=True))


FAMILIES = {"csc": csc, "asl_preact": asl_preact, "bottleneck3": bottleneck3, "basic": basic}


# ----------------------------------------------------------------------------
# Section 6: the skeleton
# ----------------------------------------------------------------------------


def forward(net, sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of `net` with the weights `sd` on `x` (inference: BN with running statistics)."""
    w = Weights(sd, "stem")
    y = x
    if net.stem == "conv7x7s2_maxpool":
        y = F.relu(bn(F.conv2d(y, w["0.weight"], stride=2, padding=3), w.sub("1")))
        y = F.max_pool2d(y, 3, stride=2, padding=1)
    else:
        y = conv(y, w["0.weight"], 2 if net.stem == "conv3x3s2_nobn" else 1)
        if net.stem == "conv3x3":
            y = F.relu(bn(y, w.sub("1")))
    c_in = net.stem_width
    for i, st in enumerate(net.stages):
        for j, b in enumerate(st.blocks):
            y = FAMILIES[b.family](y, b, Weights(sd, f"stages.{i}.{j}"), c_in, st.width)
            c_in = st.width
    if net.stages[-1].blocks[-1].family == "asl_preact":  # pre-activation networks end BN -> ReLU
        y = F.relu(bn(y, Weights(sd, "head_norm")))
    y = y.mean(dim=(2, 3))
    return y @ sd["fc.weight"].T + sd["fc.bias"]


# ----------------------------------------------------------------------------
# Section 7: separable basic blocks (mult R >= 1)
# ----------------------------------------------------------------------------


def copies(x: torch.Tensor, r: int) -> torch.Tensor:
    """R copies of x along the channels, copy-major: channel t*C + i is channel i."""
    return torch.cat([x] * r, 1)


def separable(x: torch.Tensor, b, w: Weights, i: int, s: int) -> torch.Tensor:
    """conv1x1( OP_s( COPIES_R(x) ) ): the op of sections 1-3 (or a 3x3 conv) on R*C channels."""
    return conv(spatial(copies(x, b.mult), b, w, f"shift{i}", s), w[f"conv{i}.weight"])


_plain_basic = basic


def basic_any(x, b, w, c_in, c_out):
    """Section 4's basic block; with mult >= 1 each 3x3 conv is `separable` (BN after the 1x1)."""
    if not b.mult:
        return _plain_basic(x, b, w, c_in, c_out)
    y = F.relu(bn(separable(x, b, w, 1, b.stride), w.sub("bn1")))
    y = bn(separable(y, b, w, 2, 1), w.sub("bn2"))
    return F.relu(y + shortcut(x, w, b, c_in, c_out, with_bn=True))


FAMILIES["basic"] = basic_any
