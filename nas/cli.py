"""The `shiftnas` command line.

Subcommands live beside the code they drive: the foundation's here (presets,
show, sample), the search's in `nas.commands`, the evaluators' and the
results' in their packages' `commands` modules. Every user error is a
`ShiftNASError`: printed as one paragraph, exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from shiftnas.config import int_arg
from shiftnas.errors import ArchError, ShiftNASError
from shiftnas.files import is_no_space, no_space
from shiftnas.searchspace import list_presets, load_arch, load_space, save_arch, validate
from shiftnas.searchspace.space import sample_random


def _fmt_int(n: float) -> str:
    return f"{int(n):,}"


def _fmt_si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def cmd_presets(args: argparse.Namespace) -> int:
    names = list_presets(args.pattern)
    if not names:
        raise ArchError(f"no preset matches {args.pattern!r}; `shiftnas presets` lists them all.")
    from shiftnas.evaluators.cost import net_cost
    from shiftnas.searchspace import create_preset

    print(f"{'preset':28s} {'params':>12s} {'MACs':>12s}  input")
    for n in names:
        net = create_preset(n)
        c = net_cost(net)
        print(f"{n:28s} {_fmt_int(c.params):>12s} {_fmt_si(c.macs):>12s}  "
              f"{net.in_chans}x{net.input_size}x{net.input_size}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from shiftnas.evaluators.cost import net_cost

    net = load_arch(args.arch, classes=args.classes, input_size=args.input_size,
                    in_chans=args.in_chans)
    cost = net_cost(net, dtype_bytes=args.dtype_bytes)
    fused = net_cost(net, dtype_bytes=args.dtype_bytes, fuse_shift=True)
    if args.json:
        d = {"name": net.name or None, "arch": net.encode(), "archid": net.archid,
             "input": [net.in_chans, net.input_size, net.input_size], "classes": net.classes,
             **cost.to_dict(layers=args.layers), "traffic_bytes_fused_shift": fused.traffic_bytes}
        print(json.dumps(d, indent=2))
        return 0
    print(f"{net.name or 'architecture'}  (archid {net.archid})")
    print(net.encode())
    print(f"input {net.in_chans}x{net.input_size}x{net.input_size}, {net.classes} classes")
    print(f"params {_fmt_int(cost.params)}   MACs {_fmt_int(cost.macs)}   memory traffic "
          f"{cost.traffic_bytes / 1e6:.2f} MB ({args.dtype_bytes}-byte elements, batch 1; "
          f"{fused.traffic_bytes / 1e6:.2f} MB with shifts fused into the 1x1 convs)\n")
    rows = [("stem", "", str(net.stem_width), "", *_sums(cost.layers, "stem."))]
    for st, spec in zip(cost.stages, net.stages):
        rows.append((f"stage {st['stage']}", str(spec.depth), str(spec.width),
                     "x".join(map(str, st["out_hw"])),
                     st["params"], st["macs"], st["traffic_bytes"]))
    rows.append(("head", "", "", "", *_sums(cost.layers, "head_", "pool", "fc")))
    rows.append(("total", str(sum(s.depth for s in net.stages)), "", "",
                 cost.params, cost.macs, cost.traffic_bytes))
    print(f"{'':8s} {'depth':>5s} {'width':>6s} {'out':>7s} {'params':>12s} {'MACs':>14s} "
          f"{'traffic MB':>11s}")
    for r in rows:
        print(f"{r[0]:8s} {r[1]:>5s} {r[2]:>6s} {r[3]:>7s} {_fmt_int(r[4]):>12s} "
              f"{_fmt_int(r[5]):>14s} {r[6] / 1e6:>11.3f}")
    if args.layers:
        print(f"\n{'layer':32s} {'op':6s} {'in':>14s} {'out':>14s} {'params':>10s} "
              f"{'MACs':>12s} {'bytes':>10s}")
        for L in cost.layers:
            print(f"{L.name:32s} {L.op:6s} {'x'.join(map(str, L.shape_in)):>14s} "
                  f"{'x'.join(map(str, L.shape_out)):>14s} {_fmt_int(L.params):>10s} "
                  f"{_fmt_int(L.macs):>12s} {_fmt_int(L.traffic):>10s}")
    return 0


def _sums(layers, *prefixes: str) -> tuple[int, int, int]:
    ls = [x for x in layers if x.name.startswith(prefixes)]
    return sum(x.params for x in ls), sum(x.macs for x in ls), sum(x.traffic for x in ls)


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    space = load_space(args.space)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out) if args.out else None
    for k in range(args.n):
        for _ in range(100):
            net = sample_random(space, rng)
            try:
                validate(net)
                break
            except ArchError as exc:
                last = exc
        else:
            raise ArchError(f"space {args.space}: 100 draws in a row were invalid; the last: {last}")
        if out:
            path = save_arch(net, out / f"arch_{k:04d}.yaml")
            print(path)
        else:
            print(f"{net.archid}  {net.encode()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shiftnas",
        description="Neural architecture search over the shift design space.",
    )
    from shiftnas import __version__

    p.add_argument("--version", action="version", version=f"shiftnas {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("presets", help="list the reference architectures with their cost")
    s.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'shiftresnet*'")
    s.set_defaults(func=cmd_presets)

    s = sub.add_parser("show", help="params, MACs, memory traffic and a per-stage table")
    s.add_argument("arch", help="a preset name, an architecture .yaml file or a network string")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--classes", type=int_arg(1), help="classifier outputs")
    s.add_argument("--input-size", type=int_arg(1), help="input resolution")
    s.add_argument("--in-chans", type=int_arg(1), help="input channels")
    s.add_argument("--dtype-bytes", type=int, choices=(1, 2, 4, 8), default=4,
                   help="element size for memory traffic (4 = fp32)")
    s.add_argument("--layers", action="store_true", help="also list every layer")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("sample", help="draw architectures from a space file")
    s.add_argument("space", help="a space .yaml file or a built-in space name (cifar_shift)")
    s.add_argument("--n", type=int_arg(1), default=5, help="how many (default 5)")
    s.add_argument("--seed", type=int_arg(0), default=0, help="random seed >= 0 (default 0)")
    s.add_argument("--out", help="write one architecture file per sample into this folder")
    s.set_defaults(func=cmd_sample)

    from shiftnas.evaluators import commands as evaluate_commands
    from shiftnas.results import commands as results_commands

    from . import commands as search_commands

    for mod in (search_commands, evaluate_commands, results_commands):
        mod.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from shiftnas.kernels import dispatch

        dispatch.check_env()  # a mistyped SHIFTNAS_KERNELS stops here, before any work
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `shiftnas presets | head`: the reader left; say nothing
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ShiftNASError as exc:
        print(f"shiftnas {args.command}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except OSError as exc:  # a path that cannot be read or written: the user's to fix
        if is_no_space(exc):
            print(f"shiftnas {args.command}: error: {no_space(exc.filename or '.', exc)}",
                  file=sys.stderr)
            return 2
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"shiftnas {args.command}: error: {where}{exc.strerror or exc}.", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (handled the same way)
        return _interrupted(args.command, type(exc).__name__ == "Terminated")
    except Exception as exc:
        from shiftnas.nas.optuna_driver import STOP_SIGNALS

        if STOP_SIGNALS:  # an interrupt that surfaced as another error on its way out
            return _interrupted(args.command, STOP_SIGNALS[0] == signal.SIGTERM)
        if (why := storage_full(exc)) is not None:  # SQLite's "database or disk is full"
            print(f"shiftnas {args.command}: error: {why}", file=sys.stderr)
            return 2
        raise


def _interrupted(command: str, term: bool) -> int:
    print(f"shiftnas {command}: interrupted{' (SIGTERM)' if term else ''}; finished results are "
          f"kept, and rerunning the same command resumes.", file=sys.stderr)
    return 143 if term else 130


def storage_full(exc: BaseException) -> str | None:
    """The one-paragraph message for a database that ran out of disk, found in `exc`'s chain."""
    seen = exc
    while seen is not None:
        text = str(seen).lower()
        if "database or disk is full" in text or "no space left" in text:
            return ("the search's storage ran out of disk space; free some space or move "
                    "out_dir, then rerun: finished results are kept and the search resumes.")
        seen = seen.__cause__ or seen.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
