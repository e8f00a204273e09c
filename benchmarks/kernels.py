"""Shift kernels side by side: integer shift, shift + 1x1 conv, the csc block, active shift.

Run from the repository root (the module name `kernels` is taken by the package):

    python -m benchmarks.kernels                 # GPU presets, fp16 (or the CPU set, fp32)
    python -m benchmarks.kernels --quick         # fewer repetitions (and shapes on the CPU)
    python -m benchmarks.kernels --threads 2     # CPU: torch threads (fixed, so timings compare)

On a GPU (bf16, channels-last), at each shape: (a) the Triton integer shift
vs `clone` (forward; forward + backward against two copies) vs the reference;
(b) the fused shift + 1x1 kernel vs cuDNN's 1x1 vs shift-then-1x1 vs
depthwise 3x3 + 1x1; (c) the active shift beside the Triton integer shift;
(d) the csc block (C -> M = C -> C) with the shift vs the same block with a
depthwise 3x3: inference with BN folded (eager, and as `CscInference`: cuDNN's
first 1x1 and one fused kernel) and a training step. Every comparison is
timed twice: eagerly (`fwd`, `fwd+bwd`: events around each call, the host's
launch overhead included, as a network run op by op sees it) and replayed
as a CUDA graph (`fwd_graph`, `fwd+bwd_graph`: the device time alone). Each
row carries the operation's floor (`benchmarks.floors`: bytes / nominal HBM
bandwidth, FLOPs / nominal tensor-core rate) and its ratio to it.

On the CPU, fp32, in NCHW (the layout the CPU blocks run in: the latency
evaluator's `channels_last: auto` is off on the CPU) and in channels-last:
(a) every shift candidate (`benchmarks._cpu_candidates`) vs `clone` of the
same tensor, forward and forward + backward, 8c; the shipped paths also for 4c
and 5x5; torch.compile's compile time per new shape; (b) conv1x1 after the
shift, the folded GEMM candidate among them; (c) the csc block
(conv1x1 -> BN -> ReLU -> SHIFT -> conv1x1 -> BN -> ReLU, + identity) with
the shift on each backend vs the same block with a depthwise 3x3: inference
with BN folded (as the latency evaluator runs it) and training forward +
backward, at batch 1 and 32.

Providers that are compared are timed interleaved in one loop (median of
round-robin repetitions over rotating inputs larger than the caches). Rows are
appended to `benchmarks/results/kernels-<device>.csv` (columns: `_timing.Row`'s,
then `mbytes`, `gflop`, `floor_ms`, `x_floor`; empty on the CPU); a table of
ratios to each comparison's baseline and to the floor is printed. The seconds
spent compiling and autotuning Triton kernels are printed last.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import _cpu_candidates as cand
from benchmarks import floors
from benchmarks._timing import (
    Row,
    device_slug,
    rotating_inputs,
    time_graphed,
    time_interleaved,
    versions,
    write_rows,
)
from shiftnas.evaluators.latency import device_name
from shiftnas.kernels import ActiveShift, Shift, SparseShift, _cpu, portable
from shiftnas.kernels import reference as ref
from shiftnas.searchspace.blocks import CscBlock
from shiftnas.searchspace.rewrite import fold_bn, fuse_shift_conv

GPU_SHAPES = [(256, 64, 32, 32), (64, 128, 56, 56), (64, 512, 14, 14)]
# CIFAR ShiftResNet-20, e = 3: the middle widths 48 / 96 / 192 at 32x32 / 16x16 / 8x8.
CPU_SHAPES = [(b, c, s, s) for b in (1, 32) for c, s in ((48, 32), (96, 16), (192, 8))]
CPU_EXTRA = [(b, c, s, s) for b in (1, 32) for c, s in ((96, 32), (192, 16))]
# csc blocks: (channels, middle width, map side), e = 3.
CPU_BLOCKS = [(16, 48, 32), (32, 96, 16), (64, 192, 8)]
BASELINE = {"shift": "clone", "shift_conv1x1": "conv1x1", "active_shift": "triton_integer",
            "csc_block": "dw3x3"}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _grad_step(f: Callable[..., torch.Tensor]) -> Callable[..., object]:
    """`f(*leaves)` then its backward for the output gradient `g` (the last input)."""

    def step(*args):
        *leaves, g = args
        # allow_unused: only the depthwise provider reads its depthwise weight.
        return torch.autograd.grad(f(*leaves), leaves, g, allow_unused=True)

    return step


def _shape_str(shape) -> str:
    return "x".join(map(str, shape))


@dataclass
class KernelRow(Row):
    """A timing row with the operation's floor (`benchmarks.floors`; empty without nominal rates)."""

    mbytes: float | None = None  # the bytes the operation must move, 1e6
    gflop: float | None = None  # the FLOPs it must do, 1e9
    floor_ms: float | None = None  # max(bytes / nominal bandwidth, FLOPs / nominal peak)
    x_floor: float | None = None  # median / floor_ms


