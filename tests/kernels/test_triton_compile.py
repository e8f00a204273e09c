"""Every Triton kernel compiles for sm_80 and sm_90 with every GPU config and dtype, on a CPU.

The other kernel tests run under the interpreter with one small tile per
kernel, which the GPU compiler never sees. Here `triton.compile` builds the
real thing for targets that are not present (see `kernels/_triton_compile.py`),
in a subprocess: this session has TRITON_INTERPRET=1 set, and the kernel
modules read it when they are imported.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

from shiftnas.kernels import _triton_active, _triton_fused, _triton_shift  # noqa: E402
from shiftnas.kernels import _triton_compile as aot  # noqa: E402

KERNEL_MODULES = (_triton_shift, _triton_active, _triton_fused)
SPECS = aot.kernel_specs()


def _gpu_env(*, pythonpath: str | None = None) -> dict[str, str]:
    """This environment without the interpreter; `pythonpath` goes first on the import path
    (ahead of, not instead of, whatever makes `shiftnas` importable here)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    return env


# Compiled up to TritonGPU IR, in 2 processes, as the generic launch (no int
# specialisation). Measured on this project's 2-core machine (triton 3.9, 190 jobs):
# to ttgir 63 s wall; to LLVM IR 280 s while another job held one core (the whole
# suite then took 11.5 min, over its 10-minute bar). The ttgir stage meets every
# error of the Triton front end (shapes, dtypes, tl.dot sizes) and of layouts and
# pipelining; lowering to the target, PTX and ptxas (registers, spills, the
# instructions) are checked for five representative kernels down to SASS by
# `test_channels_last_kernels_use_hopper_instructions`, and for every kernel by
# `benchmarks/triton_compile.py`. One test, not one per kernel: under pytest-xdist
# each worker that ran a test of a shared fixture would compile everything again.
STAGE = "ttgir"


def test_every_kernel_compiles_for_every_config_dtype_and_target(tmp_path):
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "shiftnas.kernels._triton_compile", "--stage", STAGE, "--workers", "2",
           "--json", str(out)]
    proc = subprocess.run(cmd, env=_gpu_env(), capture_output=True, text=True, timeout=900)
    assert out.exists(), f"the compile run stopped (exit {proc.returncode}):\n{proc.stderr[-6000:]}"
    results = [aot.Result.from_dict(r) for r in json.loads(out.read_text())["results"]]
    # The subprocess enumerates on its own, without the interpreter: the same
    # set here proves it compiled the GPU config lists, not the interpreter's tile.
    assert sorted(str(r.job) for r in results) == sorted(str(job) for job in aot.jobs())
    assert {r.job.kernel for r in results} == {s.name for s in SPECS}
    bad = aot.failures(results)
    assert not bad, f"{len(bad)} of {len(results)} fail:\n\n" + "\n\n".join(bad)


def test_every_launched_kernel_is_compiled():
    """A kernel added to a module and launched by a host function must be added to `kernel_specs`."""
    listed = {id(s.kernel) for s in SPECS}
    launched = set()
    for module in KERNEL_MODULES:
        source = Path(module.__file__).read_text()
        assert not re.search(r"\b_\w+_kernel\[\w+\]\(", source), (
            f"{module.__name__} launches a kernel directly: go through `_autotune.launch`, "
            f"which counts the launches that compile.")
        # Every entry kernel is passed by name to `_autotune.launch` (or a helper that calls it).
        for name in set(re.findall(r"[(,]\s*(_\w+_kernel)\s*,", source)):
            launched.add(name)
            assert id(getattr(module, name)) in listed, (
                f"{module.__name__}.{name} is launched but not compiled ahead of time: "
                f"add it to `kernel_specs` in kernels/_triton_compile.py.")
    # shift: channels-last, plane, gather; active fwd/dx/dtheta; fused fwd/dx/dW
    assert len(launched) == 9, sorted(launched)


