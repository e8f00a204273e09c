"""The Optuna engine: a study in a database storage, so a run resumes and workers share it.

Each trial samples a genome define-by-run (`searchspace.sample`) and is
evaluated by `nas.evaluate.TrialEvaluator`. The study lives in the storage
(SQLite in the run directory by default), so rerunning the same budget
continues it. Trials left RUNNING by a process that died are failed and
retried with the same parameters: at once when the process is known dead
(same host), otherwise after the heartbeat's grace period. `workers` > 1
starts that many processes on the one storage.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
import warnings

import optuna
import torch
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from optuna.trial import TrialState

from shiftnas.errors import ConfigError
from shiftnas.searchspace import sample

from .budget import Budget
from .evaluate import TrialEvaluator
from .progress import Progress
from .store import RunStore

NATIVE_CONSTRAINTS = hasattr(optuna.Trial, "set_constraint")
HEARTBEAT_S = 10  # a running trial touches the storage this often
GRACE_S = 60  # after this long without a heartbeat, a trial counts as dead


class TrialFailed(Exception):
    """Raised inside the objective so that Optuna records a failed trial (the run goes on)."""


def storage_url(budget: Budget) -> str:
    return budget.storage or f"sqlite:///{(budget.run_dir / 'study.db').resolve()}"


def _retry_callback():
    """Optuna >= 4.9 renamed the stale-trial retry callback; take whichever this Optuna has."""
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", RetryFailedTrialCallback)
    arg = ("heartbeat_stale_trial_callback" if cls is not RetryFailedTrialCallback
           else "failed_trial_callback")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return arg, cls(max_retry=2)


def make_storage(url: str) -> RDBStorage:
    kw = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    arg, callback = _retry_callback()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return RDBStorage(url, engine_kwargs=kw, heartbeat_interval=HEARTBEAT_S,
                              grace_period=GRACE_S, **{arg: callback})
        except Exception as exc:  # SQLAlchemy's errors for a bad URL, driver or server
            raise ConfigError(f"budget.storage: cannot open the Optuna storage {url!r} "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); "
                              f"check the URL, its driver and that the database is reachable.") from None


def make_sampler(budget: Budget, seed: int, constraints: bool = True) -> optuna.samplers.BaseSampler:
    """The budget's sampler, seeded; with `constraints`, it reads the trials' constraint values."""
    def violations(trial: optuna.trial.FrozenTrial) -> list[float]:
        return trial.user_attrs.get("violations", [0.0] * len(budget.constraints))

    # Optuna >= 5 reads constraints that the trial sets itself (see `objective`).
    cons = violations if constraints and budget.constraints and not NATIVE_CONSTRAINTS else None
    name, pop = budget.sampler, budget.population_size
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=pop, seed=seed, constraints_func=cons)
    if name == "nsga3":
        return optuna.samplers.NSGAIIISampler(population_size=pop, seed=seed, constraints_func=cons)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          constraints_func=cons, n_startup_trials=pop)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, constraints_func=cons, n_startup_trials=pop)
    return optuna.samplers.RandomSampler(seed=seed)


def open_study(budget: Budget, url: str, seed: int) -> optuna.Study:
    return optuna.create_study(
        study_name=budget.name, storage=make_storage(url), load_if_exists=True,
        directions=[o.direction for o in budget.objectives], sampler=make_sampler(budget, seed),
    )


def recover_dead_trials(study: optuna.Study, store: RunStore) -> list[int]:
    """Fail (and retry) RUNNING trials whose process on this host is gone. Returns their numbers."""
    host, dead = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") != host or _alive(t.user_attrs.get("pid")):
            continue
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        _retry_callback()[1](study, study._storage.get_trial(t._trial_id))
        store.log(f"trial {t.number} was left running by a dead process; failed and retried")
        dead.append(t.number)
    return dead


def live_running(study: optuna.Study) -> int:
    """RUNNING trials that may still be alive (a dead process's trial must not eat the budget).

    A trial not yet claimed (no host/pid: a kill between its creation and the
    objective's first line) is not counted; a live worker claims its trial
    within milliseconds, so at worst the budget is overshot by one trial.
    """
    host = socket.gethostname()
    return sum(
        t.user_attrs["host"] != host or _alive(t.user_attrs.get("pid"))
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if "host" in t.user_attrs
    )


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: leave it to the heartbeat
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_worker(budget: Budget, worker: int = 0, *, quiet: bool = False) -> None:
    """Run trials until the trial or time budget of the whole run is spent."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    store = RunStore(budget.run_dir)
    url = storage_url(budget)
    # A resumed run must not replay the sampler's random stream from its start.
    done = len(store.trials())
    study = open_study(budget, url, budget.seed + worker + 1009 * done)
    store.log(f"worker {worker} opened the study (sampler seed {budget.seed + worker + 1009 * done})")
    if worker == 0:
        recover_dead_trials(study, store)
    evaluator = TrialEvaluator(budget, store)
    space = evaluator.space()
    elapsed_before = float(store.meta().get("elapsed_s", 0.0))
    progress = None if quiet else Progress(budget, store, elapsed_before)
    t_start = time.monotonic()

    def spent() -> float:
        return elapsed_before + time.monotonic() - t_start

    def budget_left() -> bool:
        if budget.trials is not None and len(store.trials()) + live_running(study) >= budget.trials:
            return False
        return budget.time_budget is None or spent() < budget.time_budget

    def objective(trial: optuna.Trial) -> list[float]:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        net = sample(space, trial)
        out = evaluator(trial.number, net, trial.params)
        trial.set_user_attr("archid", net.archid)
        trial.set_user_attr("state", out.state)
        trial.set_user_attr("violations", out.violations(budget))
        if NATIVE_CONSTRAINTS:
            for c, v in zip(budget.constraints, out.violations(budget)):
                trial.set_constraint(str(c), v)
        if out.reused_from is not None:
            trial.set_user_attr("reused_from", out.reused_from)
        if worker == 0:
            store.update_meta(elapsed_s=round(spent(), 1))
        if progress is not None:
            progress.trial_finished(trial.number, out.state, out.metrics, out.reason, out.reused_from)
        if out.state == "pruned":
            raise optuna.TrialPruned(out.reason)
        if out.state == "failed":
            raise TrialFailed(out.reason)
        return out.values(budget.objectives)

    def stop_when_spent(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        if not budget_left():
            study.stop()

    if budget_left():
        timeout = None if budget.time_budget is None else max(1.0, budget.time_budget - spent())
        study.optimize(objective, timeout=timeout, callbacks=[stop_when_spent],
                       catch=(TrialFailed,), gc_after_trial=False)
    if worker == 0:
        store.update_meta(elapsed_s=round(spent(), 1))


def _worker_entry(budget: Budget, worker: int) -> None:
    torch.set_num_threads(budget.threads)
    run_worker(budget, worker, quiet=True)


def run_optuna(budget: Budget) -> None:
    """Run the search with `budget.workers` processes on one storage (this one included)."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_entry, args=(budget, k)) for k in range(1, budget.workers)]
    for p in procs:
        p.start()
    threads = torch.get_num_threads()
    torch.set_num_threads(budget.threads)
    try:
        run_worker(budget, 0)
    finally:
        torch.set_num_threads(threads)
        for p in procs:
            p.join()
