"""One trial, from a sampled genome to its recorded metrics. Both engines call this.

Cheap first: the genome is validated and costed (params, MACs, memory
traffic) and checked against the constraints before anything runs; latency
is measured and zero-cost proxies are computed before any training. An
infeasible candidate is recorded with the values it has and never trained.
An architecture already evaluated in this run is not trained again: its
stored result is reused. Whatever happens (NaN, out of memory, an
exception), the trial ends as a record in the run directory and the run
goes on.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch

from shiftnas.errors import ArchError
from shiftnas.evaluators.cost import net_cost
from shiftnas.evaluators.datasets import DataBundle, load_data
from shiftnas.evaluators.device import resolve_device
from shiftnas.evaluators.latency import measure_latency
from shiftnas.evaluators.proxies import PROXIES, compute_proxies
from shiftnas.evaluators.training import train
from shiftnas.results.store import Objective
from shiftnas.searchspace import NetCfg, Space, build_model, validate

from .budget import CHEAP_METRICS, Budget
from .pruning import ParetoHalving
from .store import RunStore, now_iso


@dataclass
class Outcome:
    """How a trial ended and what it measured."""

    state: str  # complete | pruned | infeasible | failed
    metrics: dict[str, float]
    feasible: bool  # satisfies every constraint (meaningful for complete trials)
    reason: str | None = None  # why a trial is not complete (or not feasible)
    reused_from: int | None = None  # the trial whose stored result a duplicate reused

    def values(self, objectives: tuple[Objective, ...]) -> list[float]:
        """Objective values for the sampler; missing ones (never measured) are the worst."""
        out = []
        for o in objectives:
            v = self.metrics.get(o.name)
            if v is None or not math.isfinite(v):
                v = 0.0 if (o.name == "accuracy") else (-1e12 if o.direction == "maximize" else 1e12)
            out.append(float(v))
        return out

    def violations(self, budget: Budget) -> list[float]:
        """Per constraint, how far it is violated (<= 0 means satisfied), for Optuna's samplers."""
        out = []
        for c in budget.constraints:
            v = self.metrics.get(c.metric)
            if v is None:
                out.append(1.0 if self.state in ("infeasible", "failed") else 0.0)
            elif c.holds(self.metrics):
                out.append(0.0)
            else:
                out.append(abs(v - c.value) / max(abs(c.value), 1e-9) + 1e-9)
        return out


class TrialEvaluator:
    """Evaluates trials of one run; build one per process (it holds the data set)."""

    def __init__(self, budget: Budget, store: RunStore, device: str | None = None):
        self.budget, self.store = budget, store
        self.device = device or resolve_device(budget.device, "budget.device")
        self._data: DataBundle | None = None
        self.proxies = tuple(dict.fromkeys(
            [*budget.proxies, *(m for m in budget.metrics_needed if m in PROXIES)]))

    @property
    def data(self) -> DataBundle:
        if self._data is None:
            self._data = load_data(self.budget.data, self.device)
        return self._data

    def space(self) -> Space:
        """The budget's space, set to the data set's channels, classes and resolution."""
        d = self.data
        return self.budget.load_space().for_data(d.in_chans, d.classes, d.input_size)

    def __call__(self, number: int, net: NetCfg, params: dict[str, Any] | None = None) -> Outcome:
        started, t0 = now_iso(), time.perf_counter()
        try:
            out = self._evaluate(number, net)
        except Exception as exc:  # a failing trial must not stop the run
            self.store.log(f"trial {number} failed:\n{traceback.format_exc()}")
            out = Outcome("failed", {}, False, f"{type(exc).__name__}: {exc}")
        if out.state == "failed" and self.device == "cuda":
            torch.cuda.empty_cache()
        record = {
            "number": number, "state": out.state, "archid": net.archid, "arch": net.encode(),
            "metrics": out.metrics, "feasible": out.feasible, "reason": out.reason,
            "started": started, "finished": now_iso(),
            "duration_s": round(time.perf_counter() - t0, 3), "reused_from": out.reused_from,
            "params": params or {}, "engine": self.budget.engine,
        }
        self.store.save_arch(number, net, out.metrics)
        self.store.record_trial(record)
        shown = ", ".join(f"{k}={v:.5g}" for k, v in out.metrics.items())
        self.store.log(f"trial {number} {out.state} in {record['duration_s']:.1f} s"
                       f"{f' ({out.reason})' if out.reason else ''}: {net.encode()} {shown}")
        return out

    def _check(self, metrics: dict[str, float], names) -> str | None:
        for c in self.budget.constraints:
            if c.metric in names and c.metric in metrics and not c.holds(metrics):
                v = metrics[c.metric]
                shown = f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
                return f"{c.metric} {shown} breaks '{c}'"
        return None

    def _evaluate(self, number: int, net: NetCfg) -> Outcome:
        b = self.budget
        try:
            validate(net)
        except ArchError as exc:
            return Outcome("infeasible", {}, False, f"invalid architecture: {exc}")
        prior = self.store.finished_by_archid(net.archid)
        if prior is not None:
            return Outcome(prior["state"], dict(prior["metrics"]), prior["feasible"],
                           prior.get("reason"), reused_from=prior["number"])

        cost = net_cost(net)
        m: dict[str, float] = {"params": float(cost.params), "macs": float(cost.macs),
                               "traffic_mb": cost.traffic_bytes / 1e6}
        if why := self._check(m, CHEAP_METRICS):
            return Outcome("infeasible", m, False, why)
        if b.needs_latency:
            lat = measure_latency(net, b.latency, self.device)
            m["latency_ms"], m["latency_iqr_ms"] = lat.median_ms, lat.iqr_ms
            if why := self._check(m, ("latency_ms",)):
                return Outcome("infeasible", m, False, why)
        if self.proxies:
            m.update(compute_proxies(net, self.data, self.proxies, device=self.device,
                                     seed=b.seed))
            if why := self._check(m, self.proxies):
                return Outcome("infeasible", m, False, why)
        if not b.needs_training:
            return Outcome("complete", m, True)

        costs = {k: v for k, v in m.items() if k != "accuracy"}
        halving = ParetoHalving(b.pruning, b.train.epochs, self.store, number, b.objectives, costs)
        torch.manual_seed(b.train.seed)
        model = build_model(net)
        res = train(model, self.data, b.train, device=self.device, on_epoch=halving)
        m.update({"accuracy": res.accuracy, "epochs": float(res.epochs),
                  "train_s": res.wall_s, "images_per_s": res.images_per_s})
        if res.status in ("nan", "oom", "error"):
            return Outcome("failed", m, False, f"{res.status}: {res.reason}")
        if res.status == "pruned":
            return Outcome("pruned", m, False, f"dominated at the {halving.pruned_at}-epoch rung")
        torch.save({k: v.cpu() for k, v in model.state_dict().items()},
                   self.store.weights_path(number))
        why = self._check(m, ("accuracy",))
        return Outcome("complete", m, why is None, why)

