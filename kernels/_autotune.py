"""Bounded autotuning of the Triton shift kernels: one measured choice per shape class, kept on disk.

A search builds hundreds of networks that repeat a few dozen layer shapes, in
several worker processes, each trial a fresh model. Tuning every new exact
shape in every process cost most of a GPU trial's time outside training. Here
a choice is made once per *shape class* and reused by every later trial and
worker:

- the class: the op, the GEMM rows / pixels `M` rounded up to a power of two,
  and everything else exact (channels in and out, stride, dtype, layout, the
  shift plan's structure), so batch 250 and batch 256 share one choice while
  a different width never does;
- the file: `<cache>/triton/autotune-<gpu>-triton<version>.json` under
  `$SHIFTNAS_CACHE` (default `~/.cache/shiftnas`), one per GPU model and Triton
  version (an H100's choice is not an H200's); written through a temporary file
  and a rename under a file lock, merged with the entries other processes wrote
  meanwhile, so a kill never leaves half a file and no worker loses another's work;
- the cost: every second spent compiling a kernel (a first launch that
  compiles) or timing candidates is added up, and `compile_seconds()` /
  `CompileTimer` report it, so a trial can record it apart from training and
  latency.

Why not Triton's own `autotune(cache_results=True)` (Triton >= 3.4): it keys
its cache on the exact values of the key arguments (no shape classes without a
dummy argument), stores it in Triton's kernel cache folder next to compiled
binaries, keys it on the compilation target (sm_90) rather than the GPU model,
does not report its cost, and picks the config inside the launch, while these
host functions need the choice *before* the launch (tile tables are built per
tile size, and some candidates are two-kernel strategies, not configs).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shiftnas.files import atomic_write, cache_dir, file_lock

# Interpreted kernels (TRITON_INTERPRET=1 at import, as the kernel modules read it) never compile.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
FORMAT = 1  # version of the JSON layout; a file with another is ignored (and rewritten)
# Timing budget per candidate: enough calls for a stable mean of a 10-1000 us kernel.
_BENCH_MIN_MS = 5.0
_BENCH_MAX_CALLS = 200


@dataclass
class Stats:
    """Seconds this process spent compiling kernels and timing Triton candidates."""

    compile_s: float = 0.0  # first launches that compiled (outside tuning)
    autotune_s: float = 0.0  # tuning a shape class: compiling and timing every candidate
    build_s: float = 0.0  # first-use builds (or loads) of the C++ kernels: the CPU shift and
    # the ONNX Runtime ops (`add_build_seconds`)
    tuned: int = 0  # shape classes tuned here
    reused: int = 0  # shape classes answered from the file (another trial or worker tuned them)
    compiles: int = 0  # kernel compilations seen outside tuning

    @property
    def total_s(self) -> float:
        return self.compile_s + self.autotune_s + self.build_s


_STATS = Stats()
_tuning = 0  # depth of tuning runs: launches inside one are counted in the outermost's autotune_s


def compile_seconds() -> float:
    """Seconds spent compiling kernels in this process so far: Triton compilation and
    autotuning, and the first-use builds of the C++ kernels.

    Take the difference around a trial (or use `CompileTimer`) to report its share.
    """
    return _STATS.total_s


def add_build_seconds(seconds: float) -> None:
    """Count a C++ kernel's first-use build (or load) in `compile_seconds`."""
    _STATS.build_s += seconds


def stats() -> Stats:
    """A copy of this process's compile / autotune counters."""
    return Stats(**vars(_STATS))


@dataclass
class CompileTimer:
    """`with CompileTimer() as t: ...` then `t.seconds`: compile + autotune seconds inside the block."""

    start: float = field(default=0.0, init=False)
    end: float | None = field(default=None, init=False)

    def __enter__(self) -> CompileTimer:
        self.start, self.end = compile_seconds(), None
        return self

    def __exit__(self, *exc) -> None:
        self.end = compile_seconds()

    @property
    def seconds(self) -> float:
        return (compile_seconds() if self.end is None else self.end) - self.start