def test_gpu_configs_are_not_the_interpreter_tile():
    for spec in SPECS:
        configs = spec.configs()
        assert configs, spec.name
        if spec.tuned:  # the bounded autotuner picks among them: the lists differ only in the interpreter
            assert len(configs) > 1, spec.name
    assert _triton_active._theta_tiles(interpret=False) != _triton_active._theta_tiles(interpret=True)


def test_channels_last_kernels_use_hopper_instructions(tmp_path):
    """sm_90a SASS of a representative subset, as a channels-last bf16 launch specialises it.

    The fused GEMMs must issue wgmma (`HGMMA`), every grouped kernel must move
    its shifted data in 16-byte loads (`LDG.E.128`, or `LDGSTS...128` = cp.async),
    the integer shift must store 16-byte vectors, and none may spill (ptxas
    report and `LDL`/`STL` in the listing). Five kernels to cubin: ~20 s on 2
    cores, where every config of every kernel takes minutes
    (`python -m benchmarks.triton_compile --sass` prints them all).
    """
    out = tmp_path / "sass.json"
    cmd = [sys.executable, "-m", "shiftnas.kernels._triton_compile", "--stage", "sass", "--sample",
           "--specialise", "channels-last", "--workers", "2", "--json", str(out)]
    proc = subprocess.run(cmd, env=_gpu_env(), capture_output=True, text=True, timeout=600)
    assert out.exists(), f"the compile run stopped (exit {proc.returncode}):\n{proc.stderr[-6000:]}"
    results = [aot.Result.from_dict(r) for r in json.loads(out.read_text())["results"]]
    assert {r.job.kernel for r in results} == set(aot.SAMPLE)
    assert not aot.failures(results), aot.failures(results)
    assert not aot.hopper_problems(results), "\n".join(aot.hopper_problems(results))
    by_kernel = {r.job.kernel: r.sass for r in results}
    for kernel in ("shift_conv1x1_fwd", "shift_conv1x1_block", "shift_conv1x1_dx", "shift_conv1x1_dw"):
        assert by_kernel[kernel]["hgmma"] > 0 and by_kernel[kernel]["local"] == 0, (kernel, by_kernel[kernel])
    assert by_kernel["shift_cl_fwd"]["ldg128"] > 0 and by_kernel["shift_cl_fwd"]["stg128"] > 0
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_sass_counts_read_a_listing():
    """The instruction classes, on lines as `cuobjdump -sass` prints them."""
    listing = "\n".join([
        "        /*0a10*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT ;",
        "        /*0a20*/              @!P0 LDG.E.128 R4, desc[UR6][R2.64] ;",
        "        /*0a30*/                   LDGSTS.E.BYPASS.128 [R9], desc[UR6][R10.64], P1 ;",
        "        /*0a40*/                   LDGSTS.E [R9], desc[UR6][R12.64] ;",
        "        /*0a50*/                   LDG.E.U16 R7, desc[UR6][R4.64] ;",
        "        /*0a60*/                   STG.E.128 desc[UR6][R2.64], R4 ;",
        "        /*0a70*/                   STG.E.U16 desc[UR6][R2.64], R4 ;",
        "        /*0a80*/                   STL [R1+0x4], R5 ;",
        "        /*0a90*/                   LDL.LU R5, [R1+0x4] ;",
    ])
    assert aot.sass_counts(listing) == {"hgmma": 1, "mma": 0, "ldg128": 1, "ldgsts128": 1, "tma": 0,
                                        "ldg_narrow": 1, "ldgsts_narrow": 1, "stg128": 1,
                                        "stg_narrow": 1, "local": 2}


def _tiny_kernel_source() -> str:
    return textwrap.dedent('''
        import triton
        import triton.language as tl


        @triton.jit
        def _square_kernel(a_ptr, n, BLOCK: tl.constexpr):
            r = tl.arange(0, BLOCK)
            a = tl.load(a_ptr + r[:, None] * BLOCK + r[None, :], mask=r[:, None] < n)
            tl.store(a_ptr + r[:, None] * BLOCK + r[None, :], tl.dot(a, a), mask=r[:, None] < n)
    ''')


