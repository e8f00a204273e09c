"""One trial, from a sampled genome to its outcome. Both engines call this.

Cheap first: the genome is validated and costed (params, MACs, memory traffic)
and checked against the constraints before anything runs; latency is measured
and zero-cost proxies are computed before any training. An infeasible
candidate is never trained. An architecture already evaluated in the study is
not trained again: its result is reused. Whatever happens (NaN, out of
memory, an exception), the trial ends as an `Outcome` and the search goes on.

`record` writes an outcome into the trial before it is told, so the storage
holds every fact about the trial (`nas.store` reads it back).
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from shiftnas.errors import ArchError
from shiftnas.evaluators.cost import net_cost
from shiftnas.evaluators.datasets import DataBundle, load_data
from shiftnas.evaluators.decompose import init_weights
from shiftnas.evaluators.device import DeviceLock
from shiftnas.evaluators.proxies import compute_proxies
from shiftnas.evaluators.training import train
from shiftnas.metrics import METRICS, Constraint, Objective, metrics_of
from shiftnas.searchspace import NetCfg, Space, build_model, validate

from .budget import Budget
from .predicted import PARTS_FILE, TrialLatency
from .pruning import ParetoHalving
from .store import SearchStore

NATIVE_CONSTRAINTS = hasattr(optuna.Trial, "set_constraint")  # Optuna >= 5


@dataclass
class Outcome:
    """How a trial ended and what it measured."""

    state: str  # complete | pruned | infeasible | failed
    metrics: dict[str, float]
    feasible: bool  # satisfies every constraint (meaningful for complete trials)
    reason: str | None = None  # why a trial is not complete (or not feasible)
    reused_from: int | None = None  # the trial whose result a duplicate reused
    weights: str | None = None  # artifact id of the proxy-trained weights

    def values(self, objectives: tuple[Objective, ...]) -> list[float]:
        """Objective values for the sampler; one never measured counts as its metric's worst."""
        out = []
        for o in objectives:
            v = self.metrics.get(o.name)
            out.append(float(v) if v is not None and math.isfinite(v) else METRICS[o.name].worst)
        return out

    def violations(self, constraints: tuple[Constraint, ...]) -> list[float]:
        """Per constraint, how far it is broken (<= 0: it holds), for Optuna's samplers.

        A value never measured breaks it when the trial was rejected or failed
        before measuring it, and holds otherwise (a pruned trial's accuracy).
        """
        out = []
        for c in constraints:
            v = c.violation(self.metrics)
            out.append(v if v is not None else (1.0 if self.state in ("infeasible", "failed")
                                                 else 0.0))
        return out

    def tell(self, objectives: tuple[Objective, ...]) -> tuple[TrialState, list[float] | None]:
        """The state and values to tell Optuna: infeasible trials are COMPLETE with violations."""
        if self.state == "pruned":
            return TrialState.PRUNED, None
        if self.state == "failed":
            return TrialState.FAIL, None
        return TrialState.COMPLETE, self.values(objectives)


def record(trial: optuna.Trial, net: NetCfg | None, out: Outcome,
           constraints: tuple[Constraint, ...]) -> None:
    """Write `out` into `trial`'s attributes (and constraint values): call before telling it."""
    if net is not None:
        trial.set_user_attr("archid", net.archid)
        trial.set_user_attr("arch", net.encode())
    trial.set_user_attr("state", out.state)
    trial.set_user_attr("metrics", {k: v for k, v in out.metrics.items() if math.isfinite(v)})
    trial.set_user_attr("feasible", out.feasible)
    if out.reason:
        trial.set_user_attr("reason", out.reason[:1000])
    if out.reused_from is not None:
        trial.set_user_attr("reused_from", out.reused_from)
    if out.weights is not None:
        trial.set_user_attr("weights", out.weights)
    violations = out.violations(constraints)
    if NATIVE_CONSTRAINTS:
        for c, v in zip(constraints, violations):
            trial.set_constraint(str(c), v)
    else:  # older Optuna: the sampler's constraints_func reads this (nas.sampling)
        trial.set_user_attr("violations", violations)