class Bench:
    """Collects rows; `compare` times one set of providers side by side."""

    def __init__(self, device: torch.device, dtype: torch.dtype, label: str, reps, quick: bool,
                 graphs: bool = False):
        self.device, self.dtype, self.label, self.reps, self.quick = device, dtype, label, reps, quick
        self.graphs = graphs and device.type == "cuda"
        self.rates = floors.rates_for(label) if device.type == "cuda" else None
        self.ver = versions()
        self.rows: list[KernelRow] = []

    def compare(self, kernel: str, shape, layout: str, metric: str,
                fns: dict[str, Callable], make: Callable, grad: bool = False,
                cost: floors.Cost | None = None, eager_only: tuple[str, ...] = ()) -> None:
        """Time `fns` side by side (and, on a GPU, as CUDA graphs, except `eager_only`)."""
        sets = rotating_inputs(make, self.device)
        reps, warmup = self.reps(shape, metric)
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            timings = time_interleaved(fns, sets, self.device, reps, warmup)
        for name, t in timings.items():
            self.add(kernel, name, shape, layout, metric, "ms", t.median, t.p20, t.p80, cost)
        if self.graphs:
            with ctx:
                graphed = time_graphed({k: f for k, f in fns.items() if k not in eager_only}, sets,
                                       self.device, reps)
            for name, t in graphed.items():
                if t is not None:
                    self.add(kernel, name, shape, layout, metric + "_graph", "ms", t.median, t.p20,
                             t.p80, cost)

    def add(self, kernel, provider, shape, layout, metric, unit, median, p20=None, p80=None,
            cost: floors.Cost | None = None):
        row = KernelRow(kernel, provider, _shape_str(shape), layout,
                        str(self.dtype).removeprefix("torch."), metric, unit, median, p20, p80,
                        self.label, self.ver["torch"], self.ver["triton"])
        if cost is not None:
            row.mbytes, row.gflop = cost.nbytes / 1e6, cost.flops / 1e9
            if self.rates is not None and unit == "ms":
                size = torch.empty((), dtype=self.dtype).element_size()
                row.floor_ms = self.rates.floor_ms(cost.nbytes, cost.flops, size)
                row.x_floor = median / row.floor_ms
        self.rows.append(row)


# ----------------------------------------------------------------------------
# CPU
# ----------------------------------------------------------------------------


def _x_maker(shape, dtype, fmt, grad=False):
    def make():
        x = torch.randn(shape, dtype=dtype).to(memory_format=fmt)
        if not grad:
            return (x,)
        n, c, h, w = shape
        return x.requires_grad_(), torch.randn(n, c, h, w, dtype=dtype).to(memory_format=fmt)
    return make


def _compile_time(bench: Bench, f, shape, layout, fmt, tag: str, grad: bool) -> None:
    """The first call of a compiled function on a new shape: Dynamo + Inductor + the C++ build."""
    x = torch.randn(shape, dtype=bench.dtype).to(memory_format=fmt)
    t0 = time.perf_counter()
    if grad:
        y = f(x.requires_grad_())
        y.backward(torch.ones_like(y))
    else:
        with torch.no_grad():
            f(x)
    bench.add("shift", tag, shape, layout, "compile" + ("_fwd+bwd" if grad else ""), "s",
              time.perf_counter() - t0)


