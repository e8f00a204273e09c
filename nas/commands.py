"""`shiftnas search` and `shiftnas status`: run a budget file, and look at a search.

A launch checks everything it can before it writes anything (the budget, the
device, the data set), then opens the search's study: it creates it, joins it
(same settings: the launch adds workers, from this machine or another), or
refuses (other settings, or a storage that lost trials the run directory saw
finish). Then the engine runs, and the run directory's view is refreshed:
trials.jsonl/csv, the report and plots, and the export.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
from pathlib import Path

from shiftnas.config import int_arg
from shiftnas.errors import ConfigError, ShiftNASError, StorageError
from shiftnas.evaluators.decompose import load_decomposed
from shiftnas.files import atomic_write
from shiftnas.record import (
    FINISHED,
    RunDir,
    RunMeta,
    SearchStore,
    absolute_url,
    mask,
    now_iso,
    open_run,
    read_run,
    sqlite_path,
)
from shiftnas.results.commands import add_run_source

from .budget import RESUMABLE, Budget, load_budget
from .sampling import make_sampler


def default_storage(budget: Budget) -> str:
    """SQLite in the run directory for one worker; Optuna's journal file for several
    (Optuna advises against SQLite shared by processes)."""
    run_dir = budget.run_dir.resolve()
    if budget.workers == 1:
        return f"sqlite:///{run_dir / 'study.db'}"
    return f"journal://{run_dir / 'journal.log'}"


def resolve_storage(budget: Budget, view: RunDir) -> tuple[str, str]:
    """`(storage URL, artifact location)` for a launch of `budget` into `view`."""
    pointer = view.pointer()
    if budget.storage is not None:
        url = absolute_url(budget.storage)
    elif pointer is not None:  # keep the storage the run was created with
        url = pointer["storage"]
        if "***" in url:
            raise ConfigError(f"{view.path}: the run's storage has a password, which shiftnas "
                              f"never writes down; give `storage` in the budget, or keep the "
                              f"password in PGPASSWORD / ~/.pgpass.")
    else:
        url = default_storage(budget)
    artifacts = budget.artifacts or (pointer or {}).get("artifacts") or \
        str((budget.run_dir / "artifacts").resolve())
    return url, artifacts


def open_search(budget: Budget, url: str, artifacts: str, device: str,
                view: RunDir) -> tuple[SearchStore, bool]:
    """Create, join or refuse the search's study: the launch's store (with the budget's
    sampler), and whether the study existed already."""
    store = SearchStore.open(url, budget.name, directions=[o.direction for o in budget.objectives],
                             sampler=make_sampler(budget), artifacts=artifacts,
                             where="budget.storage")
    meta = store.meta()
    meaning = budget.meaning()
    if meta is None:
        if store.frozen():
            raise StorageError(f"study {budget.name!r} in {mask(url)!r} already holds trials that "
                               f"shiftnas did not make; give the budget another `name`.")
        meta = RunMeta(name=budget.name, engine=budget.engine, objectives=budget.objectives,
                       constraints=budget.constraints, settings=budget.settings_hash(),
                       budget=meaning, device=device, created=now_iso())
        store.set_meta(meta)
        existed = False
    else:
        existed = True
    # Two launchers may create the study at the same moment: compare with what won.
    stored = store.meta()
    if stored is None or stored.settings != budget.settings_hash():
        changed = budget.changed_fields(stored.budget if stored else {})
        raise ConfigError(
            f"study {budget.name!r} in {mask(url)!r} is a search with other settings (changed: "
            f"{', '.join(changed) or 'unknown'}); only {', '.join(RESUMABLE)} (and data.path) may "
            f"differ between launches of one search. Give the budget another `name` to start a "
            f"new search.")
    lost = sorted(view.recorded_numbers() - {r.number for r in store.records()
                                             if r.state in FINISHED})
    if lost:
        raise StorageError(
            f"{view.path} recorded {len(lost)} finished trial(s) ({lost[:8]}{'...' if len(lost) > 8 else ''}) "
            f"that the storage {mask(url)!r} does not hold: it is not the storage this run was "
            f"written to, or it lost them. Finished results are never overwritten: point "
            f"`storage` at the database that has them (restore {sqlite_path(url) or 'it'}), or "
            f"give the budget another `name`.")
    store.set_meta(dataclasses.replace(stored, trials_budget=budget.trials,
                                       time_budget_s=budget.time_budget))
    view.write_pointer(url, budget.name, artifacts)
    return store, existed


def run_search(budget: Budget, *, resume: bool = False) -> Path:
    """Run (or continue, or join) the search of `budget`; refresh its view. Returns the run dir."""
    from shiftnas.evaluators.datasets import load_data
    from shiftnas.evaluators.device import resolve_device

    device = resolve_device(budget.device, "budget.device")
    if budget.train.amp == "on" and not device.startswith("cuda") and budget.needs_training:
        raise ConfigError(f"budget.train.amp: 'on' needs a CUDA device (bf16 autocast), and "
                          f"this search runs on {device}; use auto or off.")
    view = RunDir(budget.run_dir)
    if resume and not view.exists():
        raise ConfigError(f"--resume: {budget.run_dir} holds no run yet; drop --resume to start it.")
    # The data set is read before anything is written: a bad data directory leaves no run behind.
    data = load_data(budget.data, device)
    seeds = {d: load_decomposed(d, data).encode() for d in budget.decomposed}  # fit, or stop here
    url, artifacts = resolve_storage(budget, view)
    store, existed = open_search(budget, url, artifacts, device, view)
    store.retry_failed(view.log)
    for folder, arch in seeds.items():  # decomposed networks first, once per search
        store.enqueue_network(arch, folder)
    _say(budget, store, url, existed, view)
    if budget.engine == "ray":
        from .ray_driver import run_ray

        run_ray(budget, store, device, view)
    else:
        from .optuna_driver import Launch, run_optuna

        run_optuna(Launch(budget, url, budget.name, artifacts, budget.run_dir.resolve(), device),
                   store, data)
    finish(budget, store, device)
    return budget.run_dir


def _say(budget: Budget, store: SearchStore, url: str, existed: bool, view: RunDir) -> None:
    done = store.finished()
    verb = f"resuming ({done} trials done)" if existed else "starting"
    view.log(f"{verb} with the {budget.engine} engine on {mask(url)}, settings "
             f"{budget.settings_hash()}")
    limits = [f"{budget.trials} trials" if budget.trials else "",
              f"{budget.time_budget:.0f} s" if budget.time_budget else ""]
    print(f"shiftnas search: {verb} run {budget.run_dir} with the {budget.engine} engine "
          f"({budget.sampler}, {budget.workers} worker{'s' if budget.workers > 1 else ''}, storage "
          f"{mask(url)}), budget {' / '.join(x for x in limits if x)}; objectives "
          f"{', '.join(f'{o.direction[:3]} {o.name}' for o in budget.objectives)}", flush=True)


def finish(budget: Budget, store: SearchStore, device: str | None = None) -> None:
    """Refresh the view: trials.jsonl/csv, report and plots, the front, the export.

    With `latency.mode: predicted` (and the `device` to measure on), the front's
    predicted latencies are measured first and the final predictor is saved.
    """
    from shiftnas.results.export import export_trial
    from shiftnas.results.pareto import pareto_front, select_trial
    from shiftnas.results.report import format_table, write_report

    run = read_run(store, budget.run_dir)
    view = RunDir(budget.run_dir)
    view.write_exports(run.trials)
    if not run.candidates():
        print("shiftnas search: no feasible complete trial yet, so no front; see "
              f"{budget.run_dir / 'log.txt'} and `shiftnas status {budget.run_dir}`.")
        return
    front = pareto_front(run)
    if budget.latency.mode == "predicted" and device is not None:
        run = _check_latency(budget, run, front.trials, device, view)
        front = pareto_front(run)
    if budget.keep_weights == "front":
        on_front = {t.number for t in front.trials}
        gone = store.remove_weights(t for t in run.trials if t.number not in on_front)
        view.log(f"keep_weights: front: removed the weights of {gone} trial(s) off the front")
    report = write_report(run)
    print("\nPareto front:\n" + format_table(front))
    print(f"\nreport: {report}")
    if budget.export:
        try:
            t = select_trial(run, budget.export)
        except ShiftNASError as exc:
            print(f"export skipped: {exc}")
            return
        out = budget.run_dir / "export"
        paths = export_trial(run, t, out, onnx=budget.onnx)
        print(f"exported trial {t.number} ({budget.export}) to {out}: "
              f"{', '.join(p.name for p in paths.values())}")


def _check_latency(budget: Budget, run, front, device: str, view: RunDir):
    """Measure the front's predicted latencies, save the final predictor; the run, reread."""
    from shiftnas.evaluators.predictor import predictor_settings

    from .predicted import PREDICTOR_FILE, check_front, fit

    n = check_front(run.store, front, budget.latency, device, view.log)
    if n:
        print(f"shiftnas search: measured the predicted latency of {n} front trial(s)")
        run = dataclasses.replace(run, latency_checks=run.store.latency_checks())
    model = fit(run.trials, run.latency_checks, predictor_settings(budget.latency, device))
    if model is not None:
        atomic_write(budget.run_dir / PREDICTOR_FILE, json.dumps(model.to_dict(), indent=1))
    return run


