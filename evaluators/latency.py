"""Measured latency: BN folded, inference mode, median and IQR of many timed runs.

`measure_latency(net, cfg, device)` times one forward pass of the network
(eval mode, BatchNorm folded into the convolution before it, `torch.inference_mode`)
after a warm-up: CUDA events on a GPU, `time.perf_counter` with a fixed thread
count on the CPU; optionally through `torch.compile` or a CUDA graph. Results
are cached in a JSON file keyed by archid, device, dtype, batch size, torch
version and backend. Measurements hold an exclusive inter-process lock on the
device (`device_lock`) so that parallel trials do not time each other's work.
`BlockLatencyTable` measures each distinct block once and predicts a network's
latency as the sum of its parts.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import platform
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftnas.config import cfg_from_dict, check, is_int
from shiftnas.errors import ConfigError
from shiftnas.kernels.modules import Shift
from shiftnas.searchspace import NetCfg, build_model
from shiftnas.searchspace.builder import BLOCKS, Bottleneck3Block, CscBlock, Shortcut, make_stem
from shiftnas.searchspace.genome import out_size

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BACKENDS = ("eager", "compile", "cudagraph")
CACHE_DIR_ENV = "SHIFTNAS_CACHE"


def cache_dir() -> Path:
    """`$SHIFTNAS_CACHE`, else `~/.cache/shiftnas`: lock files and default caches live here."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "shiftnas")


@dataclass(frozen=True)
class LatencyCfg:
    """How latency is measured."""

    batch_size: int | tuple[int, ...] = 1  # one batch size, or several (see `measure_latencies`)
    dtype: str = "float32"  # float32 | float16 | bfloat16 (the CPU default stays float32)
    channels_last: str = "auto"  # NHWC input and weights: auto (= on for CUDA) | on | off
    warmup: int = 10  # untimed runs first (allocator, cuDNN autotuning, caches)
    repeats: int = 50  # timed runs; the result is their median and quartiles
    threads: int = 1  # CPU only: torch threads while timing (restored afterwards)
    backend: str = "eager"  # eager | compile (torch.compile) | cudagraph (CUDA only)
    fold_bn: bool = True  # fold BatchNorm into the preceding convolution
    cache: str | None = None  # JSON cache file (None = no cache)
    lock: str | None = "auto"  # lock file: auto (cache_dir()/<device>.lock) | a path | None

    def __post_init__(self) -> None:
        bs = self.batch_size
        if isinstance(bs, list):
            bs = tuple(bs)
            object.__setattr__(self, "batch_size", bs)
        ok = (is_int(bs) and bs >= 1) or (isinstance(bs, tuple) and len(bs) > 0 and all(
            is_int(b) and b >= 1 for b in bs))
        check(ok, "batch_size", "must be an integer >= 1 or a non-empty list of them", bs)
        check(self.dtype in DTYPES, "dtype", f"must be one of {list(DTYPES)}", self.dtype)
        check(self.channels_last in ("auto", "on", "off"), "channels_last",
               "must be one of ['auto', 'on', 'off']", self.channels_last)
        check(is_int(self.warmup) and self.warmup >= 0, "warmup", "must be an integer >= 0",
               self.warmup)
        check(is_int(self.repeats) and self.repeats >= 3, "repeats",
               "must be an integer >= 3 (quartiles need a few runs)", self.repeats)
        check(is_int(self.threads) and self.threads >= 1, "threads", "must be an integer >= 1",
               self.threads)
        check(self.backend in BACKENDS, "backend", f"must be one of {list(BACKENDS)}",
               self.backend)
        check(isinstance(self.fold_bn, bool), "fold_bn", "must be true or false", self.fold_bn)
        for k in ("cache", "lock"):
            v = getattr(self, k)
            check(v is None or isinstance(v, (str, Path)), k, "must be a file path or null", v)
            if isinstance(v, Path):
                object.__setattr__(self, k, str(v))

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        bs = self.batch_size
        return bs if isinstance(bs, tuple) else (bs,)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str = "latency") -> LatencyCfg:
        """Strictly parse a mapping (e.g. a budget file's `latency:` section)."""
        return cfg_from_dict(cls, d, where)


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
    backend: str
    cached: bool = False  # True when read from the cache instead of measured now

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------
# BatchNorm folding
# ----------------------------------------------------------------------------


