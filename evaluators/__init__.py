"""Evaluators: what turns an architecture into the numbers a search trades off.

The analytic cost (`net_cost`: params, MACs, memory traffic), data sets
(`load_data`), proxy training (`train`), measured latency (`measure_latency`)
and zero-cost proxies (`compute_proxies`). Each is a plain function of a
genome (`NetCfg`) and a frozen config read strictly from a budget file's section.
"""

from __future__ import annotations

from .cost import NetCost, net_cost
from .datasets import DataBundle, DataCfg, load_data
from .device import DeviceLock, device_lock, resolve_device
from .latency import LatencyCfg, LatencyResult, measure_latency
from .proxies import PROXIES, compute_proxies
from .training import TrainCfg, TrainResult, train

__all__ = [
    "NetCost", "net_cost",
    "DataCfg", "DataBundle", "load_data",
    "TrainCfg", "TrainResult", "train",
    "LatencyCfg", "LatencyResult", "measure_latency",
    "DeviceLock", "device_lock", "resolve_device",
    "PROXIES", "compute_proxies",
]