def test_a_config_that_does_not_compile_is_reported(tmp_path):
    """tl.dot needs K >= 16 (8 for tf32): the BLOCK=4 config must be reported, the BLOCK=16 one must not."""
    (tmp_path / "tiny_square.py").write_text(_tiny_kernel_source())
    script = textwrap.dedent('''
        import json
        import triton
        from shiftnas.kernels import _triton_compile as aot
        from tiny_square import _square_kernel

        spec = aot.KernelSpec("tiny_square", _square_kernel,
                              lambda: [triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 4})])
        results = [aot.compile_spec(spec, job, stage="ttir")
                   for job in aot.jobs(targets=[90], specs=[spec])]
        print(json.dumps({"compiled": [str(r.job) for r in results if r.error is None],
                          "failures": aot.failures(results)}))
    ''')
    proc = subprocess.run([sys.executable, "-c", script], env=_gpu_env(pythonpath=str(tmp_path)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["compiled"] == [f"tiny_square [BLOCK=16 w4 s3] {d} sm_90" for d in ("fp32", "fp16", "bf16")]
    assert len(out["failures"]) == 3
    for dtype, msg in zip(("fp32", "fp16", "bf16"), out["failures"]):
        assert msg.startswith(f"tiny_square [BLOCK=4 w4 s3] {dtype} sm_90 does not compile:"), msg
        assert "Input shapes should have M >= 1, N >= 1 and K >= " in msg, msg


def test_shared_memory_over_the_limit_is_reported():
    job = aot.Job("shift_conv1x1_fwd", 0, "BLOCK_M=256", "fp16", 80)
    spilling = aot.Result(aot.Job("shift_conv1x1_fwd", 0, "BLOCK_M=256", "bf16", 90), None, 1.0, "sass",
                          spill_stores=8, spill_loads=8, sass={"hgmma": 4, "ldgsts128": 2, "local": 2})
    assert aot.hopper_problems([spilling]) == [
        "shift_conv1x1_fwd [BLOCK_M=256] bf16 sm_90: spills to local memory (8 B stored, 8 B loaded "
        "per thread; 2 LDL/STL)."]
    fits = aot.Result(job, None, 1.0, "cubin", shared=aot.SHARED_LIMIT[80])
    over = aot.Result(job, None, 1.0, "cubin", shared=aot.SHARED_LIMIT[80] + 1)
    assert aot.failures([fits]) == []
    assert aot.failures([over]) == [f"{job} needs {aot.SHARED_LIMIT[80] + 1} bytes of shared memory, "
                                    f"over the {aot.SHARED_LIMIT[80]} a block may use on sm_80."]


def test_signature_is_read_off_the_kernel():
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    def kernel(x_ptr, off_ptr, n, stride, BLOCK: tl.constexpr):
        pass

    fn = JITFunction(kernel)
    sig = aot.signature(fn, "bf16", {"off_ptr": "i32"}, {"BLOCK": 16})
    assert sig == {"x_ptr": "*bf16", "off_ptr": "*i32", "n": "i32", "stride": "i32", "BLOCK": "constexpr"}
    # A channels-last launch specialises a unit stride into the constant 1.
    assert aot.signature(fn, "bf16", {}, {"BLOCK": 16, "stride": 1})["stride"] == "constexpr"
    with pytest.raises(ValueError, match=r"no value for the constexpr parameters \['BLOCK'\]"):
        aot.signature(fn, "bf16", {}, {})
    with pytest.raises(ValueError, match=r"no pointer parameter \['offsets_ptr'\]"):
        aot.signature(fn, "bf16", {"offsets_ptr": "i32"}, {"BLOCK": 16})