def cmd_search(args: argparse.Namespace) -> int:
    from .optuna_driver import on_sigint, on_sigterm

    signal.signal(signal.SIGTERM, on_sigterm)  # like Ctrl-C: the running trial is failed, resumable
    signal.signal(signal.SIGINT, on_sigint)
    budget = load_budget(args.budget, trials=args.trials, workers=args.workers)
    run_search(budget, resume=args.resume)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from shiftnas.metrics import fmt_duration
    from shiftnas.results.pareto import pareto_front
    from shiftnas.results.report import format_table, front_rows

    run = open_run(args.run_dir, storage=args.storage, study=args.study)
    states: dict[str, int] = {}
    for t in run.trials:
        states[t.state] = states.get(t.state, 0) + 1
    done = sum(states.get(s, 0) for s in FINISHED)
    front = pareto_front(run) if run.candidates() else None
    if args.json:
        print(json.dumps({"study": run.study_name, "storage": run.storage, "finished": done,
                          "trials_budget": run.trials_budget, "states": states,
                          "elapsed_s": round(run.elapsed_s, 1),
                          "front": front_rows(front) if front else []}, indent=2, default=str))
        return 0
    budget = f"/{run.trials_budget}" if run.trials_budget else ""
    detail = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none yet"
    print(f"search {run.study_name} ({run.engine}) in {run.storage}: {done}{budget} trials "
          f"finished ({detail}); {fmt_duration(run.elapsed_s)} of search")
    if front is None:
        running = states.get("running", 0)
        print("running: no trial has finished yet" if running and not done
              else "no feasible complete trial yet")
    else:
        print(format_table(front))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("search", help="run a search described by a budget file")
    s.add_argument("budget", help="the budget .yaml file (see examples/budget-reference.yaml)")
    s.add_argument("--resume", action="store_true",
                   help="continue an existing run (rerunning the same budget does too)")
    s.add_argument("--workers", type=int_arg(1), help="parallel trial processes (overrides the file)")
    s.add_argument("--trials", type=int_arg(1), help="trial budget (overrides the file)")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("status", help="progress of a search and its current front")
    add_run_source(s)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_status)

