"""Pareto-aware successive halving: multi-objective early stopping.

Optuna's pruners refuse multi-objective studies and Ray's ASHA ranks one
metric, so shiftnas prunes on its own. Rungs sit at `min_epochs * eta^k`
epochs. At a rung, a trial is compared with every trial that reached the
same rung: its vector is the validation accuracy there plus the cost
objectives, which are known before training. The trial continues only if
fewer than `ceil(n / eta)` of the `n` trials at the rung have a strictly
better non-dominated rank, so the whole first front always survives and at
most about `1/eta` of the others do. A rung prunes nothing until it has seen
`min_trials` trials. The rung values live in the study's storage (a system
attribute per trial, as Optuna's own successive-halving pruner keeps its rungs),
so every worker, launcher and engine compares against the same trials.
"""

from __future__ import annotations

import math

import numpy as np

from shiftnas.metrics import Objective
from shiftnas.record import SearchStore
from shiftnas.results.pareto import nondominated_ranks

from .budget import PruningCfg


def rungs(cfg: PruningCfg, epochs: int) -> list[int]:
    """The epochs at which trials are compared (the last epoch is not a rung)."""
    out, r = [], cfg.min_epochs
    while r < epochs:
        out.append(r)
        r *= cfg.eta
    return out


def should_continue(points: dict[int, np.ndarray], number: int, eta: int, min_trials: int) -> bool:
    """Decide for trial `number` given every trial's minimisation vector at the rung."""
    n = len(points)
    if n < min_trials:
        return True
    keys = list(points)
    ranks = nondominated_ranks(np.stack([points[k] for k in keys]))
    mine = ranks[keys.index(number)]
    better = int(np.sum(ranks < mine))
    return better < math.ceil(n / eta)


class ParetoHalving:
    """The `on_epoch` callback of one trial: records its rung values and decides."""

    def __init__(self, cfg: PruningCfg, epochs: int, store: SearchStore, trial,
                 objectives: tuple[Objective, ...], costs: dict[str, float]):
        self.cfg, self.store, self.trial = cfg, store, trial
        self.rungs = set(rungs(cfg, epochs)) if cfg.enabled else set()
        self.objectives, self.costs = objectives, dict(costs)
        self.pruned_at: int | None = None

    def _vector(self, accuracy: float, costs: dict[str, float]) -> np.ndarray:
        vals = [accuracy if o.name == "accuracy" else costs.get(o.name, math.inf)
                for o in self.objectives]
        return np.array([o.sign * v for o, v in zip(self.objectives, vals)], dtype=float)

    def __call__(self, epoch: int, accuracy: float) -> bool:
        """Returns True to stop the trial (it is dominated at this rung)."""
        if epoch not in self.rungs:
            return False
        self.store.record_rung(self.trial, epoch, accuracy)
        points = {n: self._vector(a, costs) for n, (a, costs) in self.store.at_rung(epoch).items()}
        points[self.trial.number] = self._vector(accuracy, self.costs)
        if should_continue(points, self.trial.number, self.cfg.eta, self.cfg.min_trials):
            return False
        self.pruned_at = epoch
        return True
