"""Does the search beat random search? Hypervolume against trials and wall time, six variants.

The same budget (the quick start's: Fashion-MNIST at 16x16, the quickstart_shift
space, accuracy vs ONNX Runtime latency at batch 1, a parameter cap; smaller
subsets and fewer trials so that a dozen searches fit in one sitting) is run as

    tpe+halving     the default: multi-objective TPE with Pareto-aware successive halving
    tpe             TPE, every candidate trained for the full epochs
    random+halving  random sampling with the same halving
    random          random sampling alone
    nsga2+halving   NSGA-II with the same halving (the default before this benchmark;
    nsga2           and alone; these two are not run by default)

for each of `--seeds` sampler seeds, one worker each, `--jobs` searches at a
time. All searches share one latency cache, so an architecture has the same
latency in every search (measured once, by whichever search met it first) and
training is seeded per trial, so the variants differ only in what they choose
to evaluate and for how long. The hypervolume of the feasible complete trials
is taken against a fixed reference point (`--ref-accuracy`, `--ref-latency`)
after every finished trial, in the order trials finished; its wall time is
the time since the search's first trial started.

    python -m benchmarks.search_vs_random                  # 4 variants x 3 seeds x 20 trials
    python -m benchmarks.search_vs_random --seeds 1 --trials 4 --subset 300   # a smoke run

Appends one row per (variant, seed, finished trial) to
`benchmarks/results/search-vs-random.csv`, draws
`benchmarks/results/search-vs-random.png` (mean and min-max band over seeds,
against trials and against wall time) and prints a summary table.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from benchmarks._timing import append_csv, revision, utc_now, versions
from shiftnas.evaluators.latency import device_name
from shiftnas.record import open_run
from shiftnas.results.pareto import hypervolume, nondominated_mask

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CSV = RESULTS / "search-vs-random.csv"
PLOT = RESULTS / "search-vs-random.png"
VARIANTS = {  # name -> (sampler, pruning enabled)
    "tpe+halving": ("tpe", True),
    "tpe": ("tpe", False),
    "random+halving": ("random", True),
    "random": ("random", False),
    "nsga2+halving": ("nsga2", True),
    "nsga2": ("nsga2", False),
}
COLUMNS = ["variant", "seed", "trials", "elapsed_s", "hypervolume", "ref_accuracy", "ref_latency_ms",
           "budget_trials", "subset", "epochs", "device", "torch", "optuna", "timestamp", "revision"]


def budget(variant: str, seed: int, args: argparse.Namespace, out_dir: Path) -> dict:
    """The quick start's budget, sized for the benchmark, as `variant` with sampler `seed`."""
    b = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    sampler, halving = VARIANTS[variant]
    b.update(name=f"{variant.replace('+', '-')}-s{seed}", out_dir=str(out_dir), seed=seed,
             sampler=sampler, trials=args.trials, time_budget=None, workers=1, export=None)
    b["data"].update(subset=args.subset, val_subset=args.val_subset)
    b["train"]["epochs"] = args.epochs
    b["pruning"]["enabled"] = halving
    b["latency"]["cache"] = str(out_dir / "latency-cache.json")
    return b


