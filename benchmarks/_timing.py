"""Timing helpers shared by the benchmarks: medians over rotating inputs, long-format CSV rows.

Every repetition runs on the next of several input sets whose total size is
well above the last-level cache, so a kernel is timed reading from memory, as
it would inside a network, not from a warm cache.
"""

from __future__ import annotations

import csv
import math
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

FIELDS = ["kernel", "provider", "shape", "dtype", "metric", "unit", "median", "p20", "p80",
          "device", "torch", "triton"]
CPU_CACHE_BYTES = 64 << 20  # no portable way to ask; above the L2 + L3 of common servers per socket slice


@dataclass
class Timing:
    """Milliseconds per call: median and the 20th / 80th percentiles over `reps` calls."""

    median: float
    p20: float
    p80: float
    reps: int


def cache_bytes(device: torch.device) -> int:
    """L2 size of a CUDA device, or a generous guess for the CPU's caches."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 50 << 20))
    return CPU_CACHE_BYTES


def rotating_inputs(make: Callable[[], Sequence[torch.Tensor]], device: torch.device,
                    max_sets: int = 64, min_sets: int = 2) -> list[Sequence[torch.Tensor]]:
    """Enough independent input sets from `make()` that together they exceed twice the cache."""
    first = make()
    nbytes = sum(t.numel() * t.element_size() for t in first if isinstance(t, torch.Tensor))
    sets = min(max_sets, max(min_sets, math.ceil(2 * cache_bytes(device) / max(nbytes, 1))))
    return [first] + [make() for _ in range(sets - 1)]


def _percentile(sorted_ms: list[float], q: float) -> float:
    pos = q * (len(sorted_ms) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def time_fn(fn: Callable[..., Any], input_sets: list[Sequence[torch.Tensor]], device: torch.device,
            reps: int = 100, warmup: int = 10) -> Timing:
    """Time `fn(*inputs)` once per repetition, rotating through `input_sets`.

    CUDA: one pair of events around each call (launch overhead included, as in
    a network). CPU: `time.perf_counter` around each call.
    """
    k = len(input_sets)
    for r in range(warmup):
        fn(*input_sets[r % k])
    ms: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(reps)]
        for r, (start, end) in enumerate(events):
            start.record()
            fn(*input_sets[r % k])
            end.record()
        torch.cuda.synchronize(device)
        ms = [s.elapsed_time(e) for s, e in events]
    else:
        for r in range(reps):
            t0 = time.perf_counter()
            fn(*input_sets[r % k])
            ms.append((time.perf_counter() - t0) * 1e3)
    ms.sort()
    return Timing(_percentile(ms, 0.5), _percentile(ms, 0.2), _percentile(ms, 0.8), reps)


def versions() -> dict[str, str]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {"torch": torch.__version__, "triton": triton_version}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def device_slug(device: torch.device) -> str:
    """A file-name-safe device label: `nvidia-h100-80gb-hbm3`, `cpu-x86_64`."""
    name = device_name(device) if device.type == "cuda" else f"cpu-{platform.machine()}"
    return re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-")


@dataclass
class Row:
    """One long-format result row (see FIELDS)."""

    kernel: str
    provider: str
    shape: str
    dtype: str
    metric: str
    unit: str
    median: float
    p20: float
    p80: float
    device: str
    torch: str
    triton: str


def write_rows(path: Path, rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(row).items()})