class BiasAdd(nn.Module):
    """Per-channel bias: what remains of a BN folded into a conv that must stay bias-free."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.view(1, -1, 1, 1).to(x.dtype)


# Convolutions that read a fixed shift through `shift_then_conv`: the fused
# shift+1x1 kernel takes bias-free convolutions only, so their BN keeps its bias
# as a `BiasAdd` instead of moving it into the convolution.
_FUSED = {CscBlock: ("conv2",), Bottleneck3Block: ("conv1", "conv2", "conv3")}
# (conv, bn) attribute pairs that are adjacent in the builder's blocks. The
# pre-activation BNs of asl_preact (`bn0`, `head_norm`) come before their
# convolution and stay as they are.
_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("conv", "bn"))


@torch.no_grad()
def _fold_pair(parent: nn.Module, conv_name: str, bn_name: str, keep_bias_free: bool) -> bool:
    conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        return False
    if bn.running_mean is None or bn.running_var is None:
        return False
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
    if keep_bias_free and conv.bias is None:
        setattr(parent, bn_name, BiasAdd(shift))
    else:
        conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=False)
        setattr(parent, bn_name, nn.Identity())
    return True


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every conv -> BN pair folded into the conv.

    Pairs are the builder's adjacent ones (`conv1`/`bn1`, `conv2`/`bn2`,
    `conv3`/`bn3`, `shortcut.conv`/`shortcut.bn`, `stem.0`/`stem.1`); BNs that
    come before their convolution (pre-activation) are left alone. The copy
    computes the same function as `model.eval()` up to rounding.
    """
    m = copy.deepcopy(model).eval()
    for mod in m.modules():
        if isinstance(mod, tuple(BLOCKS.values())) or isinstance(mod, Shortcut):
            fused = _FUSED.get(type(mod), ())
            for c, b in _PAIRS:
                shift_name = {"conv1": "shift0", "conv2": "shift", "conv3": "shift2"}.get(c)
                keep = c in fused and isinstance(getattr(mod, shift_name, None), Shift)
                _fold_pair(mod, c, b, keep)
        elif isinstance(mod, nn.Sequential):
            # A stem: conv at index 0 directly followed by BN at index 1.
            if len(mod) >= 2 and isinstance(mod[0], nn.Conv2d) and isinstance(mod[1], nn.BatchNorm2d):
                _fold_pair(mod, "0", "1", False)
    return m


# ----------------------------------------------------------------------------
# Device lock
# ----------------------------------------------------------------------------


def _device_key(device: torch.device) -> str:
    if device.type == "cuda":
        return f"gpu-{device.index if device.index is not None else torch.cuda.current_device()}"
    return device.type


@contextlib.contextmanager
def device_lock(device: str | torch.device, path: str | Path | None = "auto") -> Iterator[None]:
    """Hold an exclusive inter-process lock on `device` (`fcntl.flock`) for the block.

    `path="auto"` uses `cache_dir()/<cpu|gpu-N>.lock`; `None` takes no lock.
    Every process that measures on the same device with the same lock file
    waits for the others, so timings never overlap.
    """
    if path is None:
        yield
        return
    p = cache_dir() / f"{_device_key(torch.device(device))}.lock" if path == "auto" else Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise ConfigError(f"latency lock file {p} cannot be created ({exc}); set `lock` to a "
                          f"writable path or null.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


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


def _prepare(model: nn.Module, cfg: LatencyCfg, device: torch.device) -> tuple[nn.Module, bool]:
    m = fold_bn(model) if cfg.fold_bn else copy.deepcopy(model).eval()
    cl = cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")
    m = m.to(device=device, dtype=DTYPES[cfg.dtype])
    if cl:
        m = m.to(memory_format=torch.channels_last)
    return m, cl


def time_module(model: nn.Module, x: torch.Tensor, cfg: LatencyCfg) -> list[float]:
    """Milliseconds of `cfg.repeats` forward passes of `model` on `x`, after the warm-up.

    The module is used as given (callers fold BN and move it first).
    """
    device = x.device
    cuda = device.type == "cuda"
    if cfg.backend == "cudagraph" and not cuda:
        raise ConfigError(f"latency.backend: 'cudagraph' needs a CUDA device, got {device}; "
                          f"use eager or compile.")
    run = model
    if cfg.backend == "compile":
        run = torch.compile(model)
    times: list[float] = []
    with torch.inference_mode():
        if cfg.backend == "cudagraph":
            static_x = x.clone()
            s = torch.cuda.Stream(device)
            s.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(s):
                for _ in range(max(3, cfg.warmup)):
                    model(static_x)
            torch.cuda.current_stream(device).wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                model(static_x)

            def step() -> None:
                graph.replay()
        else:
            def step() -> None:
                run(x)
            for _ in range(cfg.warmup):
                step()
        if cuda:
            torch.cuda.synchronize(device)
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(cfg.repeats)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(cfg.repeats)]
            for a, b in zip(starts, ends):
                a.record()
                step()
                b.record()
            torch.cuda.synchronize(device)
            times = [a.elapsed_time(b) for a, b in zip(starts, ends)]
        else:
            for _ in range(cfg.repeats):
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