# ----------------------------------------------------------------------------
# Launches: count the ones that compile
# ----------------------------------------------------------------------------


def _compiled_count(kernel: object) -> int | None:
    """How many binaries `kernel` holds (None where this Triton does not say)."""
    fn = getattr(kernel, "fn", kernel)  # inside an Autotuner
    caches = getattr(fn, "device_caches", None)
    if not isinstance(caches, Mapping):
        return None
    try:
        return sum(len(entry[0]) for entry in caches.values())
    except (TypeError, IndexError):
        return None


# A launch slower than this compiled (or loaded a binary from Triton's disk cache), where the
# kernel's cache cannot be read: a launch alone takes 10-50 us of host time.
_SLOW_LAUNCH_S = 0.02


def launch(kernel: object, grid: tuple | Callable, *args, **kwargs) -> None:
    """`kernel[grid](*args, **kwargs)`, adding the time of a launch that compiled to the stats."""
    if _tuning or INTERPRET:
        kernel[grid](*args, **kwargs)
        return
    before = _compiled_count(kernel)
    t0 = time.perf_counter()
    kernel[grid](*args, **kwargs)
    elapsed = time.perf_counter() - t0
    after = _compiled_count(kernel)
    if (after > before) if (before is not None and after is not None) else elapsed > _SLOW_LAUNCH_S:
        _STATS.compile_s += elapsed
        _STATS.compiles += 1


# ----------------------------------------------------------------------------
# Shape classes and the choice file
# ----------------------------------------------------------------------------


def bucket(m: int) -> int:
    """`m` rounded up to a power of two (0 and 1 stay)."""
    return 1 << max(0, math.ceil(math.log2(m))) if m > 1 else max(m, 0)


def shape_class(op: str, m: int, **exact: object) -> str:
    """The key of a choice: `op`, `M` bucketed to a power of two, every other field exact.

    >>> shape_class("fwd", 200704, c_in=128, c_out=128, stride=1)
    'fwd|M262144|c_in=128|c_out=128|stride=1'
    """
    fields = "|".join(f"{k}={_text(v)}" for k, v in sorted(exact.items()))
    return f"{op}|M{bucket(m)}" + (f"|{fields}" if fields else "")


def _text(v: object) -> str:
    return str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else str(v)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_.]+", "-", text.lower()).strip("-")


def choice_file(gpu: str, triton_version: str, root: Path | None = None) -> Path:
    """Where the choices for one GPU model and Triton version live."""
    return (root or cache_dir()) / "triton" / f"autotune-{_slug(gpu)}-triton{_slug(triton_version)}.json"


class ChoiceFile:
    """The persisted choices of one GPU model and Triton version (read once, merged on write)."""

    def __init__(self, path: Path, gpu: str = "", triton_version: str = ""):
        self.path, self.gpu, self.triton_version = Path(path), gpu, triton_version
        self._entries: dict[str, dict] | None = None

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):  # missing, or unreadable: tune again and rewrite it
            return {}
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> dict | None:
        if self._entries is None:
            self._entries = self._read()
        return self._entries.get(key)

    def put(self, key: str, entry: dict) -> None:
        """Store `entry` under `key`, keeping every entry other processes wrote meanwhile."""
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            entries = self._read()
            entries[key] = entry
            atomic_write(self.path, json.dumps({"format": FORMAT, "gpu": self.gpu,
                                                "triton": self.triton_version, "entries": entries},
                                               indent=1, sort_keys=True))
        self._entries = entries


_FILES: dict[str, ChoiceFile] = {}
_MEMORY: dict[tuple[str, str], str] = {}  # (file, key) -> choice, this process


def _device_file(device: torch.device) -> ChoiceFile:
    import triton

    gpu = torch.cuda.get_device_name(device)
    path = choice_file(gpu, triton.__version__)
    if str(path) not in _FILES:
        _FILES[str(path)] = ChoiceFile(path, gpu, triton.__version__)
    return _FILES[str(path)]


# ----------------------------------------------------------------------------
# Choosing
# ----------------------------------------------------------------------------


