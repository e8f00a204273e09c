"""Shift blocks against depthwise blocks in ONNX Runtime, every formulation of the shift side by side.

For the csc and bottleneck3 (single placement) blocks, e = 2, BN folded, at the
quick start's widths (16x16 maps) and cifar_shift's (at their stages' map
sizes), batch 1 and 32, one ORT thread, each block is timed with its spatial op

    dw3x3                     a depthwise 3x3 convolution (the baseline)
    identity                  no spatial op at all: the floor of any shift that is not
                              fused into a faster GEMM than ORT's own
    <kind>/<formulation>      kind: fixed-4c, fixed-8c, fixed-5x5 (width >= 25), active
                              (8c offsets plus fractions, |theta| <= 1), sparse (random
                              integer offsets in [-1, 1]); formulation: slices, dwconv,
                              gather, custom, fused (evaluators/onnx_shift.py)

in rounds: each round times every variant once (the fastest run over
`--seconds`), and a variant's time is the median over `--rounds` rounds. The
device's floor: `copy` (bytes moved / measured bandwidth: a large array copied)
and `floor-1x1-macs` (one runtime call that does nothing, plus the block's 1x1 MACs at the
rate ORT reaches on its 2w -> w 1x1 at batch 32).

    python -m benchmarks.ort_shift                  # everything (~15 min on 2 busy cores)
    python -m benchmarks.ort_shift --quick          # batch 1, three widths

Appends long-format rows to `benchmarks/results/ort-shift-<device>.csv` and
draws `results/ort-shift-<device>.png` (best formulation per kind / dw3x3).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks._timing import Row, device_slug, versions, write_rows
from shiftnas.evaluators import onnx_shift
from shiftnas.evaluators.latency import device_name
from shiftnas.kernels import ort_ops, portable
from shiftnas.searchspace import fold_bn
from shiftnas.searchspace.blocks import Bottleneck3Block, CscBlock

QUICKSTART = [(12, 16), (16, 16), (24, 16), (32, 16), (48, 16), (64, 16)]  # (width, map side)
CIFAR = [(32, 32), (48, 32), (64, 16), (96, 8), (128, 8)]
KINDS = ("fixed-4c", "fixed-8c", "fixed-5x5", "active", "sparse")
FORMS = ("slices", "dwconv", "gather", "custom", "fused")


def _op(kind: str, seed: int):
    """The block's spatial-op factory for `kind` (learned offsets drawn, as after training)."""
    if kind == "dw3x3":
        return lambda c, s: nn.Conv2d(c, c, 3, stride=s, padding=1, groups=c, bias=False)
    if kind == "identity":
        return lambda c, s: nn.Identity()
    if kind.startswith("fixed"):
        return lambda c, s: portable.Shift(c, kind.split("-")[1], s)
    g = torch.Generator().manual_seed(seed)

    def make(c: int, s: int) -> nn.Module:
        m = (portable.ActiveShift if kind == "active" else portable.SparseShift)(c, s, "grid", "8c")
        with torch.no_grad():
            if kind == "active":  # the grid plus fractions, inside [-1, 1]
                m.theta.add_(torch.rand(c, 2, generator=g) * 0.9).clamp_(-1, 1)
            else:
                m.theta.copy_(torch.randint(-1, 2, (c, 2), generator=g).float())
        return m

    return make


