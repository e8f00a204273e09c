"""`shiftnas search` and `shiftnas status`: run a budget file, and look at a run."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from shiftnas.config import int_arg
from shiftnas.errors import ConfigError, ShiftNASError

from .budget import Budget, load_budget


def run_search(budget: Budget, *, resume: bool = False) -> Path:
    """Run (or continue) the search of `budget`; write the report and the export. Returns the run dir."""
    from shiftnas.evaluators.device import resolve_device

    from .store import RunStore

    store = RunStore(budget.run_dir)
    exists = (budget.run_dir / "run.json").exists()
    if resume and not exists:
        raise ConfigError(f"--resume: {budget.run_dir} holds no run yet; drop --resume to start it.")
    if budget.engine == "ray":
        from .optuna_driver import storage_url
        from .ray_driver import run_ray

        store.init(budget, storage_url(budget), resolve_device(budget.device, "budget.device"))
        _say(budget, store, exists)
        run_ray(budget)
    else:
        from .optuna_driver import make_storage, run_optuna, storage_url

        if budget.storage is not None:
            make_storage(budget.storage)  # a bad URL fails here, before the run exists
        store.init(budget, storage_url(budget), resolve_device(budget.device, "budget.device"))
        _say(budget, store, exists)
        run_optuna(budget)
    finish(budget)
    return budget.run_dir


def _say(budget: Budget, store, resumed: bool) -> None:
    done = len(store.trials())
    verb = f"resuming ({done} trials done)" if resumed else "starting"
    store.log(f"{verb} with the {budget.engine} engine, settings {budget.settings_hash()}")
    limits = [f"{budget.trials} trials" if budget.trials else "",
              f"{budget.time_budget:.0f} s" if budget.time_budget else ""]
    print(f"shiftnas search: {verb} run {budget.run_dir} with the {budget.engine} engine "
          f"({budget.sampler}), budget {' / '.join(x for x in limits if x)}; objectives "
          f"{', '.join(f'{o.direction[:3]} {o.name}' for o in budget.objectives)}", flush=True)


def finish(budget: Budget) -> None:
    """Write the report and plots, print the front, export the chosen trial."""
    from shiftnas.results.export import export_trial
    from shiftnas.results.pareto import pareto_front
    from shiftnas.results.report import format_table, write_report
    from shiftnas.results.store import load_run, select_trial

    run = load_run(budget.run_dir)
    if not run.candidates():
        print("shiftnas search: no feasible complete trial yet, so no front; see "
              f"{budget.run_dir / 'log.txt'} and `shiftnas status {budget.run_dir}`.")
        return
    report = write_report(run)
    print("\nPareto front:\n" + format_table(pareto_front(run)))
    print(f"\nreport: {report}")
    if budget.export:
        try:
            t = select_trial(run, budget.export)
        except ShiftNASError as exc:
            print(f"export skipped: {exc}")
            return
        out = budget.run_dir / "export"
        export_trial(run, t, out, onnx=budget.onnx)
        print(f"exported trial {t.number} ({budget.export}) to {out}/model.py")


def cmd_search(args: argparse.Namespace) -> int:
    budget = load_budget(args.budget, trials=args.trials, workers=args.workers)
    run_search(budget, resume=args.resume)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from shiftnas.results.pareto import pareto_front
    from shiftnas.results.report import format_table, front_rows
    from shiftnas.results.store import load_run

    run = load_run(args.run_dir)
    meta = json.loads((Path(args.run_dir) / "run.json").read_text())
    states = Counter(t.state for t in run.trials)
    front = pareto_front(run) if run.candidates() else None
    if args.json:
        print(json.dumps({"run": str(run.path), "trials": len(run.trials),
                          "trials_budget": run.trials_budget, "states": dict(states),
                          "elapsed_s": meta.get("elapsed_s"),
                          "front": front_rows(front) if front else []}, indent=2, default=str))
        return 0
    budget = f"/{run.trials_budget}" if run.trials_budget else ""
    print(f"run {run.path} ({run.engine}): {len(run.trials)}{budget} trials, "
          + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
          + f"; {meta.get('elapsed_s', 0):.0f} s of search")
    if front is None:
        print("no feasible complete trial yet")
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

    s = sub.add_parser("status", help="progress of a run and its current front")
    s.add_argument("run_dir", help="a run directory (out_dir/name)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_status)
