"""Evaluators: what turns an architecture into the numbers a search trades off.

Data sets (`load_data`), proxy training (`train`), measured latency
(`measure_latency`, `BlockLatencyTable`), zero-cost proxies (`compute_proxies`)
and, from `evaluators.cost`, the analytic params / MACs / memory traffic.
Each is a plain function of a genome (`NetCfg`) and a frozen config whose
`from_dict` reads a budget file's section strictly.
"""

from __future__ import annotations

from .datasets import DataBundle, DataCfg, load_data
from .latency import (
    BlockLatencyTable,
    LatencyCfg,
    LatencyResult,
    device_lock,
    fold_bn,
    measure_latencies,
    measure_latency,
)
from .proxies import PROXIES, compute_proxies
from .training import TrainCfg, TrainResult, train

__all__ = [
    "DataCfg", "DataBundle", "load_data",
    "TrainCfg", "TrainResult", "train",
    "LatencyCfg", "LatencyResult", "measure_latency", "measure_latencies", "BlockLatencyTable",
    "fold_bn", "device_lock",
    "PROXIES", "compute_proxies",
]

try:  # the analytic cost model (lands separately)
    from .cost import NetCost, net_cost  # noqa: F401
except ImportError:
    pass
else:
    __all__ += ["NetCost", "net_cost"]
