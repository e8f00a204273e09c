"""The budget's Optuna sampler, seeded per trial so that launchers never share a random stream.

A sampler seeded once per process gives two launchers of one budget (two
shells, two machines, two Ray drivers) the same stream: they sample and train
the same architectures. `TrialSeededSampler` instead hands each trial to a
fresh sampler seeded from `(budget seed, trial number)`. Trial numbers are
unique in a study, so no two trials share a stream, while a one-worker search
stays reproducible (trial k always draws from the same seed, resumed or not).
The samplers keep their state in the study (NSGA-II's generations and
parents, TPE's history), so a fresh instance per trial loses nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from shiftnas.record import NATIVE_CONSTRAINTS, claim_new, stored_violations

from .budget import Budget


def trial_seed(seed: int, number: int) -> int:
    """A well-mixed 32-bit seed for trial `number` of a search seeded with `seed`."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, number]).generate_state(1)[0])


class _ClaimingQMCSampler(optuna.samplers.QMCSampler):
    """Optuna's QMC sampler, claiming each trial as it starts (see `claim_new`)."""

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        claim_new(study, trial)
        super().before_trial(study, trial)


class TrialSeededSampler(BaseSampler):
    """Delegates every trial to `factory(seed)` with a seed of its own (see the module docstring)."""

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int):
        self._factory, self._seed = factory, seed
        self._live: dict[int, BaseSampler] = {}

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        s = self._live.get(trial.number)
        if s is None:
            s = self._live[trial.number] = self._factory(trial_seed(self._seed, trial.number))
        return s

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        claim_new(study, trial)
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._live.pop(trial.number, None)

    def reseed_rng(self) -> None:
        pass  # every trial is seeded from its number


def make_sampler(budget: Budget) -> BaseSampler:
    """The budget's sampler; it reads each trial's constraint values when there are constraints."""
    def violations(trial: FrozenTrial) -> list[float]:
        return stored_violations(trial, len(budget.constraints))

    # Optuna >= 5 reads the constraints each trial sets itself (`SearchStore.write_outcome`).
    cons = violations if budget.constraints and not NATIVE_CONSTRAINTS else None
    name, pop = budget.sampler, budget.population_size

    def build(seed: int) -> BaseSampler:
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=pop, seed=seed,
                                                 constraints_func=cons)
        if name == "nsga3":
            return optuna.samplers.NSGAIIISampler(population_size=pop, seed=seed,
                                                  constraints_func=cons)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                              constraints_func=cons, n_startup_trials=pop)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, constraints_func=cons,
                                             n_startup_trials=pop)
        return optuna.samplers.RandomSampler(seed=seed)

    def factory(seed: int) -> BaseSampler:
        # Arguments Optuna marks experimental (TPE's `group`) warn on each construction,
        # which is every trial here; the budget chose them once.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return build(seed)

    if name == "qmc":  # a low-discrepancy sequence: its index comes from the study, not a seed
        return _ClaimingQMCSampler(seed=budget.seed, scramble=True)
    return TrialSeededSampler(factory, budget.seed)
