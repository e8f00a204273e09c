"""Predicted latency: the network's parts timed in context, and a regression fitted on a few
fully measured networks.

`PartTimes` times the stem, every block and the head of a network *as the
network runs them*: cut out of the same prepared network that
`measure_latency` times (BN folded, shift+1x1 fused or the portable ops for
ONNX Runtime, the dtype and memory layout), each on its real input (the
activations of the parts before it), with the same backend, threads and batch
size. Parts are keyed like the latency cache (canonical block string,
channels, resolution, device, dtype, batch, torch, backend, layout) in a JSON
file, so a search measures each distinct part once.

The sum of the parts misses what the parts do not see alone: a call's fixed
cost is paid once per part instead of once per network, memory and caches
behave differently inside a network, and the rest varies with the work done.
`LatencyPredictor` fits, on networks measured whole, a linear model of the
parts' features (`FEATURES`: the sum of the parts, how many there are, MACs,
memory traffic, a constant per network), minimising the *relative* error, with
non-negative least squares for the terms that must add time and a ridge pull
towards "the sum of the parts" so that a handful of networks suffices.

`BlockLatencyTable` is the old baseline: parts built alone (not fused) and
summed (16.2% mean error on our CPU, benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftnas.errors import ConfigError
from shiftnas.files import atomic_write
from shiftnas.searchspace import BLOCKS, NetCfg, block_args
from shiftnas.searchspace.blocks import Stem
from shiftnas.searchspace.genome import out_size

from .cost import net_cost
from .latency import (
    LatencyCfg,
    _as_model,
    _channels_last,
    _input,
    _JsonCache,
    _key,
    _measure,
    _prepare,
    _time_prepared,
    device_name,
    measure_latency,
    resolve_backend,
    stat_ms,
)

__all__ = ["PartTimes", "LatencyPredictor", "FEATURES", "features", "BlockLatencyTable",
           "relative_errors", "predictor_settings"]


def stem_out(net: NetCfg) -> int:
    """Resolution after the stem."""
    size = net.input_size
    if net.stem == "conv3x3s2_nobn":
        size = out_size(size, 2)
    elif net.stem == "conv7x7s2_maxpool":
        size = out_size(out_size(size, 2), 2)
    return size


def part_keys(net: NetCfg) -> list[tuple[str, tuple[int, int, int]]]:
    """`(key, input shape (C, H, W))` of the stem, every block and the head, in order."""
    size = stem_out(net)
    out = [(f"stem:{net.stem}:c{net.in_chans}->{net.stem_width}",
            (net.in_chans, net.input_size, net.input_size))]
    for _, b, c_in, c_out in net.blocks:
        out.append((f"block:{b.encode()}:{c_in}->{c_out}", (c_in, size, size)))
        size = out_size(size, b.stride)
    head = "preact" if net.preact_head else "plain"
    out.append((f"head:{head}:{net.stages[-1].width}->{net.classes}",
                (net.stages[-1].width, size, size)))
    return out


class _Tail(nn.Module):
    """The head of a built network: [BN -> ReLU] -> global average pool -> Linear."""

    def __init__(self, norm: nn.Module, act: nn.Module, pool: nn.Module, fc: nn.Module):
        super().__init__()
        self.norm, self.act, self.pool, self.fc = norm, act, pool, fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.act(self.norm(x))), 1))


class _PlusOne(nn.Module):
    """Next to nothing to compute: what a call costs by itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


def _pieces(model: nn.Module) -> list[nn.Module]:
    """The stem, every block and the head of a `ShiftNet`, sharing its modules."""
    return [model.stem, *(b for stage in model.stages for b in stage),
            _Tail(model.head_norm, model.head_act, model.pool, model.fc)]


