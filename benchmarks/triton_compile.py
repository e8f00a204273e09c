"""Shared memory, registers and spills of every Triton kernel, compiled for sm_80 / sm_90 without a GPU.

Run from the repository root, without TRITON_INTERPRET:

    python -m benchmarks.triton_compile                      # both targets, a table
    python -m benchmarks.triton_compile --target 90 --csv benchmarks/results/triton-compile.csv
    python -m benchmarks.triton_compile --target 90 --sass   # + SASS census, channels-last launch

Compiles the set of `shiftnas.kernels._triton_compile` (every entry kernel x
GPU config x dtype x target) to cubins with ptxas and prints, per
combination, the shared memory per block, the registers per thread, the
spill bytes ptxas reports, and the warps / pipeline stages; a config above
the target's shared-memory limit would fail at launch and is flagged.
`--csv` appends long-format rows (one per combination and metric), so a
change that makes a kernel spill or outgrow shared memory shows before a GPU
is at hand. `--sass` compiles as a channels-last launch specialises the
kernels (unit channel strides, 16-divisible channel counts) and also counts,
in each cubin's SASS, the instructions that tell whether a kernel runs on
Hopper's fast paths (wgmma `HGMMA`, 16-byte `LDG.E.128` / `LDGSTS...128`
(cp.async) / `STG.E.128`, TMA, and `LDL`/`STL` local memory), flagging the
16-bit kernels that miss one (`_triton_compile.HOPPER_EXPECTATIONS`).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import triton

from shiftnas.kernels import _triton_compile as aot

FIELDS = ["kernel", "config", "dtype", "target", "metric", "value", "triton", "revision", "timestamp"]
METRICS = {  # CSV metric -> Result attribute
    "compiles": None, "shared_bytes": "shared", "registers": "registers",
    "spill_store_bytes": "spill_stores", "spill_load_bytes": "spill_loads",
    "num_warps": "num_warps", "num_stages": "num_stages", "compile_s": "seconds",
}
SASS_METRICS = tuple(aot.SASS_CLASSES)  # sass_<class>: static instruction counts (with --sass)


def revision() -> str:
    """`git describe`-like label of the checkout: short hash, `-dirty` with local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _flags(r: aot.Result) -> str:
    if r.error is not None:
        return "DOES NOT COMPILE: " + r.error.splitlines()[0][:80]
    flags = []
    if r.over_shared_limit:
        flags.append(f"OVER sm_{r.job.target} shared limit ({aot.SHARED_LIMIT[r.job.target]})")
    if r.spills:
        flags.append("spills")
    flags += [p.split(": ", 1)[1].split(" (")[0] for p in aot.hopper_problems([r])
              if "spills" not in p]
    return ", ".join(flags)


def _sass(r: aot.Result) -> str:
    if not r.sass:
        return ""
    s = r.sass
    return (f"HGMMA {s['hgmma']} HMMA {s['mma']} LDG128 {s['ldg128']} LDGSTS128 {s['ldgsts128']} "
            f"narrow-ld {s['ldg_narrow'] + s['ldgsts_narrow']} STG128 {s['stg128']} "
            f"narrow-st {s['stg_narrow']} TMA {s['tma']} LDL/STL {s['local']}")


def _num(v) -> str:
    return "-" if v is None else str(v)


def print_table(results: list[aot.Result]) -> None:
    head = ("kernel", "config", "dtype", "target", "shared B", "regs", "spill st/ld B", "warps",
            "stages", "s", "SASS (static counts)", "")
    rows = [(r.job.kernel, r.job.config, r.job.dtype, f"sm_{r.job.target}", _num(r.shared),
             _num(r.registers), f"{_num(r.spill_stores)}/{_num(r.spill_loads)}", _num(r.num_warps),
             _num(r.num_stages), f"{r.seconds:.1f}", _sass(r), _flags(r)) for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in (head, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def headline(results: list[aot.Result], wall: float, workers: int) -> str:
    ok = [r for r in results if r.error is None]
    top = max(ok, key=lambda r: r.shared or 0, default=None)
    spilling = [r for r in ok if r.spills]
    over = [r for r in ok if r.over_shared_limit]
    lines = [f"{len(results)} kernel x config x dtype x target combinations, {len(ok)} compiled "
             f"to cubin in {wall:.0f} s wall (workers: {workers}; {sum(r.seconds for r in results):.0f} s "
             f"summed over jobs), triton {triton.__version__}."]
    if top is not None:
        lines.append(f"Max shared memory: {top.shared} B ({top.job}); limits "
                     + ", ".join(f"sm_{t} {b} B" for t, b in aot.SHARED_LIMIT.items()) + f"; over: {len(over)}.")
    lines.append(f"Spilling (ptxas): {len(spilling)} of {len(ok)}; worst "
                 + (str(max(spilling, key=lambda r: r.spill_stores or 0).job) if spilling else "none") + ".")
    if any(r.sass for r in ok):
        problems = aot.hopper_problems(ok)
        lines.append(f"Hopper SASS ({', '.join(aot.HOPPER_DTYPES)}, channels-last): "
                     + (f"{len(problems)} problems" if problems else "every kernel has what it needs") + ".")
        lines += [f"  {p}" for p in problems]
    lines += [f"FAILED: {f}" for f in aot.failures([r for r in results if r.error is not None])]
    return "\n".join(lines)


def append_csv(path: Path, results: list[aot.Result]) -> None:
    """Append one row per combination and metric; the header is written once, and must match."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f))
        if header != FIELDS:
            raise SystemExit(f"{path} has columns {header}, expected {FIELDS}; write to a new file.")
    common = {"triton": triton.__version__, "revision": revision(),
              "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        for r in results:
            key = {"kernel": r.job.kernel, "config": r.job.config, "dtype": r.job.dtype,
                   "target": f"sm_{r.job.target}"}
            for metric, attr in METRICS.items():
                value = int(r.error is None) if attr is None else getattr(r, attr)
                if value is not None:
                    value = f"{value:.3g}" if isinstance(value, float) else value
                    writer.writerow({**key, "metric": metric, "value": value, **common})
            for name, count in (r.sass or {}).items():
                writer.writerow({**key, "metric": f"sass_{name}", "value": count, **common})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=int, action="append", choices=aot.TARGETS,
                        help="compute capability (repeatable; default: all)")
    parser.add_argument("--kernel", action="append", help="only this kernel (repeatable)")
    parser.add_argument("--csv", type=Path, help="append long-format rows to this file")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--sass", action="store_true",
                        help="compile as a channels-last launch and count SASS instructions")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: it switches the kernels to their interpreter tiles.")
    start = time.perf_counter()
    results = aot.compile_all(aot.jobs(args.target or aot.TARGETS, args.kernel), args.workers,
                              stage="sass" if args.sass else "cubin",
                              specialise="channels-last" if args.sass else "generic")
    wall = time.perf_counter() - start
    print_table(results)
    print()
    print(headline(results, wall, args.workers))
    if args.csv:
        append_csv(args.csv, results)
        print(f"Rows appended to {args.csv}.")
    return 1 if any(r.error is not None for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
