"""Synthetic searches written through the real writer: an Optuna study in SQLite, via
`shiftnas.record.SearchStore`.

Trials are created, written (`SearchStore.write_outcome`) and told exactly as a search
does, so the readers' tests follow the writer's format instead of a copy of it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from shiftnas.metrics import Constraint, Objective
from shiftnas.record import RunDir, RunMeta, SearchStore, TrialRecord
from shiftnas.searchspace import build_model, load_space, sample_random
from shiftnas.searchspace.genome import decode_net

OBJECTIVES = [{"name": "accuracy", "direction": "maximize"},
              {"name": "latency_ms", "direction": "minimize"}]


def _arch(seed: int) -> str:
    return sample_random(load_space("cifar_shift"), seed).encode()


def make_run(root: Path, trials: list[dict[str, Any]], objectives: list[dict] | None = None,
             constraints: list[str] | None = None, name: str = "run",
             weights: set[int] = frozenset()) -> Path:
    """A search under `root/name` with these trials, in order of `number` (0, 1, ...).

    Each trial dict gives `number`, `state` (complete, pruned, infeasible, failed,
    running), `metrics` and optionally `latency` (the trial attribute); arch defaults to a sample seeded by the number (or by
    `same_arch_as`). Trials in `weights` get the builder's initial weights as an artifact.
    """
    run_dir = root / name
    url = f"sqlite:///{run_dir / 'study.db'}"
    objs = tuple(Objective(o["name"], o["direction"]) for o in objectives or OBJECTIVES)
    cons = tuple(Constraint.parse(c) for c in (constraints if constraints is not None
                                               else ["params <= 3000000"]))
    store = SearchStore.open(url, name, directions=[o.direction for o in objs],
                             artifacts=str(run_dir / "artifacts"))
    store.set_meta(RunMeta(name=name, engine="optuna", objectives=objs, constraints=cons,
                           settings="fixture", trials_budget=50, device="cpu",
                           created="2025-01-01T00:00:00+00:00"))
    for t in sorted(trials, key=lambda t: t["number"]):
        trial = store.study.ask()
        assert trial.number == t["number"], "fixture trials are numbered 0, 1, 2, ..."
        store.claim(trial)
        net = decode_net(t.get("arch") or _arch(t.get("same_arch_as", t["number"])))
        if t["state"] == "running":
            continue
        art = store.save_weights(trial, build_model(net).state_dict()) \
            if t["number"] in weights else None
        if "latency" in t:  # latency.mode predicted: how latency_ms was obtained
            store.set_latency(trial, t["latency"])
        out = TrialRecord(trial.number, t["state"], net.archid, net.encode(),
                          dict(t.get("metrics", {})), t.get("feasible", True), t.get("reason"),
                          reused_from=t.get("reused_from"), weights=art)
        store.write_outcome(trial, out, cons)
        store.tell(trial, out, objs)
    RunDir(run_dir).write_pointer(url, name, str(run_dir / "artifacts"))
    return run_dir


def synthetic_run(root: Path, n: int = 40, seed: int = 0, objectives: list[dict] | None = None,
                  name: str = "synthetic") -> Path:
    """A realistic run: accuracy rises with (log) cost, noisy; mixed states; a few duplicates."""
    rng = np.random.default_rng(seed)
    space = load_space("cifar_shift")
    trials = []
    archs: list[str] = []
    for i in range(n):
        net = sample_random(space, seed * 1000 + i)
        params = float(10 ** rng.uniform(5.0, 6.2))  # not from the arch: independent of the space
        macs = params * rng.uniform(40, 120)
        latency = 0.05 * (macs / 1e6) ** 0.8 * rng.uniform(0.7, 1.4)
        acc = min(0.96, 0.55 + 0.06 * math.log10(macs / 1e5 + 1) * 2.5 + rng.normal(0, 0.025))
        metrics = {"accuracy": round(acc, 4), "latency_ms": round(latency, 4), "params": params,
                   "macs": macs, "traffic_mb": macs / 4e6, "epochs": 5.0,
                   "train_s": round(float(rng.uniform(20, 90)), 1)}
        rec: dict[str, Any] = {"number": i, "arch": net.encode(), "state": "complete",
                               "metrics": metrics}
        u = rng.random()
        if params > 1_000_000:
            rec.update(state="infeasible", feasible=False, reason="params > 1000000",
                       metrics={k: metrics[k] for k in ("params", "macs", "latency_ms")})
        elif u < 0.15:
            rec.update(state="pruned", reason="pruned at epoch 2",
                       metrics={**metrics, "accuracy": round(acc * 0.8, 4), "epochs": 2.0})
        elif u < 0.22:
            rec.update(state="failed", reason="RuntimeError: out of memory", metrics={})
        elif u < 0.3 and archs:
            j = int(rng.integers(len(archs)))
            rec.update(arch=archs[j], reused_from=j, metrics=dict(trials[j]["metrics"]))
            rec["state"] = trials[j]["state"]
            rec["feasible"] = trials[j].get("feasible", True)
        archs.append(rec["arch"])
        trials.append(rec)
    return make_run(root, trials, objectives=objectives, name=name,
                    constraints=["params <= 1000000"])
