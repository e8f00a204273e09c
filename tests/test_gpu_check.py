"""`benchmarks/gpu_check.sh`: its dry run on the CPU, and the closing table read from its files."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks` is a folder of the checkout, not an installed package

from benchmarks import gpu_check_summary as summary  # noqa: E402

KERNELS_CSV = """kernel,provider,shape,layout,dtype,metric,unit,median
shift,clone,256x64x32x32,channels_last,bfloat16,fwd,ms,0.040
shift,triton,256x64x32x32,channels_last,bfloat16,fwd,ms,0.044
shift,clone,64x512x14x14,channels_last,bfloat16,fwd,ms,0.030
shift,triton,64x512x14x14,channels_last,bfloat16,fwd,ms,0.036
shift_conv1x1,conv1x1,256x64x32x32,channels_last,bfloat16,fwd,ms,0.020
shift_conv1x1,triton_fused,256x64x32x32,channels_last,bfloat16,fwd,ms,0.021
shift_conv1x1,conv1x1,256x64x32x32,channels_last,bfloat16,fwd+bwd,ms,0.300
shift_conv1x1,triton_fused,256x64x32x32,channels_last,bfloat16,fwd+bwd,ms,0.360
"""


def test_the_table_reads_every_figure_from_the_files(tmp_path):
    (tmp_path / "steps.tsv").write_text("versions\t0\t3\nkernels\t0\t41\nsearch\t124\t130\n"
                                        "tests\t1\t170\n")
    (tmp_path / "env.txt").write_text("python 3.12.3; torch 2.11.0+cu130 (CUDA 13.0)\n"
                                      "triton 3.6.0\nGPU NVIDIA H200, sm_90, 132 SMs, 140 GiB\n")
    (tmp_path / "kernels.csv").write_text(KERNELS_CSV)
    (tmp_path / "trials.csv").write_text("number,state\n0,complete\n1,failed\n2,complete\n"
                                         "3,pruned\n")
    (tmp_path / "pytest.log").write_text("....F..\nFAILED tests/a.py::test_x\n"
                                         "=== 1 failed, 700 passed, 9 skipped in 169.02s ===\n")
    table = summary.summarise(tmp_path).splitlines()
    assert table[2] == "| versions | ok | 3 | NVIDIA H200, torch 2.11.0+cu130 (CUDA 13.0), triton 3.6.0 |"
    # shift/clone: 0.044/0.040 = 1.10 and 0.036/0.030 = 1.20, median 1.15
    assert table[3] == ("| kernels | ok | 41 | shift/clone 1.15 (1.10-1.20); fused fwd/1x1 1.05 "
                        "(1.05-1.05); fused fwd+bwd/1x1 1.20 (1.20-1.20) |")
    assert table[4] == "| search | timed out | 130 | 4 trials: 2 complete, 1 failed, 1 pruned |"
    assert table[5] == "| tests | exit 1 | 170 | 1 failed, 700 passed, 9 skipped in 169.02s |"


def test_a_suite_cut_by_its_time_limit_still_counts_what_failed(tmp_path):
    (tmp_path / "pytest.log").write_text("..F\nFAILED tests/a.py::test_x\nERROR tests/b.py::t (setup)\n")
    assert summary.pytest_counts(tmp_path / "pytest.log") == "cut short, 2 failed before the cut"
    assert summary.search_outcome(tmp_path / "none.csv") == "no trials.csv"


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_the_dry_run_runs_every_step_on_the_cpu(tmp_path):
    """The script as the GPU machine runs it, tiny and on the CPU, so it never fails there first."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    env.pop("TRITON_INTERPRET", None)  # the script sets what it needs
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = {p.name for p in out.iterdir()}
    assert len(files) <= 8  # what the device tool brings back
    assert files - {"autotune.json"} == {"kernels.csv", "kernels.log", "pytest.log", "report.md",
                                         "search.log", "summary.md", "trials.csv"}
    text = (out / "summary.md").read_text()
    assert "## Versions and device" in text and "torch " in text  # env.txt, taken in
    table = text.split("\n\n")[0].splitlines()
    assert [row.split("|")[1].strip() for row in table[2:]] == ["versions", "kernels", "search",
                                                                "tests"]
    assert all(row.split("|")[2].strip() == "ok" for row in table[2:]), "\n".join(table)
    assert r.stdout.rstrip().endswith(table[-1])  # the table is printed last
    assert "shift/clone" in table[3] and "complete" in table[4] and "passed" in table[5]
    # The GPU set of comparisons, run by the interpreter: every provider the device will time.
    with (out / "kernels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    seen = {(r["kernel"], r["metric"], r["provider"]) for r in rows}
    for kernel, providers in (("shift", ("clone", "triton")),
                              ("shift_conv1x1", ("conv1x1", "triton_fused")),
                              ("active_shift", ("triton", "triton_integer")),
                              ("csc_block", ("dw3x3", "shift"))):
        for metric in ("fwd", "fwd+bwd"):
            for provider in providers:
                assert (kernel, metric, provider) in seen, (kernel, metric, provider)
    assert ("csc_block", "fwd", "shift_block") in seen
    assert all(r["mbytes"] for r in rows) and not any(r["floor_ms"] for r in rows)  # no CPU rates
    assert "Triton compile + autotune:" in (out / "kernels.log").read_text()
