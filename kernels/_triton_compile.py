"""Compile every Triton kernel of the shift ops for a GPU that is not here (sm_80, sm_90).

The project is tested on CPUs, where the kernels run under Triton's interpreter
with one small tile each, so a kernel or autotune config that the GPU compiler
rejects would first fail on a user's GPU. `triton.compile` needs no device for
a named target: this module lists every entry kernel as its host function
launches it (the real config lists, the fixed GPU tiles, every dtype the host
accepts, the dot precisions it passes) and compiles each one to a cubin with
`ptxas`, reading shared memory, registers and spills off the result (or,
with `stage`, up to an earlier stage).

It must run in a process without `TRITON_INTERPRET=1`: the kernel modules read
it at import. The CI test (`tests/kernels/test_triton_compile.py`) runs

    python -m shiftnas.kernels._triton_compile --stage llir --json PATH

and `benchmarks/triton_compile.py` prints the cubin figures as a table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import torch
import triton

TARGETS = (80, 90)
# Shared memory one block may use (the opt-in maximum, bytes): A100 163 KB, H100 227 KB.
# A config above it compiles but fails at launch with OutOfResources.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
STAGES = ("ttir", "ttgir", "llir", "ptx", "cubin")
_TRITON_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class KernelSpec:
    """One entry kernel as its host function launches it.

    Only what cannot be read off the kernel is written here: the kernel's own
    parameters give the signature (see `signature`).
    """

    name: str
    kernel: object  # the @triton.jit function, or the autotuner around it
    configs: Callable[[], list[triton.Config]]  # the GPU configs (or the one fixed tile)
    constexprs: dict = field(default_factory=dict)  # the constexprs the host passes itself
    pointers: dict = field(default_factory=dict)  # element type of pointers not in the data dtype
    dot: bool = False  # takes DOT_PRECISION / UPCAST from `_triton_fused._dot_meta`


# STRIDE is compiled at 2: the general path, where the `% STRIDE` tests of the
# transposed kernels are real code; at 1 they fold away and the rest is the same.
_STRIDE = 2


def kernel_specs() -> list[KernelSpec]:
    """Every kernel a host function launches, with the GPU (non-interpreter) configs.

    The sparse shift has no kernel of its own: its forward and input gradient
    are `shift_fwd` / `shift_transpose` on rounded offsets, its theta gradient
    is `active_dtheta`.
    """
    from . import _triton_active as act
    from . import _triton_fused as fus
    from . import _triton_shift as sh

    def fixed(**tile) -> Callable[[], list[triton.Config]]:
        # Launched without num_warps / num_stages: the defaults of Config and of the launch agree (4, 3).
        return lambda: [triton.Config(tile)]

    theta_c, theta_p = act._theta_tiles(interpret=False)
    dw_o, dw_k, dw_m = fus._dw_tiles(interpret=False)
    offsets = {"off_ptr": "i32"}  # the (2, C) int32 table of `plan_offsets` / `_round_offsets`
    theta = {"theta_ptr": "fp32"}  # an nn.Parameter, float32 under autocast
    return [
        KernelSpec("shift_fwd", sh._shift_kernel, lambda: sh._shift_configs(interpret=False),
                   {"STRIDE": _STRIDE, "TRANSPOSE": False}, offsets),
        KernelSpec("shift_transpose", sh._shift_kernel, lambda: sh._shift_configs(interpret=False),
                   {"STRIDE": _STRIDE, "TRANSPOSE": True}, offsets),
        KernelSpec("active_fwd", act._active_fwd_kernel, lambda: act._active_configs(interpret=False),
                   {"STRIDE": _STRIDE}, theta),
        KernelSpec("active_dx", act._active_dx_kernel, lambda: act._active_configs(interpret=False),
                   {"STRIDE": _STRIDE}, theta),
        KernelSpec("active_dtheta", act._active_dtheta_kernel, fixed(BLOCK_C=theta_c, BLOCK_P=theta_p),
                   {"STRIDE": _STRIDE}, {**theta, "part_ptr": "fp32"}),
        KernelSpec("shift_conv1x1_fwd", fus._shift_conv1x1_kernel,
                   lambda: fus._gemm_configs(interpret=False), {"STRIDE": _STRIDE}, offsets, dot=True),
        KernelSpec("shift_conv1x1_dx", fus._shift_conv1x1_dx_kernel,
                   lambda: fus._dx_configs(interpret=False),
                   {"STRIDE": _STRIDE, "BLOCK_K": fus._dx_block_k(interpret=False)},
                   {"tile_ptr": "i32"}, dot=True),
        KernelSpec("shift_conv1x1_dw", fus._shift_conv1x1_dw_kernel,
                   fixed(BLOCK_O=dw_o, BLOCK_K=dw_k, BLOCK_M=dw_m), {"STRIDE": _STRIDE},
                   {**offsets, "part_ptr": "fp32"}, dot=True),
    ]


def jit_function(kernel: object) -> triton.runtime.JITFunction:
    """The JITFunction inside an autotuner (or the kernel itself)."""
    return kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel


def signature(fn: triton.runtime.JITFunction, dtype: str, pointers: dict[str, str],
              constexprs: dict) -> dict[str, str]:
    """The `ASTSource` signature, read off the kernel's parameters so a new argument cannot be missed.

    `*_ptr` parameters point at `dtype` unless `pointers` names another element
    type; every other runtime argument is a Python int, which Triton types as
    i32 below 2**31 (sizes and strides here; the kernels widen `n * stride`
    to int64 themselves). Launches also specialise ints equal to 1 into
    constants and note multiples of 16; the generic form compiled here is the
    one every launch can fall back to.
    """
    params = {p.name: p for p in fn.params}
    for names, what in ((pointers, "pointer"), (constexprs, "constexpr")):
        unknown = sorted(set(names) - set(params))
        if unknown:
            raise ValueError(f"{fn.__name__} has no {what} parameter {unknown}; its parameters "
                             f"are {fn.arg_names}.")
    missing = [p.name for p in fn.params if p.is_constexpr and p.name not in constexprs]
    if missing:
        raise ValueError(f"{fn.__name__}: no value for the constexpr parameters {missing}.")
    sig = {}
    for p in fn.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            sig[p.name] = "*" + pointers.get(p.name, dtype)
        else:
            sig[p.name] = "i32"
    return sig


@dataclass(frozen=True)
class Job:
    """One kernel x config x dtype x target; `index` picks the config of the spec's list."""

    kernel: str
    index: int
    config: str  # e.g. "BLOCK_M=128 BLOCK_N=64 BLOCK_K=32 w4 s3"
    dtype: str  # "fp16", or "fp32/tf32" where the host picks a dot precision for the dtype
    target: int

    def __str__(self) -> str:
        return f"{self.kernel} [{self.config}] {self.dtype} sm_{self.target}"


