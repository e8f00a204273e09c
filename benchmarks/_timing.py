"""Timing helpers shared by the benchmarks: interleaved medians over rotating inputs, long-format rows.

Every call runs on the next of several input sets whose total size is well
above the last-level cache, so a kernel is timed reading from memory, as it
would inside a network, not from a warm cache. Providers that are compared are
timed in one loop, round-robin (`time_interleaved`): a change in the machine's
load during the run hits all of them alike, so their ratios hold.

Results are appended to long-format CSV files (`write_rows`): one row per
(kernel, provider, shape, layout, dtype, metric), stamped with the time, the
git revision and the device, so runs from different days, commits and
machines stay one table.
"""

from __future__ import annotations

import csv
import datetime
import math
import platform
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from shiftnas.evaluators.latency import device_name

CPU_CACHE_BYTES = 64 << 20  # no portable way to ask; above the L2 + L3 of common servers per socket slice
ROOT = Path(__file__).resolve().parents[1]


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


def _timing(ms: list[float]) -> Timing:
    ms = sorted(ms)
    return Timing(_percentile(ms, 0.5), _percentile(ms, 0.2), _percentile(ms, 0.8), len(ms))


def time_fn(fn: Callable[..., Any], input_sets: list[Sequence[torch.Tensor]], device: torch.device,
            reps: int = 100, warmup: int = 10) -> Timing:
    """Time `fn(*inputs)` alone, rotating through `input_sets` (see `time_interleaved`)."""
    return time_interleaved({"fn": fn}, input_sets, device, reps, warmup)["fn"]


def time_interleaved(fns: dict[str, Callable[..., Any]], input_sets: list[Sequence[torch.Tensor]],
                     device: torch.device, reps: int = 100, warmup: int = 10) -> dict[str, Timing]:
    """Time every provider in `fns` on the same inputs, side by side.

    Repetition r calls each provider once, in an order rotated by r (no
    provider always runs first, after the allocator's or the caches' state
    left by another); every call takes the next input set. CUDA: one pair of
    events around each call (launch overhead included, as in a network).
    CPU: `time.perf_counter` around each call.
    """
    names, k = list(fns), len(input_sets)
    calls = 0

    def order(r: int) -> list[str]:
        s = r % len(names)
        return names[s:] + names[:s]

    for r in range(warmup):
        for name in order(r):
            fns[name](*input_sets[calls % k])
            calls += 1
    ms: dict[str, list[float]] = {name: [] for name in names}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        pending = []
        for r in range(reps):
            for name in order(r):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fns[name](*input_sets[calls % k])
                end.record()
                pending.append((name, start, end))
                calls += 1
        torch.cuda.synchronize(device)
        for name, start, end in pending:
            ms[name].append(start.elapsed_time(end))
    else:
        for r in range(reps):
            for name in order(r):
                inputs = input_sets[calls % k]
                t0 = time.perf_counter()
                fns[name](*inputs)
                ms[name].append((time.perf_counter() - t0) * 1e3)
                calls += 1
    return {name: _timing(v) for name, v in ms.items()}


