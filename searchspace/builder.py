"""The builder: a genome (`NetCfg`) becomes a network of `searchspace.blocks` modules.

`block_args` turns one `BlockCfg` into its block class's constructor arguments;
the builder instantiates them with the dispatching shift modules of
`shiftnas.kernels`, and `shiftnas export` writes the same arguments out as
source, so the builder and the exported code cannot disagree.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

from shiftnas.kernels import portable as portable_ops
from shiftnas.kernels import spatial

from .blocks import BLOCKS, ShiftNet, Stem
from .genome import BlockCfg, NetCfg, mid_width, validate
from .rewrite import fuse_shift_conv


class Op(NamedTuple):
    """A block's spatial op: its kind and the genome fields it uses (`nbhd`, `init`)."""

    kind: str
    options: dict[str, str]


def block_args(b: BlockCfg, c_in: int, c_out: int) -> dict[str, Any]:
    """Constructor arguments of `BLOCKS[b.family]` for block `b` from `c_in` to `c_out` channels.

    Every constructor parameter named like a genome field the block uses takes
    that field; `mid` is the middle width `round(e * C_out)`; `op` is the spatial
    op (an `Op`), given when the block uses a `kind` (a plain basic block does not). Adding a block family with new genome fields needs nothing here.
    """
    params = inspect.signature(BLOCKS[b.family]).parameters
    used = b.used_fields
    args: dict[str, Any] = {"c_in": c_in, "c_out": c_out}
    if "mid" in params:
        args["mid"] = mid_width(b.e, c_out)
    if "op" in params and "kind" in used:
        args["op"] = Op(b.kind, {k: getattr(b, k) for k in ("nbhd", "init") if k in used})
    args.update({k: getattr(b, k) for k in used if k in params})
    return args


def build_model(net: NetCfg, *, fuse: bool = True, portable: bool = False) -> ShiftNet:
    """Validate `net` against the spec and build it (the genome is kept as `model.cfg`).

    With `fuse`, every fixed shift that feeds a 1x1 convolution runs with it as
    one op (`kernels.ShiftConv1x1`: the fused kernel where a backend has one,
    the two plain ops elsewhere). `portable` builds the shifts of
    `kernels.portable` instead (what `shiftnas export` writes, and what exports
    to ONNX). Parameters and state dict are the same in every case.
    """
    net = validate(net)
    stages, c_in = [], net.stem_width
    for st in net.stages:
        blocks = []
        for b in st.blocks:
            args = block_args(b, c_in, st.width)
            if "op" in args:
                make = portable_ops.spatial if portable else spatial
                args["op"] = make(args["op"].kind, **args["op"].options)
            blocks.append(BLOCKS[b.family](**args))
            c_in = st.width
        stages.append(blocks)
    model = ShiftNet(Stem(net.in_chans, net.stem_width, net.stem), stages, c_in, net.classes,
                     net.preact_head)
    model.cfg = net
    return fuse_shift_conv(model) if fuse and not portable else model