class PartTimes:
    """Milliseconds of each part of a network, timed in context and cached.

    `times(net)` returns one number per part (stem, blocks, head). Parts not
    in the cache are timed from one prepared copy of the network, as
    `measure_latency` prepares it (`cfg`: backend, dtype, layout, threads,
    batch size, warm-up and repeats), each on the activations the parts before
    it produce. `path` is a JSON file shared by every worker of a search (None:
    in memory only); `measured` counts the parts this object timed.
    """

    PREFIX = "part:"  # cache keys: this, the part's key, @resolution, then the latency key
    # Timed runs per part at least: a part is short and timed once for the whole search, so
    # its median must not hang on one burst of the machine's load (ORT parts: ~0.05 ms each).
    MIN_REPEATS = 100

    def __init__(self, cfg: LatencyCfg | None = None, device: str | torch.device = "cpu",
                 path: str | Path | None = None):
        self.device = torch.device(device)
        self.cfg = resolve_backend(cfg or LatencyCfg(), self.device)
        self.dev_name = device_name(self.device, self.cfg.threads)
        self._store = _JsonCache(path)
        self._mem: dict[str, float] = {}
        self.measured = 0
        self._timing = replace(self.cfg, repeats=max(self.cfg.repeats, self.MIN_REPEATS))

    def key(self, part: str, shape: tuple[int, int, int]) -> str:
        return _key(f"{self.PREFIX}{part}@{shape[1]}", self.dev_name, self.cfg,
                    self.cfg.batch_size, _channels_last(self.cfg, self.device))

    def times(self, net: NetCfg) -> list[float]:
        """Milliseconds per part of `net`, in order; parts not known yet are timed now."""
        keys = [self.key(k, shape) for k, shape in part_keys(net)]
        missing = {k: i for i, k in reversed(list(enumerate(keys))) if self._lookup(k) is None}
        if missing:  # the first part of each missing key (equal blocks are timed once)
            self._time(net, keys, set(missing.values()))
        return [self._mem[k] for k in keys]

    def call_ms(self) -> float:
        """The fixed cost of one timed call, which every part pays and the network pays once.

        0 in eager mode (a part is called just as the network calls it). An ONNX
        Runtime session, a compiled function or a CUDA graph costs something per
        call whatever it runs: the time of one that adds 1 to one number (ORT on
        our CPU: ~0.01 ms, a tenth of a small block).
        """
        if self.cfg.backend == "eager":
            return 0.0
        key = self.key("call", (1, 1, 1))
        if self._lookup(key) is None:
            res = _time_prepared(_PlusOne(), _input((1, 1, 1), self.cfg, self.device, 1, False),
                                 self._timing, self.dev_name)
            self._mem[key] = res.value(self.cfg.statistic)
            self._store.put(key, res.to_dict())
        return self._mem[key]

    def features(self, net: NetCfg) -> dict[str, float]:
        """The predictor's inputs for `net`, timing the parts not known yet."""
        return features(net, self.times(net), self.cfg, self.call_ms())

    def known(self) -> dict[str, float]:
        """Every part time this object has read or measured, by cache key."""
        return dict(self._mem)

    def add(self, known: Mapping[str, float]) -> None:
        """Take part times from elsewhere (a saved predictor): they are not timed again."""
        self._mem.update({k: float(v) for k, v in known.items()})

    def _lookup(self, key: str) -> float | None:
        if key not in self._mem:
            hit = stat_ms(self._store.get(key), self.cfg.statistic)
            if hit is None:
                return None
            self._mem[key] = hit
        return self._mem[key]

    def _time(self, net: NetCfg, keys: list[str], which: set[int]) -> None:
        model, _ = _as_model(net)
        prepared, cl = _prepare(model, self.cfg, self.device)
        x = _input((net.in_chans, net.input_size, net.input_size), self.cfg, self.device,
                   self.cfg.batch_size, cl)
        for i, piece in enumerate(_pieces(prepared)):
            if i in which:
                res = _time_prepared(piece, x, self._timing, self.dev_name)
                self.measured += 1
                self._mem[keys[i]] = res.value(self.cfg.statistic)
                self._store.put(keys[i], res.to_dict())
            if i < len(keys) - 1:
                with torch.inference_mode():
                    x = piece(x)
                x = x.clone()  # out of inference mode: later exports and graphs may use it


# ----------------------------------------------------------------------------
# The regression
# ----------------------------------------------------------------------------

# Per network: name -> (what it is, whether its coefficient may be negative).
FEATURES: dict[str, tuple[str, bool]] = {
    "const": ("1: a fixed cost per forward pass", False),
    "parts_ms": ("the sum of the parts' in-context times, a call's fixed cost counted once (ms)",
                 False),
    "parts": ("how many parts were timed: each paid a call's fixed cost the network pays once",
              True),
    "mmacs": ("multiply-accumulates (millions, x batch)", False),
    "traffic_mb": ("memory traffic, reads and writes (MB, x batch, at the dtype's size)", False),
}


