"""Measured latency: BN folded, inference mode, median, IQR and minimum of many timed runs.

`measure_latency(net, cfg, device)` times one forward pass of the network
(eval mode, BatchNorm folded into the convolution before it, `torch.inference_mode`)
after a warm-up: CUDA events on a GPU, `time.perf_counter` with a fixed thread
count on the CPU; eagerly, through `torch.compile`, a CUDA graph, or ONNX
Runtime (the network exported as a deployment would run it, each shift in the
formulation timed fastest for its shape: `onnxruntime_session`). The default,
`auto`, replays a CUDA graph on a GPU, where launching a small network's
kernels one by one would otherwise be what is timed, and runs eagerly on the
CPU; a network whose capture fails is timed eagerly, and the result's
`backend` says which was used. Results
are cached in a JSON file keyed by archid, device, dtype, batch size, torch
version and backend. A trial's latency is the runs' median, or their minimum
(`statistic: min`): on a shared machine other tenants only ever add time, so
the fastest of many runs spread over `min_time_s` is what repeats best
(benchmarks/RESULTS.md). A measurement holds its device exclusively
(`evaluators.device.DeviceLock`): no other measurement and no training of a
parallel trial runs on it meanwhile.
"""

from __future__ import annotations

import contextlib
import copy
import json
import platform
import statistics
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftnas.config import check, is_int
from shiftnas.errors import ConfigError
from shiftnas.files import atomic_write, file_lock
from shiftnas.searchspace import NetCfg, build_model, fold_bn
from shiftnas.searchspace.rewrite import fuse_blocks

from .device import DeviceLock

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BACKENDS = ("auto", "eager", "compile", "cudagraph", "onnxruntime")
MODES = ("measured", "predicted")
STATISTICS = {"median": "median_ms", "min": "min_ms"}  # latency.statistic -> result field


@dataclass(frozen=True)
class LatencyCfg:
    """How latency is measured."""

    batch_size: int = 1  # images per timed forward pass (1: a request; larger: throughput)
    dtype: str = "float32"  # float32 | float16 | bfloat16 (the CPU default stays float32)
    channels_last: str = "auto"  # NHWC input and weights: auto (= on for CUDA) | on | off
    warmup: int = 10  # untimed runs first (allocator, cuDNN autotuning, caches)
    repeats: int = 50  # timed runs at least; the result is their median, quartiles and minimum
    min_time_s: float = 0.0  # ... and timed runs for this many seconds at least
    statistic: str = "median"  # a trial's latency: median of the runs | min (robust to a
    # shared machine's interference, which only ever adds time: benchmarks/RESULTS.md)
    threads: int = 1  # CPU only: torch threads while timing (restored afterwards)
    backend: str = "auto"  # auto (cudagraph on CUDA, else eager) | eager | compile
    # (torch.compile) | cudagraph (CUDA; eager where a network cannot be captured) | onnxruntime
    fold_bn: bool = True  # fold BatchNorm into the preceding convolution
    cache: str | None = None  # JSON cache file (None = no cache)
    lock: str | None = "auto"  # lock file: auto (cache_dir()/<device>.lock) | a path | None
    mode: str = "measured"  # measured: every trial timed whole | predicted: see `calibrate`
    calibrate: int = 8  # predicted: this many trials are timed whole to fit the predictor
    # (evaluators.predictor); every other trial's latency is predicted from its parts' times

    def __post_init__(self) -> None:
        check(is_int(self.batch_size) and self.batch_size >= 1, "batch_size",
              "must be one integer >= 1 (a search measures one batch size; time others with "
              "`shiftnas evaluate --latency --latency-batch N`)", self.batch_size)
        check(isinstance(self.dtype, str) and self.dtype in DTYPES, "dtype",
              f"must be one of {list(DTYPES)}", self.dtype)
        check(self.channels_last in ("auto", "on", "off"), "channels_last",
               "must be one of ['auto', 'on', 'off']", self.channels_last)
        check(is_int(self.warmup) and self.warmup >= 0, "warmup", "must be an integer >= 0",
               self.warmup)
        check(is_int(self.repeats) and self.repeats >= 3, "repeats",
               "must be an integer >= 3 (quartiles need a few runs)", self.repeats)
        check(is_int(self.threads) and self.threads >= 1, "threads", "must be an integer >= 1",
               self.threads)
        check(isinstance(self.min_time_s, (int, float)) and not isinstance(self.min_time_s, bool)
              and 0 <= self.min_time_s <= 60, "min_time_s",
              "must be a number of seconds from 0 to 60", self.min_time_s)
        check(self.statistic in STATISTICS, "statistic", f"must be one of {list(STATISTICS)}",
              self.statistic)
        check(self.backend in BACKENDS, "backend", f"must be one of {list(BACKENDS)}",
               self.backend)
        check(isinstance(self.fold_bn, bool), "fold_bn", "must be true or false", self.fold_bn)
        check(self.mode in MODES, "mode", f"must be one of {list(MODES)}", self.mode)
        check(is_int(self.calibrate) and self.calibrate >= 2, "calibrate",
              "must be an integer >= 2 (networks timed whole to fit the latency predictor)",
              self.calibrate)
        if self.backend == "onnxruntime":  # what ORT's CPU provider runs: fp32, its own layout
            check(self.dtype == "float32", "dtype", "must be float32 with backend onnxruntime",
                  self.dtype)
            check(self.channels_last != "on", "channels_last",
                  "cannot be 'on' with backend onnxruntime (ORT picks its own layout)",
                  self.channels_last)
        for k in ("cache", "lock"):
            v = getattr(self, k)
            check(v is None or isinstance(v, (str, Path)), k, "must be a file path or null", v)
            if isinstance(v, Path):
                object.__setattr__(self, k, str(v))


