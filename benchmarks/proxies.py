"""How well do cheap proxies rank architectures? Spearman correlation with longer training.

Run from the repository root:

    python -m benchmarks.proxies                 # 24 architectures, digits, 1 vs 8 epochs
    python -m benchmarks.proxies --n 8 --epochs 4   # a quick look

A seeded sample of architectures from the default space (`cifar_shift`, set to
the digits' 1x8x8 input and 10 classes) is trained on digits for `--epochs`
epochs; that validation accuracy is the reference. Each proxy (a 1-epoch
training run, synflow, naswot, grad_norm, snip, params, MACs) is correlated with
it by Spearman's rank correlation. One row per architecture goes to
`benchmarks/results/proxies-<device>.csv` and a summary to
`benchmarks/results/proxies.md`.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from shiftnas.evaluators import PROXIES, DataCfg, TrainCfg, compute_proxies, load_data, train
from shiftnas.evaluators.cost import net_cost
from shiftnas.evaluators.latency import device_name
from shiftnas.searchspace import load_space
from shiftnas.searchspace.space import sample_random

PROXY_COLS = ["acc_short", "synflow", "naswot", "grad_norm", "snip", "params", "macs"]
RESULTS = Path(__file__).parent / "results"


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho with average ranks for ties (what scipy.stats.spearmanr computes)."""
    def ranks(v: list[float]) -> np.ndarray:
        v_arr = np.asarray(v, dtype=np.float64)
        order = np.argsort(v_arr, kind="mergesort")
        r = np.empty(len(v_arr))
        r[order] = np.arange(len(v_arr), dtype=np.float64)
        for x in np.unique(v_arr):  # ties share their mean rank
            m = v_arr == x
            r[m] = r[m].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den else float("nan")


def _cost(net) -> tuple[int, int]:
    c = net_cost(net)
    return c.params, c.macs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=24, help="architectures (default 24)")
    ap.add_argument("--epochs", type=int, default=8, help="reference training epochs (default 8)")
    ap.add_argument("--ref-seeds", type=int, default=2,
                    help="reference runs per architecture, averaged; their agreement is the "
                         "ceiling a proxy can reach (default 2)")
    ap.add_argument("--short", type=int, default=1, help="epochs of the short-training proxy")
    ap.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    ap.add_argument("--subset", type=int, help="at most this many digits training images")
    ap.add_argument("--seed", type=int, default=0, help="sampling and training seed")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--from-csv", type=Path,
                    help="only re-summarise an earlier run's CSV (no training)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = "cpu"
    data = load_data(DataCfg(name="digits", seed=args.seed, subset=args.subset))
    if args.from_csv:
        rows = _read_csv(args.from_csv)
        busy = sum(v for r in rows for k, v in r.items() if k.startswith("s_"))
        summarise(args, rows, len(data.train_y), len(data.val_y), busy, args.from_csv)
        return
    space = load_space("cifar_shift").for_data(data.in_chans, data.classes, data.input_size)
    rng = np.random.default_rng(args.seed)
    nets = [sample_random(space, rng) for _ in range(args.n)]
    long_cfgs = [TrainCfg(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed + k)
                 for k in range(args.ref_seeds)]
    short_cfg = TrainCfg(epochs=args.short, batch_size=args.batch_size, seed=args.seed)

    args.out.mkdir(parents=True, exist_ok=True)
    dev = device_name(device, args.threads)
    slug = "cpu" if device == "cpu" else "gpu"
    csv_path = args.out / f"proxies-{slug}.csv"
    fields = ["i", "archid", "arch", "params", "macs", "acc_long",
              *[f"acc_long_s{k}" for k in range(args.ref_seeds)], "status_long", "acc_short",
              "synflow", "naswot", "grad_norm", "snip", "s_long", "s_short",
              *[f"s_{k}" for k in PROXIES], "device", "torch"]
    rows: list[dict] = []
    t_all = time.perf_counter()
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for i, net in enumerate(nets):
            params, macs = _cost(net)
            prox, s_prox = {}, {}
            for name in PROXIES:  # one at a time, to time each
                t0 = time.perf_counter()
                prox.update(compute_proxies(net, data, (name,), 64, device, args.seed))
                s_prox[name] = time.perf_counter() - t0
            short = train(net, data, short_cfg, device=device)
            fulls = [train(net, data, c, device=device) for c in long_cfgs]
            status = next((r.status for r in fulls if r.status != "ok"), "ok")
            acc_long = float(np.mean([r.accuracy for r in fulls]))
            row = {"i": i, "archid": net.archid, "arch": net.encode(), "params": params,
                   "macs": macs, "acc_long": acc_long,
                   **{f"acc_long_s{k}": r.accuracy for k, r in enumerate(fulls)},
                   "status_long": status, "acc_short": short.accuracy, **prox,
                   "s_long": round(sum(r.wall_s for r in fulls), 2),
                   "s_short": round(short.wall_s, 2),
                   **{f"s_{k}": round(v, 3) for k, v in s_prox.items()},
                   "device": dev, "torch": torch.__version__}
            rows.append(row)
            w.writerow(row)
            f.flush()
            print(f"[{i + 1}/{args.n}] {net.archid} acc{args.epochs}={acc_long:.3f} "
                  f"acc{args.short}={short.accuracy:.3f} synflow={prox['synflow']:.1f} "
                  f"naswot={prox['naswot']:.1f} ({row['s_long']:.1f}s + {short.wall_s:.1f}s)",
                  flush=True)
    total_s = time.perf_counter() - t_all
    summarise(args, rows, len(data.train_y), len(data.val_y), total_s, csv_path)


