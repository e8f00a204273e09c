"""Decomposing a trained ResNet-20: per-layer error, accuracy before and after fine-tuning,
against the same architecture from scratch, with MACs and ONNX Runtime latency.

Run from the repository root:

    python -m benchmarks.decompose                      # 3 seeds, about 1.5 h on 2 busy cores
    python -m benchmarks.decompose --seeds 0 --subset 1000 --epochs 2 --finetune 1  # smoke run
    python -m benchmarks.decompose --table              # the RESULTS.md table from the CSV

Per seed, on Fashion-MNIST resized to `--resolution` (`--subset` training images,
`--val-subset` validation images held out of the training set, split by the
seed): ResNet-20 is trained by shiftnas's proxy training (`evaluators.training.train`,
the defaults: Nesterov SGD, one-cycle at lr 0.1, `--epochs` epochs), then
converted by `evaluators.decompose` to depthwise R = 1 and shift E = 1 and E = 3
(`--calibrate` training images for the fits, `--holdout` validation images for
the errors). Each is fine-tuned from its converted weights for every `--finetune`
epoch count (the same training at peak lr `--ft-lr`, taps learned through the
sparse shift's straight-through gradient, as `shiftnas evaluate --weights` does),
and the same architecture is trained from scratch for as many epochs (lr 0.1).
The original gets the same two controls: fine-tuned further, and from scratch.
Every run is interrupted-safe: weights are kept in `--work`, and a (variant,
seed) whose rows are in the CSV is skipped.

Rows go to `benchmarks/results/decompose-fashion_mnist-cpu.csv` (long format,
`benchmarks/_timing.write_rows`): `kernel=decompose` rows hold accuracies,
MACs, params, seconds and ONNX Runtime latency per variant and seed;
`kernel=decompose_layer` rows hold each layer's errors. Latency: batch 1, one
thread, the four networks of the first seed measured round-robin
(`--latency-rounds` rounds of `measure_latency`, each at least 1 s of runs),
the median of the rounds' medians and the minimum of their minima.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks._timing import Row, versions, write_rows
from shiftnas.evaluators import DataCfg, load_data
from shiftnas.evaluators.cost import net_cost
from shiftnas.evaluators.decompose import DecomposeCfg, decompose, write_decomposed
from shiftnas.evaluators.latency import LatencyCfg, device_name, measure_latency
from shiftnas.evaluators.training import TrainCfg, evaluate_accuracy, train
from shiftnas.searchspace import build_model, create_preset, load_arch

RESULTS = Path(__file__).parent / "results"
CSV = RESULTS / "decompose-fashion_mnist-cpu.csv"
VARIANTS = {"original": None, "depthwise-r1": ("depthwise", 1), "shift-e1": ("shift", 1),
            "shift-e3": ("shift", 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--subset", type=int, default=5000)
    p.add_argument("--val-subset", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=10, help="the original's training epochs")
    p.add_argument("--finetune", type=int, nargs="+", default=[1, 5])
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--calibrate", type=int, default=512)
    p.add_argument("--holdout", type=int, default=500)
    p.add_argument("--threads", type=int, default=1, help="torch threads (one: on two shared "
                   "cores two threads trained ResNet-20 at 157 images/s, one at 485)")
    p.add_argument("--latency-rounds", type=int, default=5)
    p.add_argument("--work", type=Path, default=Path("/tmp/shiftnas-decompose"))
    p.add_argument("--csv", type=Path, default=CSV)
    p.add_argument("--table", action="store_true", help="print the table from the CSV and stop")
    args = p.parse_args()
    if args.table:
        print(table(args.csv))
        return
    torch.set_num_threads(args.threads)
    for seed in args.seeds:
        run_seed(seed, args)
    latency(args)
    print(table(args.csv))


def key(args: argparse.Namespace, seed: int) -> str:
    r = args.resolution
    return (f"resnet20@fashion_mnist-{args.subset}x1x{r}x{r}-e{args.epochs}-cal{args.calibrate}"
            f"-seed{seed}")


def done(path: Path) -> set[tuple[str, str]]:
    if not path.exists():
        return set()
    with path.open(newline="") as f:
        return {(r["provider"], r["shape"]) for r in csv.DictReader(f)
                if r["kernel"] == "decompose" and r["metric"] == "complete"}


def row(kernel: str, provider: str, shape: str, metric: str, unit: str, value: float,
        threads: int) -> Row:
    v = versions()
    return Row(kernel, provider, shape, "nchw", "float32", metric, unit, float(value), None, None,
               device_name(torch.device("cpu"), threads), v["torch"], v["triton"])


def run_seed(seed: int, args: argparse.Namespace) -> None:
    shape = key(args, seed)
    finished = done(args.csv)
    if all((v, shape) in finished for v in VARIANTS):
        print(f"seed {seed}: every variant is in {args.csv}; skipped")
        return
    data = load_data(DataCfg(name="fashion_mnist", subset=args.subset, val_subset=args.val_subset,
                             resolution=args.resolution, seed=seed))
    net = create_preset("resnet20").for_data(data.in_chans, data.classes, data.input_size)
    work = args.work / shape
    work.mkdir(parents=True, exist_ok=True)
    weights = work / "original.pt"
    model = build_model(net)
    if weights.exists():
        model.load_state_dict(torch.load(weights, weights_only=True))
        acc, train_s = evaluate_accuracy(model, data.val_x, data.val_y), float("nan")
    else:
        torch.manual_seed(seed)
        res = train(model, data, TrainCfg(epochs=args.epochs, seed=seed))
        acc, train_s = res.accuracy, res.wall_s
        torch.save(model.state_dict(), weights)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    print(f"seed {seed}: ResNet-20 {acc:.4f} after {args.epochs} epochs on {data.describe()}",
          flush=True)
    for variant, how in VARIANTS.items():
        if (variant, shape) in finished:
            continue
        t0 = time.perf_counter()
        rows: list[Row] = []

        def add(metric: str, unit: str, value: float, kernel: str = "decompose",
                where: str = shape, v: str = variant, out: list[Row] = rows) -> None:
            out.append(row(kernel, v, where, metric, unit, value, args.threads))

        if how is None:
            new_net, new_state = net, state
            add("accuracy", "accuracy", acc)
            add("train_s", "s", train_s)
        else:
            cfg = DecomposeCfg(to=how[0], rank=how[1], taps=how[1], calibrate=args.calibrate,
                               holdout=args.holdout, seed=seed)
            d = decompose(net, state, data, cfg)
            write_decomposed(d, work / variant)
            new_net, new_state = d.net, d.state_dict
            add("accuracy_converted", "accuracy", d.accuracy["converted"])
            add("accuracy_recalibrated", "accuracy", d.accuracy["recalibrated"])
            add("decompose_s", "s", d.wall_s)
            for r in d.layers:
                for m in ("error", "error_local", "fit_error", "datafree_error"):
                    add(m, "relative", getattr(r, m), "decompose_layer", f"{r.layer}@{shape}")
            print(f"  {variant}: converted {d.accuracy['converted']:.4f}, recalibrated "
                  f"{d.accuracy['recalibrated']:.4f}, layer errors "
                  f"{min(r.error for r in d.layers):.3f}-{max(r.error for r in d.layers):.3f} "
                  f"({d.wall_s:.0f} s)", flush=True)
        c = net_cost(new_net)
        add("macs", "MACs", c.macs)
        add("params", "count", c.params)
        for ep in args.finetune:
            m = build_model(new_net)
            m.load_state_dict(new_state)
            res = train(m, data, TrainCfg(epochs=ep, lr=args.ft_lr, seed=seed))
            add(f"accuracy_finetune{ep}", "accuracy", res.accuracy)
            res_s = train(new_net, data, TrainCfg(epochs=ep, seed=seed))
            add(f"accuracy_scratch{ep}", "accuracy", res_s.accuracy)
            print(f"  {variant}: {ep} epoch(s): fine-tuned {res.accuracy:.4f} "
                  f"({res.images_per_s:.0f} images/s), from scratch {res_s.accuracy:.4f} "
                  f"({res_s.images_per_s:.0f} images/s)", flush=True)
        add("complete", "s", time.perf_counter() - t0)
        write_rows(args.csv, rows)


def latency(args: argparse.Namespace) -> None:
    """ONNX Runtime latency of the four networks of the first seed, measured round-robin."""
    shape = key(args, args.seeds[0])
    work = args.work / shape
    r = args.resolution
    nets = {"original": create_preset("resnet20").for_data(1, 10, r)}
    for v in VARIANTS:
        if v != "original" and (work / v / "arch.yaml").exists():
            nets[v] = load_arch(work / v / "arch.yaml")
    cfg = LatencyCfg(backend="onnxruntime", batch_size=1, threads=1, repeats=50, min_time_s=1.0,
                     lock=None)
    med: dict[str, list[float]] = defaultdict(list)
    low: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.latency_rounds):
        for v, n in nets.items():
            res = measure_latency(n, cfg, "cpu")
            med[v].append(res.median_ms)
            low[v].append(res.min_ms or res.median_ms)
    rows = []
    for v in nets:
        lat_shape = f"{shape}-batch1"
        rows.append(row("decompose", v, lat_shape, "latency_ort_median", "ms",
                        statistics.median(med[v]), 1))
        rows.append(row("decompose", v, lat_shape, "latency_ort_min", "ms", min(low[v]), 1))
        print(f"{v}: ORT latency median {statistics.median(med[v]):.3f} ms, min "
              f"{min(low[v]):.3f} ms", flush=True)
    write_rows(args.csv, rows)


def config_of(shape: str) -> str:
    """The run configuration a row belongs to: its shape without the layer, seed and batch."""
    if shape.startswith("stages."):  # a layer's row: "<layer>@<shape>"
        shape = shape.split("@", 1)[1]
    return re.sub(r"-seed\d+(-batch1)?$", "", shape)


def table(path: Path) -> str:
    """Per configuration, the mean (and spread over seeds) of every metric per variant."""
    vals: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    layer_err: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            c = config_of(r["shape"])
            if r["kernel"] == "decompose":
                vals[c][(r["provider"], r["metric"])].append(float(r["median"]))
            elif r["metric"] == "error":
                layer_err[c][r["provider"]].append(float(r["median"]))
    return "\n\n".join(_table(c, vals[c], layer_err[c]) for c in vals)


def _table(config: str, vals: dict[tuple[str, str], list[float]],
           layer_err: dict[str, list[float]]) -> str:
    def cell(v: str, m: str, fmt: str = "{:.4f}") -> str:
        xs = [x for x in vals.get((v, m), []) if x == x]
        if not xs:
            return ""
        s = fmt.format(statistics.mean(xs))
        return s + (f" ± {statistics.stdev(xs):.4f}" if len(xs) > 1 and "acc" in m else "")

    base = statistics.mean(vals[("original", "macs")])
    seeds = len(vals[("original", "accuracy")])
    cols = ["accuracy", "accuracy_converted", "accuracy_recalibrated", "accuracy_finetune1",
            "accuracy_finetune5", "accuracy_scratch1", "accuracy_scratch5"]
    lines = [f"{config} ({seeds} seeds; mean ± standard deviation)", "",
             "| network | MACs | params | ORT ms (median / min) | layer error (mean / max) | "
             + " | ".join(c.replace("accuracy_", "") for c in cols) + " |",
             "|" + "---|" * (5 + len(cols))]
    for v in VARIANTS:
        if (v, "macs") not in vals:
            continue
        macs = statistics.mean(vals[(v, "macs")])
        errs = layer_err.get(v)
        err = f"{statistics.mean(errs):.3f} / {max(errs):.3f}" if errs else ""
        lines.append(f"| {v} | {macs / 1e6:.2f} M ({macs / base:.0%}) | "
                     f"{statistics.mean(vals[(v, 'params')]):,.0f} | "
                     f"{cell(v, 'latency_ort_median', '{:.3f}')} / "
                     f"{cell(v, 'latency_ort_min', '{:.3f}')} | {err} | "
                     + " | ".join(cell(v, c) for c in cols) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