def config_label(cfg: triton.Config) -> str:
    tiles = " ".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    return f"{tiles} w{cfg.num_warps} s{cfg.num_stages}"


def dot_variants(dtype: torch.dtype) -> list[dict]:
    """The `_dot_meta` the host passes for `dtype` on a GPU, with TF32 allowed (torch's default) and not."""
    from ._triton_fused import _dot_meta
    from .precision import conv_fp32_precision, set_conv_fp32_precision

    old = conv_fp32_precision()
    metas: list[dict] = []
    try:
        for precision in ("tf32", "ieee"):
            set_conv_fp32_precision(precision)
            meta = _dot_meta(dtype, interpret=False)
            if meta not in metas:
                metas.append(meta)
    finally:
        set_conv_fp32_precision(old)
    return metas


def _dtype_variants(spec: KernelSpec) -> list[tuple[str, dict]]:
    """(label, extra constexprs) per dtype the host functions accept (`_triton_shift.DTYPES`)."""
    from ._triton_shift import DTYPES

    out = []
    for dtype in DTYPES:
        name = _TRITON_DTYPE[dtype]
        metas = dot_variants(dtype) if spec.dot else [{}]
        for meta in metas:
            label = f"{name}/{meta['DOT_PRECISION']}" if len(metas) > 1 else name
            out.append((label, meta))
    return out


def jobs(targets: Sequence[int] = TARGETS, kernels: Sequence[str] | None = None,
         specs: Sequence[KernelSpec] | None = None) -> list[Job]:
    """Every combination, the costly GEMM kernels first so two workers finish together."""
    out = []
    for spec in sorted(specs or kernel_specs(), key=lambda s: not s.dot):
        if kernels is not None and spec.name not in kernels:
            continue
        for target in targets:
            for label, _ in _dtype_variants(spec):
                for i, cfg in enumerate(spec.configs()):
                    out.append(Job(spec.name, i, config_label(cfg), label, target))
    return out


