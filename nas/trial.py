"""One trial, from a sampled genome to its outcome. Both engines call this (through `nas.loop`).

Cheap first: the genome is validated and costed (params, MACs, memory traffic)
and checked against the constraints before anything runs; latency is measured
and zero-cost proxies are computed before any training. An infeasible
candidate is never trained. An architecture already evaluated in the study is
not trained again: its result is reused. Whatever happens (NaN, out of
memory, an exception), the trial ends as an outcome and the search goes on.

The evaluator returns the outcome, a `TrialRecord`, and the loop writes it. The
evaluator writes no attribute itself: through the store's verbs it hands over only
what must be stored before the trial ends: its costs (other trials' pruning rungs
compare them), its rung values, how its latency was obtained (other workers'
predictors count running trials), and the trained weights (uploaded inside the
evaluation, so a failed upload fails the trial, not the search).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

from shiftnas.errors import ArchError
from shiftnas.evaluators.cost import net_cost
from shiftnas.evaluators.datasets import DataBundle, load_data
from shiftnas.evaluators.decompose import init_weights
from shiftnas.evaluators.device import DeviceLock
from shiftnas.evaluators.proxies import compute_proxies
from shiftnas.evaluators.training import train
from shiftnas.kernels import compile_seconds
from shiftnas.metrics import METRICS, metrics_of
from shiftnas.record import SearchStore, TrialRecord
from shiftnas.searchspace import NetCfg, Space, build_model, validate

from .budget import Budget
from .predicted import PARTS_FILE, TrialLatency
from .pruning import ParetoHalving


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

    def __call__(self, trial: optuna.Trial, net: NetCfg) -> TrialRecord:
        """The trial's outcome.

        Its metrics include where the time went, as disjoint parts: `latency_s` (timing
        or predicting it), `train_s` (proxy training) and `compile_s` (compiling and
        autotuning kernels, wherever it happened: a new shape's Triton kernels, the
        C++ kernels' first-use builds), which the other two exclude.
        """
        compiled = compile_seconds()
        try:
            out = self._evaluate(trial, net)
        except Exception as exc:  # a failing trial must not stop the search
            self.log(f"trial {trial.number} failed:\n{traceback.format_exc()}")
            out = self._outcome(trial, net, "failed", {}, False, f"{type(exc).__name__}: {exc}")
        if out.reused_from is None and (spent := compile_seconds() - compiled) > 0:
            out = dataclasses.replace(out, metrics={**out.metrics, "compile_s": spent})
        if out.state == "failed" and torch.device(self.device).type == "cuda":
            torch.cuda.empty_cache()
        shown = ", ".join(f"{k}={v:.5g}" for k, v in out.metrics.items())
        self.log(f"trial {trial.number} {out.state}{f' ({out.reason})' if out.reason else ''}: "
                 f"{net.encode()} {shown}")
        return out

    @staticmethod
    def _outcome(trial: optuna.Trial, net: NetCfg, state: str, metrics: dict[str, float],
                 feasible: bool, reason: str | None = None, **kw: Any) -> TrialRecord:
        return TrialRecord(trial.number, state, net.archid, net.encode(), metrics, feasible,
                           reason, **kw)

    def _check(self, metrics: dict[str, float], stage: str) -> str | None:
        names = metrics_of(stage)
        for c in self.budget.constraints:
            if c.metric in names and c.metric in metrics and not c.holds(metrics):
                return f"{METRICS[c.metric].fmt(metrics[c.metric])} breaks '{c}'"
        return None

    def _evaluate(self, trial: optuna.Trial, net: NetCfg) -> TrialRecord:
        b, end = self.budget, functools.partial(self._outcome, trial, net)
        try:
            validate(net)
        except ArchError as exc:
            return end("infeasible", {}, False, f"invalid architecture: {exc}")
        prior = self.store.find_by_archid(net.archid)
        if prior is not None:
            if prior.latency.get("source"):  # measured or predicted, as the original was
                self.store.set_latency(trial, {"source": prior.latency["source"]})
            return end(prior.state, dict(prior.metrics), prior.feasible, prior.reason,
                       reused_from=prior.number, weights=prior.weights)

        cost = net_cost(net)
        m: dict[str, float] = {"params": float(cost.params), "macs": float(cost.macs),
                               "traffic_mb": cost.traffic_bytes / 1e6}
        if why := self._check(m, "cost"):
            return end("infeasible", m, False, why)
        if b.needs_latency:
            t0, compiled = time.perf_counter(), compile_seconds()
            lat, facts = self.latency(trial.number, net)
            if facts:
                self.store.set_latency(trial, facts)
            m.update(lat)
            m["latency_s"] = time.perf_counter() - t0 - (compile_seconds() - compiled)
            if why := self._check(m, "latency"):
                return end("infeasible", m, False, why)
        if self.proxies:
            m.update(compute_proxies(net, self.data, self.proxies, device=self.device,
                                     seed=b.seed))
            if why := self._check(m, "proxy"):
                return end("infeasible", m, False, why)
        if not b.needs_training:
            return end("complete", m, True)

        self.store.set_metrics(trial, m)  # the costs the pruning rungs compare, before training
        halving = ParetoHalving(b.pruning, b.train.epochs, self.store, trial, b.objectives, m)
        torch.manual_seed(b.train.seed)
        model = build_model(net.for_data(self.data.in_chans, self.data.classes,
                                          self.data.input_size))
        if init_from := self.store.queued_network(trial)[1]:
            init_weights(model, init_from)  # a decomposed network: trained from its weights
        compiled = compile_seconds()
        res = train(model, self.data, b.train, device=self.device, on_epoch=halving,
                    lock=self.lock)
        m.update({"accuracy": res.accuracy, "epochs": float(res.epochs),
                  "train_s": res.wall_s - (compile_seconds() - compiled),
                  "images_per_s": res.images_per_s})
        if res.status in ("nan", "oom", "error"):
            return end("failed", m, False, f"{res.status}: {res.reason}")
        if res.status == "pruned":
            return end("pruned", m, False,
                       f"dominated at the {halving.pruned_at}-epoch rung")
        why = self._check(m, "train")
        weights = None
        if b.keep_weights != "none":
            weights = self.store.save_weights(trial, model.state_dict())
        return end("complete", m, why is None, why, weights=weights)
