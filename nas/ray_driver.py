"""The Ray Tune engine: the same sampler and evaluation, run as Ray trials on a local or remote cluster.

`ray.tune.Tuner` drives `OptunaSearch` (several objectives, define-by-run
with `searchspace.sample`), whose study lives in the run's Optuna storage, so
rerunning continues it. Each Ray trial evaluates one genome with
`nas.evaluate.TrialEvaluator` and records it in the run directory exactly as
the Optuna engine does; pruning uses the shared rung records there. On a
multi-machine cluster the run directory must be on storage that every node
mounts at the same path.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from shiftnas.searchspace import decode_net, sample

from .budget import Budget
from .evaluate import TrialEvaluator
from .optuna_driver import make_sampler, storage_url
from .progress import Progress
from .store import RunStore

_EVALUATORS: dict[str, TrialEvaluator] = {}  # one per Ray worker process and run


def absolute(budget: Budget) -> Budget:
    """Ray workers run in their own directories: make every path in the budget absolute."""
    space = budget.space
    if isinstance(space, str) and Path(space).exists():
        space = str(Path(space).resolve())
    data = budget.data
    if data.path:
        data = dataclasses.replace(data, path=str(Path(data.path).resolve()))
    return dataclasses.replace(budget, out_dir=str(Path(budget.out_dir).resolve()), space=space,
                               data=data)


class _DefineByRun:
    """OptunaSearch's space: samples a genome and hands it to the trial (picklable, for Ray)."""

    def __init__(self, space):
        self.space = space

    def __call__(self, trial) -> dict[str, Any]:
        net = sample(self.space, trial)
        return {"arch": net.encode(), "number": trial.number}


def _trainable(config: dict[str, Any], budget: Budget) -> None:
    import torch
    from ray import tune

    torch.set_num_threads(budget.threads)
    key = str(budget.run_dir)
    if key not in _EVALUATORS:
        _EVALUATORS[key] = TrialEvaluator(budget, RunStore(budget.run_dir))
    evaluator = _EVALUATORS[key]
    params = {k: v for k, v in config.items() if k not in ("arch", "number")}
    out = evaluator(config["number"], decode_net(config["arch"]), params)
    result: dict[str, Any] = {"state": out.state, "number": config["number"],
                              "reused_from": out.reused_from, "reason": out.reason,
                              "shiftnas_metrics": out.metrics}
    if out.state in ("pruned", "failed"):
        # OptunaSearch can only tell COMPLETE from a result, and Tune requires the objective
        # keys in every result: close the trial here as PRUNED or FAIL first, so that
        # OptunaSearch's own tell is refused (silenced in run_ray) and the study stays right.
        import optuna

        study = optuna.load_study(study_name=budget.name, storage=storage_url(budget))
        study.tell(config["number"], state=optuna.trial.TrialState.PRUNED
                   if out.state == "pruned" else optuna.trial.TrialState.FAIL)
    result.update(zip((o.name for o in budget.objectives), out.values(budget.objectives)))
    tune.report(result)


def run_ray(budget: Budget) -> None:
    """Run the search on Ray Tune until the trial or time budget of the run is spent."""
    import optuna
    import ray
    from optuna.storages import RDBStorage
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    budget = absolute(budget)
    store = RunStore(budget.run_dir)
    done = len(store.trials())
    elapsed = float(store.meta().get("elapsed_s", 0.0))
    remaining = None if budget.trials is None else budget.trials - done
    time_left = None if budget.time_budget is None else budget.time_budget - elapsed
    if (remaining is not None and remaining <= 0) or (time_left is not None and time_left <= 0):
        return
    space = TrialEvaluator(budget, store, "cpu").space()

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("ray.tune.search.optuna.optuna_search").setLevel(logging.ERROR)
    search = OptunaSearch(
        _DefineByRun(space), metric=[o.name for o in budget.objectives],
        mode=["max" if o.direction == "maximize" else "min" for o in budget.objectives],
        sampler=make_sampler(budget, budget.seed, constraints=False), study_name=budget.name,
        storage=RDBStorage(storage_url(budget)),
    )
    progress = Progress(budget, store, elapsed)

    class _Report(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            progress.trial_finished(result["number"], result["state"],
                                    result.get("shiftnas_metrics", {}), result.get("reason"),
                                    result.get("reused_from"))

    if not ray.is_initialized():
        kw = ({"address": budget.ray.address} if budget.ray.address
              else {"num_cpus": budget.ray.num_cpus})
        ray.init(include_dashboard=False, log_to_driver=False, **kw)
    resources = {"cpu": budget.ray.cpus_per_trial, "gpu": budget.ray.gpus_per_trial}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trainable, budget=budget), resources),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(search, max_concurrent=budget.workers),
            num_samples=remaining if remaining is not None else -1,
            time_budget_s=time_left,
        ),
        run_config=tune.RunConfig(
            name=budget.name, storage_path=str(budget.run_dir / "ray"), verbose=0,
            callbacks=[_Report()], failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    try:
        tuner.fit()
    finally:
        store.update_meta(elapsed_s=round(progress.elapsed, 1))