@dataclass
class LatencyResult:
    """One latency measurement (milliseconds per forward pass of one batch)."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    iqr_ms: float
    runs: int  # timed runs
    batch_size: int
    dtype: str
    device_name: str
    torch_version: str
    backend: str  # what ran: eager, compile, cudagraph or onnxruntime (never auto)
    cached: bool = False  # True when read from the cache instead of measured now
    min_ms: float | None = None  # the fastest run (None: a cache entry written before it)
    formulation: str | None = None  # onnxruntime: how its shifts ran (evaluators.onnx_shift):
    # `fused 2, dwconv 1`; prefixed `standard ONNX, custom ops unavailable:` after a failed build

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def value(self, statistic: str = "median") -> float:
        """The latency `statistic` (`LatencyCfg.statistic`) names: `median_ms` or `min_ms`."""
        v = getattr(self, STATISTICS[statistic])
        if v is None:
            raise ValueError(f"this latency result has no {STATISTICS[statistic]}")
        return v


def stat_ms(entry: Mapping[str, Any] | None, statistic: str) -> float | None:
    """The `statistic` of a latency result's dict form (None: no entry, or one written
    before results kept that statistic)."""
    v = None if entry is None else entry.get(STATISTICS[statistic])
    return None if v is None else float(v)


# ----------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------


def device_name(device: str | torch.device, threads: int = 1) -> str:
    """A readable name for timing records: the GPU model, or the CPU model and thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({threads} thread{'s' if threads != 1 else ''})"