def bench_cpu_shift(bench: Bench, shape, layout: str, compile_: bool) -> None:
    """(a) The shift alone: every candidate against `clone`, forward and forward + backward."""
    n, c, h, w = shape
    fmt, plan, dtype = LAYOUTS[layout], ref.shift_plan(c, "8c"), bench.dtype
    fwd = {
        "clone": lambda x: x.clone(memory_format=fmt),
        "reference": lambda x: ref.shift(x, plan, 1),
        "cpu": lambda x: _cpu.shift_fn(x, plan, 1),  # the default: the C++ kernel
        "runs": lambda x: _cpu.shift_runs(x, plan, 1),  # its torch-only fallback
        "portable": lambda x: cand.pad_slices_cat(x, plan, 1),
        "pad_runs": lambda x: cand.pad_runs(x, plan, 1),
        "gather": lambda x: cand.gather(x, plan, 1),
    }
    if layout == "nchw":
        fwd["grid"] = lambda x: cand.grid(x, plan, 1)
    step = {
        "clone": lambda x: x.clone(memory_format=fmt),
        "reference": lambda x: ref.shift_fn(x, plan, 1),
        "cpu": lambda x: _cpu.shift_fn(x, plan, 1),
        "runs": lambda x: cand.runs_fn(x, plan, 1),
        "portable": lambda x: cand.pad_slices_cat(x, plan, 1),
        "pad_runs": lambda x: cand.pad_runs(x, plan, 1),
        "gather": lambda x: cand.gather(x, plan, 1),
    }
    if compile_ and layout == "nchw" and (not bench.quick or shape[1:] == (96, 16, 16)):
        static, dynamic = cand.compiled(False), cand.compiled(True)
        _compile_time(bench, lambda x: static(x, plan, 1), shape, layout, fmt, "compiled", False)
        _compile_time(bench, lambda x: static(x, plan, 1), shape, layout, fmt, "compiled", True)
        fwd["compiled"] = lambda x: static(x, plan, 1)
        step["compiled"] = lambda x: static(x, plan, 1)
        if n == 1:  # at batch 32, dynamic=True wrote 2.6 MB of C++ that gcc had not compiled in 18 min
            _compile_time(bench, lambda x: dynamic(x, plan, 1), shape, layout, fmt,
                          "compiled_dyn", False)
            fwd["compiled_dyn"] = lambda x: dynamic(x, plan, 1)
    bench.compare("shift", shape, layout, "fwd", fwd, _x_maker(shape, dtype, fmt))
    bench.compare("shift", shape, layout, "fwd+bwd", {k: _grad_step(f) for k, f in step.items()},
                  _x_maker(shape, dtype, fmt, grad=True), grad=True)
    # Other neighbourhoods: the shipped paths only.
    for nbhd in ("4c", "5x5"):
        p = ref.shift_plan(c, nbhd)
        bench.compare(f"shift_{nbhd}", shape, layout, "fwd", {
            "clone": lambda x: x.clone(memory_format=fmt),
            "reference": lambda x, p=p: ref.shift(x, p, 1),
            "cpu": lambda x, p=p: _cpu.shift_fn(x, p, 1),
            "runs": lambda x, p=p: _cpu.shift_runs(x, p, 1),
        }, _x_maker(shape, dtype, fmt))


def bench_cpu_conv(bench: Bench, shape, layout: str) -> None:
    """(b) conv1x1 (C -> C) reading the shift: shift then conv, the folded GEMM, dw3x3 instead."""
    n, c, h, w = shape
    fmt, plan, dtype = LAYOUTS[layout], ref.shift_plan(c, "8c"), bench.dtype
    wt = (torch.randn(c, c, 1, 1, dtype=dtype) / c**0.5).to(memory_format=fmt)
    wd = torch.randn(c, 1, 3, 3, dtype=dtype) / 3
    fns = {
        "conv1x1": lambda x: F.conv2d(x, wt),
        "cpu_shift+conv1x1": lambda x: F.conv2d(_cpu.shift_fn(x, plan, 1), wt),
        "ref_shift+conv1x1": lambda x: F.conv2d(ref.shift(x, plan, 1), wt),
        "dw3x3+conv1x1": lambda x: F.conv2d(F.conv2d(x, wd, padding=1, groups=c), wt),
    }
    if layout == "nchw":
        fns["gemm_fold"] = lambda x: cand.gemm_fold(x, plan, wt)
    bench.compare("shift_conv1x1", shape, layout, "fwd", fns, _x_maker(shape, dtype, fmt))


def csc_block(c: int, mid: int, op: str, backend: str | None = None) -> nn.Module:
    """A csc block as the builder makes it (shift + conv2 fused into ShiftConv1x1)."""
    fixed = functools.partial(Shift, backend=backend)
    factory = portable.spatial(op, "8c", shifts=(fixed, ActiveShift, SparseShift))
    block = CscBlock(c, c, mid, factory)
    for m in block.modules():  # BN statistics of a trained network, not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return fuse_shift_conv(block)