def _measure(model: nn.Module, shape: tuple[int, ...], cfg: LatencyCfg, device: torch.device,
             batch: int, dev_name: str) -> LatencyResult:
    m, cl = _prepare(model, cfg, device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=g).to(device=device, dtype=DTYPES[cfg.dtype])
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    with device_lock(device, cfg.lock), _cpu_threads(device, cfg.threads):
        times = sorted(time_module(m, x, cfg))
    p25, p75 = _percentile(times, 0.25), _percentile(times, 0.75)
    return LatencyResult(
        median_ms=statistics.median(times), p25_ms=p25, p75_ms=p75, iqr_ms=p75 - p25,
        runs=len(times), batch_size=batch, dtype=cfg.dtype, device_name=dev_name,
        torch_version=torch.__version__, backend=cfg.backend,
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with device_lock("cpu", self.path.with_name(self.path.name + ".lock")):
            data = self._read() if self.path.is_file() else {}
            data[key] = value
            tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)

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
    return "|".join([what, dev_name, cfg.dtype, f"b{batch}", f"torch{torch.__version__}",
                     cfg.backend, f"cl{int(cl)}", f"fold{int(cfg.fold_bn)}"])


def _channels_last(cfg: LatencyCfg, device: torch.device) -> bool:
    return cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")


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
    """Latency of one forward pass at `batch_size` (default: the first of `cfg.batch_size`).

    `net` is a genome or a module; a module built by `build_model` carries its
    genome, so it is cached by archid too (other modules need `input_shape`,
    `(C, H, W)`, and are not cached). A cache hit returns `cached=True`
    without running anything.
    """
    cfg = cfg or LatencyCfg()
    device = torch.device(device)
    model, genome = _as_model(net)
    if input_shape is None:
        if genome is None:
            raise ConfigError("measure_latency: a module without a NetCfg (`.cfg`) needs "
                              "`input_shape=(C, H, W)`.")
        input_shape = (genome.in_chans, genome.input_size, genome.input_size)
    batch = batch_size or cfg.batch_sizes[0]
    dev_name = device_name(device, cfg.threads)
    cache = _JsonCache(cfg.cache if genome is not None else None)
    key = _key(f"net:{genome.archid}:{tuple(input_shape)}" if genome else "", dev_name, cfg,
               batch, _channels_last(cfg, device))
    hit = cache.get(key)
    if hit is not None:
        return LatencyResult(**{**hit, "cached": True})
    res = _measure(model, tuple(input_shape), cfg, device, batch, dev_name)
    cache.put(key, res.to_dict())
    return res


def measure_latencies(net: NetCfg | nn.Module, cfg: LatencyCfg | None = None,
                      device: str | torch.device = "cpu") -> list[LatencyResult]:
    """`measure_latency` at every batch size of `cfg.batch_size`."""
    cfg = cfg or LatencyCfg()
    return [measure_latency(net, cfg, device, batch_size=b) for b in cfg.batch_sizes]


class _Head(nn.Module):
    """The network's head alone: [BN -> ReLU] -> global average pool -> Linear."""

    def __init__(self, net: NetCfg, c: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(c) if net.preact_head else nn.Identity()
        self.act = nn.ReLU() if net.preact_head else nn.Identity()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(c, net.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.act(self.norm(x))), 1))


def _stem_out(net: NetCfg) -> int:
    size = net.input_size
    if net.stem == "conv3x3s2_nobn":
        size = out_size(size, 2)
    elif net.stem == "conv7x7s2_maxpool":
        size = out_size(out_size(size, 2), 2)
    return size


