"""A trial's latency: measured whole, or with `latency.mode: predicted` from its parts.

Predicted mode: every trial times its parts in context (`evaluators.predictor.PartTimes`,
cached in a JSON file its workers share) and returns the predictor's features, which
the evaluator stores in its `latency` attribute at once (`SearchStore.set_latency`).
While the study holds fewer than `latency.calibrate` measured networks, a trial is
also measured whole (its `latency_ms` is measured); after that, a `LatencyPredictor` is fitted on every measured network
in the study and predicts `latency_ms`. The predictor is fitted afresh from the
storage each time, never kept in one process, so workers in other processes or
on other machines see the same calibration sample (with several workers a few
more than `calibrate` may be measured at the start, never fewer), and a later
launch refits on everything measured so far, including the front's checks.

When the search ends, `check_front` measures the front's predicted latencies and
records them in the study (`latency_check:<number>`); the report compares them.
Latency constraints are checked against the value the trial has: predicted ones
against the prediction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from shiftnas.evaluators.latency import LatencyCfg, measure_latency
from shiftnas.evaluators.predictor import (
    FEATURES,
    LatencyPredictor,
    PartTimes,
    predictor_settings,
)
from shiftnas.record import SearchStore, TrialRecord, now_iso
from shiftnas.searchspace import NetCfg, decode_net

PARTS_FILE = "latency-parts.json"  # in the run directory, unless `latency.cache` is set
PREDICTOR_FILE = "latency-predictor.json"  # the final fit, written when the search ends


def calibration(records: Iterable[TrialRecord], checks: Mapping[int, Mapping[str, Any]] = {},
                exclude: int | None = None) -> tuple[list[dict[str, float]], list[float]]:
    """Feature rows and measured milliseconds of every network the study measured whole.

    A trial measured in predicted mode counts (in any state: a trial pruned or
    failed after its measurement still measured it), and so does a predicted
    trial measured after the search (`checks`). An architecture counts once.
    """
    rows, ms, seen = [], [], set()
    for r in sorted(records, key=lambda r: r.number):
        feats = r.latency.get("features")
        measured = r.latency.get("measured_ms") if r.latency.get("source") == "measured" \
            else (checks.get(r.number) or {}).get("measured_ms")
        if r.number == exclude or not isinstance(feats, Mapping) or measured is None \
                or r.archid in seen or not (measured > 0 and math.isfinite(measured)):
            continue
        seen.add(r.archid)
        rows.append({k: float(v) for k, v in feats.items()})
        ms.append(float(measured))
    return rows, ms


def fit(records: Iterable[TrialRecord], checks: Mapping[int, Mapping[str, Any]] = {},
        cfg_settings: Mapping[str, Any] | None = None, exclude: int | None = None,
        at_least: int = 1) -> LatencyPredictor | None:
    """The predictor fitted on the study's measured networks (None with fewer than `at_least`)."""
    rows, ms = calibration(records, checks, exclude)
    if len(ms) < max(1, at_least):
        return None
    return LatencyPredictor.fit(rows, ms, names=_names(rows), settings=cfg_settings)


def _names(rows: list[dict[str, float]]) -> tuple[str, ...]:
    """The predictor's features every row has (a run recorded by another version may lack one)."""
    return tuple(k for k in FEATURES if all(k in r for r in rows))


class TrialLatency:
    """`latency_ms` (and `latency_iqr_ms` when measured) for one trial; one per worker."""

    def __init__(self, cfg: LatencyCfg, device: str, store: SearchStore,
                 parts_path: str | Path | None):
        self.cfg, self.device, self.store = cfg, device, store
        self.parts = PartTimes(cfg, device, parts_path) if cfg.mode == "predicted" else None

    def __call__(self, number: int, net: NetCfg) -> tuple[dict[str, float], dict[str, Any]]:
        """Trial `number`'s latency metrics, and how they were obtained (its `latency`
        attribute; empty when measured outside predicted mode)."""
        if self.parts is None:
            return self._measure(net), {}
        feats = self.parts.features(net)
        model = fit(self.store.records(), self.store.latency_checks(),
                    predictor_settings(self.cfg, self.device), exclude=number,
                    at_least=self.cfg.calibrate)
        if model is None:  # the calibration sample is not complete yet: measure this one
            out = self._measure(net)
            return out, {"source": "measured", "features": feats,
                         "measured_ms": out["latency_ms"]}
        return {"latency_ms": model.predict(feats)}, {
            "source": "predicted", "features": feats, "fitted_on": model.n, "coef": model.coef}

    def _measure(self, net: NetCfg) -> dict[str, float]:
        lat = measure_latency(net, self.cfg, self.device)
        return {"latency_ms": lat.value(self.cfg.statistic), "latency_iqr_ms": lat.iqr_ms}


def check_front(store: SearchStore, front: Iterable[TrialRecord], cfg: LatencyCfg, device: str,
                log=None) -> int:
    """Measure every front trial whose latency was predicted and not measured yet; return how
    many were measured now."""
    done = store.latency_checks()
    n = 0
    for t in front:
        if t.latency_source != "predicted" or t.number in done or not t.arch:
            continue
        lat = measure_latency(decode_net(t.arch), cfg, device)
        measured = lat.value(cfg.statistic)
        store.set_latency_check(t.number, {
            "measured_ms": measured, "iqr_ms": lat.iqr_ms,
            "predicted_ms": t.metric("latency_ms"), "device": lat.device_name,
            "time": now_iso()})
        n += 1
        if log:
            log(f"trial {t.number}: predicted latency {t.metric('latency_ms'):.4g} ms, measured "
                f"{measured:.4g} ms")
    return n