def _percentile(sorted_xs: list[float], q: float) -> float:
    k = (len(sorted_xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def resolve_backend(cfg: LatencyCfg, device: str | torch.device) -> LatencyCfg:
    """`cfg` with `backend: auto` made concrete for `device`: cudagraph on CUDA, else eager."""
    if cfg.backend != "auto":
        return cfg
    return replace(cfg, backend="cudagraph" if torch.device(device).type == "cuda" else "eager")


def _channels_last(cfg: LatencyCfg, device: torch.device) -> bool:
    return cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")


def _prepare(model: nn.Module, cfg: LatencyCfg, device: torch.device) -> tuple[nn.Module, bool]:
    if cfg.backend == "onnxruntime":  # the same weights in the network a deployment exports
        genome = getattr(model, "cfg", None)
        if not isinstance(genome, NetCfg):
            raise ConfigError("latency.backend: 'onnxruntime' times networks built from a genome "
                              "(build_model); this module has none.")
        portable = build_model(genome, fuse=False, portable=True)
        portable.load_state_dict(model.state_dict())
        model = portable
    m = fold_bn(model) if cfg.fold_bn else copy.deepcopy(model).eval()
    if cfg.fold_bn and device.type == "cuda" and cfg.backend != "onnxruntime":
        m = fuse_blocks(m)  # a folded csc block as two kernels, as a GPU deployment runs it
    cl = _channels_last(cfg, device)
    m = m.to(device=device, dtype=DTYPES[cfg.dtype])
    if cl:
        m = m.to(memory_format=torch.channels_last)
    return m, cl


def onnxruntime_session(model: nn.Module, x: torch.Tensor, threads: int,
                        formulation: str = "auto"):
    """An ONNX Runtime session of `model` (eval mode, fp32) for inputs shaped like `x`.

    Exported with the TorchScript exporter where torch still has it: 1.6 s per
    network here against 13 s for the dynamo exporter, which matters once per
    trial. Each shift becomes the formulation `evaluators.onnx_shift.choose`
    times fastest for its shape (`formulation: auto`; `standard`: standard ONNX
    operators only), with the shift's custom ops loaded when it uses them. ORT
    runs with all graph optimisations, `threads` intra-op threads and one
    inter-op thread, on the CUDA provider for CUDA inputs where it has one. The
    session's `shiftnas_formulation` says how the shifts ran (`dwconv 2, fused 1`;
    prefixed `standard ONNX, custom ops unavailable:` after a failed build).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("latency.backend: 'onnxruntime' needs ONNX Runtime: "
                          "pip install 'shiftnas[onnx]'.") from None
    from shiftnas.kernels import ort_ops

    from . import onnx_shift

    model = copy.deepcopy(model).cpu().eval()
    if onnx_shift._theta_of(model) is not None:  # a bare shift: give it a parent to replace it in
        model = nn.Sequential(model)
    graph, markers = onnx_shift.export_markers(model, x.cpu())
    site_map = onnx_shift.sites(graph, markers)
    custom = bool(site_map) and formulation == "auto" and ort_ops.available()
    picks = onnx_shift.choose(site_map, x.shape[0], threads, custom) if site_map else {}
    onnx_shift.lower(graph, markers, picks)
    so = onnx_shift.session_options(threads, custom)
    providers = ["CPUExecutionProvider"]
    if x.is_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(graph.SerializeToString(), so, providers=providers)
    note = onnx_shift.summary(picks)
    if site_map and formulation == "auto" and not custom:
        note = "standard ONNX, custom ops unavailable: " + note
    session.shiftnas_formulation = note or "no shifts"
    return session


def _capture(model: nn.Module, x: torch.Tensor, warmup: int):
    """A CUDA graph of `model(x)` (warmed up on a side stream) and its static input, or
    None with the reason when the network cannot be captured (a host sync, a CPU op)."""
    device = x.device
    static_x = x.clone()
    try:
        s = torch.cuda.Stream(device)
        s.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(s):
            for _ in range(max(3, warmup)):
                model(static_x)
        torch.cuda.current_stream(device).wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(static_x)
    except RuntimeError as exc:
        torch.cuda.synchronize(device)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return graph, None


def time_module(model: nn.Module, x: torch.Tensor, cfg: LatencyCfg,
                info: dict[str, Any] | None = None) -> list[float]:
    """Milliseconds of each forward pass of `model` on `x` after the warm-up: `cfg.repeats`
    of them, more while `cfg.min_time_s` has not passed.

    The module is used as given (callers fold BN and move it first). `info`, when
    given, receives `backend`: what ran (with `cudagraph`, a network that cannot
    be captured runs eagerly), and with ONNX Runtime `formulation`: how its shifts ran.
    """
    info = {} if info is None else info
    cfg = resolve_backend(cfg, x.device)
    info["backend"] = cfg.backend
    device = x.device
    cuda = device.type == "cuda"
    if cfg.backend == "onnxruntime":
        session = onnxruntime_session(model, x, cfg.threads)
        info["formulation"] = session.shiftnas_formulation
        feed = {"input": x.detach().cpu().numpy()}
        for _ in range(cfg.warmup):
            session.run(None, feed)
        times = []
        until = time.perf_counter() + cfg.min_time_s
        while len(times) < cfg.repeats or time.perf_counter() < until:
            t0 = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    if cfg.backend == "cudagraph" and not cuda:
        raise ConfigError(f"latency.backend: 'cudagraph' needs a CUDA device, got {device}; "
                          f"use eager or compile.")
    run = model
    if cfg.backend == "compile":
        run = torch.compile(model)
    times: list[float] = []
    with torch.inference_mode():
        graph = None
        if cfg.backend == "cudagraph":
            graph, why = _capture(model, x, cfg.warmup)
            if graph is None:
                warnings.warn(f"latency: this network cannot be captured in a CUDA graph "
                              f"({why}); timing it eagerly", RuntimeWarning, stacklevel=2)
                info["backend"] = "eager"
        if graph is not None:
            def step() -> None:
                graph.replay()
        else:
            def step() -> None:
                run(x)
            for _ in range(cfg.warmup):
                step()
        until = time.perf_counter() + cfg.min_time_s
        if cuda:  # rounds of `repeats` event pairs, read back after each round
            while not times or time.perf_counter() < until:
                torch.cuda.synchronize(device)
                starts = [torch.cuda.Event(enable_timing=True) for _ in range(cfg.repeats)]
                ends = [torch.cuda.Event(enable_timing=True) for _ in range(cfg.repeats)]
                for a, b in zip(starts, ends):
                    a.record()
                    step()
                    b.record()
                torch.cuda.synchronize(device)
                times += [a.elapsed_time(b) for a, b in zip(starts, ends)]
        else:
            while len(times) < cfg.repeats or time.perf_counter() < until:
                t0 = time.perf_counter()
                step()
                times.append((time.perf_counter() - t0) * 1e3)
    return times


@contextlib.contextmanager
def _cpu_threads(device: torch.device, threads: int) -> Iterator[None]:
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _input(shape: tuple[int, ...], cfg: LatencyCfg, device: torch.device, batch: int,
           cl: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=g).to(device=device, dtype=DTYPES[cfg.dtype])
    return x.contiguous(memory_format=torch.channels_last) if cl else x


def _measure(model: nn.Module, shape: tuple[int, ...], cfg: LatencyCfg, device: torch.device,
             batch: int, dev_name: str) -> LatencyResult:
    m, cl = _prepare(model, cfg, device)
    return _time_prepared(m, _input(shape, cfg, device, batch, cl), cfg, dev_name)


def _time_prepared(m: nn.Module, x: torch.Tensor, cfg: LatencyCfg, dev_name: str) -> LatencyResult:
    """Time a module already prepared by `_prepare` on its input `x`, holding the device."""
    device, batch = x.device, x.shape[0]
    info: dict[str, Any] = {}
    with DeviceLock(device, cfg.lock).exclusive(), _cpu_threads(device, cfg.threads):
        times = sorted(time_module(m, x, cfg, info))
    p25, p75 = _percentile(times, 0.25), _percentile(times, 0.75)
    return LatencyResult(
        median_ms=statistics.median(times), p25_ms=p25, p75_ms=p75, iqr_ms=p75 - p25,
        runs=len(times), batch_size=batch, dtype=cfg.dtype, device_name=dev_name,
        torch_version=torch.__version__, backend=info["backend"], min_ms=times[0],
        formulation=info.get("formulation"),
    )


# ----------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------


class _JsonCache:
    """A JSON object on disk, read and rewritten under a lock (several workers share it)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path).expanduser() if path else None

    def get(self, key: str) -> dict | None:
        if self.path is None or not self.path.is_file():
            return None
        return self._read().get(key)

    def put(self, key: str, value: dict) -> None:
        if self.path is None:
            return
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            data = self._read() if self.path.is_file() else {}
            data[key] = value
            atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True))

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"latency cache {self.path} is not a readable JSON object ({exc}); "
                              f"delete it or point `cache` elsewhere.") from None
        if not isinstance(data, dict):
            raise ConfigError(f"latency cache {self.path} must hold a JSON object; delete it.")
        return data


