"""Compile every Triton kernel of the shift ops for a GPU that is not here (sm_80, sm_90a).

The project is tested on CPUs, where the kernels run under Triton's interpreter
with one small tile each, so a kernel or autotune config that the GPU compiler
rejects would first fail on a user's GPU. `triton.compile` needs no device for
a named target: this module lists every entry kernel as its host function
launches it (the real config lists, the fixed GPU tiles, every dtype the host
accepts, the dot precisions it passes) and compiles each one to a cubin with
`ptxas`, reading shared memory, registers and spills off the result (or,
with `stage`, up to an earlier stage). The `sass` stage also disassembles the
cubin (`cuobjdump` from Triton's wheel) and counts the instructions that show
whether a kernel runs on Hopper's fast paths: `HGMMA` (wgmma), 128-bit global
loads and stores (`LDG.E.128`, `LDGSTS...128` = 16-byte `cp.async`,
`STG.E.128`), TMA loads, and local-memory traffic (`LDL` / `STL`: spills).

Two argument specialisations: `generic` (pointers 16-byte aligned, every int
an unknown i32: the form every launch can fall back to), and `channels-last`
(what a launch on a channels-last tensor with 16-divisible channel counts
gets: channel strides are the constant 1, channel counts and the other strides
multiples of 16), the one whose SASS the benchmarks' shapes run.

It must run in a process without `TRITON_INTERPRET=1`: the kernel modules read
it at import. The CI tests (`tests/kernels/test_triton_compile.py`) run

    python -m shiftnas.kernels._triton_compile --stage llir --json PATH
    python -m shiftnas.kernels._triton_compile --stage sass --sample --target 90 \
        --specialise channels-last --json PATH

and `benchmarks/triton_compile.py` prints the cubin figures as a table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import triton

TARGETS = (80, 90)
# Shared memory one block may use (the opt-in maximum, bytes): A100 163 KB, H100 227 KB.
# A config above it compiles but fails at launch with OutOfResources.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
STAGES = ("ttir", "ttgir", "llir", "ptx", "cubin", "sass")
SPECIALISATIONS = ("generic", "channels-last")
_TRITON_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "i32": 4}


@dataclass(frozen=True)
class KernelSpec:
    """One entry kernel as its host function launches it.

    Only what cannot be read off the kernel is written here: the kernel's own
    parameters give the signature (see `signature`).
    """

    name: str
    kernel: object  # the @triton.jit function
    configs: Callable[[], list[triton.Config]]  # the GPU configs (or the one fixed tile)
    constexprs: dict = field(default_factory=dict)  # the constexprs the host passes itself
    pointers: dict = field(default_factory=dict)  # element type of pointers not in the data dtype
    dot: bool = False  # takes DOT_PRECISION / UPCAST from `_triton_fused._dot_meta`
    vec: bool = False  # takes VEC = 16 bytes / element size, as `vector_lanes` gives
    tuned: bool = False  # the host picks among `configs` with the bounded autotuner
    dtypes: tuple[str, ...] | None = None  # data types it is launched with (default: DTYPES)
    per_dtype: Callable[[str], dict] | None = None  # constexprs the host derives from the dtype
    ones: tuple[str, ...] = ()  # int parameters a channels-last launch makes the constant 1
    odd: tuple[str, ...] = ()  # int parameters not assumed multiples of 16 (pixel counts, sides)


# STRIDE is compiled at 2: the general path, where the `% STRIDE` tests of the
# transposed kernels are real code; at 1 they fold away and the rest is the same.
_STRIDE = 2
# Loads per 16-byte chunk of the grouped kernels: 2, what the spec's 8c plans need
# unless the group size is a multiple of 8 (64 channels: groups of 7).
_GPC = 2


def _config(d: dict) -> triton.Config:
    tiles = {k: v for k, v in d.items() if k not in ("num_warps", "num_stages")}
    return triton.Config(tiles, num_warps=d.get("num_warps", 4), num_stages=d.get("num_stages", 3))


def kernel_specs() -> list[KernelSpec]:
    """Every kernel a host function launches, with the GPU (non-interpreter) configs.

    The sparse shift has no kernel of its own: its forward and input gradient
    are the integer shift's plane / gather kernels on rounded offsets, its
    theta gradient is `active_dtheta`.
    """
    from . import _triton_active as act
    from . import _triton_fused as fus
    from . import _triton_shift as sh

    def fixed(**tile) -> Callable[[], list[triton.Config]]:
        # Launched without num_warps / num_stages: the defaults of Config and of the launch agree (4, 3).
        return lambda: [triton.Config(tile)]

    def listed(configs: Callable[..., list[dict]]) -> Callable[[], list[triton.Config]]:
        return lambda: [_config(d) for d in configs(interpret=False)]

    def cl_configs() -> list[triton.Config]:
        # Rows of a 32-wide map (the 256x64x32x32 benchmark shape); BLOCK_W follows the map.
        return [_config({**d, "BLOCK_W": sh.cl_tile_width(32, d["BLOCK_P"])})
                for d in sh._cl_configs(interpret=False)]

    theta_c, theta_p = act._theta_tiles(interpret=False)
    dw_o, dw_k, dw_m = fus._dw_tiles(interpret=False)
    plane_tiles = [sh._plane_tile(h, w, interpret=False) for h, w in ((32, 32), (7, 7))]
    gather_tiles = [sh._gather_tile(cl, interpret=False) for cl in (True, False)]
    groups = {"gid_ptr": "i32", "goff_ptr": "i32"}  # `group_tables`: lane -> group, group -> (dy, dx)
    words = {k: "i32" for k in ("first_ptr", "last_ptr", "mask_ptr", "goff_ptr")}  # `word_tables`
    offsets = {"off_ptr": "i32"}  # the (2, C) int32 table of `plan_offsets` / `_round_offsets`
    theta = {"theta_ptr": "fp32"}  # an nn.Parameter, float32 under autocast
    pix = ("H_src", "W_src", "H_dst", "W_dst")
    fused_flags = {"IN_BIAS_RELU": False, "HAS_BIAS": False, "RELU": False, "HAS_RES": False}
    block_flags = {k: True for k in fused_flags}  # a folded csc block's second half
    fused_ptrs = {**groups, "in_bias_ptr": "fp32", "bias_ptr": "fp32"}
    fused_odd = ("M", "H", "W", "Ho", "Wo")
    return [
        KernelSpec("shift_cl_fwd", sh._shift_cl_kernel, cl_configs,
                   {"STRIDE": _STRIDE, "TRANSPOSE": False, "GPC": _GPC}, words, tuned=True, odd=pix,
                   dtypes=("i32",)),
        KernelSpec("shift_cl_transpose", sh._shift_cl_kernel, cl_configs,
                   {"STRIDE": _STRIDE, "TRANSPOSE": True, "GPC": _GPC}, words, tuned=True, odd=pix,
                   dtypes=("i32",)),
        KernelSpec("shift_plane_fwd", sh._shift_plane_kernel,
                   lambda: [triton.Config({"PLANES": p, "BLOCK_H": h, "BLOCK_W": w}) for p, h, w in plane_tiles],
                   {"STRIDE": _STRIDE, "TRANSPOSE": False}, offsets, odd=("NC", "C", *pix)),
        KernelSpec("shift_plane_transpose", sh._shift_plane_kernel,
                   lambda: [triton.Config({"PLANES": p, "BLOCK_H": h, "BLOCK_W": w}) for p, h, w in plane_tiles],
                   {"STRIDE": _STRIDE, "TRANSPOSE": True}, offsets, odd=("NC", "C", *pix)),
        KernelSpec("shift_gather", sh._shift_gather_kernel,
                   lambda: [triton.Config({"BLOCK_C": c, "BLOCK_P": p}) for c, p in gather_tiles],
                   {"STRIDE": _STRIDE, "TRANSPOSE": True}, offsets, ones=("sxc", "syc"), odd=("C", *pix)),
        KernelSpec("active_fwd", act._active_fwd_kernel, listed(act._active_configs),
                   {"STRIDE": _STRIDE}, theta, tuned=True, ones=("sxc", "syc"),
                   odd=("H", "W", "Ho", "Wo", "stc", "stk")),
        KernelSpec("active_dx", act._active_dx_kernel, listed(act._active_configs),
                   {"STRIDE": _STRIDE}, theta, tuned=True, ones=("sgc", "sdc"),
                   odd=("H", "W", "Ho", "Wo", "stc", "stk")),
        KernelSpec("active_dtheta", act._active_dtheta_kernel, fixed(BLOCK_C=theta_c, BLOCK_P=theta_p),
                   {"STRIDE": _STRIDE}, {**theta, "part_ptr": "fp32"}, ones=("sxc", "sgc"),
                   odd=("H", "W", "Ho", "Wo", "P", "stc", "stk")),
        KernelSpec("shift_conv1x1_fwd", fus._shift_conv1x1_kernel, listed(fus._gemm_configs),
                   {"STRIDE": _STRIDE, "GPC": _GPC, **fused_flags}, fused_ptrs, dot=True, vec=True,
                   tuned=True, ones=("sxc", "swi", "syc", "src"), odd=fused_odd),
        KernelSpec("shift_conv1x1_block", fus._shift_conv1x1_kernel, listed(fus._gemm_configs),
                   {"STRIDE": _STRIDE, "GPC": _GPC, **block_flags}, fused_ptrs, dot=True, vec=True,
                   tuned=True, ones=("sxc", "swi", "syc", "src"), odd=fused_odd),
        KernelSpec("shift_conv1x1_dx", fus._shift_conv1x1_dx_kernel, listed(fus._dx_configs),
                   {"STRIDE": _STRIDE}, {"tile_ptr": "i32"}, dot=True, tuned=True,
                   ones=("sgc", "swi", "sdc"), odd=("M", "T", "H", "W", "Ho", "Wo")),
        KernelSpec("shift_conv1x1_dw", fus._shift_conv1x1_dw_kernel,
                   fixed(BLOCK_O=dw_o, BLOCK_K=dw_k, BLOCK_M=dw_m), {"STRIDE": _STRIDE, "GPC": _GPC},
                   {**groups, "part_ptr": "fp32"}, dot=True, vec=True, ones=("sxc", "sgc"),
                   odd=(*fused_odd, "M_PER_SPLIT"), per_dtype=lambda d: {"SHIFTED_A": d == "fp32"}),
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
    to int64 themselves). A runtime int given in `constexprs` (the constant 1
    a launch specialises it to) becomes a constant.
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
        if p.is_constexpr or p.name in constexprs:
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
    names = {v: k for k, v in _TRITON_DTYPE.items()}
    for name in spec.dtypes or [_TRITON_DTYPE[d] for d in DTYPES]:
        metas = dot_variants(names[name]) if spec.dot else [{}]
        for meta in metas:
            label = f"{name}/{meta['DOT_PRECISION']}" if len(metas) > 1 else name
            extra = {"VEC": 16 // _BYTES[name]} if spec.vec else {}
            if spec.per_dtype is not None:
                extra.update(spec.per_dtype(name))
            out.append((label, {**meta, **extra}))
    return out


def jobs(targets: Sequence[int] = TARGETS, kernels: Sequence[str] | None = None,
         specs: Sequence[KernelSpec] | None = None, dtypes: Sequence[str] | None = None,
         first_config: bool = False) -> list[Job]:
    """Every combination, the costly GEMM kernels first so two workers finish together.

    `dtypes` keeps only those labels ("bf16", "fp32/tf32" ...); `first_config`
    only each spec's first config.
    """
    out = []
    for spec in sorted(specs or kernel_specs(), key=lambda s: not s.dot):
        if kernels is not None and spec.name not in kernels:
            continue
        for target in targets:
            for label, _ in _dtype_variants(spec):
                if dtypes is not None and label not in dtypes:
                    continue
                for i, cfg in enumerate(spec.configs()[:1] if first_config else spec.configs()):
                    out.append(Job(spec.name, i, config_label(cfg), label, target))
    return out


# A representative subset for a quick SASS check: every grouped / GEMM kernel once, bf16
# (the channels-last shift moves int32 words whatever the dtype), sm_90a.
SAMPLE = ("shift_cl_fwd", "shift_conv1x1_fwd", "shift_conv1x1_block", "shift_conv1x1_dx",
          "shift_conv1x1_dw")


def sample_jobs() -> list[Job]:
    """The first config of each `SAMPLE` kernel, bf16, sm_90 (compiled as sm_90a)."""
    return jobs(targets=(90,), kernels=SAMPLE, dtypes=("bf16", "i32"), first_config=True)


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
    sass: dict[str, int] | None = None  # instruction class -> static count (`sass_counts`)
    specialise: str = "generic"

    @classmethod
    def from_dict(cls, d: dict) -> Result:
        return cls(**{**d, "job": Job(**d["job"])})

    @property
    def over_shared_limit(self) -> bool:
        return self.shared is not None and self.shared > SHARED_LIMIT[self.job.target]

    @property
    def spills(self) -> bool:
        return bool(self.spill_stores or self.spill_loads or (self.sass or {}).get("local"))


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
# Instruction classes counted in the SASS (static counts, one per instruction in the listing).
SASS_CLASSES = {
    "hgmma": re.compile(r"\bHGMMA\."),  # Hopper warpgroup MMA (wgmma)
    "mma": re.compile(r"\bHMMA\."),  # warp-level MMA (mma.sync: sm_80, or no wgmma)
    "ldg128": re.compile(r"\bLDG\.E(?:\.[A-Z0-9]+)*\.128\b"),  # 16-byte global load
    "ldgsts128": re.compile(r"\bLDGSTS\.E(?:\.[A-Z0-9]+)*\.128\b"),  # 16-byte cp.async
    "tma": re.compile(r"\bUTMALDG\b"),  # tensor-memory-accelerator load
    "ldg_narrow": re.compile(r"\bLDG\.E(?!(?:\.[A-Z0-9]+)*\.128\b)[A-Z0-9.]*"),  # < 16-byte loads
    "ldgsts_narrow": re.compile(r"\bLDGSTS\.E(?!(?:\.[A-Z0-9]+)*\.128\b)[A-Z0-9.]*"),
    "stg128": re.compile(r"\bSTG\.E(?:\.[A-Z0-9]+)*\.128\b"),
    "stg_narrow": re.compile(r"\bSTG\.E(?!(?:\.[A-Z0-9]+)*\.128\b)[A-Z0-9.]*"),
    "local": re.compile(r"\b(?:LDL|STL)\b"),  # local memory: spills (or a stack array)
}


def sass_counts(sass: str) -> dict[str, int]:
    """Static counts of each `SASS_CLASSES` class in a `cuobjdump -sass` listing."""
    return {name: len(rx.findall(sass)) for name, rx in SASS_CLASSES.items()}


def _nvidia_tool(name: str) -> str:
    """A CUDA binary tool from Triton's wheel (`cuobjdump`, `ptxas`), else from PATH."""
    from triton.backends.nvidia import compiler as nv

    bundled = Path(nv.__file__).parent / "bin" / name
    return str(bundled) if bundled.exists() else name


