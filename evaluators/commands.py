"""The `shiftnas evaluate` and `shiftnas data` subcommands.

    shiftnas evaluate shiftresnet20_e3 --dataset digits --epochs 3 --latency --proxies --json
    shiftnas data fetch fashion_mnist [--dest DIR] [--url URL]
    shiftnas data where fashion_mnist [--path DIR]
    shiftnas decompose resnet20 --weights W.pt --to shift --taps 3 --dataset fashion_mnist --out DIR

`evaluate` trains one architecture and reports its metrics: the architecture's
input channels, classes and resolution are set from the data set; it prints
accuracy, params and MACs, and with `--latency` the measured latency, with
`--proxies` the zero-cost proxy scores. `data fetch` downloads a data set's
files and checks their SHA-256; `data where` says which folder they would be
read from (see `evaluators.fetch` for the order). `decompose` converts a trained
network's 3x3 convolutions into separable form (`evaluators.decompose`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from shiftnas.config import int_arg
from shiftnas.errors import ConfigError
from shiftnas.searchspace import build_model, load_arch

from . import fetch
from .cost import net_cost
from .datasets import DATASETS, NEEDS_PATH, DataBundle, DataCfg, load_data
from .decompose import (
    METHODS,
    DecomposeCfg,
    decompose,
    decomposed_arch,
    iter_rows,
    load_weights,
    read_state_dict,
    write_decomposed,
)
from .device import resolve_device
from .latency import LatencyCfg, measure_latency
from .proxies import PROXIES, compute_proxies
from .training import TrainCfg, evaluate_accuracy, train


def _data(args: argparse.Namespace, device: str) -> DataBundle:
    if args.dataset in NEEDS_PATH and not args.data_path:
        raise ConfigError(f"--dataset {args.dataset} needs --data-path (its data directory).")
    return load_data(DataCfg(name=args.dataset, path=args.data_path, seed=args.seed,
                             subset=args.subset, val_subset=args.val_subset,
                             resolution=args.resolution), device)


def run_evaluate(args: argparse.Namespace) -> int:
    device = resolve_device(args.device, "--device")
    if args.scratch and not args.weights:
        raise ConfigError("--scratch trains the architecture from scratch beside the --weights "
                          "it is given; without --weights the run already starts from scratch.")
    state = read_state_dict(args.weights) if args.weights else None
    data = _data(args, device)
    net = load_arch(args.arch, classes=data.classes, in_chans=data.in_chans,
                    input_size=data.input_size)
    c = net_cost(net)
    params, macs = c.params, c.macs
    out: dict[str, Any] = {"name": net.name or None, "archid": net.archid, "arch": net.encode(),
                           "dataset": data.name, "device": device, "params": params, "macs": macs}
    model = net
    if state is not None:  # start from these weights, and say what they score before training
        torch.manual_seed(args.seed)
        model = build_model(net)
        load_weights(model, state, net, f"--weights {args.weights}")
        model.to(device)
        out["weights"] = str(args.weights)
        out["accuracy_initial"] = evaluate_accuracy(model, data.val_x, data.val_y)
    if args.proxies:
        out["proxies"] = compute_proxies(net, data, PROXIES, device=device, seed=args.seed)
    tcfg = TrainCfg(epochs=max(1, args.epochs), batch_size=args.batch_size, lr=args.lr,
                    seed=args.seed)
    if args.epochs > 0:
        res = train(model, data, tcfg, device=device)
        out.update(accuracy=res.accuracy, status=res.status, epochs=res.epochs,
                   history=res.history, train_s=res.wall_s, images_per_s=res.images_per_s)
        if res.reason:
            out["reason"] = res.reason
    if args.scratch and args.epochs > 0:
        res = train(net, data, tcfg, device=device)
        out.update(scratch_accuracy=res.accuracy, scratch_status=res.status,
                   scratch_history=res.history)
    if args.latency:
        lat = measure_latency(model, LatencyCfg(batch_size=args.latency_batch), device)
        out.update(latency_ms=lat.median_ms, latency_iqr_ms=lat.iqr_ms,
                   latency_device=lat.device_name, latency_batch=lat.batch_size)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{net.name or 'architecture'}  (archid {net.archid})  on {data.describe()}, {device}")
    print(f"params {params:,}   MACs {macs:,}")
    if "accuracy_initial" in out:
        print(f"accuracy {out['accuracy_initial']:.4f} with the --weights, before training")
    if "accuracy" in out:
        hist = " ".join(f"{a:.3f}" for a in out["history"])
        print(f"accuracy {out['accuracy']:.4f} after {out['epochs']} epoch(s) [{out['status']}] "
              f"in {out['train_s']:.1f} s ({out['images_per_s']:.0f} images/s); per epoch: {hist}")
        if out.get("reason"):
            print(f"  reason: {out['reason']}")
    if "scratch_accuracy" in out:
        hist = " ".join(f"{a:.3f}" for a in out["scratch_history"])
        print(f"accuracy {out['scratch_accuracy']:.4f} from scratch, same epochs "
              f"[{out['scratch_status']}]; per epoch: {hist}")
    if args.latency:
        print(f"latency {out['latency_ms']:.3f} ms (IQR {out['latency_iqr_ms']:.3f} ms) at batch "
              f"{out['latency_batch']} on {out['latency_device']}")
    if args.proxies:
        print("proxies " + "  ".join(f"{k} {v:.4g}" for k, v in out["proxies"].items()))
    return 0


def run_decompose(args: argparse.Namespace) -> int:
    device = resolve_device(args.device, "--device")
    if args.to == "shift" and args.rank is not None:
        raise ConfigError("--rank is the depthwise kernels per channel (--to depthwise); "
                          "for --to shift give --taps.")
    if args.to == "depthwise" and args.taps is not None:
        raise ConfigError("--taps is the integer shifts per channel (--to shift); "
                          "for --to depthwise give --rank.")
    cfg = DecomposeCfg(to=args.to, rank=args.rank or 1, taps=args.taps or 1,
                       calibrate=args.calibrate, holdout=args.holdout)
    decomposed_arch(load_arch(args.arch), cfg)  # no convertible layer: say so before any work
    weights = args.weights
    beside = Path(args.arch).with_name("weights.pt")
    if weights is None and Path(args.arch).is_file() and beside.is_file():
        weights = str(beside)  # an export directory's arch.yaml comes with its weights
    if weights is None:
        raise ConfigError(f"decompose needs the trained weights of {args.arch}: give --weights "
                          f"W.pt (an export's weights.pt or a state dict).")
    state = read_state_dict(weights)
    data = _data(args, device)
    net = load_arch(args.arch, classes=data.classes, in_chans=data.in_chans,
                    input_size=data.input_size)
    load_weights(build_model(net, fuse=False), state, net, f"--weights {weights}")
    print(f"decomposing {net.name or net.archid} ({weights}) to {args.to} with "
          f"{cfg.copies} {'kernel' if args.to == 'depthwise' else 'tap'}(s) per channel, "
          f"fitted on {min(cfg.calibrate, len(data.train_y))} images of {data.describe()}",
          flush=True)
    d = decompose(net, state, data, cfg, device=device, log=lambda m: print(m, flush=True))
    paths = write_decomposed(d, args.out)
    print("\n".join(iter_rows(d)))
    before, after = net_cost(net), net_cost(d.net)
    a = d.accuracy
    print(f"\nMACs {before.macs:,} -> {after.macs:,} ({after.macs / before.macs:.1%}), params "
          f"{before.params:,} -> {after.params:,}; validation accuracy {a['original']:.4f} "
          f"original, {a['converted']:.4f} converted, {a['recalibrated']:.4f} after BN "
          f"recalibration ({d.wall_s:.0f} s)")
    print(f"wrote {', '.join(str(p) for p in paths.values())}; fine-tune with `shiftnas evaluate "
          f"{paths['arch']} --weights {paths['weights']} --epochs N --scratch`")
    return 0


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < v <= 3600:
        raise argparse.ArgumentTypeError(f"must lie in (0, 3600] seconds, got {text}")
    return v


def run_fetch(args: argparse.Namespace) -> int:
    d = fetch.fetch(args.name, args.dest, args.url, timeout=args.timeout, log=print)
    try:
        used, _ = fetch.locate(args.name)
    except ConfigError:
        used = None
    note = "" if used == d else f"; to use them, set data.path (--data-path) to {d}"
    print(f"{args.name}: the files are in {d}{note}")
    return 0


def run_where(args: argparse.Namespace) -> int:
    if args.name == "digits":
        print("digits: bundled with scikit-learn; no files to find")
    elif args.name in NEEDS_PATH:
        print(f"{args.name}: read from data.path (--data-path) only"
              + (f": {args.path}" if args.path else "; it has no default location"))
    else:
        d, source = fetch.locate(args.name, args.path)
        print(f"{args.name}: {d} ({source})")
    return 0


def _data_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="data set (default digits, bundled with scikit-learn)")
    s.add_argument("--data-path", help="data directory (required for cifar10, cifar100, "
                   "imagefolder; optional for the IDX sets, see `shiftnas data where`)")
    s.add_argument("--subset", type=int_arg(1), help="at most this many training images")
    s.add_argument("--val-subset", type=int_arg(1), help="at most this many validation images")
    s.add_argument("--resolution", type=int_arg(1), help="resize the images to this size")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    s.add_argument("--seed", type=int_arg(0), default=0, help="split, initialisation and batch order")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `evaluate` and `data` to the `shiftnas` command line."""
    s = subparsers.add_parser("evaluate", help="train one architecture and report its metrics")
    s.add_argument("arch", help="a preset name, an architecture .yaml file or a network string")
    _data_args(s)
    s.add_argument("--epochs", type=int_arg(0), default=5,
                   help="training epochs (default 5; 0 = no training)")
    s.add_argument("--batch-size", type=int_arg(1), default=128, help="training batch (default 128)")
    s.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    s.add_argument("--weights", help="start from these weights (a state dict, e.g. an export's or "
                   "decompose's weights.pt) and report their accuracy before training too")
    s.add_argument("--scratch", action="store_true", help="with --weights: also train the same "
                   "architecture from scratch for the same epochs")
    s.add_argument("--latency", action="store_true", help="also measure latency")
    s.add_argument("--latency-batch", type=int_arg(1), default=1, help="latency batch (default 1)")
    s.add_argument("--proxies", action="store_true", help="also compute zero-cost proxies")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=run_evaluate)

    s = subparsers.add_parser("decompose", help="convert a trained network's 3x3 convolutions "
                              "into depthwise or shift form, fitted to data")
    s.add_argument("arch", help="a preset name or an architecture .yaml file (an export's "
                   "arch.yaml brings its weights.pt)")
    s.add_argument("--weights", help="the trained weights (a state dict, e.g. an export's "
                   "weights.pt; default: weights.pt beside the architecture file)")
    s.add_argument("--to", choices=METHODS, required=True,
                   help="depthwise: R kernels per input channel + 1x1; shift: E integer taps "
                   "per input channel + 1x1")
    s.add_argument("--rank", type=int_arg(1), help="depthwise: kernels per channel R (default 1; "
                   "9 is exact)")
    s.add_argument("--taps", type=int_arg(1), help="shift: integer taps per channel E (default 1)")
    s.add_argument("--calibrate", type=int_arg(1), default=512, help="training images the fits "
                   "use (default 512)")
    s.add_argument("--holdout", type=int_arg(1), default=500, help="validation images the "
                   "per-layer errors use (default 500)")
    _data_args(s)
    s.add_argument("--out", required=True, help="folder for arch.yaml, weights.pt, layers.csv")
    s.set_defaults(func=run_decompose)

    s = subparsers.add_parser("data", help="find or download data sets")
    data = s.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    f = data.add_parser("fetch", help="download a data set and check each file's SHA-256")
    f.add_argument("name", choices=fetch.IDX_DATASETS, help="the data set")
    f.add_argument("--dest", help="folder to write to (default: where the loader looks last, "
                   f"${fetch.DATA_DIR_ENV}/NAME or ~/.cache/shiftnas/data/NAME)")
    f.add_argument("--url", help=f"base URL instead of the authors' server (also "
                   f"${fetch.URL_ENV})")
    f.add_argument("--timeout", type=_seconds, default=fetch.TIMEOUT_S,
                   help=f"seconds to wait for the server (default {fetch.TIMEOUT_S:g})")
    f.set_defaults(func=run_fetch)
    w = data.add_parser("where", help="the folder a data set's files would be read from")
    w.add_argument("name", choices=DATASETS, help="the data set")
    w.add_argument("--path", help="as data.path / --data-path")
    w.set_defaults(func=run_where)