def features(net: NetCfg, part_ms: Sequence[float], cfg: LatencyCfg,
             call_ms: float = 0.0) -> dict[str, float]:
    """The regression's inputs for `net` from its part times (see `FEATURES`), and, for the
    record, `sum_ms` (the raw sum) and `call_ms` (`PartTimes.call_ms`)."""
    cost = net_cost(net, batch=cfg.batch_size,
                    dtype_bytes=torch.empty((), dtype=_DTYPE[cfg.dtype]).element_size())
    total = float(sum(part_ms))
    return {"const": 1.0, "parts_ms": total - (len(part_ms) - 1) * call_ms,
            "parts": float(len(part_ms)), "mmacs": cost.macs / 1e6,
            "traffic_mb": cost.traffic_bytes / 1e6, "sum_ms": total, "call_ms": call_ms}


_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def predictor_settings(cfg: LatencyCfg, device: str | torch.device) -> dict[str, Any]:
    """Where a predictor's numbers come from (saved with it): it is only meaningful there."""
    device = torch.device(device)
    cfg = resolve_backend(cfg, device)
    return {"device": device_name(device, cfg.threads), "backend": cfg.backend,
            "dtype": cfg.dtype, "batch_size": cfg.batch_size, "threads": cfg.threads,
            "fold_bn": cfg.fold_bn, "channels_last": _channels_last(cfg, device),
            "statistic": cfg.statistic,
            "torch": torch.__version__}


def relative_errors(predicted: Sequence[float], measured: Sequence[float]) -> list[float]:
    """`|predicted - measured| / measured` per network."""
    return [abs(p - m) / m for p, m in zip(predicted, measured)]


@dataclass
class LatencyPredictor:
    """`latency ~ sum_k coef[k] * features[k]`, fitted on networks measured whole.

    Build it with `fit`; `predict(feats)` takes a `features` dict. `settings`
    says where the part times and measurements were taken (device, backend,
    dtype, batch, threads): a predictor is only meaningful there.
    """

    coef: dict[str, float] = field(default_factory=lambda: {"parts_ms": 1.0})
    n: int = 0  # networks it was fitted on (0: the prior, the sum of the parts)
    settings: dict[str, Any] = field(default_factory=dict)
    fit_error: dict[str, float] = field(default_factory=dict)  # on its own calibration sample

    PRIOR_WEIGHT = 0.5  # ridge pull towards the prior, in networks' worth of evidence

    @classmethod
    def fit(cls, rows: Sequence[Mapping[str, float]], measured: Sequence[float],
            names: Sequence[str] = tuple(FEATURES), settings: Mapping[str, Any] | None = None,
            prior_weight: float | None = None) -> LatencyPredictor:
        """Fit on feature rows and their measured milliseconds, minimising relative error.

        Each row is divided by its measurement (so a 10% miss on a fast network
        costs what it costs on a slow one); each feature is scaled to its
        typical size, and a ridge term pulls the coefficients towards the
        prior `parts_ms = 1, others 0` with the weight of `prior_weight`
        networks. Coefficients of features marked non-negative in `FEATURES`
        stay >= 0 (scipy's NNLS after shifting the signed ones into +/- pairs).
        """
        from scipy.optimize import nnls

        names = tuple(names)
        unknown = [n for n in names if n not in FEATURES]
        if unknown:
            raise ConfigError(f"unknown predictor feature {unknown[0]!r}; features are "
                              f"{list(FEATURES)}.")
        y = np.asarray(measured, dtype=float)
        if len(rows) != len(y) or np.any(~np.isfinite(y)) or np.any(y <= 0):
            raise ConfigError("LatencyPredictor.fit: one positive measurement per feature row.")
        lam = cls.PRIOR_WEIGHT if prior_weight is None else prior_weight
        k = len(names)
        X = np.array([[float(r[n]) for n in names] for r in rows], dtype=float).reshape(len(y), k)
        prior = np.array([1.0 if n == "parts_ms" else 0.0 for n in names])
        # Units: a coefficient times its feature's typical size, as a share of a typical latency.
        scale = np.ones(k)
        if len(y):
            scale = np.maximum(np.median(np.abs(X), axis=0), 1e-12) / float(np.median(y))
        A = np.vstack([X / y[:, None] / scale, math.sqrt(lam) * np.eye(k)])
        b = np.concatenate([np.ones(len(y)), math.sqrt(lam) * prior * scale])
        # NNLS: signed features enter twice, as +x and -x.
        signed = [j for j, n in enumerate(names) if FEATURES[n][1]]
        w, _ = nnls(np.hstack([A, -A[:, signed]]), b, maxiter=50 * (k + len(signed)) + 100)
        beta = w[:k].copy()
        beta[signed] -= w[k:]
        coef = {n: float(c / s) for n, c, s in zip(names, beta, scale)}
        out = cls(coef, len(y), dict(settings or {}))
        if len(y):
            errs = relative_errors([out.predict(r) for r in rows], y)
            out.fit_error = {"mean": float(np.mean(errs)), "max": float(np.max(errs))}
        return out

    def predict(self, feats: Mapping[str, float]) -> float:
        """Predicted milliseconds for one `features` dict.

        Never below a tenth of the parts' sum: a fit extrapolated far from its
        sample must not promise a free network.
        """
        ms = float(sum(c * float(feats[k]) for k, c in self.coef.items()))
        return max(ms, 0.1 * float(feats.get("parts_ms", 0.0)))

    def to_dict(self) -> dict[str, Any]:
        return {"format": "shiftnas-latency-predictor/1", "coef": self.coef, "n": self.n,
                "settings": self.settings, "fit_error": self.fit_error}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "predictor") -> LatencyPredictor:
        if not isinstance(d, Mapping) or d.get("format") != "shiftnas-latency-predictor/1":
            raise ConfigError(f"{where}: not a saved latency predictor (no "
                              f"'format: shiftnas-latency-predictor/1').")
        coef = d.get("coef")
        if not isinstance(coef, Mapping) or any(k not in FEATURES for k in coef) or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in coef.values()):
            raise ConfigError(f"{where}.coef: must map feature names from {list(FEATURES)} to "
                              f"finite numbers, got {coef!r}.")
        return cls({k: float(v) for k, v in coef.items()}, int(d.get("n", 0)),
                   dict(d.get("settings") or {}), dict(d.get("fit_error") or {}))