def disassemble(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([_nvidia_tool("cuobjdump"), "-sass", f.name], capture_output=True,
                              text=True, check=True).stdout


def compile_spec(spec: KernelSpec, job: Job, stage: str = "cubin",
                 specialise: str = "generic") -> Result:
    """Compile `job` of `spec` with `triton.compile` for `sm_<target>` up to `stage`."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if stage not in STAGES:
        raise ValueError(f"`stage` must be one of {STAGES}, got {stage!r}.")
    if specialise not in SPECIALISATIONS:
        raise ValueError(f"`specialise` must be one of {SPECIALISATIONS}, got {specialise!r}.")
    fn = jit_function(spec.kernel)
    cfg = spec.configs()[job.index]
    meta = dict(_dtype_variants(spec))[job.dtype]
    constexprs = {**spec.constexprs, **meta, **cfg.kwargs}
    channels_last = specialise == "channels-last"
    if channels_last:
        constexprs.update({name: 1 for name in spec.ones})
    start = time.perf_counter()
    log = io.StringIO()
    try:
        sig = signature(fn, job.dtype.split("/")[0], spec.pointers, constexprs)
        # Launches mark 16-byte aligned pointers (every torch allocation) as such, and ints
        # that are multiples of 16 (channels-last: channel counts and strides) as such too.
        attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(fn.params)
                 if sig[p.name][0] == "*" or (channels_last and sig[p.name] == "i32"
                                              and p.name not in spec.odd)}
        src = ASTSource(fn, sig, constexprs, attrs)
        options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        knobs = triton.knobs
        with contextlib.redirect_stdout(log), knobs.nvidia.scope(), knobs.runtime.scope():
            # ptxas prints its -v report (registers, spills) to stdout, and the PTX on failure.
            knobs.nvidia.dump_ptxas_log = True
            if stage not in ("cubin", "sass"):
                knobs.runtime.add_stages_inspection_hook = _skip_stages_after(stage, fn.__name__)
            compiled = triton.compile(src, target=GPUTarget("cuda", job.target, 32), options=options)
        counts = sass_counts(disassemble(compiled.asm["cubin"])) if stage == "sass" else None
    except Exception as e:  # noqa: BLE001 - any compiler error is the result
        return Result(job, f"{type(e).__name__}: {e}".strip(), time.perf_counter() - start, stage,
                      specialise=specialise)
    res = Result(job, None, time.perf_counter() - start, stage, shared=compiled.metadata.shared,
                 num_warps=compiled.metadata.num_warps, num_stages=compiled.metadata.num_stages,
                 sass=counts, specialise=specialise)
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
            if ext in stages:
                stages[ext] = skip if ext != "cubin" else (lambda src, metadata: b"")

    return hook


_SPECS: dict[str, KernelSpec] = {}


def _worker_init() -> None:
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
    _SPECS.update((s.name, s) for s in kernel_specs())


def _run(args: tuple[Job, str, str]) -> Result:
    job, stage, specialise = args
    return compile_spec(_SPECS[job.kernel], job, stage, specialise)


def compile_all(todo: Sequence[Job], workers: int = 2, stage: str = "cubin",
                specialise: str = "generic") -> list[Result]:
    """Compile `todo` in `workers` processes with a fresh Triton cache (so every job really compiles)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compiling for a GPU needs a process started without TRITON_INTERPRET=1: "
                           "the kernel modules read it at import and define interpreted kernels.")
    with tempfile.TemporaryDirectory(prefix="shiftnas-triton-aot-") as cache:
        old = os.environ.get("TRITON_CACHE_DIR")
        os.environ["TRITON_CACHE_DIR"] = cache
        try:
            args = [(job, stage, specialise) for job in todo]
            if workers <= 1:
                _worker_init()
                return [_run(a) for a in args]
            with ProcessPoolExecutor(workers, initializer=_worker_init) as pool:
                return list(pool.map(_run, args))
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


