"""Synthetic run directories in the search driver's format (run.json, trials.jsonl, archs/)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from shiftnas.searchspace import load_space, sample_random, save_arch
from shiftnas.searchspace.genome import decode_net

OBJECTIVES = [{"name": "accuracy", "direction": "maximize"},
              {"name": "latency_ms", "direction": "minimize"}]


def _arch(seed: int) -> str:
    return sample_random(load_space("cifar_shift"), seed).encode()


def make_run(root: Path, trials: list[dict[str, Any]], objectives: list[dict] | None = None,
             constraints: list[dict] | None = None, name: str = "run") -> Path:
    """Write a run directory under `root/name`. Each trial dict gives at least number, state
    and metrics; arch/archid default to a sample seeded by the number (or by `same_arch_as`)."""
    run = root / name
    (run / "archs").mkdir(parents=True, exist_ok=True)
    meta = {"name": name, "engine": "optuna", "created": "2025-01-01T00:00:00",
            "objectives": objectives or OBJECTIVES,
            "constraints": constraints if constraints is not None else
            [{"metric": "params", "op": "<=", "value": 3_000_000}],
            "trials_budget": 50, "time_budget_s": None,
            "storage": f"sqlite:///{run / 'study.db'}", "study_name": name, "device": "cpu"}
    (run / "run.json").write_text(json.dumps(meta, indent=2))
    lines = []
    for t in trials:
        t = dict(t)
        src = t.pop("same_arch_as", t["number"])
        arch = t.get("arch") or _arch(src)
        net = decode_net(arch)
        rec = {"number": t["number"], "state": t["state"], "archid": net.archid, "arch": arch,
               "metrics": t.get("metrics", {}), "feasible": t.get("feasible", True),
               "reason": t.get("reason"), "started": "2025-01-01T00:00:00",
               "finished": t.get("finished", "2025-01-01T00:01:00"),
               "duration_s": t.get("duration_s", 60.0), "reused_from": t.get("reused_from")}
        lines.append(json.dumps(rec))
        save_arch(net, run / "archs" / f"trial_{t['number']:05d}.yaml", rec["metrics"] or None)
    (run / "trials.jsonl").write_text("\n".join(lines) + "\n")
    (run / "budget.yaml").write_text("# the budget file as used\n")
    (run / "log.txt").write_text("")
    return run


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
                               "metrics": metrics, "duration_s": metrics["train_s"] + 5}
        u = rng.random()
        if params > 1_000_000:
            rec.update(state="infeasible", feasible=False, reason="params > 1000000",
                       metrics={k: metrics[k] for k in ("params", "macs", "latency_ms")},
                       duration_s=0.4)
        elif u < 0.15:
            rec.update(state="pruned", reason="pruned at epoch 2",
                       metrics={**metrics, "accuracy": round(acc * 0.8, 4), "epochs": 2.0},
                       duration_s=metrics["train_s"] * 0.4)
        elif u < 0.22:
            rec.update(state="failed", reason="RuntimeError: out of memory", metrics={},
                       duration_s=3.0)
        elif u < 0.3 and archs:
            j = int(rng.integers(len(archs)))
            rec.update(arch=archs[j], reused_from=j, duration_s=0.0,
                       metrics=dict(trials[j]["metrics"]))
            rec["state"] = trials[j]["state"]
            rec["feasible"] = trials[j].get("feasible", True)
        archs.append(rec["arch"])
        trials.append(rec)
    return make_run(root, trials, objectives=objectives, name=name,
                    constraints=[{"metric": "params", "op": "<=", "value": 1_000_000}])
