"""What the storage costs: bookkeeping per trial, and `status` / `report` on large searches.

1. Bookkeeping per trial: a real `run_search` with cost-only objectives
   (params, macs: no training, no latency), so a trial is the analytic cost
   model plus everything the search records and reads (claim, attributes,
   constraints, tell, budget accounting, dead-trial recovery, the view's
   trials.jsonl line, the progress line with its front). The cost model's own
   time is measured apart and subtracted.
2. `status` and `report` on synthetic studies of 1k / 10k / 50k trials (added
   in bulk with `Study.add_trials`, every attribute a real trial carries):
   the time inside the command (open, read, front, table or plots), and the
   whole command from a fresh interpreter.

    python -m benchmarks.store                       # SQLite and journal; PostgreSQL if possible
    python -m benchmarks.store --sizes 1000 10000    # fewer sizes

Appends long-format rows to `benchmarks/results/store.csv`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from shiftnas.evaluators.cost import net_cost
from shiftnas.evaluators.latency import device_name
from shiftnas.metrics import Constraint, Objective
from shiftnas.nas.budget import budget_from_dict
from shiftnas.nas.commands import run_search
from shiftnas.record import RunDir, RunMeta, SearchStore, TrialRecord
from shiftnas.searchspace import load_space, sample_random

FIELDS = ["benchmark", "storage", "metric", "n_trials", "value", "unit", "device", "torch",
          "optuna", "revision", "timestamp"]
RESULTS = Path(__file__).parent / "results" / "store.csv"


def revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True,
                               text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def append_rows(rows: list[dict]) -> None:
    new = not RESULTS.exists()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        if new:
            w.writeheader()
        w.writerows(rows)


def storages(root: Path, with_pg: bool) -> dict[str, contextlib.AbstractContextManager]:
    out: dict[str, contextlib.AbstractContextManager] = {
        "sqlite": contextlib.nullcontext(f"sqlite:///{root / 'study.db'}"),
        "journal": contextlib.nullcontext(f"journal://{root / 'journal.log'}"),
    }
    if with_pg:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests import pg

        if pg.bindir() is not None:
            out["postgresql"] = pg.server()
    return out


def bookkeeping(url: str, root: Path, n: int) -> dict[str, float]:
    """Median per-trial milliseconds of a cost-only search of `n` trials on `url`."""
    d = {"name": "bk", "out_dir": str(root / "runs"), "storage": url, "trials": n,
         "objectives": ["params", "macs"], "sampler": "random", "export": None}
    budget = budget_from_dict(d)
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        run_search(budget)
    trials = SearchStore.open(url, "bk").frozen((TrialState.COMPLETE,))
    ends = sorted(t.datetime_complete.timestamp() for t in trials)
    gaps = np.diff(ends) * 1e3  # ms between consecutive trial ends: one trial's whole cycle
    space = load_space("cifar_shift").for_data(1, 10, 8)
    nets = [sample_random(space, k) for k in range(50)]
    t0 = time.perf_counter()
    for net in nets:
        net_cost(net)
    cost_ms = (time.perf_counter() - t0) / len(nets) * 1e3
    first, last = gaps[: max(1, len(gaps) // 4)], gaps[-max(1, len(gaps) // 4):]
    return {"per_trial_ms": float(np.median(gaps)) - cost_ms,
            "per_trial_ms_first_quarter": float(np.median(first)) - cost_ms,
            "per_trial_ms_last_quarter": float(np.median(last)) - cost_ms,
            "cost_model_ms": cost_ms}


def synthetic(url: str, root: Path, n: int, chunk: int = 500) -> None:
    """A study of `n` finished trials with every attribute a real one carries, added in bulk."""
    space = load_space("cifar_shift").for_data(1, 10, 28)
    rng = np.random.default_rng(0)
    objs = (Objective("accuracy", "maximize"), Objective("latency_ms", "minimize"))
    limit = Constraint.parse("params <= 1000000")
    store = SearchStore.open(url, "big", directions=["maximize", "minimize"],
                             artifacts=str(root / "artifacts"))
    store.set_meta(RunMeta("big", "optuna", objs, (limit,), settings="synthetic",
                           trials_budget=n, device="cpu"))
    nets = [sample_random(space, k) for k in range(200)]
    batch = []
    for i in range(n):
        net = nets[i % len(nets)]
        acc, lat = float(rng.uniform(0.6, 0.93)), float(rng.uniform(0.2, 3.0))
        params = {f"s{s}.b{b}.{f}": "csc" for s in range(3) for b in range(3)
                  for f in ("family", "kind")}
        dist = {k: CategoricalDistribution(["csc", "basic"]) for k in params}
        rec = TrialRecord(i, "complete", f"{i:012x}", net.encode(),
                          {"accuracy": acc, "latency_ms": lat, "params": 1e5, "macs": 1e7,
                           "traffic_mb": 2.0, "epochs": 5.0}, worker="host:1")
        batch.append(create_trial(  # the attributes the search's writer stores for this record
            state=TrialState.COMPLETE, values=rec.values(objs), params=params, distributions=dist,
            user_attrs=rec.attrs(),
            system_attrs={f"constraints:{limit}": rec.violations((limit,))[0]}))
        if len(batch) == chunk:
            store.study.add_trials(batch)
            batch = []
    if batch:
        store.study.add_trials(batch)
    RunDir(root / "view").write_pointer(url, "big", str(root / "artifacts"))


def timed_command(args: list[str], root: Path) -> tuple[float, float]:
    """(seconds inside the command, seconds of the whole process) for `shiftnas ARGS`."""
    from shiftnas.nas.cli import main

    sink = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sink):
        assert main(args) == 0
    inside = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "shiftnas", *args], check=True, capture_output=True)
    return inside, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    p.add_argument("--bookkeeping-trials", type=int, default=200)
    p.add_argument("--no-postgres", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    base = {"device": device_name("cpu", 1), "torch": torch.__version__,
            "optuna": optuna.__version__, "revision": revision(),
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, ctx in storages(Path(tmp), not args.no_postgres).items():
            with ctx as url:
                root = Path(tmp) / f"bk-{kind}"
                bk = bookkeeping(url, root, args.bookkeeping_trials)
                print(f"{kind:10s} bookkeeping: {bk['per_trial_ms']:.1f} ms/trial (first quarter "
                      f"{bk['per_trial_ms_first_quarter']:.1f}, last {bk['per_trial_ms_last_quarter']:.1f}; "
                      f"cost model {bk['cost_model_ms']:.1f} ms excluded)", flush=True)
                rows += [{**base, "benchmark": "bookkeeping", "storage": kind, "metric": m,
                          "n_trials": args.bookkeeping_trials, "value": round(v, 3), "unit": "ms"}
                         for m, v in bk.items()]
            for n in args.sizes:
                with storages(Path(tmp), not args.no_postgres)[kind] as url2:
                    root = Path(tmp) / f"{kind}-{n}"
                    if kind != "postgresql":
                        url2 = url2.replace("study.db", f"big-{n}.db").replace(
                            "journal.log", f"big-{n}.log")
                    t0 = time.perf_counter()
                    synthetic(url2, root, n)
                    build = time.perf_counter() - t0
                    st = timed_command(["status", str(root / "view")], root)
                    rp = timed_command(["report", str(root / "view"), "--out", str(root / "r")],
                                       root)
                print(f"{kind:10s} {n:>6} trials: status {st[0]:.2f} s ({st[1]:.2f} s whole "
                      f"command), report {rp[0]:.2f} s ({rp[1]:.2f} s); built in {build:.0f} s",
                      flush=True)
                for cmd, (inside, whole) in (("status", st), ("report", rp)):
                    rows += [{**base, "benchmark": cmd, "storage": kind, "metric": m,
                              "n_trials": n, "value": round(v, 3), "unit": "s"}
                             for m, v in (("in_command", inside), ("whole_process", whole))]
    append_rows(rows)
    print(f"{len(rows)} rows -> {RESULTS}")


if __name__ == "__main__":
    main()
