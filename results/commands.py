"""The results subcommands of the `shiftnas` CLI: export, report, pareto, dashboard.

Each reads a search from its run directory, or from `--storage URL --study NAME`
(a search whose record lives on another machine's database). `register`
adds them; each sets `func(args) -> int`. User errors are `ShiftNASError`s,
which `nas.cli.main` prints as one paragraph with exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shiftnas.config import int_arg
from shiftnas.errors import ConfigError
from shiftnas.record import POINTER, RunDir, make_storage, mask, open_run
from shiftnas.searchspace import load_arch

from .export import export_arch, export_trial
from .pareto import pareto_front, select_trial
from .report import format_table, front_json, write_report

__all__ = ["register"]


def add_run_source(p: argparse.ArgumentParser, metavar: str = "RUN_DIR",
                   what: str = "a run directory (out_dir/name)") -> None:
    """RUN_DIR, or --storage URL --study NAME (a search on another machine's storage)."""
    p.add_argument("run_dir", metavar=metavar, nargs="?",
                   help=f"{what}; or give --storage and --study")
    p.add_argument("--storage", help="the search's storage URL (instead of a run directory)")
    p.add_argument("--study", help="the study name (the budget's `name`)")
    p.add_argument("--artifacts", help="the search's artifact store (default: the run directory's)")


def _open(args: argparse.Namespace):
    return open_run(args.run_dir, storage=args.storage, study=args.study,
                    artifacts=getattr(args, "artifacts", None))


def _objectives(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def cmd_export(args: argparse.Namespace) -> int:
    source = args.run_dir
    is_run = args.storage is not None or (source is not None and (Path(source) / POINTER).is_file())
    if is_run:
        if (args.trial is None) == (args.pick is None):
            raise ConfigError("export from a search needs exactly one of --trial N or --pick "
                              "\"max accuracy where latency_ms <= 2\".")
        run = _open(args)
        t = run.trial(args.trial) if args.trial is not None else select_trial(run, args.pick)
        if args.trial is not None and (t.state != "complete" or not t.feasible):
            print(f"note: trial {t.number} is {t.state}"
                  f"{' but infeasible' if t.state == 'complete' and not t.feasible else ''}; "
                  f"exporting it anyway.")
        name = f"trial {t.number}"
        paths = export_trial(run, t, args.out, onnx=args.onnx)
    else:
        if source is None:
            raise ConfigError("export: give a run directory (or --storage and --study), a preset "
                              "name, an ARCH.yaml or a network string.")
        if args.trial is not None or args.pick is not None:
            raise ConfigError(f"export {source!r}: --trial and --pick need a search (a run "
                              f"directory with {POINTER}, or --storage and --study).")
        if Path(source).is_dir():
            raise ConfigError(f"export {source!r}: the directory has no {POINTER}; give a run "
                              f"directory, a preset name, an ARCH.yaml or a network string.")
        net = load_arch(source)
        name = net.name or net.archid
        paths = export_arch(net, args.out, None, onnx=args.onnx)
    print(f"exported {name} to {args.out} (replacing any earlier export there):")
    for kind, p in paths.items():
        print(f"  {kind:8s} {p}")
    return 0


def _reference(v: list[float] | None) -> list[float] | None:
    return list(v) if v else None


def cmd_report(args: argparse.Namespace) -> int:
    run = _open(args)
    out = Path(args.out) if args.out else run.path
    if out is None:
        raise ConfigError("report: give --out DIR (a search read through --storage has no run "
                          "directory here).")
    written = RunDir(out).write_exports(run.trials)
    path = write_report(run, out, _reference(args.reference))
    print(f"wrote {path}, its plots, and {', '.join(p.name for p in written)}")
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    run = _open(args)
    front = pareto_front(run, _objectives(args.objectives), _reference(args.reference))
    if args.json:
        print(front_json(front))
        return 0
    print(format_table(front))
    if front.hypervolume is not None:
        ref = ", ".join(f"{o.name}={v:.4g}" for o, v in zip(front.objectives, front.reference))
        print(f"\nhypervolume {front.hypervolume:.6g} (reference {ref})")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    run = _open(args)  # refuses a missing storage or study before anything starts
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise ConfigError("the dashboard needs optuna-dashboard: "
                          "pip install 'shiftnas[dashboard]'.") from None
    url = run.store.url if run.store is not None else run.storage
    print(f"optuna-dashboard on http://{args.host}:{args.port} for {mask(url)} (study "
          f"{run.study_name}); Ctrl-C stops it.", flush=True)
    try:
        run_server(make_storage(url), host=args.host, port=args.port)
    except OSError as exc:
        raise ConfigError(f"dashboard: cannot listen on {args.host}:{args.port} "
                          f"({exc.strerror or exc}); choose another --port or --host.") from None
    return 0


def _port(text: str) -> int:
    v = int_arg(0)(text)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {v}")
    return v


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the export, report, pareto and dashboard subcommands."""
    p = subparsers.add_parser(
        "export", help="export an architecture as standalone PyTorch code (+ ONNX)",
        description="Export a search's trial (--trial N or --pick), a preset, an ARCH.yaml or a "
                    "network string as model.py (only torch needed), arch.yaml, weights.pt "
                    "(when the search kept the trial's weights) and, with --onnx, model.onnx. "
                    "The set replaces any earlier export in --out.")
    add_run_source(p, "RUN_DIR|NAME|ARCH.yaml",
                   "a run directory, a preset name, an architecture file or a network string")
    p.add_argument("--trial", type=int_arg(0), help="trial number (searches)")
    p.add_argument("--pick", metavar="EXPR",
                   help="'(max|min) METRIC [where METRIC OP NUMBER (and ...)*]' among feasible "
                        "complete trials, e.g. 'max accuracy where latency_ms <= 2'")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx")
    p.set_defaults(func=cmd_export)

    ref_help = "hypervolume reference point, one value per objective (default: worst + 10%% of range)"
    p = subparsers.add_parser("report", help="plots, report.md and trials.jsonl/csv of a search")
    add_run_source(p)
    p.add_argument("--out", help="output directory (default: the run directory)")
    p.add_argument("--reference", type=float, nargs="+", metavar="V", help=ref_help)
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("pareto", help="print a search's Pareto front")
    add_run_source(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--objectives", help="comma-separated subset of the run's objectives")
    p.add_argument("--reference", type=float, nargs="+", metavar="V", help=ref_help)
    p.set_defaults(func=cmd_pareto)

    p = subparsers.add_parser("dashboard", help="optuna-dashboard on a search's storage")
    add_run_source(p)
    p.add_argument("--port", type=_port, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=cmd_dashboard)