def _key(what: str, dev_name: str, cfg: LatencyCfg, batch: int, cl: bool) -> str:
    # `ortshift1`: ONNX Runtime entries from before the shift formulations are timed again.
    backend = cfg.backend + ("|ortshift1" if cfg.backend == "onnxruntime" else "")
    return "|".join([what, dev_name, cfg.dtype, f"b{batch}", f"torch{torch.__version__}",
                     backend, f"cl{int(cl)}", f"fold{int(cfg.fold_bn)}"])


# ----------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------


def _as_model(net: NetCfg | nn.Module) -> tuple[nn.Module, NetCfg | None]:
    if isinstance(net, NetCfg):
        with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
            torch.manual_seed(0)  # latency does not depend on the weights; keep builds identical
            return build_model(net), net
    cfg = getattr(net, "cfg", None)
    return net, cfg if isinstance(cfg, NetCfg) else None


def measure_latency(net: NetCfg | nn.Module, cfg: LatencyCfg | None = None,
                    device: str | torch.device = "cpu", *, batch_size: int | None = None,
                    input_shape: Sequence[int] | None = None) -> LatencyResult:
    """Latency of one forward pass at `batch_size` (default: `cfg.batch_size`).

    `net` is a genome or a module; a module built by `build_model` carries its
    genome, so it is cached by archid too (other modules need `input_shape`,
    `(C, H, W)`, and are not cached). A cache hit returns `cached=True`
    without running anything.
    """
    device = torch.device(device)
    cfg = resolve_backend(cfg or LatencyCfg(), device)
    model, genome = _as_model(net)
    if input_shape is None:
        if genome is None:
            raise ConfigError("measure_latency: a module without a NetCfg (`.cfg`) needs "
                              "`input_shape=(C, H, W)`.")
        input_shape = (genome.in_chans, genome.input_size, genome.input_size)
    batch = batch_size or cfg.batch_size
    dev_name = device_name(device, cfg.threads)
    cache = _JsonCache(cfg.cache if genome is not None else None)
    key = _key(f"net:{genome.archid}:{tuple(input_shape)}" if genome else "", dev_name, cfg,
               batch, _channels_last(cfg, device))
    hit = cache.get(key)
    if stat_ms(hit, cfg.statistic) is not None:
        return LatencyResult(**{**hit, "cached": True})
    res = _measure(model, tuple(input_shape), cfg, device, batch, dev_name)
    cache.put(key, res.to_dict())
    return res
