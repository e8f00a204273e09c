"""Predicted latency from parts timed alone: the stem, each distinct block, the head.

`BlockLatencyTable` measures each distinct part once (as a one-part module, on
the device and settings of a `LatencyCfg`), stores it in a JSON table, and
predicts a network's latency as `scale` times the sum of its parts. On our
2-core CPU the raw sum missed whole-network latency by 16.2% on average, and one
fitted `scale` made it worse (22.2%, benchmarks/RESULTS.md): the ratio of whole
to parts varies between networks, so this sum is a baseline, not the predictor
the search uses.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftnas.searchspace import BLOCKS, NetCfg, block_args
from shiftnas.searchspace.blocks import Stem
from shiftnas.searchspace.genome import out_size

from .latency import (
    LatencyCfg,
    _channels_last,
    _JsonCache,
    _key,
    _measure,
    device_name,
    measure_latency,
)


class _Head(nn.Module):
    """The network's head alone: [BN -> ReLU] -> global average pool -> Linear."""

    def __init__(self, net: NetCfg, c: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(c) if net.preact_head else nn.Identity()
        self.act = nn.ReLU() if net.preact_head else nn.Identity()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(c, net.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.act(self.norm(x))), 1))


def stem_out(net: NetCfg) -> int:
    """Resolution after the stem."""
    size = net.input_size
    if net.stem == "conv3x3s2_nobn":
        size = out_size(size, 2)
    elif net.stem == "conv7x7s2_maxpool":
        size = out_size(out_size(size, 2), 2)
    return size


class BlockLatencyTable:
    """Per-part latencies (stem, each distinct block, head) and their scaled sum as a prediction.

    Parts are keyed by their canonical string, channels and input resolution
    (and the device, dtype, batch size, torch version and backend) in the JSON
    file `path` (None: in memory only).
    """

    def __init__(self, cfg: LatencyCfg | None = None, device: str | torch.device = "cpu",
                 path: str | Path | None = None):
        self.cfg, self.device = cfg or LatencyCfg(), torch.device(device)
        self._dev_name = device_name(self.device, self.cfg.threads)
        self._store = _JsonCache(path)
        self._mem: dict[str, float] = {}
        self.measured = 0  # parts measured (not found in the table) by this object
        self.scale = 1.0  # whole network / sum of its parts, from `calibrate` (1 = raw sum)

    def parts(self, net: NetCfg) -> list[tuple[str, tuple[int, int, int]]]:
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
        return _Head(net, net.stages[-1].width)

    def _part_ms(self, net: NetCfg, index: int, key: str, shape: tuple[int, int, int]) -> float:
        full = _key(f"{key}@{shape[1]}", self._dev_name, self.cfg, self.cfg.batch_size,
                    _channels_last(self.cfg, self.device))
        if full in self._mem:
            return self._mem[full]
        hit = self._store.get(full)
        if hit is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                part = self._build(net, index)
            res = _measure(part, shape, self.cfg, self.device, self.cfg.batch_size, self._dev_name)
            self.measured += 1
            hit = res.to_dict()
            self._store.put(full, hit)
        self._mem[full] = float(hit["median_ms"])
        return self._mem[full]

    def _sum(self, net: NetCfg) -> float:
        return sum(self._part_ms(net, i, k, shape) for i, (k, shape) in enumerate(self.parts(net)))

    def predict(self, net: NetCfg) -> float:
        """Predicted milliseconds: `scale` x (stem + blocks + head), measuring parts not yet known."""
        return self.scale * self._sum(net)

    def _measured(self, nets: Sequence[NetCfg], measured: Sequence[float] | None) -> list[float]:
        if measured is not None:
            return list(measured)
        return [measure_latency(n, self.cfg, self.device).median_ms for n in nets]

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
        errs = [abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in rows]
        return {"n": len(rows), "mean_abs_pct": 100 * sum(errs) / max(1, len(errs)),
                "within_10pct": sum(e <= 0.10 for e in errs) / max(1, len(errs)), "rows": rows}