# What a kernel's channels-last SASS on sm_90a must show (the floor needs them):
# GEMM kernels issue wgmma; the grouped kernels move their shifted data in 16-byte
# loads (plain or cp.async) and the integer shift stores in 16-byte vectors; nothing spills.
HOPPER_EXPECTATIONS = {
    "shift_cl_fwd": ("ldg128", "stg128"),
    "shift_cl_transpose": ("ldg128", "stg128"),
    "shift_conv1x1_fwd": ("hgmma", "ldg128|ldgsts128"),
    "shift_conv1x1_block": ("hgmma", "ldg128|ldgsts128"),
    "shift_conv1x1_dw": ("hgmma", "ldg128|ldgsts128"),
    "shift_conv1x1_dx": ("hgmma", "ldg128|ldgsts128"),
}


# The dtypes the expectations hold for: GPU training and inference run bf16 / fp16 (the
# channels-last shift moves i32 words). fp32 GEMMs are TF32 mma.sync or FFMA (exact fp32)
# and may spill; `benchmarks/triton_compile.py --sass` prints them all.
HOPPER_DTYPES = ("bf16", "fp16", "i32")


def hopper_problems(results: Sequence[Result]) -> list[str]:
    """Where a channels-last sm_90 SASS in a `HOPPER_DTYPES` dtype lacks what
    `HOPPER_EXPECTATIONS` asks, or spills."""
    out = []
    for r in results:
        if r.sass is None or r.job.target != 90 or r.job.dtype not in HOPPER_DTYPES:
            continue
        for need in HOPPER_EXPECTATIONS.get(r.job.kernel, ()):
            if not any(r.sass.get(k, 0) for k in need.split("|")):
                out.append(f"{r.job}: no {need.replace('|', ' or ')} instruction in its SASS ({r.sass}).")
        if r.spills:
            out.append(f"{r.job}: spills to local memory ({r.spill_stores} B stored, "
                       f"{r.spill_loads} B loaded per thread; {r.sass.get('local')} LDL/STL).")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write one object per job to this file")
    parser.add_argument("--target", type=int, action="append", choices=TARGETS,
                        help="compute capability (repeatable; default: all)")
    parser.add_argument("--kernel", action="append", help="only this kernel (repeatable)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--stage", default="cubin", choices=STAGES)
    parser.add_argument("--specialise", default="generic", choices=SPECIALISATIONS)
    parser.add_argument("--sample", action="store_true",
                        help=f"only the first config of {', '.join(SAMPLE)} in bf16 for sm_90")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    todo = sample_jobs() if args.sample else jobs(args.target or TARGETS, args.kernel)
    results = compile_all(todo, args.workers, args.stage, args.specialise)
    wall = time.perf_counter() - start
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"wall_seconds": wall, "results": [asdict(r) for r in results]}, f)
    bad = failures(results)
    if args.stage == "sass" and args.specialise == "channels-last":
        bad += hopper_problems(results)
    print("\n\n".join(bad) or f"{len(results)} kernel x config x dtype x target combinations "
          f"compiled to {args.stage} in {wall:.0f} s.")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