# ----------------------------------------------------------------------------
# Part times + regression, for a device
# ----------------------------------------------------------------------------


class NetworkPredictor:
    """Predicts whole networks on one device: `PartTimes` for the features, a fitted
    `LatencyPredictor` for the latency. Saved and loaded as one JSON file (part
    times included, so a loaded predictor needs no timing for networks whose
    parts it has seen)."""

    def __init__(self, cfg: LatencyCfg | None = None, device: str | torch.device = "cpu",
                 path: str | Path | None = None, names: Sequence[str] = tuple(FEATURES)):
        self.cfg = cfg or LatencyCfg()
        self.parts = PartTimes(self.cfg, device, path)
        self.names = tuple(names)
        self.model = LatencyPredictor(settings=self.settings)

    @property
    def settings(self) -> dict[str, Any]:
        return predictor_settings(self.cfg, self.parts.device)

    def features(self, net: NetCfg) -> dict[str, float]:
        return self.parts.features(net)

    def calibrate(self, nets: Sequence[NetCfg], measured: Sequence[float] | None = None,
                  prior_weight: float | None = None) -> LatencyPredictor:
        """Fit on `nets` and their whole-network latencies (measured now when not given)."""
        if measured is None:
            measured = [measure_latency(n, self.cfg, self.parts.device).value(self.cfg.statistic)
                        for n in nets]
        self.model = LatencyPredictor.fit([self.features(n) for n in nets], measured, self.names,
                                          self.settings, prior_weight)
        return self.model

    def predict(self, net: NetCfg) -> float:
        return self.model.predict(self.features(net))

    def save(self, path: str | Path) -> Path:
        d = {**self.model.to_dict(), "parts": dict(sorted(self.parts.known().items()))}
        return atomic_write(path, json.dumps(d, indent=1))

    @classmethod
    def load(cls, path: str | Path, cfg: LatencyCfg | None = None,
             device: str | torch.device = "cpu", cache: str | Path | None = None
             ) -> NetworkPredictor:
        """A saved predictor; its settings must match `cfg` on `device` (else ConfigError)."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"latency predictor {path}: not a readable JSON file ({exc}).") \
                from None
        model = LatencyPredictor.from_dict(d, str(path))
        out = cls(cfg, device, cache, names=tuple(model.coef))
        differ = {k: (v, model.settings.get(k)) for k, v in out.settings.items()
                  if k in model.settings and model.settings[k] != v}
        if differ:
            k, (here, there) = next(iter(differ.items()))
            raise ConfigError(f"latency predictor {path} was fitted with {k} = {there!r}, and "
                              f"this measures with {here!r}: fit a new one here.")
        out.model = model
        parts = d.get("parts") or {}
        if not isinstance(parts, Mapping):
            raise ConfigError(f"latency predictor {path}: `parts` must be an object.")
        out.parts.add(parts)
        return out


# ----------------------------------------------------------------------------
# The old baseline
# ----------------------------------------------------------------------------


def _head(net: NetCfg, c: int) -> _Tail:
    """The network's head alone, built fresh: [BN -> ReLU] -> global average pool -> Linear."""
    return _Tail(nn.BatchNorm2d(c) if net.preact_head else nn.Identity(),
                 nn.ReLU() if net.preact_head else nn.Identity(),
                 nn.AdaptiveAvgPool2d(1), nn.Linear(c, net.classes))