@dataclass
class Result:
    """What compiling one job gave; `error` is None when it compiled."""

    job: Job
    error: str | None
    seconds: float
    stage: str
    shared: int | None = None  # bytes of shared memory per block
    registers: int | None = None  # per thread, from ptxas
    spill_stores: int | None = None  # bytes, from ptxas
    spill_loads: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> Result:
        return cls(**{**d, "job": Job(**d["job"])})

    @property
    def over_shared_limit(self) -> bool:
        return self.shared is not None and self.shared > SHARED_LIMIT[self.job.target]


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_spec(spec: KernelSpec, job: Job, stage: str = "cubin") -> Result:
    """Compile `job` of `spec` with `triton.compile` for `sm_<target>` up to `stage`."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if stage not in STAGES:
        raise ValueError(f"`stage` must be one of {STAGES}, got {stage!r}.")
    fn = jit_function(spec.kernel)
    cfg = spec.configs()[job.index]
    meta = dict(_dtype_variants(spec))[job.dtype]
    constexprs = {**spec.constexprs, **meta, **cfg.kwargs}
    start = time.perf_counter()
    log = io.StringIO()
    try:
        sig = signature(fn, job.dtype.split("/")[0], spec.pointers, constexprs)
        # Launches mark 16-byte aligned pointers (every torch allocation) as such; so do we.
        attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(fn.params) if sig[p.name][0] == "*"}
        src = ASTSource(fn, sig, constexprs, attrs)
        options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        knobs = triton.knobs
        with contextlib.redirect_stdout(log), knobs.nvidia.scope(), knobs.runtime.scope():
            # ptxas prints its -v report (registers, spills) to stdout, and the PTX on failure.
            knobs.nvidia.dump_ptxas_log = True
            if stage != "cubin":
                knobs.runtime.add_stages_inspection_hook = _skip_stages_after(stage, fn.__name__)
            compiled = triton.compile(src, target=GPUTarget("cuda", job.target, 32), options=options)
    except Exception as e:  # noqa: BLE001 - any compiler error is the result
        return Result(job, f"{type(e).__name__}: {e}".strip(), time.perf_counter() - start, stage)
    res = Result(job, None, time.perf_counter() - start, stage, shared=compiled.metadata.shared,
                 num_warps=compiled.metadata.num_warps, num_stages=compiled.metadata.num_stages)
    if (regs := _PTXAS_REGS.search(log.getvalue())) is not None:
        res.registers = int(regs.group(1))
    if (spills := _PTXAS_SPILLS.search(log.getvalue())) is not None:
        res.spill_stores, res.spill_loads = int(spills.group(1)), int(spills.group(2))
    return res


def _skip_stages_after(stage: str, name: str) -> Callable:
    """A Triton stage hook that runs the stages up to `stage` and skips the rest.

    Skipped stages fill in the metadata they would have set that the result
    needs (`name`; `shared` before llir) and leave an empty cubin.
    """

    def skip(src, metadata):
        metadata.setdefault("name", name)
        metadata.setdefault("shared", None)
        return ""

    def hook(backend=None, stages=None, options=None, language=None, capability=None):
        if stages is None:  # asked for a cache key: skipped stages must not be cached as real ones
            return f"skip-after-{stage}", stage
        for ext in STAGES[STAGES.index(stage) + 1:]:
            stages[ext] = skip if ext != "cubin" else (lambda src, metadata: b"")

    return hook


_SPECS: dict[str, KernelSpec] = {}


def _worker_init() -> None:
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
    _SPECS.update((s.name, s) for s in kernel_specs())


def _run(args: tuple[Job, str]) -> Result:
    job, stage = args
    return compile_spec(_SPECS[job.kernel], job, stage)


def compile_all(todo: Sequence[Job], workers: int = 2, stage: str = "cubin") -> list[Result]:
    """Compile `todo` in `workers` processes with a fresh Triton cache (so every job really compiles)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compiling for a GPU needs a process started without TRITON_INTERPRET=1: "
                           "the kernel modules read it at import and define interpreted kernels.")
    with tempfile.TemporaryDirectory(prefix="shiftnas-triton-aot-") as cache:
        old = os.environ.get("TRITON_CACHE_DIR")
        os.environ["TRITON_CACHE_DIR"] = cache
        try:
            if workers <= 1:
                _worker_init()
                return [_run((job, stage)) for job in todo]
            with ProcessPoolExecutor(workers, initializer=_worker_init) as pool:
                return list(pool.map(_run, [(job, stage) for job in todo]))
        finally:
            if old is None:
                del os.environ["TRITON_CACHE_DIR"]
            else:
                os.environ["TRITON_CACHE_DIR"] = old


def failures(results: Sequence[Result]) -> list[str]:
    """One readable paragraph per job that did not compile or would not launch."""
    out = []
    for r in results:
        if r.error is not None:
            out.append(f"{r.job} does not compile:\n{r.error}")
        elif r.over_shared_limit:
            out.append(f"{r.job} needs {r.shared} bytes of shared memory, over the "
                       f"{SHARED_LIMIT[r.job.target]} a block may use on sm_{r.job.target}.")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write one object per job to this file")
    parser.add_argument("--target", type=int, action="append", choices=TARGETS,
                        help="compute capability (repeatable; default: all)")
    parser.add_argument("--kernel", action="append", help="only this kernel (repeatable)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--stage", default="cubin", choices=STAGES)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = compile_all(jobs(args.target or TARGETS, args.kernel), args.workers, args.stage)
    wall = time.perf_counter() - start
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"wall_seconds": wall, "results": [asdict(r) for r in results]}, f)
    bad = failures(results)
    print("\n\n".join(bad) or f"{len(results)} kernel x config x dtype x target combinations "
          f"compiled to {args.stage} in {wall:.0f} s.")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
