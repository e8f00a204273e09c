"""Which latency statistic repeats? Median, 10th percentile and minimum, over windows of runs.

`--n` networks from the quick start's space are each measured `--times`
times, round-robin over the networks (so one network's measurements lie tens
of seconds apart), each a fresh ONNX Runtime session (or eager module) timed
for `--window` seconds of runs. From every measurement's runs, the statistic
is taken over the first 50 runs (the default `latency.repeats`) and over the
first 0.25, 0.5, 1 and 2 s of them; two measurements of one network should
agree. Reported per statistic and window, over all pairs of measurements:
the share within 5% and within 10% of each other, the mean |relative
difference|, and the mean Spearman rho between two measurements of all the
networks.

    python -m benchmarks.latency_statistic                    # 30 networks x 3, ORT, 2 s each
    python -m benchmarks.latency_statistic --backend eager --n 20

Rows go to `benchmarks/results/latency-statistic-<cpu>.csv` (long format).
About n x times x (window + 0.1 s): 3.5 minutes by default.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._timing import Row, device_slug, versions, write_rows
from benchmarks.latency import _distinct
from shiftnas.evaluators.latency import LatencyCfg, _input, _prepare, device_name, time_module
from shiftnas.searchspace import build_model, load_space

STATISTICS = {"median": lambda ms: float(np.median(ms)),
              "p10": lambda ms: float(np.quantile(ms, 0.10)),
              "min": lambda ms: float(np.min(ms))}


def window(ms: list[float], seconds: float | None, runs: int) -> list[float]:
    """The first `runs` runs (`seconds` None), or the runs within the first `seconds` of timing."""
    if seconds is None:
        return ms[:runs]
    return ms[:max(1, int(np.searchsorted(np.cumsum(ms), seconds * 1e3, side="right")))]


def agreement(values: np.ndarray) -> dict[str, float]:
    """`values`: (networks, measurements). How well measurements of one network agree."""
    from scipy.stats import spearmanr

    pairs = list(itertools.combinations(range(values.shape[1]), 2))
    rel = np.concatenate([np.abs(values[:, i] - values[:, j]) / values[:, j] for i, j in pairs])
    rhos = [spearmanr(values[:, i], values[:, j])[0] for i, j in pairs]
    return {"within_5pct": float(np.mean(rel <= 0.05)), "within_10pct": float(np.mean(rel <= 0.10)),
            "mean_abs_rel_diff": float(np.mean(rel)), "spearman_rho": float(np.mean(rhos))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=30, help="networks")
    ap.add_argument("--times", type=int, default=3, help="measurements per network")
    ap.add_argument("--window", type=float, default=2.0, help="seconds of runs per measurement")
    ap.add_argument("--backend", default="onnxruntime", choices=["eager", "onnxruntime"])
    ap.add_argument("--space", default="quickstart_shift")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--in-chans", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    device = torch.device("cpu")
    cfg = LatencyCfg(repeats=50, warmup=5, threads=1, backend=args.backend, cache=None,
                     lock=None, min_time_s=args.window)
    space = load_space(args.space).for_data(args.in_chans, 10, args.size)
    nets = _distinct(space, args.seed, args.n)
    prepared = []
    for net in nets:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            m, cl = _prepare(build_model(net), cfg, device)
        prepared.append((m, _input((args.in_chans, args.size, args.size), cfg, device, 1, cl)))
    runs: list[list[list[float]]] = [[] for _ in nets]
    t0 = time.perf_counter()
    for k in range(args.times):
        for i, (m, x) in enumerate(prepared):
            runs[i].append(time_module(m, x, cfg))
        print(f"measurement {k + 1}/{args.times} of every network [{time.perf_counter() - t0:.0f} s]",
              flush=True)

    dev, ver = device_name(device, 1), versions()
    tag = f"{args.space}@1x{args.in_chans}x{args.size}x{args.size}:n{args.n}x{args.times}"
    rows, lines = [], [f"{args.n} networks x {args.times} measurements, {args.backend}, {dev}:",
                       f"{'window':>8s} {'statistic':>9s} {'within 5%':>9s} {'within 10%':>10s} "
                       f"{'mean diff':>9s} {'rho':>6s}"]
    for seconds in (None, 0.25, 0.5, 1.0, 2.0):
        if seconds is not None and seconds > args.window:
            continue
        label = "50 runs" if seconds is None else f"{seconds:g} s"
        for name, stat in STATISTICS.items():
            values = np.array([[stat(window(ms, seconds, 50)) for ms in net_runs]
                               for net_runs in runs])
            a = agreement(values)
            for metric, v in a.items():
                rows.append(Row(f"latency_statistic:{args.backend}", name, f"{tag}:{label}",
                                "nchw", "float32", metric, "", v, None, None, dev, ver["torch"],
                                ver["triton"]))
            lines.append(f"{label:>8s} {name:>9s} {100 * a['within_5pct']:8.0f}% "
                         f"{100 * a['within_10pct']:9.0f}% {100 * a['mean_abs_rel_diff']:8.1f}% "
                         f"{a['spearman_rho']:6.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    csv = args.out / f"latency-statistic-{device_slug(device)}.csv"
    write_rows(csv, rows)
    print("\n".join(lines))
    print(f"rows: {csv}; {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
