"""The formulations of a shift in ONNX, and the choice of the fastest one per shape.

A network is exported once with every shift as a marker node
`shiftnas::Shift(x, theta)` (`to_markers`: theta holds each channel's offset,
integers for fixed and sparse shifts, the learned reals for active ones);
`lower` then rewrites each marker into one formulation:

    fused     shiftnas::ShiftConv1x1[Add]: the shift inside the 1x1 convolution that
              reads it, with the bias, ReLU and residual add after it (custom op)
    custom    shiftnas::Shift, the custom op alone
    dwconv    a depthwise Conv with one-hot (integer) or bilinear kernels: MLAS's
              depthwise path, the same cost as a depthwise 3x3 where offsets are within 1
    slices    Pad + one Slice per run of equal offsets + Concat (integer offsets), or
              two MatMuls with the per-channel sampling matrices (bilinear)

The first two need the custom-op library (`kernels.ort_ops`); the standard
export uses the last two only. `choose` times the candidates of each shift site
in a small graph (1x1 conv + ReLU before it, its 1x1 conv after it) at the
network's batch and threads, and caches the winner per machine and ONNX
Runtime version (`cache_dir()/ort_formulations.json`). A single `Gather` was
measured too (benchmarks/RESULTS.md: 3.8-5.2x the depthwise block; ORT copies
one element per index) and is not a candidate.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftnas.files import atomic_write, cache_dir, file_lock
from shiftnas.kernels import ort_ops

STANDARD = ("dwconv", "slices")
CUSTOM = ("fused", "custom")
FORMULATIONS = CUSTOM + STANDARD


# ----------------------------------------------------------------------------
# Markers: the export of every shift as one node
# ----------------------------------------------------------------------------


@torch.library.custom_op("shiftnas::shift_marker", mutates_args=())
def _shift_marker(x: torch.Tensor, theta: torch.Tensor, stride: int, bilinear: int,
                  site: int) -> torch.Tensor:
    from shiftnas.kernels.portable import bilinear_shift

    return bilinear_shift(x, theta.to(x.dtype), stride)


@_shift_marker.register_fake
def _(x, theta, stride, bilinear, site):
    return x.new_empty((*x.shape[:2], -(-x.shape[2] // stride), -(-x.shape[3] // stride)))


def _marker_symbolic(g, x, theta, stride, bilinear, site):
    from torch.onnx.symbolic_helper import _maybe_get_const

    ints = {k: int(_maybe_get_const(v, "i")) for k, v in
            (("stride", stride), ("bilinear", bilinear), ("site", site))}
    out = g.op("shiftnas::Shift", x, theta, stride_i=ints["stride"],
               bilinear_i=ints["bilinear"], site_i=ints["site"])
    sizes = x.type().varyingSizes()  # the output's shape, or the exporter warns per node
    if sizes and len(sizes) == 4:
        s = ints["stride"]
        out.setType(x.type().with_sizes([*sizes[:2], *[None if v is None else -(-v // s)
                                                       for v in sizes[2:]]]))
    return out


torch.onnx.register_custom_op_symbolic("shiftnas::shift_marker", _marker_symbolic, 17)


class ShiftMarker(nn.Module):
    """A shift with fixed per-channel offsets `theta` (C, 2); exports as `shiftnas::Shift`."""

    def __init__(self, theta: torch.Tensor, stride: int, bilinear: bool, site: int):
        super().__init__()
        self.register_buffer("theta", theta.detach().float().clone())
        self.stride, self.bilinear, self.site = stride, int(bilinear), site
        self.hw: tuple[int, int] | None = None  # the input's (H, W), seen at export

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.hw = (int(x.shape[-2]), int(x.shape[-1]))
        return _shift_marker(x, self.theta, self.stride, self.bilinear, self.site)


def _theta_of(m: nn.Module) -> tuple[torch.Tensor, bool] | None:
    """(theta, bilinear) of a portable shift module (or its copy in an exported model.py)."""
    name = type(m).__name__
    if name == "Shift" and hasattr(m, "groups"):
        c = m.channels
        theta = torch.zeros(c, 2)
        for c0, c1, dy, dx in m.groups:
            theta[c0:c1, 0], theta[c0:c1, 1] = float(dy), float(dx)
        return theta, False
    if name == "SparseShift" and hasattr(m, "theta"):
        return torch.round(m.theta.detach()), False  # half to even, as the forward pass
    if name == "ActiveShift" and hasattr(m, "theta"):
        return m.theta.detach(), True
    return None


def to_markers(model: nn.Module) -> list[ShiftMarker]:
    """Replace every portable shift module of `model` by a `ShiftMarker`, in place; returns them."""
    markers: list[ShiftMarker] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            got = _theta_of(child)
            if got is not None:
                marker = ShiftMarker(got[0], child.stride, got[1], len(markers))
                setattr(parent, name, marker)
                markers.append(marker)
    return markers


def export_markers(model: nn.Module, x: torch.Tensor, dynamic_batch: bool = False):
    """`model` (eval, portable shifts) as an ONNX model whose shifts are marker nodes, and the
    markers (their `hw` filled). TorchScript exporter, opset 17."""
    import inspect

    import onnx

    markers = to_markers(model)
    kw: dict[str, Any] = {"input_names": ["input"], "output_names": ["logits"], "opset_version": 17,
                          "do_constant_folding": True}
    if markers:  # naming an unused domain makes the exporter print a warning
        kw["custom_opsets"] = {ort_ops.DOMAIN: 1}
    if dynamic_batch:
        kw["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kw["dynamo"] = False
    buf = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), buf, **kw)
    return onnx.load_from_string(buf.getvalue()), markers


# ----------------------------------------------------------------------------
# Lowering
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """One shift in its context: what decides which formulation is fastest."""

    bilinear: bool
    c: int
    h: int
    w: int
    stride: int
    extent: tuple[int, int, int, int]  # offsets' range: min dy, max dy, min dx, max dx (0 included)
    conv: tuple[int, int] | None  # (C_out, stride) of the 1x1 convolution it can fuse into

    def key(self, batch: int, threads: int, custom: bool) -> str:
        conv = f"co{self.conv[0]}s{self.conv[1]}" if self.conv else "noconv"
        return (f"{'bil' if self.bilinear else 'int'}|c{self.c}|{self.h}x{self.w}|s{self.stride}|"
                f"k{','.join(map(str, self.extent))}|{conv}|b{batch}|t{threads}|custom{int(custom)}")


def _extent(theta: np.ndarray, bilinear: bool) -> tuple[int, int, int, int]:
    lo = np.floor(theta).astype(int) if bilinear else np.rint(theta).astype(int)
    hi = lo + (np.ceil(theta) > np.floor(theta)).astype(int) if bilinear else lo
    return (min(0, int(lo[:, 0].min())), max(0, int(hi[:, 0].max())),
            min(0, int(lo[:, 1].min())), max(0, int(hi[:, 1].max())))


class _Graph:
    """Producers, consumers and constants of an ONNX graph, for the rewrites below."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.g = model.graph
        self.inits = {i.name: numpy_helper.to_array(i) for i in self.g.initializer}
        for n in self.g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.inits[n.output[0]] = numpy_helper.to_array(a.t)
        self.outputs = {o.name for o in self.g.output}

    def consumers(self, name: str) -> list:
        return [n for n in self.g.node if name in n.input]

    def sole_consumer(self, name: str):
        users = self.consumers(name)
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def add_init(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.g.initializer.append(numpy_helper.from_array(value, name))
        self.inits[name] = value
        return name


def _attr(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _fusable_conv(gr: _Graph, node):
    """The plain 1x1 Conv that alone reads the marker's output, with its weight constant."""
    conv = gr.sole_consumer(node.output[0])
    if conv is None or conv.op_type != "Conv" or conv.input[0] != node.output[0] \
            or conv.input[1] not in gr.inits:
        return None
    wt = gr.inits[conv.input[1]]
    strides = list(_attr(conv, "strides", [1, 1]))
    if wt.ndim != 4 or wt.shape[2:] != (1, 1) or _attr(conv, "group", 1) != 1 \
            or any(_attr(conv, "pads", [0, 0, 0, 0])) or strides[0] != strides[1] \
            or any(d != 1 for d in _attr(conv, "dilations", [1, 1])) \
            or (len(conv.input) > 2 and conv.input[2] not in gr.inits):
        return None
    return conv


def sites(model, markers: list[ShiftMarker]) -> dict[int, Site]:
    """Each marker node's `Site`, by its `site` attribute."""
    gr = _Graph(model)
    out = {}
    for node in gr.g.node:
        if node.domain != ort_ops.DOMAIN or node.op_type != "Shift":
            continue
        m = markers[_attr(node, "site")]
        theta = m.theta.numpy()
        conv = _fusable_conv(gr, node)
        conv_info = None
        if conv is not None:
            conv_info = (int(gr.inits[conv.input[1]].shape[0]), int(_attr(conv, "strides", [1])[0]))
        out[m.site] = Site(bool(m.bilinear), theta.shape[0], m.hw[0], m.hw[1], m.stride,
                           _extent(theta, bool(m.bilinear)), conv_info)
    return out


def _replace(gr: _Graph, old: list, new: list) -> None:
    """Put `new` nodes where the last of `old` was (keeps the order topological), drop `old`."""
    nodes = list(gr.g.node)
    at = max(nodes.index(n) for n in old)
    for n in reversed(new):
        gr.g.node.insert(at + 1, n)
    for n in old:
        gr.g.node.remove(n)


def _lower_fused(gr: _Graph, node, tag: str) -> None:
    from onnx import helper

    conv = _fusable_conv(gr, node)
    wt = gr.inits[conv.input[1]]
    bias = conv.input[2] if len(conv.input) > 2 else gr.add_init(
        f"{tag}_bias", np.zeros(wt.shape[0], np.float32))
    stride = int(_attr(node, "stride", 1)) * int(_attr(conv, "strides", [1, 1])[0])
    absorbed, out, relu, residual, after = [node, conv], conv.output[0], 0, None, 1
    nxt = gr.sole_consumer(out)
    if nxt is not None and nxt.op_type == "Relu":
        absorbed.append(nxt)
        out, relu = nxt.output[0], 1
        nxt = gr.sole_consumer(out)
    if nxt is not None and nxt.op_type == "Add" and len(nxt.input) == 2:
        other = nxt.input[1] if nxt.input[0] == out else nxt.input[0]
        absorbed.append(nxt)
        out, residual, after = nxt.output[0], other, relu
        if not relu:  # conv + residual, then maybe a ReLU (bottleneck3)
            nxt = gr.sole_consumer(out)
            if nxt is not None and nxt.op_type == "Relu":
                absorbed.append(nxt)
                out, relu, after = nxt.output[0], 1, 0
    inputs = [node.input[0], conv.input[1], bias, node.input[1]] + ([residual] if residual else [])
    op = "ShiftConv1x1Add" if residual else "ShiftConv1x1"
    attrs = {"stride": stride, "bilinear": int(_attr(node, "bilinear", 0)), "relu": relu}
    if residual:
        attrs["add_after_relu"] = after
    _replace(gr, absorbed, [helper.make_node(op, inputs, [out], name=tag, domain=ort_ops.DOMAIN,
                                             **attrs)])


def _lower_custom(gr: _Graph, node, tag: str) -> None:
    from onnx import helper

    attrs = {"stride": int(_attr(node, "stride", 1)), "bilinear": int(_attr(node, "bilinear", 0))}
    _replace(gr, [node], [helper.make_node("Shift", list(node.input), list(node.output), name=tag,
                                           domain=ort_ops.DOMAIN, **attrs)])


def _lower_dwconv(gr: _Graph, node, tag: str, theta: np.ndarray) -> None:
    from onnx import helper

    bilinear, s = bool(_attr(node, "bilinear", 0)), int(_attr(node, "stride", 1))
    y0, y1, x0, x1 = _extent(theta, bilinear)
    kh, kw = y1 - y0 + 1, x1 - x0 + 1
    c = theta.shape[0]
    wt = np.zeros((c, 1, kh, kw), np.float32)
    for ch, (dy, dx) in enumerate(theta.astype(np.float64)):
        if bilinear:
            a, b = np.floor(dy), np.floor(dx)
            u, v = dy - a, dx - b
            for (i, j), wgt in (((a, b), (1 - u) * (1 - v)), ((a, b + 1), (1 - u) * v),
                                ((a + 1, b), u * (1 - v)), ((a + 1, b + 1), u * v)):
                if wgt:
                    wt[ch, 0, int(i) - y0, int(j) - x0] += wgt
        else:
            wt[ch, 0, int(round(dy)) - y0, int(round(dx)) - x0] = 1.0
    # Output i reads input i*s + k + y0 (k the kernel row): begin pad -y0, end pad y1.
    _replace(gr, [node], [helper.make_node(
        "Conv", [node.input[0], gr.add_init(f"{tag}_w", wt)], list(node.output), name=tag,
        group=c, kernel_shape=[kh, kw], strides=[s, s], pads=[-y0, -x0, y1, x1])])


def _lower_slices(gr: _Graph, node, tag: str, theta: np.ndarray, hw: tuple[int, int]) -> None:
    from onnx import helper

    s = int(_attr(node, "stride", 1))
    h, w = hw
    ho, wo = -(-h // s), -(-w // s)
    x = node.input[0]
    if _attr(node, "bilinear", 0):  # y = Rows @ x @ Cols^T, as kernels.portable's active shift
        from shiftnas.kernels.portable import sampling_matrix

        t = torch.from_numpy(theta).double()
        rows = sampling_matrix(t[:, 0], h, ho, s).float().numpy()
        cols_t = sampling_matrix(t[:, 1], w, wo, s).transpose(1, 2).float().numpy()
        mid = f"{tag}_rows_x"
        _replace(gr, [node], [
            helper.make_node("MatMul", [gr.add_init(f"{tag}_rows", rows), x], [mid], name=f"{tag}_0"),
            helper.make_node("MatMul", [mid, gr.add_init(f"{tag}_cols", cols_t)],
                             list(node.output), name=f"{tag}_1")])
        return
    off = np.rint(theta).astype(np.int64)
    p = int(np.abs(off).max()) if off.size else 0
    pads = gr.add_init(f"{tag}_pads", np.array([0, 0, p, p, 0, 0, p, p], np.int64))
    padded = f"{tag}_padded"
    nodes = [helper.make_node("Pad", [x, pads], [padded], name=f"{tag}_pad")]
    runs, c0 = [], 0
    for c in range(1, len(off) + 1):
        if c == len(off) or (off[c] != off[c0]).any():
            runs.append((c0, c, int(off[c0, 0]), int(off[c0, 1])))
            c0 = c
    parts = []
    for k, (a, b, dy, dx) in enumerate(runs):
        args = [np.array(v, np.int64) for v in (
            [a, p + dy, p + dx], [b, p + dy + h, p + dx + w], [1, 2, 3], [1, s, s])]
        names = [gr.add_init(f"{tag}_s{k}_{n}", v) for n, v in zip(("st", "en", "ax", "sp"), args)]
        parts.append(f"{tag}_part{k}")
        nodes.append(helper.make_node("Slice", [padded, *names], [parts[-1]], name=f"{tag}_slice{k}"))
    nodes.append(helper.make_node("Concat", parts, list(node.output), name=f"{tag}_cat", axis=1))
    _replace(gr, [node], nodes)


def _lower_gather(gr: _Graph, node, tag: str, theta: np.ndarray, hw: tuple[int, int]) -> None:
    """Pad, flatten, one Gather of every output element's source, reshape (integer offsets;
    measured only, not a candidate: benchmarks/RESULTS.md)."""
    from onnx import helper

    s, (h, w) = int(_attr(node, "stride", 1)), hw
    ho, wo, c = -(-h // s), -(-w // s), theta.shape[0]
    off = np.rint(theta).astype(np.int64)
    p = int(np.abs(off).max()) if off.size else 0
    hp, wp = h + 2 * p, w + 2 * p
    rows = np.arange(ho)[None, :, None] * s + off[:, 0, None, None] + p
    cols = np.arange(wo)[None, None, :] * s + off[:, 1, None, None] + p
    idx = (np.arange(c)[:, None, None] * hp * wp + rows * wp + cols).reshape(-1)
    names = [gr.add_init(f"{tag}_{k}", v) for k, v in (
        ("pads", np.array([0, 0, p, p, 0, 0, p, p], np.int64)), ("flat", np.array([0, -1], np.int64)),
        ("idx", idx.astype(np.int64)), ("shape", np.array([0, c, ho, wo], np.int64)))]
    _replace(gr, [node], [
        helper.make_node("Pad", [node.input[0], names[0]], [f"{tag}_p"], name=f"{tag}_pad"),
        helper.make_node("Reshape", [f"{tag}_p", names[1]], [f"{tag}_f"], name=f"{tag}_flat"),
        helper.make_node("Gather", [f"{tag}_f", names[2]], [f"{tag}_g"], name=f"{tag}_gather", axis=1),
        helper.make_node("Reshape", [f"{tag}_g", names[3]], list(node.output), name=f"{tag}_out")])


def lower(model, markers: list[ShiftMarker], picks: dict[int, str]):
    """Rewrite each marker node (by site) into `picks[site]`, in place; returns `model`."""
    gr = _Graph(model)
    for node in [n for n in gr.g.node if n.domain == ort_ops.DOMAIN and n.op_type == "Shift"]:
        site = _attr(node, "site")
        if site is None:
            continue
        m, form, tag = markers[site], picks[site], f"shift{site}"
        theta = m.theta.numpy()
        if form == "fused" and _fusable_conv(gr, node) is not None:
            _lower_fused(gr, node, tag)
        elif form in ("fused", "custom"):
            _lower_custom(gr, node, tag)
        elif form == "dwconv":
            _lower_dwconv(gr, node, tag, theta)
        elif form == "gather" and not m.bilinear:
            _lower_gather(gr, node, tag, theta, m.hw)
        else:
            _lower_slices(gr, node, tag, theta, m.hw)
    used = {n.domain for n in gr.g.node}
    if ort_ops.DOMAIN not in used:
        keep = [o for o in model.opset_import if o.domain != ort_ops.DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return model


def summary(picks: dict[int, str]) -> str:
    """`fused 3, dwconv 1`: how many shifts use each formulation ('' without shifts)."""
    return ", ".join(f"{k} {n}" for k, n in sorted(Counter(picks.values()).items(),
                                                 key=lambda kv: FORMULATIONS.index(kv[0])))


# ----------------------------------------------------------------------------
# Choosing: time each candidate of a site in a small graph, once per machine
# ----------------------------------------------------------------------------


def candidates(site: Site, custom: bool) -> list[str]:
    """Formulations worth timing for `site`: the custom ones when the library is built."""
    out = []
    if custom:
        out += (["fused"] if site.conv else []) + ["custom"]
    return out + list(STANDARD)


def _site_graph(site: Site, batch: int):
    """1x1 conv + ReLU -> marker -> (the site's 1x1 conv + ReLU): the site's usual neighbours."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = site.c
    theta = np.zeros((c, 2), np.float32)
    y0, y1, x0, x1 = site.extent  # offsets spread over the site's range, as the real ones
    theta[:, 0] = rng.integers(y0, y1 + 1, c)
    theta[:, 1] = rng.integers(x0, x1 + 1, c)
    if site.bilinear:
        theta += rng.uniform(0, 1, (c, 2)).astype(np.float32) * ((y1 > y0), (x1 > x0))
        theta = np.minimum(theta, (y1, x1)).astype(np.float32)
    inits = {"w0": rng.standard_normal((c, c, 1, 1)).astype(np.float32) * 0.1,
             "b0": np.zeros(c, np.float32), "theta": theta}
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["h0"]),
             helper.make_node("Relu", ["h0"], ["r0"]),
             helper.make_node("Shift", ["r0", "theta"], ["sh"], domain=ort_ops.DOMAIN,
                              stride=site.stride, bilinear=int(site.bilinear), site=0)]
    out = "sh"
    if site.conv:
        co, cs = site.conv
        inits["w1"] = rng.standard_normal((co, c, 1, 1)).astype(np.float32) * 0.1
        inits["b1"] = np.zeros(co, np.float32)
        nodes += [helper.make_node("Conv", ["sh", "w1", "b1"], ["h1"], strides=[cs, cs]),
                  helper.make_node("Relu", ["h1"], ["y"])]
        out = "y"
    graph = helper.make_graph(nodes, "site", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [batch, c, site.h, site.w])], [helper.make_tensor_value_info(
            out, TensorProto.FLOAT, None)], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(ort_ops.DOMAIN, 1)])
    marker = ShiftMarker(torch.from_numpy(theta), site.stride, site.bilinear, 0)
    marker.hw = (site.h, site.w)
    return model, marker, rng.standard_normal((batch, c, site.h, site.w)).astype(np.float32)


def session_options(threads: int, custom: bool):
    """ORT session options as the latency evaluator uses them (all graph optimisations)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if custom:
        ort_ops.register(so)
    return so


def _time_site(site: Site, forms: list[str], batch: int, threads: int, custom: bool,
               seconds: float = 0.02, rounds: int = 3) -> dict[str, float]:
    """Fastest run of each formulation's site graph (ms), median over interleaved rounds."""
    import onnxruntime as ort

    sessions = {}
    for form in forms:
        model, marker, x = _site_graph(site, batch)
        lower(model, [marker], {0: form})
        sessions[form] = ort.InferenceSession(model.SerializeToString(),
                                              session_options(threads, custom),
                                              providers=["CPUExecutionProvider"])
    feed = {"x": x}
    best: dict[str, list[float]] = {f: [] for f in forms}
    for r in range(rounds):
        for form in forms[r % len(forms):] + forms[:r % len(forms)]:
            s = sessions[form]
            for _ in range(3):
                s.run(None, feed)
            fastest, until = float("inf"), time.perf_counter() + seconds
            while time.perf_counter() < until:
                t0 = time.perf_counter()
                s.run(None, feed)
                fastest = min(fastest, time.perf_counter() - t0)
            best[form].append(fastest * 1e3)
    return {f: statistics.median(v) for f, v in best.items()}


def _picks_file():
    import onnxruntime as ort

    return cache_dir() / f"ort_formulations-{ort.__version__}.json"


def choose(site_map: dict[int, Site], batch: int, threads: int, custom: bool,
           standard_only: bool = False) -> dict[int, str]:
    """The fastest formulation of each site (timed once per shape, then read from the cache)."""
    from shiftnas.evaluators.latency import device_name

    path = _picks_file()
    dev = device_name("cpu", threads)
    custom = custom and not standard_only
    picks: dict[int, str] = {}
    with file_lock(path.with_name(path.name + ".lock")):
        data = json.loads(path.read_text()) if path.is_file() else {}
        table = data.setdefault(dev, {})
        for i, site in site_map.items():
            key = site.key(batch, threads, custom)
            if key not in table:
                times = _time_site(site, candidates(site, custom), batch, threads, custom)
                table[key] = {"pick": min(times, key=times.get), "ms": times}
            picks[i] = table[key]["pick"]
        atomic_write(path, json.dumps(data, indent=1, sort_keys=True))
    return picks


def known_picks(site_map: dict[int, Site], batch: int, threads: int, custom: bool) -> dict[int, str]:
    """The cached choices of `choose`, without timing anything ('?' where none is cached)."""
    from shiftnas.evaluators.latency import device_name

    path = _picks_file()
    data = json.loads(path.read_text()) if path.is_file() else {}
    table = data.get(device_name("cpu", threads), {})
    return {i: (table.get(s.key(batch, threads, custom)) or {}).get("pick", "?")
            for i, s in site_map.items()}


def describe(net, latency: dict[str, Any]) -> str:
    """How a search measured `net`'s latency (its budget's `latency` settings): the runtime,
    and for ONNX Runtime the formulation of its shifts, read from `choose`'s cache (nothing
    is timed): `onnxruntime (fused 2, dwconv 1)`."""
    from shiftnas.config import cfg_from_dict
    from shiftnas.evaluators.latency import LatencyCfg, _prepare

    cfg = cfg_from_dict(LatencyCfg, dict(latency), "latency")
    if cfg.backend != "onnxruntime":
        return cfg.backend
    from shiftnas.searchspace import build_model

    model, _ = _prepare(build_model(net), cfg, torch.device("cpu"))
    x = torch.zeros(cfg.batch_size, net.in_chans, net.input_size, net.input_size)
    site_map = sites(*export_markers(model, x))
    if not site_map:
        return "onnxruntime (no shifts)"
    for custom in ((True, False) if ort_ops.available() else (False,)):
        picks = known_picks(site_map, cfg.batch_size, cfg.threads, custom)
        if "?" not in picks.values():
            note = summary(picks)
            return f"onnxruntime ({note})" if custom else f"onnxruntime (standard ONNX: {note})"
    return "onnxruntime (formulation not recorded on this machine)"