def cuda_time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Mean milliseconds per call of `fn` on `device` (after one warm-up call that may compile)."""
    fn()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    once = max(start.elapsed_time(end), 1e-3)
    calls = max(3, min(_BENCH_MAX_CALLS, int(_BENCH_MIN_MS / once)))
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def choose(key: str, candidates: Mapping[str, Callable[[], object]], device: torch.device, *,
           store: ChoiceFile | None = None,
           bench: Callable[[Callable[[], object]], float] | None = None) -> str:
    """The name of the fastest candidate for the shape class `key` (the first where none is timed).

    Order: one candidate; this process's memory; the choice file; else time
    every candidate (`bench`, default `cuda_time_ms`), store the fastest, count
    the seconds. Nothing is timed on a CPU tensor (the interpreter has one
    config per kernel) or while a CUDA graph is being captured. Candidates run
    on the real arguments, so each must write its whole output.
    """
    names = list(candidates)
    if not names:
        raise ValueError(f"no candidates for {key}")
    if len(names) == 1:
        return names[0]
    if store is None:
        if device.type != "cuda":
            return names[0]
        store = _device_file(device)
    mem = (str(store.path), key)
    if mem in _MEMORY and _MEMORY[mem] in candidates:
        return _MEMORY[mem]
    entry = store.get(key)
    if entry is not None and entry.get("choice") in candidates:
        _STATS.reused += 1
        _MEMORY[mem] = entry["choice"]
        return entry["choice"]
    if bench is None:
        if torch.cuda.is_current_stream_capturing():  # no timing inside a graph: the first, unstored
            return names[0]
        bench = lambda fn: cuda_time_ms(fn, device)  # noqa: E731
    global _tuning
    t0 = time.perf_counter()
    _tuning += 1  # a candidate may tune what it launches (the two-pass form's shift): counted once
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}
    try:
        for name, fn in candidates.items():
            try:
                timings[name] = float(bench(fn))
            except Exception as exc:  # noqa: BLE001 - a config this GPU cannot run (shared memory ...)
                errors[name] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        _tuning -= 1
        if not _tuning:
            _STATS.autotune_s += time.perf_counter() - t0
    if not timings:
        raise RuntimeError(f"every candidate failed for {key}: {errors}")
    best = min(timings, key=timings.get)
    _STATS.tuned += 1
    _MEMORY[mem] = best
    entry = {"choice": best, "ms": {k: round(v, 5) for k, v in timings.items()},
             "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if errors:
        entry["errors"] = errors
    store.put(key, entry)
    return best


_EXACT: dict[tuple, str] = {}  # exact launch signature -> choice, this process


def pick(exact: tuple, key: Callable[[], str], names: Sequence[str], run: Callable[[str], object],
         device: torch.device) -> str:
    """`choose` for one launch, remembered per exact signature (`exact`: shapes, strides, dtype ...).

    A repeated launch costs one dict lookup instead of building the shape class
    and the candidates (tens of microseconds of Python per call otherwise).
    `key` builds the shape class; `run(name)` runs one candidate.
    """
    name = _EXACT.get(exact)
    if name is None:
        name = choose(key(), {n: functools.partial(run, n) for n in names}, device)
        if device.type != "cuda" or not torch.cuda.is_current_stream_capturing():
            _EXACT[exact] = name  # (a choice made during a capture was not timed: not kept)
    return name


@contextlib.contextmanager
def forget_memory() -> Iterator[None]:
    """Tests: run the block with this process's in-memory choices cleared and restored after."""
    saved, files, exact = dict(_MEMORY), dict(_FILES), dict(_EXACT)
    for d in (_MEMORY, _FILES, _EXACT):
        d.clear()
    try:
        yield
    finally:
        for d, old in ((_MEMORY, saved), (_FILES, files), (_EXACT, exact)):
            d.clear()
            d.update(old)


__all__ = ["CompileTimer", "Stats", "bucket", "choice_file", "choose", "compile_seconds", "launch",
           "pick", "shape_class", "stats"]