def run_one(variant: str, seed: int, args: argparse.Namespace, out_dir: Path) -> Path:
    """Run one search in a fresh interpreter; return its run directory."""
    b = budget(variant, seed, args, out_dir)
    path = out_dir / f"{b['name']}.yaml"
    path.write_text(yaml.safe_dump(b, sort_keys=False))
    log = out_dir / f"{b['name']}.log"
    with log.open("w") as fh:
        rc = subprocess.call([sys.executable, "-m", "shiftnas", "search", str(path)],
                             stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    if rc != 0:
        raise RuntimeError(f"{variant} seed {seed}: shiftnas search exited {rc}; see {log}")
    return out_dir / b["name"]


def history(run_dir: Path, ref: tuple[float, float]) -> list[tuple[int, float, float]]:
    """`(finished trials, seconds since the first start, hypervolume)` after each finished trial."""
    run = open_run(run_dir)
    objs = run.objectives
    signs = np.array([o.sign for o in objs], dtype=float)
    ref_min = np.array(ref, dtype=float) * signs
    done = sorted((t for t in run.trials if t.finished), key=lambda t: t.finished)
    t0 = min(datetime.fromisoformat(t.started) for t in run.trials if t.started)
    pts: list[list[float]] = []
    out = []
    seen: set[str] = set()
    for k, t in enumerate(done, 1):
        vals = [t.metric(o.name) for o in objs]
        if (t.state == "complete" and t.feasible and None not in vals and t.archid not in seen):
            seen.add(t.archid)
            pts.append(list(np.array(vals, dtype=float) * signs))
        p = np.array(pts).reshape(-1, len(objs))
        hv = hypervolume(p[nondominated_mask(p)], ref_min) if len(p) else 0.0
        elapsed = (datetime.fromisoformat(t.finished) - t0).total_seconds()
        out.append((k, elapsed, hv))
    return out


def _step(xs: np.ndarray, ys: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A non-decreasing step function through (xs, ys), 0 before the first x, on `grid`."""
    idx = np.searchsorted(xs, grid, side="right") - 1
    return np.where(idx >= 0, ys[np.clip(idx, 0, None)], 0.0)


def curves(rows: list[dict], key: str, grid: np.ndarray) -> dict[str, np.ndarray]:
    """Per variant, the seeds' hypervolume on `grid` of `key` (trials or elapsed_s): (seeds, grid)."""
    out: dict[str, list[np.ndarray]] = {}
    for (variant, seed) in sorted({(r["variant"], r["seed"]) for r in rows}):
        rs = sorted((r for r in rows if r["variant"] == variant and r["seed"] == seed),
                    key=lambda r: int(r["trials"]))
        xs = np.array([float(r[key]) for r in rs])
        ys = np.maximum.accumulate(np.array([float(r["hypervolume"]) for r in rs]))
        out.setdefault(variant, []).append(_step(xs, ys, grid))
    return {v: np.array(c) for v, c in out.items()}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    n = max(int(r["trials"]) for r in rows)
    t_max = max(float(r["elapsed_s"]) for r in rows)
    for ax, key, grid, label in ((axes[0], "trials", np.arange(1, n + 1, dtype=float), "finished trials"),
                                 (axes[1], "elapsed_s", np.linspace(0, t_max, 200), "wall time (s)")):
        for variant, c in curves(rows, key, grid).items():
            line, = ax.plot(grid, c.mean(axis=0), label=f"{variant} ({len(c)} seeds)")
            ax.fill_between(grid, c.min(axis=0), c.max(axis=0), alpha=0.15, color=line.get_color())
        ax.set_xlabel(label)
        ax.set_ylabel("hypervolume (accuracy x latency)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    r = rows[0]
    fig.suptitle(f"Search vs random: reference (accuracy {r['ref_accuracy']}, latency "
                 f"{r['ref_latency_ms']} ms); mean and min-max over seeds; {r['device']}", fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def summary(rows: list[dict]) -> str:
    n = max(int(r["trials"]) for r in rows)
    marks = sorted({max(1, n // 4), n // 2, n})
    grid = np.array(marks, dtype=float)
    lines = ["variant          seeds  " + "  ".join(f"HV@{m:<3d} trials (mean±sd)" for m in marks)
             + "  wall s (mean)"]
    by_trials = curves(rows, "trials", grid)
    for variant in VARIANTS:
        if variant not in by_trials:
            continue
        c = by_trials[variant]
        walls = [max(float(r["elapsed_s"]) for r in rows if r["variant"] == variant and r["seed"] == s)
                 for s in sorted({r["seed"] for r in rows if r["variant"] == variant})]
        cells = "  ".join(f"{c[:, i].mean():.4f} ± {c[:, i].std():.4f}      " for i in range(len(marks)))
        lines.append(f"{variant:<16s} {len(c):>5d}  {cells}  {np.mean(walls):8.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--subset", type=int, default=1500, help="training images")
    ap.add_argument("--val-subset", type=int, default=1000, help="validation images")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2, help="searches at a time (1 CPU thread each)")
    ap.add_argument("--ref-accuracy", type=float, default=0.5)
    ap.add_argument("--ref-latency", type=float, default=0.5, help="ms")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS)[:4], choices=list(VARIANTS))
    ap.add_argument("--keep", help="keep the run directories here (default: a temporary folder)")
    ap.add_argument("--csv", type=Path, default=CSV)
    ap.add_argument("--plot", type=Path, default=PLOT)
    args = ap.parse_args(argv)

    ref = (args.ref_accuracy, args.ref_latency)
    with tempfile.TemporaryDirectory(prefix="shiftnas-svr-") as tmp:
        out_dir = Path(args.keep or tmp).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        jobs = [(v, s) for s in range(args.seeds) for v in args.variants]
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(run_one, v, s, args, out_dir): (v, s) for v, s in jobs}
            runs = {}
            for f in cf.as_completed(futures):
                v, s = futures[f]
                runs[(v, s)] = f.result()
                print(f"  {v} seed {s} done ({time.perf_counter() - t0:.0f} s)", flush=True)
        ver, stamp, rev = versions(), utc_now(), revision()
        import optuna

        rows = []
        for (v, s), run_dir in sorted(runs.items()):
            for k, elapsed, hv in history(run_dir, ref):
                rows.append(dict(variant=v, seed=s, trials=k, elapsed_s=f"{elapsed:.1f}",
                                 hypervolume=f"{hv:.6g}", ref_accuracy=ref[0], ref_latency_ms=ref[1],
                                 budget_trials=args.trials, subset=args.subset, epochs=args.epochs,
                                 device=device_name("cpu", 1), torch=ver["torch"],
                                 optuna=optuna.__version__, timestamp=stamp, revision=rev))
    append_csv(args.csv, COLUMNS, rows)
    plot(rows, args.plot)
    print(summary(rows))
    print(f"rows: {args.csv}\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