class TrialEvaluator:
    """Evaluates the trials of one search; build one per process (it holds the data set)."""

    def __init__(self, budget: Budget, store: SearchStore, device: str,
                 log: Callable[[str], None] = lambda _: None, data: DataBundle | None = None,
                 run_dir: str | Path | None = None):
        self.budget, self.store, self.device, self.log = budget, store, device, log
        self._data = data
        self.proxies = tuple(dict.fromkeys(
            [*budget.proxies, *(m for m in budget.metrics_needed if METRICS[m].stage == "proxy")]))
        self.lock = DeviceLock(device, budget.latency.lock)
        # Predicted latency: part times shared by this machine's workers (latency.cache if set).
        parts = budget.latency.cache or Path(run_dir or budget.run_dir).resolve() / PARTS_FILE
        self.latency = TrialLatency(budget.latency, device, store, parts)

    @property
    def data(self) -> DataBundle:
        if self._data is None:
            self._data = load_data(self.budget.data, self.device)
        return self._data

    def space(self) -> Space:
        """The budget's space, set to the data set's channels, classes and resolution."""
        d = self.data
        return self.budget.load_space().for_data(d.in_chans, d.classes, d.input_size)

    def __call__(self, trial: optuna.Trial, net: NetCfg) -> Outcome:
        try:
            out = self._evaluate(trial, net)
        except Exception as exc:  # a failing trial must not stop the search
            self.log(f"trial {trial.number} failed:\n{traceback.format_exc()}")
            out = Outcome("failed", {}, False, f"{type(exc).__name__}: {exc}")
        if out.state == "failed" and torch.device(self.device).type == "cuda":
            torch.cuda.empty_cache()
        shown = ", ".join(f"{k}={v:.5g}" for k, v in out.metrics.items())
        self.log(f"trial {trial.number} {out.state}{f' ({out.reason})' if out.reason else ''}: "
                 f"{net.encode()} {shown}")
        return out

    def _check(self, metrics: dict[str, float], stage: str) -> str | None:
        names = metrics_of(stage)
        for c in self.budget.constraints:
            if c.metric in names and c.metric in metrics and not c.holds(metrics):
                return f"{METRICS[c.metric].fmt(metrics[c.metric])} breaks '{c}'"
        return None

    def _evaluate(self, trial: optuna.Trial, net: NetCfg) -> Outcome:
        b = self.budget
        try:
            validate(net)
        except ArchError as exc:
            return Outcome("infeasible", {}, False, f"invalid architecture: {exc}")
        prior = self.store.find_by_archid(net.archid)
        if prior is not None:
            if prior.latency.get("source"):  # measured or predicted, as the original was
                trial.set_user_attr("latency", {"source": prior.latency["source"]})
            return Outcome(prior.state, dict(prior.metrics), prior.feasible, prior.reason,
                           reused_from=prior.number, weights=prior.weights)

        cost = net_cost(net)
        m: dict[str, float] = {"params": float(cost.params), "macs": float(cost.macs),
                               "traffic_mb": cost.traffic_bytes / 1e6}
        if why := self._check(m, "cost"):
            return Outcome("infeasible", m, False, why)
        if b.needs_latency:
            m.update(self.latency(trial, net))
            if why := self._check(m, "latency"):
                return Outcome("infeasible", m, False, why)
        if self.proxies:
            m.update(compute_proxies(net, self.data, self.proxies, device=self.device,
                                     seed=b.seed))
            if why := self._check(m, "proxy"):
                return Outcome("infeasible", m, False, why)
        if not b.needs_training:
            return Outcome("complete", m, True)

        trial.set_user_attr("metrics", m)  # the costs the pruning rungs compare, before training
        halving = ParetoHalving(b.pruning, b.train.epochs, self.store, trial, b.objectives, m)
        torch.manual_seed(b.train.seed)
        model = build_model(net.for_data(self.data.in_chans, self.data.classes,
                                          self.data.input_size))
        init_weights(model, trial)
        res = train(model, self.data, b.train, device=self.device, on_epoch=halving,
                    lock=self.lock)
        m.update({"accuracy": res.accuracy, "epochs": float(res.epochs),
                  "train_s": res.wall_s, "images_per_s": res.images_per_s})
        if res.status in ("nan", "oom", "error"):
            return Outcome("failed", m, False, f"{res.status}: {res.reason}")
        if res.status == "pruned":
            return Outcome("pruned", m, False, f"dominated at the {halving.pruned_at}-epoch rung")
        why = self._check(m, "train")
        weights = None
        if b.keep_weights != "none":
            weights = self.store.save_weights(trial, model.state_dict())
        return Outcome("complete", m, why is None, why, weights=weights)
