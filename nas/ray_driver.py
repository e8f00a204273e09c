"""The Ray Tune engine: the same study, sampler, constraints and trial evaluation, as Ray trials.

`StudySearcher` is Ray Tune's searcher over the search's Optuna study: it
asks the study for a trial, samples its architecture define-by-run with the
budget's (constrained) sampler, and says FINISHED when the whole search's
trial or time budget is spent, as the storage counts it, so several drivers
never overshoot it; after each trial it keeps the launch's books. Each Ray
trial runs the same trial loop as an Optuna-engine worker (`nas.loop`) and
tells the study itself; a Ray trial that dies is failed in the study and
queued again. Nodes share the storage URL and the artifact store, nothing else.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from shiftnas.errors import ConfigError
from shiftnas.record import RunDir, SearchStore, mask
from shiftnas.searchspace import decode_net

from .budget import Budget
from .loop import TrialLoop, trial_network
from .optuna_driver import SearchFailed
from .progress import Progress
from .sampling import make_sampler

RAY_ENV = "RAY_ADDRESS"


def _searcher_class():
    from ray.tune.search import Searcher

    class StudySearcher(Searcher):
        """Asks the study for trials until the search's budget is spent (see the module docstring)."""

        def __init__(self, loop: TrialLoop):
            super().__init__(metric="finished", mode="max")
            self.loop = loop
            self._live: dict[str, int] = {}  # Tune trial id -> study trial number

        def __getstate__(self) -> dict[str, Any]:  # Tune pickles its searcher: no open storage
            return {**self.__dict__, "loop": None}

        def suggest(self, trial_id: str) -> dict[str, Any] | str:
            if not self.loop.keep_going():
                return Searcher.FINISHED
            trial = self.loop.store.ask()
            net = trial_network(self.loop.store, self.loop.space, trial)
            self._live[trial_id] = trial.number
            return {"number": trial.number, "trial_id": trial._trial_id, "arch": net.encode()}

        def on_trial_complete(self, trial_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            number = self._live.pop(trial_id, None)
            if number is None:
                return
            store = self.loop.store
            rec = store.record(number)
            if rec.state == "running":  # the Ray trial died before telling the study
                store.fail_lost(number, "the Ray trial died (see its Ray log)")
                store.retry_failed(self.loop.view.log)
                rec = store.record(number)
            self.loop.after(rec)

    return StudySearcher


# One trial loop (with its evaluator and data set) per Ray worker process and search: a
# trial reuses the data its process loaded for the previous one.
_LOOPS: dict[tuple[str, str], TrialLoop] = {}


def _trainable(config: dict[str, Any], budget: Budget, url: str, artifacts: str, device: str,
               run_dir: str) -> None:
    import torch
    from ray import tune

    from .trial import TrialEvaluator

    torch.set_num_threads(budget.threads)
    key = (url, budget.name)
    if key not in _LOOPS:
        store = SearchStore.open(url, budget.name, artifacts=artifacts, sampler=make_sampler(budget))
        view = RunDir(run_dir)
        _LOOPS[key] = TrialLoop(budget, store, view, TrialEvaluator(
            budget, store, device, log=view.log, run_dir=run_dir))
    out = _LOOPS[key].run_and_tell(config["trial_id"], decode_net(config["arch"]))
    tune.report({"finished": 1, "number": config["number"], "state": out.state})


def _check_reachable(address: str, where: str) -> None:
    """An address that answers nothing fails in seconds, not after minutes of Ray's retries."""
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms: ray.init reports those itself, quickly
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        raise ConfigError(f"{where}: nothing answers at {host_port} ({exc.strerror or exc}); "
                          f"start the cluster (`ray start --head`) or fix the address.") from None


def init_ray(budget: Budget) -> None:
    """Connect to the budget's cluster, or start a local Ray that never joins another one."""
    import ray

    if ray.is_initialized():
        return
    address = budget.ray.address or os.environ.get(RAY_ENV) or None
    where = "budget.ray.address" if budget.ray.address else f"environment variable {RAY_ENV}"
    if address is not None:
        if budget.ray.num_cpus is not None:
            raise ConfigError(f"budget.ray.num_cpus: sizes a local Ray, but {where} = {address!r} "
                              f"connects to an existing cluster; drop num_cpus, or set "
                              f"ray.address to null and unset {RAY_ENV} for a local Ray.")
        _check_reachable(address, where)
        kw: dict[str, Any] = {"address": address}
    else:  # "local": a new Ray for this search, even where `ray start` left a cluster running
        kw = {"address": "local", "num_cpus": budget.ray.num_cpus}
    try:
        ray.init(include_dashboard=False, log_to_driver=False, **kw)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{where}: cannot connect Ray to {address or 'a local instance'} "
                          f"({' '.join(str(exc).split())[:300]}).") from None


def run_ray(budget: Budget, store: SearchStore, device: str, view: RunDir) -> None:
    """Run the search as Ray Tune trials until its trial or time budget is spent."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from .trial import TrialEvaluator

    init_ray(budget)
    url, artifacts = store.url, store.artifacts_location
    loop = TrialLoop(budget, store, view, space=TrialEvaluator(budget, store, "cpu").space(),
                     progress=Progress(budget, store))
    searcher = _searcher_class()(loop)
    loop.touch()
    time_left = None if budget.time_budget is None else max(
        1.0, budget.time_budget - store.elapsed_s())
    run_dir = str(budget.run_dir.resolve())
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(_trainable, budget=budget, url=url, artifacts=artifacts,
                                 device=device, run_dir=run_dir),
            {"cpu": budget.ray.cpus_per_trial, "gpu": budget.ray.gpus_per_trial}),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=budget.workers),
            num_samples=-1, time_budget_s=time_left),
        run_config=tune.RunConfig(
            name=budget.name, storage_path=str(budget.run_dir.resolve() / "ray"), verbose=0,
            failure_config=tune.FailureConfig(max_failures=0)),
    )
    view.log(f"Ray Tune on {mask(url)}")
    try:
        tuner.fit()
    finally:
        loop.touch()
    if loop.stopped is not None:
        raise SearchFailed(
            f"stopped after {budget.stop_after_failures} failed trials in a row: "
            f"{loop.stopped}. Finished trials are kept; fix the cause and rerun to resume.")