def time_graphed(fns: dict[str, Callable[..., Any]], input_sets: list[Sequence[torch.Tensor]],
                 device: torch.device, reps: int = 100, warmup: int = 3) -> dict[str, Timing | None]:
    """Device time per call of every provider in `fns`, each captured in a CUDA graph.

    A provider is warmed up on a side stream (compiling and autotuning there),
    then one graph is captured that calls it once on every input set; replays
    are timed with a pair of events, interleaved round-robin like
    `time_interleaved`, and divided by the number of sets. This is the time
    the GPU spends, without the host's launch overhead (what a network
    replayed as a CUDA graph sees); a provider whose capture fails gets None.
    """
    current = torch.cuda.current_stream(device)
    graphs: dict[str, torch.cuda.CUDAGraph] = {}
    for name, fn in fns.items():
        side = torch.cuda.Stream(device)
        side.wait_stream(current)
        try:
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    for inputs in input_sets:
                        fn(*inputs)
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for inputs in input_sets:
                    fn(*inputs)
            graphs[name] = graph
        except Exception as exc:  # noqa: BLE001 - a provider that cannot be captured is reported, not fatal
            torch.cuda.synchronize(device)
            print(f"  {name}: no CUDA graph ({type(exc).__name__}: {str(exc)[:120]})", flush=True)
    names = list(graphs)
    ms: dict[str, list[float]] = {name: [] for name in names}
    pending = []
    torch.cuda.synchronize(device)
    for r in range(reps):
        s = r % max(len(names), 1)
        for name in names[s:] + names[:s]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graphs[name].replay()
            end.record()
            pending.append((name, start, end))
    torch.cuda.synchronize(device)
    for name, start, end in pending:
        ms[name].append(start.elapsed_time(end) / len(input_sets))
    out: dict[str, Timing | None] = {name: None for name in fns}
    out.update({name: _timing(v) for name, v in ms.items()})
    return out


def versions() -> dict[str, str]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {"torch": torch.__version__, "triton": triton_version}


def device_slug(device: torch.device) -> str:
    """A file-name-safe device label: `nvidia-h100-80gb-hbm3`, `cpu-x86_64`."""
    name = device_name(device) if device.type == "cuda" else f"cpu-{platform.machine()}"
    return re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-")


def revision() -> str:
    """`git rev-parse --short HEAD`, `+dirty` when tracked files have changed ("" outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        # Results files do not count: the run before this one has just appended to them.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!benchmarks/results"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("+dirty" if dirty else "")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Row:
    """One long-format result row; the CSV columns are its fields, in order.

    `p20` / `p80` are percentiles of the timed calls or None (an empty cell):
    never a minimum or maximum. `timestamp` (ISO, UTC) and `revision` are
    filled by `write_rows` when left empty.
    """

    kernel: str
    provider: str
    shape: str
    layout: str  # nchw | channels_last
    dtype: str
    metric: str  # fwd | fwd+bwd | compile ...
    unit: str
    median: float
    p20: float | None
    p80: float | None
    device: str  # shiftnas.evaluators.latency.device_name: the model, and the CPU threads
    torch: str
    triton: str
    timestamp: str = ""
    revision: str = ""


FIELDS = [f.name for f in fields(Row)]


def append_csv(path: Path, columns: list[str], rows: list[dict[str, Any]], extend: bool = False) -> None:
    """Append `rows` (dicts keyed by `columns`) to the CSV at `path`, header only when new.

    A file with other columns is an error rather than a second table glued
    onto the first: migrate it (old rows get empty new cells). With `extend`,
    a file whose columns are the first of `columns` is migrated here: rewritten
    whole (through a temporary file) with the new columns empty for old rows.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if extend and header != columns and header == columns[:len(header)]:
            with path.open(newline="") as f:
                old = list(csv.DictReader(f))
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(old)
            tmp.replace(path)
            header = columns
        if header != columns:
            raise ValueError(f"{path} has the columns {header}, not {columns}: migrate it (add the "
                             f"missing columns, empty for old rows) or write to another file.")
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def write_rows(path: Path, rows: list[Row]) -> None:
    """Append timing `rows` to the CSV at `path`, stamped with the time and revision.

    Rows of a `Row` subclass write its extra columns after `Row`'s; a file
    written before they existed gains them (empty for its old rows).
    """
    stamp, rev = utc_now(), revision()
    columns = [f.name for f in fields(rows[0])] if rows else FIELDS
    out = []
    for row in rows:
        d = asdict(row)
        d["timestamp"] = d["timestamp"] or stamp
        d["revision"] = d["revision"] or rev
        out.append({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v)
                    for k, v in d.items()})
    append_csv(path, columns, out, extend=columns != FIELDS)
