"""The results subcommands of the `shiftnas` CLI: export, report, pareto, dashboard.

`register(subparsers)` adds them; each sets `func(args) -> int`. User errors are
raised as `ConfigError` / `ArchError`, which `nas.cli.main` prints and exits 2 on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shiftnas.errors import ConfigError
from shiftnas.searchspace import load_arch

from .export import export_arch, export_trial
from .pareto import pareto_front
from .report import format_table, front_json, write_report
from .store import load_run, select_trial

__all__ = ["register"]


def _is_run_dir(p: str) -> bool:
    return Path(p).is_dir() and (Path(p) / "run.json").is_file()


def _objectives(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def cmd_export(args: argparse.Namespace) -> int:
    source = args.source
    if _is_run_dir(source):
        if (args.trial is None) == (args.pick is None):
            raise ConfigError(f"export {source}: a run directory needs exactly one of --trial N "
                              f"or --pick \"max accuracy where latency_ms <= 2\".")
        run = load_run(source)
        t = run.trial(args.trial) if args.trial is not None else select_trial(run, args.pick)
        if args.trial is not None and (t.state != "complete" or not t.feasible):
            print(f"note: trial {t.number} is {t.state}"
                  f"{' but infeasible' if t.state == 'complete' and not t.feasible else ''}; "
                  f"exporting it anyway.")
        name = f"trial {t.number}"
        paths = export_trial(run, t, args.out, onnx=args.onnx)
    else:
        if args.trial is not None or args.pick is not None:
            raise ConfigError(f"export {source!r}: --trial and --pick need a run directory "
                              f"(with run.json); {source!r} is not one.")
        if Path(source).is_dir():
            raise ConfigError(f"export {source!r}: the directory has no run.json; give a run "
                              f"directory, a preset name, an ARCH.yaml or a network string.")
        net = load_arch(source)
        name = net.name or net.archid
        paths = export_arch(net, args.out, None, onnx=args.onnx)
    print(f"exported {name} to {args.out}:")
    for kind, p in paths.items():
        print(f"  {kind:8s} {p}")
    return 0


def _reference(v: list[float] | None) -> list[float] | None:
    return list(v) if v else None


def cmd_report(args: argparse.Namespace) -> int:
    path = write_report(args.run_dir, args.out, _reference(args.reference))
    print(f"wrote {path} and its plots")
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    run = load_run(args.run_dir)
    front = pareto_front(run, _objectives(args.objectives), _reference(args.reference))
    if args.json:
        print(front_json(front))
        return 0
    print(format_table(front))
    if front.hypervolume is not None:
        ref = ", ".join(f"{o.name}={v:.4g}" for o, v in zip(front.objectives, front.reference))
        print(f"\nhypervolume {front.hypervolume:.6g} (reference {ref})")
    return 0


def _storage(run_dir: Path, storage: str | None) -> str:
    local = run_dir / "study.db"
    if storage and storage.startswith("sqlite:///"):
        db = Path(storage[len("sqlite:///"):])
        if not db.is_absolute() and not db.exists() and (run_dir / db).exists():
            return f"sqlite:///{(run_dir / db).resolve()}"
        if not db.exists() and local.is_file():
            return f"sqlite:///{local.resolve()}"
        return storage
    if storage:
        return storage
    if local.is_file():
        return f"sqlite:///{local.resolve()}"
    raise ConfigError(f"{run_dir}/run.json names no `storage` and there is no study.db; the "
                      f"dashboard needs the run's Optuna storage.")


def cmd_dashboard(args: argparse.Namespace) -> int:
    run = load_run(args.run_dir)
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise ConfigError("the dashboard needs optuna-dashboard: "
                          "pip install 'shiftnas[dashboard]'.") from None
    storage = _storage(run.path, run.storage)
    print(f"optuna-dashboard on http://{args.host}:{args.port} for {storage} "
          f"(study {run.study_name or run.name}); Ctrl-C stops it.")
    run_server(storage, host=args.host, port=args.port)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the export, report, pareto and dashboard subcommands."""
    p = subparsers.add_parser(
        "export", help="export an architecture as standalone PyTorch code (+ ONNX)",
        description="Export a run's trial (--trial N or --pick), a preset, an ARCH.yaml or a "
                    "network string as model.py (only torch needed), arch.yaml, weights.pt "
                    "(when the run kept the trial's weights) and, with --onnx, model.onnx.")
    p.add_argument("source", metavar="RUN_DIR|NAME|ARCH.yaml",
                   help="a run directory, a preset name, an architecture file or a network string")
    p.add_argument("--trial", type=int, help="trial number (run directories)")
    p.add_argument("--pick", metavar="EXPR",
                   help="'(max|min) METRIC [where METRIC OP NUMBER (and ...)*]' among feasible "
                        "complete trials, e.g. 'max accuracy where latency_ms <= 2'")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx")
    p.set_defaults(func=cmd_export)

    ref_help = "hypervolume reference point, one value per objective (default: worst + 10%% of range)"
    p = subparsers.add_parser("report", help="plots and report.md of a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", help="output directory (default: RUN_DIR)")
    p.add_argument("--reference", type=float, nargs="+", metavar="V", help=ref_help)
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("pareto", help="print a run's Pareto front")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--objectives", help="comma-separated subset of the run's objectives")
    p.add_argument("--reference", type=float, nargs="+", metavar="V", help=ref_help)
    p.set_defaults(func=cmd_pareto)

    p = subparsers.add_parser("dashboard", help="optuna-dashboard on a run's storage")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=cmd_dashboard)
