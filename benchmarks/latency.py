"""Latency harness check: repeatability of measured latency, and the latency predictors' error.

Default mode: on a seeded sample of networks from the default space, each
network's latency is measured three times (independent `measure_latency`
calls, no cache), and predicted by a `BlockLatencyTable` built on the same
device (stem + each distinct block + head, each measured alone), its scale
calibrated on the first few networks. Reported: the spread of the three
repeats ((max - min) / median) and the predictor's error on the other networks.

    python -m benchmarks.latency                 # CPU, 1 thread, 16 networks at 3x32x32
    python -m benchmarks.latency --device cuda --batch-size 64 --dtype bfloat16

Writes `benchmarks/results/latency-<device>.csv` (long format, one row per
network and provider) and `latency-<device>.md` (the summary).

`--predictor` mode: the old predictor (`BlockLatencyTable`: parts built and
timed alone, summed) against the new one (`NetworkPredictor`: parts timed in
context, a regression fitted on a calibration sample), on `--held` networks
that neither was fitted on; each network is measured `--measure` times (the
truth is their median), right after its parts are timed. Reported per
predictor and calibration size: Spearman rho, mean |relative error|, the share
within 10%; and the same scores for one more measurement of each network
(`remeasured`), which is how far the truth itself repeats. `--statistic min
--min-time 1` scores the parts and networks by their fastest run over at
least a second (the measurement that repeats best on a shared machine). Rows
go to `results/latency-predictor-<cpu|gpu model>.csv`, the scatter plot to
`latency-predictor-<...>-<space>-<backend>[-<statistic>-<min time>].png`.

    python -m benchmarks.latency --predictor --backend onnxruntime   # quickstart_shift, 1x16x16
    python -m benchmarks.latency --predictor --backend eager
    python -m benchmarks.latency --predictor --space cifar_shift --in-chans 3 --size 32

Each times 66 networks (16 for calibration, 50 held out) at 1 thread: about
2-4 minutes at 1x16x16 on a quiet CPU core, the 3x32x32 eager run several
times that (learned shifts run the plain-torch reference on the CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks._timing import Row, device_slug, versions, write_rows
from shiftnas.evaluators.latency import LatencyCfg, device_name, measure_latency
from shiftnas.evaluators.predictor import BlockLatencyTable, NetworkPredictor, relative_errors
from shiftnas.searchspace import load_space, sample_random


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=20, help="networks sampled from the default space")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None,
                   help="input resolution (default 32; --predictor: 16)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=50, help="timed runs per measurement")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calibrate", default=None,
                   help="networks used to fit the predictor (not scored; default 4); "
                        "--predictor: a comma-separated list of sample sizes, default 8,16")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--predictor", action="store_true", help="old vs new predictor (see above)")
    p.add_argument("--space", default="quickstart_shift", help="--predictor: the space")
    p.add_argument("--in-chans", type=int, default=1, help="--predictor: input channels")
    p.add_argument("--classes", type=int, default=10, help="--predictor: classes")
    p.add_argument("--held", type=int, default=50, help="--predictor: networks scored")
    p.add_argument("--measure", type=int, default=3,
                   help="--predictor: whole-network measurements per network (median)")
    p.add_argument("--backend", default="eager", help="--predictor: latency.backend")
    p.add_argument("--statistic", default="median", choices=["median", "min"],
                   help="--predictor: latency.statistic (of parts and whole networks)")
    p.add_argument("--min-time", type=float, default=0.0,
                   help="--predictor: latency.min_time_s (of parts and whole networks)")
    args = p.parse_args()
    if args.predictor:
        predictor_mode(args)
    else:
        repeatability_mode(args)


def repeatability_mode(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    size, repeats = args.size or 32, args.repeats
    cfg = LatencyCfg(batch_size=args.batch_size, dtype=args.dtype, repeats=repeats,
                     threads=args.threads, cache=None, lock=None)
    space = load_space("cifar_shift").for_data(3, 10, size)
    nets = [sample_random(space, args.seed + k) for k in range(args.n)]
    table = BlockLatencyTable(replace(cfg, repeats=max(20, repeats // 2)), device)

    rows, summary = [], []
    dev, ver = device_name(device, args.threads), versions()
    layout = "channels_last" if device.type == "cuda" else "nchw"  # LatencyCfg's channels_last=auto
    measured = [[measure_latency(net, cfg, device).median_ms for _ in range(3)] for net in nets]
    raw = [table.predict(net) for net in nets]
    # Calibrate on the first few networks; the error is reported on the others only.
    held = int(args.calibrate or 4)
    scale = table.calibrate(nets[:held], [statistics.median(r) for r in measured[:held]])
    for net, runs, raw_ms in list(zip(nets, measured, raw))[held:]:
        med = statistics.median(runs)
        pred = table.predict(net)
        spread = (max(runs) - min(runs)) / med
        err = (pred - med) / med
        summary.append((net.archid, med, spread, pred, err))
        shape = f"{net.archid}@{args.batch_size}x3x{size}x{size}"
        # Three medians have no meaningful p20/p80 (the spread is in the summary): empty cells.
        for provider, value in (("measured", med), ("predicted", pred)):
            rows.append(Row("network_latency", provider, shape, layout, args.dtype, "fwd", "ms",
                            value, None, None, dev, ver["torch"], ver["triton"]))
        print(f"{net.archid}  measured {med:8.3f} ms (spread {100 * spread:5.2f}%)  "
              f"predicted {pred:8.3f} ms ({100 * err:+6.1f}%; uncalibrated "
              f"{100 * (raw_ms - med) / med:+6.1f}%)", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    slug = device_slug(device)
    write_rows(args.out / f"latency-{slug}.csv", rows)
    spreads = [(max(r) - min(r)) / statistics.median(r) for r in measured]  # every network
    errs = [abs(e) for *_, e in summary]
    text = "\n".join([
        f"# Latency harness on {dev}",
        "",
        f"`python -m benchmarks.latency --device {args.device} --n {args.n} --size {size} "
        f"--batch-size {args.batch_size} --dtype {args.dtype} --repeats {repeats} "
        f"--threads {args.threads}`",
        "",
        f"- {args.n} networks sampled from `cifar_shift` (seed {args.seed}), input "
        f"{args.batch_size}x3x{size}x{size}, {args.dtype}; torch {ver['torch']}",
        f"- repeatability, three independent measurements of {repeats} timed runs each: "
        f"median spread {100 * statistics.median(spreads):.2f}%, max {100 * max(spreads):.2f}%, "
        f"{sum(s < 0.02 for s in spreads)}/{len(spreads)} networks under 2%",
        f"- per-block predictor ({table.measured} parts measured alone), scale {scale:.3f} fitted "
        f"on {held} networks, scored on the other {len(errs)}: mean |error| "
        f"{100 * statistics.mean(errs):.1f}%, {sum(e <= 0.10 for e in errs)}/{len(errs)} "
        f"networks within 10% (uncalibrated sum: mean |error| "
        f"{100 * statistics.mean(abs(r - statistics.median(m)) / statistics.median(m) for r, m in zip(raw[held:], measured[held:])):.1f}%)",
        "",
        "| archid | measured ms | spread | predicted ms | error |",
        "|---|---:|---:|---:|---:|",
        *(f"| {a} | {m:.3f} | {100 * s:.2f}% | {p_:.3f} | {100 * e:+.1f}% |"
          for a, m, s, p_, e in summary),
        "",
    ])
    (args.out / f"latency-{slug}.md").write_text(text)
    print(text)


def _distinct(space, seed: int, n: int) -> list:
    """`n` networks with distinct archids, drawn in order from `seed` on."""
    out, seen, k = [], set(), seed
    while len(out) < n:
        net = sample_random(space, k)
        k += 1
        if net.archid not in seen:
            seen.add(net.archid)
            out.append(net)
    return out


def scores(predicted: list[float], measured: list[float]) -> dict[str, float]:
    """Spearman rho, mean |relative error| and the share within 10%."""
    from scipy.stats import spearmanr

    errs = relative_errors(predicted, measured)
    return {"spearman_rho": float(spearmanr(predicted, measured)[0]),
            "mean_abs_rel_err": statistics.mean(errs),
            "within_10pct": sum(e <= 0.10 for e in errs) / len(errs)}


def predictor_mode(args: argparse.Namespace) -> None:
    t_start = time.perf_counter()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    size, repeats = args.size or 16, args.repeats
    sizes = sorted({int(c) for c in (args.calibrate or "8,16").split(",")})
    cfg = LatencyCfg(batch_size=args.batch_size, dtype=args.dtype, repeats=repeats, warmup=5,
                     threads=args.threads, backend=args.backend, cache=None, lock=None,
                     statistic=args.statistic, min_time_s=args.min_time)
    space = load_space(args.space).for_data(args.in_chans, args.classes, size)
    nets = _distinct(space, args.seed, max(sizes) + args.held)
    new = NetworkPredictor(cfg, device)
    # A part alone has no genome to export: the old table times ONNX Runtime's parts as built.
    old = BlockLatencyTable(cfg, device) if args.backend != "onnxruntime" else None

    measured, again, feats, old_ms = [], [], [], []
    for i, net in enumerate(nets):
        feats.append(new.features(net))  # parts first, then the whole network, close in time
        old_ms.append(old.predict(net) if old is not None else None)
        # One more measurement than the truth takes: how well the measurement itself repeats,
        # the most any predictor scored against it can show.
        *runs, extra = [measure_latency(net, cfg, device).value(args.statistic)
                        for _ in range(args.measure + 1)]
        measured.append(statistics.median(runs))
        again.append(extra)
        print(f"[{i + 1:3d}/{len(nets)}] {net.archid} measured {measured[-1]:7.3f} ms "
              f"(spread {100 * (max(runs) - min(runs)) / measured[-1]:4.1f}%), parts sum "
              f"{feats[-1]['sum_ms']:7.3f} ms" + (f", old {old_ms[-1]:7.3f} ms" if old else "")
              + f"  [{time.perf_counter() - t_start:5.0f} s]", flush=True)

    held = slice(max(sizes), None)  # every predictor is scored on the same networks
    truth = measured[held]
    preds: dict[str, list[float]] = {"remeasured": again[held],
                                     "parts_sum": [f["sum_ms"] for f in feats[held]]}
    if old is not None:
        preds["old_table"] = old_ms[held]
    for k in sizes:
        model = new.calibrate(nets[:k], measured[:k])
        preds[f"predictor_cal{k}"] = [model.predict(f) for f in feats[held]]
        print(f"predictor fitted on {k}: {model.coef}")

    dev, ver = device_name(device, args.threads), versions()
    layout = "channels_last" if cfg.channels_last == "on" else "nchw"
    tag = f"{args.space}@{args.batch_size}x{args.in_chans}x{size}x{size}"
    kernel = f"latency_predictor:{args.backend}"
    if args.statistic != "median" or args.min_time:
        kernel += f":{args.statistic}:{args.min_time:g}s"
    rows = []
    for net, m, *ps in zip(nets[held], truth, *preds.values()):
        shape = f"{tag}:{net.archid}"
        rows.append(Row(kernel, "measured", shape, layout, args.dtype, "fwd", "ms", m, None,
                        None, dev, ver["torch"], ver["triton"]))
        for name, v in zip(preds, ps):
            rows.append(Row(kernel, name, shape, layout, args.dtype, "fwd", "ms", v, None, None,
                            dev, ver["torch"], ver["triton"]))
    lines = [f"{args.held} held-out networks of {tag}, {args.backend}, {dev}, "
             f"{args.statistic} of {repeats} runs and {args.min_time:g} s at least, the "
             f"median of {args.measure} such measurement(s) (remeasured: one more):"]
    for name, vals in preds.items():
        s = scores(vals, truth)
        cal = int(name.removeprefix("predictor_cal")) if name.startswith("predictor") else 0
        for metric, v in (*s.items(), ("calibration_n", cal), ("held_n", len(truth))):
            rows.append(Row(kernel, name, tag, layout, args.dtype, metric, "", float(v), None,
                            None, dev, ver["torch"], ver["triton"]))
        lines.append(f"  {name:16s} rho {s['spearman_rho']:.3f}  mean |err| "
                     f"{100 * s['mean_abs_rel_err']:5.1f}%  within 10% "
                     f"{100 * s['within_10pct']:5.1f}%  (calibration sample {cal})")
    slug = "cpu" if device.type == "cpu" else device_slug(device)
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out / f"latency-predictor-{slug}.csv", rows)
    how = kernel.removeprefix("latency_predictor:")  # backend[:statistic:min time]
    png = args.out / f"latency-predictor-{slug}-{args.space}-{how.replace(':', '-')}.png"
    _scatter(png, truth, preds, f"{tag}, {how}, {dev}")
    lines.append(f"rows: {args.out / f'latency-predictor-{slug}.csv'}; plot: {png}; "
                 f"{time.perf_counter() - t_start:.0f} s")
    print("\n".join(lines))


def _scatter(path: Path, truth: list[float], preds: dict[str, list[float]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 6))
    for (name, vals), marker in zip(preds.items(), "sox^vD"):
        ax.scatter(truth, vals, s=14, marker=marker, alpha=0.7, label=name)
    lo, hi = min(truth + [v for vs in preds.values() for v in vs]), max(
        truth + [v for vs in preds.values() for v in vs])
    xs = [lo, hi]
    ax.plot(xs, xs, "k-", lw=0.8, label="predicted = measured")
    ax.plot(xs, [1.1 * x for x in xs], "k:", lw=0.6, label="+/- 10%")
    ax.plot(xs, [0.9 * x for x in xs], "k:", lw=0.6)
    ax.set(xscale="log", yscale="log", xlabel="measured latency (ms)",
           ylabel="predicted latency (ms)", title=title)
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers, not powers of ten
        axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
        axis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
