"""The budget's sampler as a search uses it: one sampler instance per trial."""

from __future__ import annotations

import warnings

import optuna

from shiftnas.nas.budget import budget_from_dict
from shiftnas.nas.sampling import make_sampler
from tests.nas.test_search import budget_dict


def test_the_default_sampler_does_not_warn_on_every_trial(tmp_path):
    # TPE with group=True is "experimental" to Optuna, which warns on each construction;
    # with a sampler per trial that was one warning per trial in the search's output.
    d = budget_dict(tmp_path, population_size=2)
    del d["sampler"]
    budget = budget_from_dict(d)
    assert budget.sampler == "tpe"
    study = optuna.create_study(sampler=make_sampler(budget), directions=["maximize", "minimize"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):  # past the 2 start-up trials: TPE proper samples the last 3
            trial = study.ask()
            x = trial.suggest_int("x", 0, 9)
            study.tell(trial, [x, x * x])
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