def _block(family: str, kind: str, w: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    op = _op(kind, seed)
    m = CscBlock(w, w, 2 * w, op) if family == "csc" else Bottleneck3Block(w, w, 2 * w, op)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
    return fold_bn(m.eval())


def _session(block: nn.Module, x: torch.Tensor, form: str | None):
    import onnxruntime as ort

    graph, markers = onnx_shift.export_markers(copy.deepcopy(block), x)
    custom = form in onnx_shift.CUSTOM
    onnx_shift.lower(graph, markers, {m.site: form for m in markers})
    s = ort.InferenceSession(graph.SerializeToString(), onnx_shift.session_options(1, custom),
                             providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = block(x).numpy()
    out = s.run(None, {"input": x.numpy()})[0]
    assert np.abs(out - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max()), form
    return s


def _fastest(s, feed, seconds: float) -> float:
    for _ in range(2):
        s.run(None, feed)
    best, until, n = float("inf"), time.perf_counter() + seconds, 0
    while time.perf_counter() < until or n < 3:
        t0 = time.perf_counter()
        s.run(None, feed)
        best = min(best, time.perf_counter() - t0)
        n += 1
    return best * 1e3


def _bandwidth_gbs() -> float:
    """Copy bandwidth (read + write) of a 64 MiB float array, fastest of 5."""
    a = np.ones(16 << 20, np.float32)
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(5))
    return 2 * a.nbytes / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _conv_rate(w: int, side: int, batch: int = 32) -> float:
    """GMAC/s of ORT on the block's 1x1 convolution 2w -> w at this map size, at batch 32 so
    that the per-call cost does not count (the rate a GEMM-bound block could reach)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    wt = np.random.default_rng(0).standard_normal((w, 2 * w, 1, 1)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "c",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(wt, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    s = ort.InferenceSession(m.SerializeToString(), onnx_shift.session_options(1, False),
                             providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((batch, 2 * w, side, side)).astype(np.float32)
    ms = min(_fastest(s, {"x": x}, 0.1) for _ in range(3))
    return batch * w * 2 * w * side * side / ms / 1e6


def _call_ms(x: torch.Tensor) -> float:
    """The runtime's cost of one call that does nothing: an Identity graph on the same input."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "i",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    s = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
                             .SerializeToString(), onnx_shift.session_options(1, False),
                             providers=["CPUExecutionProvider"])
    return min(_fastest(s, {"x": x.numpy()}, 0.05) for _ in range(3))


def _macs(family: str, w: int, side: int, batch: int) -> int:
    """MACs of the block's 1x1 convolutions (the dw3x3 adds 9 * 2w per pixel)."""
    per_px = 2 * (w * 2 * w) if family == "csc" else w * 2 * w + (2 * w) ** 2 + 2 * w * w
    return batch * per_px * side * side