class BlockLatencyTable:
    """Per-part latencies (stem, each distinct block, head) and their sum as a prediction.

    Each distinct part is measured once on `device` as a one-part module,
    keyed by its canonical string, channels and input resolution (and the
    device, dtype, batch size, torch version and backend), and stored in the
    JSON file `path` (None: kept in memory only). The first batch size of `cfg` is used.
    """

    def __init__(self, cfg: LatencyCfg | None = None, device: str | torch.device = "cpu",
                 path: str | Path | None = None):
        self.cfg, self.device = cfg or LatencyCfg(), torch.device(device)
        self.batch = self.cfg.batch_sizes[0]
        self._dev_name = device_name(self.device, self.cfg.threads)
        self._store = _JsonCache(path)
        self._mem: dict[str, float] = {}
        self.measured = 0  # parts measured (not found in the table) by this object
        self.scale = 1.0  # whole network / sum of its parts, from `calibrate` (1 = raw sum)

    def parts(self, net: NetCfg) -> list[tuple[str, tuple[int, int, int]]]:
        """`(key, input shape (C, H, W))` of the stem, every block and the head, in order."""
        size = _stem_out(net)
        out = [(f"stem:{net.stem}:c{net.in_chans}->{net.stem_width}",
                (net.in_chans, net.input_size, net.input_size))]
        for _, b, c_in, c_out in net.blocks:
            out.append((f"block:{b.encode()}:{c_in}->{c_out}", (c_in, size, size)))
            size = out_size(size, b.stride)
        head = "preact" if net.preact_head else "plain"
        out.append((f"head:{head}:{net.stages[-1].width}->{net.classes}",
                    (net.stages[-1].width, size, size)))
        return out

    def _build(self, net: NetCfg, index: int) -> nn.Module:
        if index == 0:
            return make_stem(net)
        blocks = net.blocks
        if index <= len(blocks):
            _, b, c_in, c_out = blocks[index - 1]
            return BLOCKS[b.family](b, c_in, c_out)
        return _Head(net, net.stages[-1].width)

    def _part_ms(self, net: NetCfg, index: int, key: str, shape: tuple[int, int, int]) -> float:
        full = _key(f"{key}@{shape[1]}", self._dev_name, self.cfg, self.batch,
                    _channels_last(self.cfg, self.device))
        if full in self._mem:
            return self._mem[full]
        hit = self._store.get(full)
        if hit is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                part = self._build(net, index)
            res = _measure(part, shape, self.cfg, self.device, self.batch, self._dev_name)
            self.measured += 1
            hit = res.to_dict()
            self._store.put(full, hit)
        self._mem[full] = float(hit["median_ms"])
        return self._mem[full]

    def predict(self, net: NetCfg) -> float:
        """Predicted milliseconds: `scale` x (stem + blocks + head), measuring parts not yet known."""
        return self.scale * self._sum(net)

    def _sum(self, net: NetCfg) -> float:
        return sum(self._part_ms(net, i, k, shape) for i, (k, shape) in enumerate(self.parts(net)))

    def calibrate(self, nets: Sequence[NetCfg], measured: Sequence[float] | None = None) -> float:
        """Fit `scale`, the median ratio of measured to summed latency over `nets`; return it.

        Parts timed alone run with their inputs in cache and without the
        network's other layers in between, so the raw sum is biased low by a
        roughly constant factor on a given device; one ratio corrects most of it.
        """
        ratios = []
        for i, net in enumerate(nets):
            meas = measured[i] if measured is not None else measure_latency(
                net, self.cfg, self.device, batch_size=self.batch).median_ms
            ratios.append(meas / self._sum(net))
        ratios.sort()
        mid = len(ratios) // 2
        self.scale = ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2
        return self.scale

    def predictor_error(self, nets: Sequence[NetCfg],
                        measured: Sequence[float] | None = None) -> dict[str, Any]:
        """Relative error of `predict` against whole-network measurements.

        Returns `mean_abs_pct` (mean |predicted - measured| / measured, in %),
        `within_10pct` (the share of networks predicted within 10%), `n` and
        per-network `rows` (archid, predicted_ms, measured_ms).
        """
        rows = []
        for i, net in enumerate(nets):
            meas = measured[i] if measured is not None else measure_latency(
                net, self.cfg, self.device, batch_size=self.batch).median_ms
            rows.append({"archid": net.archid, "predicted_ms": self.predict(net),
                         "measured_ms": meas})
        errs = [abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in rows]
        return {"n": len(rows), "mean_abs_pct": 100 * sum(errs) / max(1, len(errs)),
                "within_10pct": sum(e <= 0.10 for e in errs) / max(1, len(errs)), "rows": rows}