class BlockLatencyTable:
    """Per-part latencies (stem, each distinct block, head), each built and timed alone, and
    their scaled sum as a prediction: the baseline `NetworkPredictor` replaces.

    Parts are keyed by their canonical string, channels and input resolution
    (and the device, dtype, batch size, torch version and backend) in the JSON
    file `path` (None: in memory only). Eager, compile and cudagraph only (a
    part alone has no genome to export to ONNX).
    """

    def __init__(self, cfg: LatencyCfg | None = None, device: str | torch.device = "cpu",
                 path: str | Path | None = None):
        self.device = torch.device(device)
        self.cfg = resolve_backend(cfg or LatencyCfg(), self.device)
        self._dev_name = device_name(self.device, self.cfg.threads)
        self._store = _JsonCache(path)
        self._mem: dict[str, float] = {}
        self.measured = 0  # parts measured (not found in the table) by this object
        self.scale = 1.0  # whole network / sum of its parts, from `calibrate` (1 = raw sum)

    def parts(self, net: NetCfg) -> list[tuple[str, tuple[int, int, int]]]:
        """`(key, input shape (C, H, W))` of the stem, every block and the head, in order."""
        return part_keys(net)

    def _build(self, net: NetCfg, index: int) -> nn.Module:
        from shiftnas.kernels import spatial

        if index == 0:
            return Stem(net.in_chans, net.stem_width, net.stem)
        blocks = net.blocks
        if index <= len(blocks):
            _, b, c_in, c_out = blocks[index - 1]
            args = block_args(b, c_in, c_out)
            if "op" in args:
                args["op"] = spatial(args["op"].kind, **args["op"].options)
            return BLOCKS[b.family](**args)
        return _head(net, net.stages[-1].width)

    def _part_ms(self, net: NetCfg, index: int, key: str, shape: tuple[int, int, int]) -> float:
        full = _key(f"{key}@{shape[1]}", self._dev_name, self.cfg, self.cfg.batch_size,
                    _channels_last(self.cfg, self.device))
        if full in self._mem:
            return self._mem[full]
        hit = self._store.get(full)
        if stat_ms(hit, self.cfg.statistic) is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                part = self._build(net, index)
            res = _measure(part, shape, self.cfg, self.device, self.cfg.batch_size, self._dev_name)
            self.measured += 1
            hit = res.to_dict()
            self._store.put(full, hit)
        self._mem[full] = stat_ms(hit, self.cfg.statistic)
        return self._mem[full]

    def _sum(self, net: NetCfg) -> float:
        return sum(self._part_ms(net, i, k, shape) for i, (k, shape) in enumerate(self.parts(net)))

    def predict(self, net: NetCfg) -> float:
        """Predicted milliseconds: `scale` x (stem + blocks + head), measuring parts not yet known."""
        return self.scale * self._sum(net)

    def _measured(self, nets: Sequence[NetCfg], measured: Sequence[float] | None) -> list[float]:
        if measured is not None:
            return list(measured)
        return [measure_latency(n, self.cfg, self.device).value(self.cfg.statistic) for n in nets]

    def calibrate(self, nets: Sequence[NetCfg], measured: Sequence[float] | None = None) -> float:
        """Fit `scale` as the median ratio of measured to summed latency over `nets`; return it."""
        meas = self._measured(nets, measured)
        self.scale = statistics.median(m / self._sum(n) for n, m in zip(nets, meas))
        return self.scale

    def predictor_error(self, nets: Sequence[NetCfg],
                        measured: Sequence[float] | None = None) -> dict[str, Any]:
        """Relative error of `predict` against whole-network measurements.

        Returns `mean_abs_pct` (mean |predicted - measured| / measured, in %),
        `within_10pct` (the share of networks predicted within 10%), `n` and
        per-network `rows` (archid, predicted_ms, measured_ms).
        """
        rows = [{"archid": n.archid, "predicted_ms": self.predict(n), "measured_ms": m}
                for n, m in zip(nets, self._measured(nets, measured))]
        errs = relative_errors([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])
        return {"n": len(rows), "mean_abs_pct": 100 * sum(errs) / max(1, len(errs)),
                "within_10pct": sum(e <= 0.10 for e in errs) / max(1, len(errs)), "rows": rows}