def _variants(w: int, custom: bool) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = [("dw3x3", None), ("identity", None)]
    for kind in KINDS:
        if kind == "fixed-5x5" and 2 * w < 25:
            continue
        for form in FORMS:
            if form in onnx_shift.CUSTOM and not custom:
                continue
            if form == "gather" and kind == "active":
                continue  # one gather cannot interpolate
            out.append((kind, form))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=0.1, help="timed runs per variant per round")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--families", nargs="+", default=["csc", "bottleneck3"])
    p.add_argument("--quick", action="store_true", help="batch 1, widths 16, 32, 64 at 16x16")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(1)
    shapes = [("quickstart", w, s) for w, s in QUICKSTART] + [("cifar", w, s) for w, s in CIFAR]
    if args.quick:
        shapes, args.batches = [("quickstart", w, 16) for w in (16, 32, 64)], [1]
    custom = ort_ops.available()
    dev, ver = device_name("cpu", 1), versions()
    metric = f"fwd-ort{ort.__version__}"
    slug = device_slug(torch.device("cpu"))
    bw = _bandwidth_gbs()
    load0 = os.getloadavg()
    print(f"{dev}; onnxruntime {ort.__version__}; custom ops: {custom}; copy bandwidth "
          f"{bw:.1f} GB/s; load average {load0[0]:.2f}", flush=True)
    rows: list[Row] = []
    table = []
    for family in args.families:
        for space, w, side in shapes:
            for batch in args.batches:
                x = torch.randn(batch, w, side, side, generator=torch.Generator().manual_seed(0))
                variants = _variants(w, custom)
                sessions = {v: _session(_block(family, v[0], w), x, v[1]) for v in variants}
                feed = {"input": x.numpy()}
                times: dict[tuple[str, str | None], list[float]] = {v: [] for v in variants}
                for r in range(args.rounds):
                    order = variants[r % len(variants):] + variants[:r % len(variants)]
                    for v in order:
                        times[v].append(_fastest(sessions[v], feed, args.seconds))
                med = {v: statistics.median(t) for v, t in times.items()}
                base = med[("dw3x3", None)]
                rate = _conv_rate(w, side)
                macs = _macs(family, w, side, batch)
                call = _call_ms(x)
                floor_mac = call + macs / rate / 1e6  # one runtime call + the 1x1 MACs, ms
                act = batch * w * side * side * 4  # bytes of one block-width activation
                floor_bytes = (2 * act + 2 * 2 * act) / bw / 1e6  # in/out + the 2w middle, ms
                shape = f"{batch}x{w}x{side}x{side}"
                for (kind, form), v in med.items():
                    rows.append(Row(f"{family}-block", kind if form is None else f"{kind}/{form}",
                                    shape, "nchw", "float32", metric, "ms", v, None, None, dev,
                                    ver["torch"], ver["triton"]))
                for name, v in (("floor-1x1-macs", floor_mac), ("floor-bytes", floor_bytes)):
                    rows.append(Row(f"{family}-block", name, shape, "nchw", "float32", metric, "ms",
                                    v, None, None, dev, ver["torch"], ver["triton"]))
                best = {}
                for kind in KINDS:
                    got = {f: med[(k, f)] for (k, f) in med if k == kind}
                    if got:
                        f = min(got, key=got.get)
                        best[kind] = (f, got[f] / base, {ff: t / base for ff, t in got.items()})
                table.append((family, space, w, side, batch, base, med[("identity", None)] / base,
                              floor_mac / base, best))
                line = " ".join(f"{k}={f}:{r_:.2f}" for k, (f, r_, _) in best.items())
                print(f"{family:11s} {space:10s} w{w:<3d} {side}x{side} b{batch:<2d} dw3x3 "
                      f"{base:.4f} ms  identity {med[('identity', None)] / base:.2f}  "
                      f"1x1-floor {floor_mac / base:.2f}  {line}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out / f"ort-shift-{slug}.csv", rows)
    load1 = os.getloadavg()
    print(f"load average at the end {load1[0]:.2f}")
    _plot(table, args.out / f"ort-shift-{slug}.png")
    _markdown(table, custom)


def _plot(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({t[0] for t in table})
    batches = sorted({t[4] for t in table})
    fig, axes = plt.subplots(len(families), len(batches), figsize=(5 * len(batches),
                                                                   3.6 * len(families)),
                             squeeze=False, sharey=True)
    for i, fam in enumerate(families):
        for j, b in enumerate(batches):
            ax = axes[i][j]
            rows = [t for t in table if t[0] == fam and t[4] == b]
            labels = [f"{t[2]}@{t[3]}" for t in rows]
            xs = range(len(rows))
            for kind in KINDS:
                ys = [t[8][kind][1] if kind in t[8] else np.nan for t in rows]
                ax.plot(xs, ys, marker="o", label=f"{kind} (best)")
            ax.plot(xs, [t[6] for t in rows], "k--", label="no spatial op")
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.axhline(0.8, color="grey", lw=0.8, ls=":")
            ax.set_xticks(list(xs), labels, rotation=45, fontsize=7)
            ax.set_title(f"{fam}, batch {b}", fontsize=9)
            ax.set_ylabel("time / dw3x3 block")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _markdown(table, custom: bool) -> None:
    print("\n| block | space | width @ map | batch | dw3x3 ms | no spatial op | "
          + " | ".join(KINDS) + " |")
    print("|---|---|---|---:|---:|---:|" + "---|" * len(KINDS))
    for fam, space, w, side, b, base, ident, _, best in table:
        cells = [f"{best[k][0]} {best[k][1]:.2f}" if k in best else "-" for k in KINDS]
        print(f"| {fam} | {space} | {w} @ {side}x{side} | {b} | {base:.4f} | {ident:.2f} | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