def bench_cpu_block(bench: Bench, c: int, mid: int, side: int, batch: int, layout: str) -> None:
    """(c) csc block, shift on each backend vs depthwise 3x3: inference (BN folded) and training."""
    fmt, dtype = LAYOUTS[layout], bench.dtype
    shape = (batch, c, side, side)
    kinds = {"cpu": ("fixed", "cpu"), "reference": ("fixed", "reference"),
             "dw3x3": ("dwconv3x3", None)}
    torch.manual_seed(0)
    train = {k: csc_block(c, mid, op, be).to(dtype=dtype, memory_format=fmt)
             for k, (op, be) in kinds.items()}
    infer = {k: fold_bn(m) for k, m in train.items()}
    kernel = f"csc_block_m{mid}"
    bench.compare(kernel, shape, layout, "fwd", {k: m for k, m in infer.items()},
                  _x_maker(shape, dtype, fmt))

    def step(m):
        def run(x, g):
            m.zero_grad(set_to_none=True)
            m(x).backward(g)
        return run

    bench.compare(kernel, shape, layout, "fwd+bwd", {k: step(m) for k, m in train.items()},
                  _x_maker(shape, dtype, fmt, grad=True), grad=True)


def run_cpu(bench: Bench, compile_: bool) -> None:
    cand.check()
    if compile_:  # compile times of new shapes, as a search meets them: no on-disk caches
        import torch._functorch.config
        import torch._inductor.config

        torch._inductor.config.fx_graph_cache = False
        torch._functorch.config.enable_autograd_cache = False
    _cpu.native_available()  # build the kernel before any timing
    shapes = CPU_SHAPES if bench.quick else CPU_SHAPES + CPU_EXTRA
    for layout in LAYOUTS:
        for shape in shapes:
            bench_cpu_shift(bench, shape, layout, compile_)
            bench_cpu_conv(bench, shape, layout)
            print(f"  shift {layout} {_shape_str(shape)} done", flush=True)
        for batch in (1, 32):
            for c, mid, side in CPU_BLOCKS:
                bench_cpu_block(bench, c, mid, side, batch, layout)
                print(f"  csc block {layout} batch {batch} m{mid} done", flush=True)


# ----------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------


def _clone_twice(x, g):
    """The floor of a shift's forward + backward: two copies (x, then the output gradient)."""
    return x.clone(memory_format=torch.channels_last), g.clone(memory_format=torch.channels_last)


