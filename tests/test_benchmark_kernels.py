"""`benchmarks.kernels` and `benchmarks.floors`: the floor beside each row, the CSV, the GPU set.

The floors are checked against hand-computed byte and FLOP counts. The GPU set
of comparisons runs on a tiny shape under the Triton interpreter in the dry run
of `benchmarks/gpu_check.sh` (`tests/test_gpu_check.py`), so a typo in it fails
there rather than on the GPU machine.
"""

from __future__ import annotations

import csv

import pytest

from benchmarks import floors
from benchmarks._timing import FIELDS, append_csv


def test_floors_hand_computed():
    # (2, 8, 4, 4) in bf16: one activation is 2*8*16 elements * 2 bytes = 512 bytes.
    assert floors.cost("shift", "fwd", (2, 8, 4, 4), 2) == floors.Cost(1024, 0.0)
    assert floors.cost("shift", "fwd+bwd", (2, 8, 4, 4), 2) == floors.Cost(2048, 0.0)
    # shift + 1x1, 8 -> 8: read x (512) and W (8*8*2 = 128), write y (512); 2 * 32 pixels * 64 MACs.
    assert floors.cost("shift_conv1x1", "fwd", (2, 8, 4, 4), 2) == floors.Cost(1152, 4096.0)
    assert floors.cost("shift_conv1x1", "fwd+bwd", (2, 8, 4, 4), 2) == floors.Cost(3456, 12288.0)
    assert floors.cost("active_shift", "fwd+bwd", (2, 8, 4, 4), 2) == floors.Cost(3072, 0.0)
    assert floors.cost("unknown", "fwd", (2, 8, 4, 4), 2) is None
    h200 = floors.rates_for("NVIDIA H200")
    assert h200.name == "H200"
    assert h200.floor_ms(4.8e9, 0.0, 2) == pytest.approx(1.0)  # 4.8 GB at 4.8 TB/s
    assert h200.floor_ms(0.0, 989e9, 2) == pytest.approx(1.0)  # 989 GFLOP at 989 TFLOP/s
    assert h200.floor_ms(0.0, 494e9, 4) == pytest.approx(1.0)  # fp32 GEMMs: the TF32 rate
    assert floors.rates_for("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert floors.rates_for("NVIDIA H100 80GB HBM3").name == "H100"
    assert floors.rates_for("AMD EPYC (2 threads)") is None


def test_a_results_file_from_before_the_floor_columns_is_extended(tmp_path):
    path = tmp_path / "kernels.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        writer.writerow(["shift", "clone"] + [""] * (len(FIELDS) - 2))
    columns = FIELDS + ["mbytes", "floor_ms"]
    append_csv(path, columns, [{"kernel": "shift", "provider": "triton", "floor_ms": "0.014"}], extend=True)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == columns
    assert [(r["provider"], r["floor_ms"]) for r in rows] == [("clone", ""), ("triton", "0.014")]
    with pytest.raises(ValueError, match="migrate it"):  # other columns are never glued on
        append_csv(path, ["kernel", "other"], [{"kernel": "x"}], extend=True)
