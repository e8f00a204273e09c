"""Shift kernels side by side: integer shift, fused shift + 1x1 conv, active shift.

Run from the repository root (the module name `kernels` is taken by the package):

    python -m benchmarks.kernels            # GPU presets, fp16, 200 repetitions
    python -m benchmarks.kernels --quick    # fewer repetitions (smaller shapes on the CPU)

Compared, at each shape:
  (a) `shift`: the Triton integer shift vs `clone` of the same tensor (the memory
      floor: one read and one write) vs the reference slice copies;
  (b) `shift_conv1x1`: the fused Triton kernel vs a plain 1x1 conv (channels-last)
      vs shift-then-1x1 vs depthwise 3x3 + 1x1, forward and forward+backward;
  (c) `active_shift`: Triton vs reference, forward and forward+backward.
On the CPU only the torch providers run (the Triton interpreter is not a
speed). Results go to `benchmarks/results/kernels-<device>.csv`, one row per
(kernel, provider, shape, dtype, metric); a table with ratios is printed.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks._timing import (
    Row,
    device_name,
    device_slug,
    rotating_inputs,
    time_fn,
    versions,
    write_rows,
)
from shiftnas.kernels import reference as ref

GPU_SHAPES = [(256, 64, 32, 32), (64, 128, 56, 56), (64, 512, 14, 14)]
CPU_SHAPES = [(32, 64, 32, 32), (8, 128, 56, 56), (8, 512, 14, 14)]
CPU_QUICK_SHAPES = [(8, 64, 32, 32), (2, 128, 56, 56), (4, 512, 14, 14)]
BASELINE = {"shift": "clone", "shift_conv1x1": "conv1x1", "active_shift": "reference"}
NBHD = "8c"


def _grad_step(f: Callable[..., torch.Tensor]) -> Callable[..., object]:
    """`f(*leaves)` then its backward for the output gradient `g` (the last input)."""

    def step(*args):
        *leaves, g = args
        # allow_unused: only the depthwise provider reads its depthwise weight.
        return torch.autograd.grad(f(*leaves), leaves, g, allow_unused=True)

    return step


def bench_shape(shape, dtype, device, reps, warmup, use_triton) -> list[tuple[str, str, str, object]]:
    """(kernel, provider, metric, Timing) for every comparison at one shape."""
    n, c, h, w = shape
    plan = ref.shift_plan(c, NBHD)
    cl = torch.channels_last
    out = []

    def x_only():
        return (torch.randn(shape, device=device, dtype=dtype).to(memory_format=cl),)

    def run(kernel, provider, metric, fn, make):
        sets = rotating_inputs(make, device)
        out.append((kernel, provider, metric, time_fn(fn, sets, device, reps, warmup)))
        del sets

    # (a) integer shift: forward, channels-last (the layout the fused path and cuDNN prefer).
    run("shift", "clone", "fwd", lambda x: x.clone(memory_format=cl), x_only)
    run("shift", "reference", "fwd", lambda x: ref.shift(x, plan, 1), x_only)
    if use_triton:
        from shiftnas.kernels import triton_ops

        run("shift", "triton", "fwd", lambda x: triton_ops.shift(x, plan, 1), x_only)

    # (b) shift + 1x1 conv, C -> C, and the alternatives a block could use instead.
    def conv_inputs(grad: bool):
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
        "ref_shift+conv1x1": lambda x, wt, wd: F.conv2d(ref.shift_fn(x, plan, 1), wt),
        "dw3x3+conv1x1": lambda x, wt, wd: F.conv2d(F.conv2d(x, wd, padding=1, groups=c), wt),
    }
    if use_triton:
        providers["triton_shift+conv1x1"] = lambda x, wt, wd: F.conv2d(triton_ops.shift(x, plan, 1), wt)
        providers["triton_fused"] = lambda x, wt, wd: triton_ops.shift_conv1x1(x, plan, 1, wt)
    for name, f in providers.items():
        with torch.no_grad():
            run("shift_conv1x1", name, "fwd", f, conv_inputs(False))
        run("shift_conv1x1", name, "fwd+bwd", _grad_step(f), conv_inputs(True))

    # (c) active shift, theta in fp32 as a module keeps it.
    def active_inputs():
        x = torch.randn(shape, device=device, dtype=dtype).to(memory_format=cl).requires_grad_()
        theta = torch.empty(c, 2, device=device).uniform_(-1, 1).requires_grad_()
        return x, theta, torch.randn(shape, device=device, dtype=dtype).to(memory_format=cl)

    impls = {"reference": ref.active_shift}
    if use_triton:
        impls["triton"] = triton_ops.active_shift
    for name, f in impls.items():
        with torch.no_grad():
            run("active_shift", name, "fwd", lambda x, t, g, f=f: f(x, t, 1), active_inputs)
        run("active_shift", name, "fwd+bwd", _grad_step(lambda x, t, f=f: f(x, t, 1)), active_inputs)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions; small shapes on the CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                        help="default: float16 on a GPU, float32 on the CPU")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1),
                        help="torch CPU threads (fixed, so CPU timings compare)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("float16" if gpu else "float32"))
    torch.set_num_threads(args.threads)
    shapes = GPU_SHAPES if gpu else (CPU_QUICK_SHAPES if args.quick else CPU_SHAPES)
    reps, warmup = (30, 5) if args.quick else (200, 20)
    if not gpu:
        reps, warmup = (15, 5) if args.quick else (30, 10)

    ver = versions()
    label = device_name(device) + ("" if gpu else f" ({args.threads} threads)")
    rows: list[Row] = []
    for shape in shapes:
        for kernel, provider, metric, t in bench_shape(shape, dtype, device, reps, warmup, gpu):
            rows.append(Row(kernel, provider, "x".join(map(str, shape)), str(dtype).removeprefix("torch."),
                            metric, "ms", t.median, t.p20, t.p80, label, ver["torch"], ver["triton"]))
    path = args.out / f"kernels-{device_slug(device)}.csv"
    write_rows(path, rows)
    print_table(rows)
    print(f"\n{len(rows)} rows -> {path}")


def print_table(rows: list[Row]) -> None:
    """Median per provider and its ratio to the kernel's baseline provider."""
    base = {(r.kernel, r.shape, r.metric): r.median for r in rows if r.provider == BASELINE[r.kernel]}
    order = {k: i for i, k in enumerate(BASELINE)}
    rows = sorted(rows, key=lambda r: (order[r.kernel], r.shape, r.metric))  # stable: providers keep order
    print(f"{'kernel':<14} {'shape':<15} {'metric':<8} {'provider':<21} {'median ms':>10} {'x base':>7}")
    for r in rows:
        ratio = r.median / base[(r.kernel, r.shape, r.metric)]
        print(f"{r.kernel:<14} {r.shape:<15} {r.metric:<8} {r.provider:<21} {r.median:>10.3f} {ratio:>7.2f}")


if __name__ == "__main__":
    main()