def run_gpu(bench: Bench, shapes=GPU_SHAPES) -> None:
    from shiftnas.kernels import triton_ops

    cl, dtype, device = torch.channels_last, bench.dtype, bench.device
    size = torch.empty((), dtype=dtype).element_size()
    for shape in shapes:
        n, c, h, w = shape
        plan = ref.shift_plan(c, "8c")

        def cost(kernel, metric, shape=shape):
            return floors.cost(kernel, metric, shape, size)

        def x_only(shape=shape):
            return (torch.randn(shape, device=device, dtype=dtype).to(memory_format=cl),)

        def x_grad(shape=shape):
            x = torch.randn(shape, device=device, dtype=dtype).to(memory_format=cl).requires_grad_()
            return x, torch.randn(shape, device=device, dtype=dtype).to(memory_format=cl)

        # (a) integer shift, channels-last: forward against a copy, fwd + bwd against two.
        bench.compare("shift", shape, "channels_last", "fwd", {
            "clone": lambda x: x.clone(memory_format=cl),
            "reference": lambda x, plan=plan: ref.shift(x, plan, 1),
            "triton": lambda x, plan=plan: triton_ops.shift(x, plan, 1),
        }, x_only, cost=cost("shift", "fwd"))
        bench.compare("shift", shape, "channels_last", "fwd+bwd", {
            "clone": _clone_twice,
            "reference": _grad_step(lambda x, plan=plan: ref.shift_fn(x, plan, 1)),
            "triton": _grad_step(lambda x, plan=plan: triton_ops.shift(x, plan, 1)),
        }, x_grad, grad=True, cost=cost("shift", "fwd+bwd"))

        # (b) shift + 1x1 conv, C -> C, and the alternatives a block could use instead.
        def conv_inputs(grad: bool, shape=shape, c=c):
            def make():
                x = torch.randn(shape, device=device, dtype=dtype).to(memory_format=cl)
                wt = (torch.randn(c, c, 1, 1, device=device, dtype=dtype) / c**0.5).to(memory_format=cl)
                wd = torch.randn(c, 1, 3, 3, device=device, dtype=dtype) / 3
                if not grad:
                    return x, wt, wd
                g = torch.randn(shape, device=device, dtype=dtype).to(memory_format=cl)
                return x.requires_grad_(), wt.requires_grad_(), wd.requires_grad_(), g
            return make

        providers = {
            "conv1x1": lambda x, wt, wd: F.conv2d(x, wt),
            "ref_shift+conv1x1": lambda x, wt, wd, plan=plan: F.conv2d(ref.shift_fn(x, plan, 1), wt),
            "dw3x3+conv1x1": lambda x, wt, wd, c=c: F.conv2d(F.conv2d(x, wd, padding=1, groups=c), wt),
            "triton_shift+conv1x1": lambda x, wt, wd, plan=plan: F.conv2d(triton_ops.shift(x, plan, 1), wt),
            "triton_fused": lambda x, wt, wd, plan=plan: triton_ops.shift_conv1x1(x, plan, 1, wt),
        }
        bench.compare("shift_conv1x1", shape, "channels_last", "fwd", providers, conv_inputs(False),
                      cost=cost("shift_conv1x1", "fwd"))
        bench.compare("shift_conv1x1", shape, "channels_last", "fwd+bwd",
                      {k: _grad_step(f) for k, f in providers.items()}, conv_inputs(True), grad=True,
                      cost=cost("shift_conv1x1", "fwd+bwd"))

        # (c) active shift (theta in fp32 as a module keeps it) beside the integer shift.
        def active_inputs(shape=shape, c=c):
            x = torch.randn(shape, device=device, dtype=dtype).to(memory_format=cl).requires_grad_()
            theta = torch.empty(c, 2, device=device).uniform_(-1, 1).requires_grad_()
            return x, theta, torch.randn(shape, device=device, dtype=dtype).to(memory_format=cl)

        impls = {"reference": ref.active_shift, "triton": triton_ops.active_shift,
                 "triton_integer": lambda x, t, s, plan=plan: triton_ops.shift(x, plan, s)}
        # (The reference reads its offsets on the host: it cannot be captured in a graph.)
        bench.compare("active_shift", shape, "channels_last", "fwd",
                      {k: (lambda x, t, g, f=f: f(x, t, 1)) for k, f in impls.items()}, active_inputs,
                      cost=cost("active_shift", "fwd"), eager_only=("reference",))
        bench.compare("active_shift", shape, "channels_last", "fwd+bwd",
                      {k: _grad_step(lambda x, t, f=f: f(x, t, 1)) for k, f in impls.items()},
                      active_inputs, grad=True, cost=cost("active_shift", "fwd+bwd"),
                      eager_only=("reference",))

        # (d) the csc block, C -> M = C -> C, shift vs depthwise 3x3.
        bench_gpu_block(bench, shape)
        print(f"  {_shape_str(shape)} done", flush=True)


def bench_gpu_block(bench: Bench, shape) -> None:
    """csc block at equal widths: inference (BN folded; eager, and as two kernels) and training."""
    from shiftnas.searchspace.rewrite import fuse_blocks

    n, c, h, w = shape
    cl, dtype, device = torch.channels_last, bench.dtype, bench.device
    size = torch.empty((), dtype=dtype).element_size()
    torch.manual_seed(0)
    train = {"dw3x3": csc_block(c, c, "dwconv3x3"), "shift": csc_block(c, c, "fixed")}
    train = {k: m.to(device=device, dtype=dtype, memory_format=cl) for k, m in train.items()}
    infer = {k: fold_bn(m) for k, m in train.items()}
    infer["shift_block"] = fuse_blocks(fold_bn(train["shift"]))

    def x_only():
        return (torch.randn(shape, device=device, dtype=dtype).to(memory_format=cl),)

    def x_grad():
        x = torch.randn(shape, device=device, dtype=dtype).to(memory_format=cl).requires_grad_()
        return x, torch.randn(shape, device=device, dtype=dtype).to(memory_format=cl)

    bench.compare("csc_block", shape, "channels_last", "fwd", dict(infer), x_only,
                  cost=floors.cost("csc_block", "fwd", shape, size))

    def step(m):
        def run(x, g):
            m.zero_grad(set_to_none=True)
            m(x).backward(g)
        return run

    bench.compare("csc_block", shape, "channels_last", "fwd+bwd", {k: step(m) for k, m in train.items()},
                  x_grad, grad=True, cost=floors.cost("csc_block", "fwd+bwd", shape, size))


# ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions; fewer shapes on the CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                        help="default: bfloat16 on a GPU (what autocast picks there), float32 on the CPU")
    parser.add_argument("--no-graphs", action="store_true",
                        help="GPU: skip the CUDA-graph timings (device time without launch overhead)")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1),
                        help="torch CPU threads (fixed, so CPU timings compare)")
    parser.add_argument("--no-compile", action="store_true",
                        help="CPU: skip the torch.compile candidate (10-60 s of compiling per "
                             "shape; with --quick it runs at 96x16x16 only)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--suite", choices=["auto", "cpu", "gpu"], default="auto",
                        help="which set of comparisons (auto: by device); `--suite gpu --device cpu` "
                             "runs the GPU set under the Triton interpreter (TRITON_INTERPRET=1), a smoke test")
    parser.add_argument("--shapes", nargs="+", default=None, metavar="NxCxHxW",
                        help="GPU suite: these activation shapes instead of the presets")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (and no warm-up)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if gpu else "float32"))
    torch.set_num_threads(args.threads)

    def reps(shape, metric):
        if args.reps is not None:
            return args.reps, 0
        if gpu:
            return (30, 5) if args.quick else (200, 20)
        small = shape[0] == 1  # microseconds: many repetitions cost nothing
        base = (100, 10) if small else (15, 3)
        return base if args.quick else (base[0] * 3, base[1] * 2)

    label = device_name(device, args.threads)
    bench = Bench(device, dtype, label, reps, args.quick, graphs=not args.no_graphs)
    print(f"{label}, torch {torch.__version__}, {dtype}", flush=True)
    gpu_suite = args.suite == "gpu" or (args.suite == "auto" and gpu)
    if gpu_suite:
        from shiftnas.kernels import triton_ops

        start = triton_ops.compile_seconds()
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else GPU_SHAPES
        run_gpu(bench, shapes)
    else:
        run_cpu(bench, not args.no_compile)
    path = args.out / f"kernels-{device_slug(device)}.csv"
    write_rows(path, bench.rows)
    print_table(bench.rows)
    if bench.rates is not None:
        r = bench.rates
        print(f"\nfloor: max(bytes / {r.bandwidth / 1e12:.2f} TB/s, FLOPs / {r.flops16 / 1e12:.0f} "
              f"TFLOP/s) -- nominal {r.name} rates (fp32: {r.flops32 / 1e12:.0f} TFLOP/s TF32), not measured")
    if gpu_suite:
        st = triton_ops.stats()
        print(f"Triton compile + autotune: {triton_ops.compile_seconds() - start:.1f} s "
              f"({st.tuned} shape classes tuned, {st.reused} reused from the choice file)")
    print(f"\n{len(bench.rows)} rows appended to {path}")


def print_table(rows: list[KernelRow]) -> None:
    """Median per provider, its ratio to the comparison's baseline provider and to the floor."""
    def family(kernel: str) -> str:  # csc_block_m48 -> csc_block, shift_4c -> shift
        return max((k for k in BASELINE if kernel.startswith(k)), key=len)

    base = {(r.kernel, r.shape, r.layout, r.metric): r.median for r in rows
            if r.provider == BASELINE[family(r.kernel)]}
    print(f"{'kernel':<16} {'shape':<14} {'layout':<13} {'metric':<16} {'provider':<20} "
          f"{'median':>10} {'x base':>7} {'floor':>9} {'x floor':>7}")
    for r in rows:
        b = base.get((r.kernel, r.shape, r.layout, r.metric))
        ratio = f"{r.median / b:7.2f}" if b else " " * 7
        floor = f"{r.floor_ms:7.3f}ms {r.x_floor:7.2f}" if r.floor_ms else ""
        print(f"{r.kernel:<16} {r.shape:<14} {r.layout:<13} {r.metric:<16} {r.provider:<20} "
              f"{r.median:>8.3f}{r.unit:>2} {ratio} {floor}".rstrip())


if __name__ == "__main__":
    main()
