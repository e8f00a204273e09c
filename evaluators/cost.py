"""Analytic cost of a genome: params, MACs and memory traffic, per layer and per network.

Computed from the `NetCfg` alone, without building or running the model, with
the conventions of docs/spec.md section 5: `params` counts every trainable
parameter (BN affine and learned shifts included); `macs` counts
multiply-accumulates of convolutions and linear layers only; memory traffic
is the bytes each layer reads (activations and weights) and writes for one
forward pass at a stated element size. Layer names are the builder's module
paths (`stages.1.0.conv2`), so each layer can be checked against the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from shiftnas.searchspace.genome import BlockCfg, NetCfg, mid_width, out_size


@dataclass(frozen=True)
class LayerCost:
    name: str  # the builder's module path
    op: str  # conv | bn | relu | shift | pool | add | linear
    shape_in: tuple[int, int, int]  # (C, H, W) read
    shape_out: tuple[int, int, int]  # (C, H, W) written
    params: int
    macs: int
    bytes_read: int  # activations + weights read
    bytes_written: int

    @property
    def traffic(self) -> int:
        return self.bytes_read + self.bytes_written


@dataclass
class NetCost:
    params: int
    macs: int
    traffic_bytes: int
    layers: list[LayerCost] = field(repr=False)
    stages: list[dict] = field(repr=False)
    dtype_bytes: int = 4
    batch: int = 1

    def to_dict(self, layers: bool = False) -> dict:
        d = {"params": self.params, "macs": self.macs, "traffic_bytes": self.traffic_bytes,
             "traffic_mb": self.traffic_bytes / 1e6, "dtype_bytes": self.dtype_bytes,
             "batch": self.batch, "stages": self.stages}
        if layers:
            d["layers"] = [asdict(x) for x in self.layers]
        return d


class _Walker:
    """Accumulates layers while the block walkers trace shapes through the network."""

    def __init__(self, dtype_bytes: int, batch: int, fuse_shift: bool):
        self.b, self.n, self.fuse = dtype_bytes, batch, fuse_shift
        self.layers: list[LayerCost] = []

    def _add(self, name, op, cin, hw_in, cout, hw_out, params=0, macs=0, n_inputs=1, weight_read=0):
        act_in = n_inputs * cin * hw_in[0] * hw_in[1] * self.n
        act_out = cout * hw_out[0] * hw_out[1] * self.n
        self.layers.append(LayerCost(
            name, op, (cin, *hw_in), (cout, *hw_out), params, macs * self.n,
            (act_in + weight_read) * self.b, act_out * self.b,
        ))
        return hw_out

    def conv(self, name, cin, cout, hw, k=1, stride=1, groups=1):
        ho = (out_size(hw[0], stride), out_size(hw[1], stride))
        p = cout * (cin // groups) * k * k
        return self._add(name, "conv", cin, hw, cout, ho, p, p * ho[0] * ho[1], weight_read=p)

    def bn(self, name, c, hw):
        return self._add(name, "bn", c, hw, c, hw, 2 * c, weight_read=4 * c)

    def relu(self, name, c, hw):
        return self._add(name, "relu", c, hw, c, hw)

    def add(self, name, c, hw):
        return self._add(name, "add", c, hw, c, hw, n_inputs=2)

    def pool(self, name, c, hw, stride=2):
        return self._add(name, "pool", c, hw, c, (out_size(hw[0], stride), out_size(hw[1], stride)))

    def spatial(self, name, b: BlockCfg, c, hw, stride=1, fused=False, copies=1):
        """The block's spatial op: a shift (zero MACs) or a 3x3 baseline convolution.

        With `copies` > 1 it runs over that many copies of its `c` input channels
        (a separable basic block, spec section 7): shifts and depthwise kernels
        read the input once and write `copies * c` channels (the copies are
        addressing, not work); a full 3x3 convolution reads the copies.
        """
        co = copies * c
        if b.kind == "dwconv3x3":
            return self.conv(name, c, co, hw, 3, stride, groups=c)
        if b.kind == "conv3x3":
            return self.conv(name, co, co, hw, 3, stride)
        ho = (out_size(hw[0], stride), out_size(hw[1], stride))
        p = 2 * co if b.kind in ("active", "sparse") else 0
        if fused and self.fuse and b.kind == "fixed":
            # Folded into the next 1x1 convolution's loads: never touches memory on its own.
            self.layers.append(LayerCost(name, "shift", (c, *hw), (co, *ho), 0, 0, 0, 0))
            return ho
        return self._add(name, "shift", c, hw, co, ho, p, weight_read=p)

    def shortcut(self, name, cin, cout, hw, stride, down, bn=True):
        if stride > 1 and down == "avgpool":
            hw = self.pool(f"{name}.pool", cin, hw)
            stride = 1
        hw = self.conv(f"{name}.conv", cin, cout, hw, 1, stride)
        return self.bn(f"{name}.bn", cout, hw) if bn else hw


def _mid(w: _Walker, p: str, b: BlockCfg, cin: int, cout: int, hw):
    """conv1 -> BN -> ReLU -> SPATIAL [-> avgpool] -> conv2: the body csc and asl_preact share."""
    m, s = mid_width(b.e, cout), b.stride
    pooled = s > 1 and b.down == "avgpool"
    y = w.conv(f"{p}.conv1", cin, m, hw)
    w.bn(f"{p}.bn1", m, y)
    w.relu(f"{p}.act1", m, y)
    y = w.spatial(f"{p}.shift", b, m, y, s if b.down == "shift" else 1, fused=not pooled)
    if pooled:
        y = w.pool(f"{p}.pool", m, y)
    return w.conv(f"{p}.conv2", m, cout, y, 1, s if b.down == "conv" else 1)


def _csc(w: _Walker, p: str, b: BlockCfg, cin: int, cout: int, hw):
    y = _mid(w, p, b, cin, cout, hw)
    w.bn(f"{p}.bn2", cout, y)
    w.relu(f"{p}.act2", cout, y)  # on the branch, before the sum (spec section 4)
    if b.stride != 1 or cin != cout:
        w.shortcut(f"{p}.shortcut", cin, cout, hw, b.stride, b.down)
    return w.add(f"{p}.add", cout, y)


def _asl_preact(w: _Walker, p: str, b: BlockCfg, cin: int, cout: int, hw):
    w.bn(f"{p}.bn0", cin, hw)
    w.relu(f"{p}.act0", cin, hw)
    y = _mid(w, p, b, cin, cout, hw)
    if b.stride != 1 or cin != cout:
        w.shortcut(f"{p}.shortcut", cin, cout, hw, b.stride, b.down, bn=False)
    return w.add(f"{p}.add", cout, y)


def _bottleneck3(w: _Walker, p: str, b: BlockCfg, cin: int, cout: int, hw):
    m, s = mid_width(b.e, cout), b.stride
    multi = b.placement == "multi"
    y = hw
    if multi:
        y = w.spatial(f"{p}.shift0", b, cin, y, s if b.down == "shift" else 1, fused=True)
    y = w.conv(f"{p}.conv1", cin, m, y, 1, s if b.down == "conv" else 1)
    w.bn(f"{p}.bn1", m, y)
    w.relu(f"{p}.act1", m, y)
    if s > 1 and b.down == "avgpool":
        y = w.pool(f"{p}.pool", m, y)
    y = w.spatial(f"{p}.shift", b, m, y, fused=True)
    w.conv(f"{p}.conv2", m, m, y)
    w.bn(f"{p}.bn2", m, y)
    w.add(f"{p}.add_inner", m, y)
    w.relu(f"{p}.act2", m, y)
    if multi:
        w.spatial(f"{p}.shift2", b, m, y, fused=True)
    y = w.conv(f"{p}.conv3", m, cout, y)
    w.bn(f"{p}.bn3", cout, y)
    if s != 1 or cin != cout:
        w.shortcut(f"{p}.shortcut", cin, cout, hw, s, b.down)
    w.add(f"{p}.add", cout, y)
    return w.relu(f"{p}.act3", cout, y)


def _basic(w: _Walker, p: str, b: BlockCfg, cin: int, cout: int, hw):
    s = b.stride
    y = _conv3x3(w, f"{p}", 1, b, cin, cout, hw, s)
    w.bn(f"{p}.bn1", cout, y)
    w.relu(f"{p}.act1", cout, y)
    _conv3x3(w, f"{p}", 2, b, cout, cout, y, 1)
    w.bn(f"{p}.bn2", cout, y)
    if s != 1 or cin != cout:
        w.shortcut(f"{p}.shortcut", cin, cout, hw, s, b.down)
    w.add(f"{p}.add", cout, y)
    return w.relu(f"{p}.act2", cout, y)


def _conv3x3(w: _Walker, p: str, i: int, b: BlockCfg, cin: int, cout: int, hw, stride: int):
    """A basic block's i-th 3x3 convolution, or its separable form: the spatial op over
    `mult` copies of the input (taking the stride), then a 1x1 (spec section 7)."""
    if not b.mult:
        return w.conv(f"{p}.conv{i}", cin, cout, hw, 3, stride)
    y = w.spatial(f"{p}.shift{i}", b, cin, hw, stride, fused=True, copies=b.mult)
    return w.conv(f"{p}.conv{i}", b.mult * cin, cout, y)


_BLOCKS = {"csc": _csc, "asl_preact": _asl_preact, "bottleneck3": _bottleneck3, "basic": _basic}


def _stem(w: _Walker, net: NetCfg, hw):
    c, sw = net.in_chans, net.stem_width
    if net.stem == "conv7x7s2_maxpool":
        hw = w.conv("stem.0", c, sw, hw, 7, 2)
        w.bn("stem.1", sw, hw)
        w.relu("stem.2", sw, hw)
        return w.pool("stem.3", sw, hw)
    hw = w.conv("stem.0", c, sw, hw, 3, 2 if net.stem == "conv3x3s2_nobn" else 1)
    if net.stem == "conv3x3":
        w.bn("stem.1", sw, hw)
        w.relu("stem.2", sw, hw)
    return hw


def net_cost(net: NetCfg, *, input_size: int | None = None, dtype_bytes: int = 4,
             batch: int = 1, fuse_shift: bool = False) -> NetCost:
    """Cost of `net` at `input_size` (default: the genome's), per layer and in total.

    `fuse_shift=True` counts fixed shifts that feed a 1x1 convolution as free
    (the fused kernel reads the input at the shifted address directly).
    """
    w = _Walker(dtype_bytes, batch, fuse_shift)
    s = input_size or net.input_size
    hw = _stem(w, net, (s, s))
    stages, c_in = [], net.stem_width
    for i, st in enumerate(net.stages):
        first = len(w.layers)
        for j, b in enumerate(st.blocks):
            hw = _BLOCKS[b.family](w, f"stages.{i}.{j}", b, c_in, st.width, hw)
            c_in = st.width
        ls = w.layers[first:]
        stages.append({"stage": i, "depth": st.depth, "width": st.width, "out_hw": list(hw),
                       "params": sum(x.params for x in ls), "macs": sum(x.macs for x in ls),
                       "traffic_bytes": sum(x.traffic for x in ls)})
    if net.preact_head:
        w.bn("head_norm", c_in, hw)
        w.relu("head_act", c_in, hw)
    w._add("pool", "pool", c_in, hw, c_in, (1, 1))
    p = c_in * net.classes + net.classes
    w._add("fc", "linear", c_in, (1, 1), net.classes, (1, 1), p, c_in * net.classes, weight_read=p)
    return NetCost(
        params=sum(x.params for x in w.layers), macs=sum(x.macs for x in w.layers),
        traffic_bytes=sum(x.traffic for x in w.layers), layers=w.layers, stages=stages,
        dtype_bytes=dtype_bytes, batch=batch,
    )