def _read_csv(path: Path) -> list[dict]:
    rows = []
    with path.open() as f:
        for r in csv.DictReader(f):
            rows.append({k: (v if k in ("archid", "arch", "status_long", "device", "torch")
                             else float(v)) for k, v in r.items()})
    return rows


def summarise(args, rows: list[dict], n_train: int, n_val: int, total_s: float,
              csv_path: Path) -> None:
    """Correlate every proxy with the reference; print the table and write `proxies.md`."""
    ok = [r for r in rows if r["status_long"] == "ok"]
    ref = [r["acc_long"] for r in ok]
    seeds = sorted(k for k in ok[0] if k.startswith("acc_long_s"))
    # The short run shares seed 0 (initialisation, batch order) with the first
    # reference run; the last reference seed is independent of it.
    indep = [r[seeds[-1]] for r in ok] if len(seeds) >= 2 else None
    table = []
    for c in PROXY_COLS:
        xs = [r[c] for r in ok]
        col = {"acc_short": "s_short"}.get(c, f"s_{c}")
        cost = float(np.mean([r[col] for r in ok])) if col in ok[0] else 0.0
        table.append((c, spearman(xs, ref), spearman(xs, indep) if indep else float("nan"), cost))
    ceiling = spearman([r[seeds[0]] for r in ok], indep) if indep else None
    for c, rho, rho_i, _ in table:
        print(f"{c:10s} rho = {rho:+.3f}  (vs an independent seed {rho_i:+.3f})")

    dev = ok[0]["device"]
    accs = ref
    cmd = (f"python -m benchmarks.proxies --n {len(rows)} --epochs {args.epochs} --ref-seeds "
           f"{len(seeds)} --short {args.short} --batch-size {args.batch_size} --seed {args.seed} "
           f"--threads {args.threads}" + (f" --subset {args.subset}" if args.subset else ""))
    names = {"acc_short": f"accuracy after {args.short} epoch"}
    lines = [
        "# Zero-cost and short-training proxies on digits",
        "",
        f"`{cmd}`",
        "",
        f"- device: {dev}; torch {ok[0]['torch']}; numpy {np.__version__}; "
        f"python {platform.python_version()}",
        f"- {len(ok)} of {len(rows)} architectures sampled from `cifar_shift` (1x8x8 input, "
        f"10 classes), trained on {n_train} digits and validated on {n_val}; reference: "
        f"validation accuracy after {args.epochs} epochs, mean of {len(seeds)} seed(s) "
        f"(range {min(accs):.3f} - {max(accs):.3f}, median {float(np.median(accs)):.3f})",
        f"- {total_s / 60:.1f} min of training and scoring; one row per architecture in "
        f"`{csv_path.name}`",
    ]
    if ceiling is not None:
        lines.append(f"- noise: the two reference seeds rank the architectures alike at "
                     f"Spearman rho {ceiling:+.3f}")
    lines += [
        "",
        "| proxy | rho with the reference | rho with an independent seed | seconds per architecture |",
        "|---|---:|---:|---:|",
        *[f"| {names.get(c, c)} | {rho:+.3f} | {rho_i:+.3f} | {cost:.2f} |"
          for c, rho, rho_i, cost in table],
    ]
    rho = {c: r for c, r, _, _ in table}
    zc = max(PROXIES, key=lambda c: rho[c] if rho[c] == rho[c] else -2)
    lines += [
        "",
        "(The short run shares seed 0 with the first reference run; the third column",
        "correlates with the other seed only, which removes that shared luck.)",
        "",
        "## Default proxy",
        "",
        f"Short training: accuracy after {args.short} epoch ranks best (rho "
        f"{rho['acc_short']:+.3f}) at about {table[0][3]:.1f} s per architecture here. The best "
        f"zero-cost proxy, `{zc}`, reaches rho {rho[zc]:+.3f}; params ({rho['params']:+.3f}) and "
        f"MACs ({rho['macs']:+.3f}) say as little. So the search should rank by short "
        f"training by default (successive halving on top of it); zero-cost proxies cost "
        f"~0.1 s but rank no better than chance here, so they should not pre-filter either "
        f"until a run on the target data set shows a positive correlation.",
        "",
        "Caveat: digits is easy (every sampled architecture ends between "
        f"{min(accs):.2f} and {max(accs):.2f}), so the reference is noisy"
        + (f" (seed agreement {ceiling:+.2f})" if ceiling is not None else "")
        + "; these numbers separate some signal from none, not fine differences. Re-run the "
        "comparison on CIFAR-10 (GPU) before trusting a zero-cost proxy there.",
    ]
    (args.out / "proxies.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
