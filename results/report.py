"""A run's report: the front as a table, its hypervolume, how the budget was spent, and
the plots, written as `report.md` next to the PNG and HTML files."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shiftnas.errors import ConfigError
from shiftnas.files import atomic_write
from shiftnas.metrics import METRICS, fmt_duration
from shiftnas.record import STATES, Run, open_run

from .pareto import Front, pareto_front
from .plots import plot_choices, plot_hypervolume, plot_pairs, plot_pareto, write_html

__all__ = ["front_rows", "format_table", "front_json", "budget_summary", "write_report",
           "latency_check_rows"]

# Columns of the front table besides the objectives, when the trials have them.
_COLUMNS = ("accuracy", "latency_ms", "params", "macs")  # the headline metrics, in this order


def _columns(front: Front) -> list[str]:
    cols = [o.name for o in front.objectives]
    have = {k for t in front.trials for k in t.metrics}
    return cols + [c for c in _COLUMNS if c not in cols and c in have]


def front_rows(front: Front) -> list[dict[str, Any]]:
    """One dict per front trial: trial, archid, arch and the table's metric columns."""
    cols = _columns(front)
    return [{"trial": t.number, "archid": t.archid, "arch": t.arch,
             **{c: t.metric(c) for c in cols}} for t in front.trials]


def _fmt(v: Any, col: str) -> str:
    if v is None:
        return "-"
    if col in METRICS:
        return METRICS[col].compact(v)
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_table(front: Front, arch_width: int = 60) -> str:
    """The front as a plain-text table (for `shiftnas pareto`)."""
    cols = _columns(front)
    head = ["trial", "archid", *cols, "architecture"]
    rows = []
    for r in front_rows(front):
        arch = r["arch"] if len(r["arch"]) <= arch_width else r["arch"][: arch_width - 3] + "..."
        rows.append([str(r["trial"]), r["archid"], *[_fmt(r[c], c) for c in cols], arch])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    if not rows:
        lines.append("(no feasible complete trial with every objective yet)")
    return "\n".join(lines)


def budget_summary(run: Run) -> dict[str, Any]:
    """How the budget was spent: trials by state, times, duplicates, and the infeasible ones.

    Infeasible means breaking a constraint: rejected before training (state
    `infeasible`), or complete and breaking one checked after training. A failed or
    pruned trial is counted as what it is, never as infeasible (its `feasible` is
    False only because it has no complete result).
    """
    states = Counter(t.state for t in run.trials)
    reused = [t for t in run.trials if t.reused_from is not None]
    own = [t for t in run.trials if t.reused_from is None]  # a reused trial spent nothing

    def spent(metric: str) -> float:
        return sum(v for t in own if (v := t.metric(metric)) is not None)

    rejected = [t for t in run.trials if t.state == "infeasible" and t.metric("train_s") is None]
    infeasible = [t for t in run.trials
                  if t.state == "infeasible" or (t.state == "complete" and not t.feasible)]
    return {
        "trials": len(run.trials),
        "by_state": {s: states.get(s, 0) for s in STATES},
        "total_time_s": sum(t.duration_s or 0.0 for t in run.trials),
        "training_time_s": spent("train_s"),
        "latency_time_s": spent("latency_s"),
        "compile_time_s": spent("compile_s"),
        "reused_duplicates": len(reused),
        "rejected_before_training": len(rejected),
        "infeasible": len(infeasible),
        "trials_budget": run.trials_budget,
        "time_budget_s": run.meta.time_budget_s,
        "elapsed_s": run.elapsed_s,
    }


def _md_table(front: Front, measured_with: dict[int, str] | None = None) -> list[str]:
    cols = _columns(front)
    extra = ["latency measured with"] if measured_with else []
    out = ["| trial | " + " | ".join(cols + extra) + " | architecture |",
           "|---:|" + "---:|" * len(cols) + "---|" * len(extra) + "---|"]
    for r in front_rows(front):
        arch = r["arch"].replace("|", "\\|")  # GFM tables split cells on | even in code
        cells = [_fmt(r[c], c) for c in cols] + ([measured_with.get(r["trial"], "-")]
                                                  if measured_with else [])
        out.append(f"| {r['trial']} | " + " | ".join(cells) + f" | `{arch}` |")
    return out


def _measured_with(run: Run, front: Front) -> dict[int, str]:
    """Per front trial with a latency: the runtime and the shift formulation it was timed with."""
    latency = run.meta.budget.get("latency") if isinstance(run.meta.budget, dict) else None
    if not latency or not any(t.metric("latency_ms") is not None for t in front.trials):
        return {}
    from shiftnas.evaluators.onnx_shift import describe
    from shiftnas.searchspace import decode_net

    out = {}
    for t in front.trials:
        if t.arch and t.metric("latency_ms") is not None:
            try:
                out[t.number] = describe(decode_net(t.arch), latency)
            except Exception as exc:  # a report never fails on this column
                out[t.number] = f"? ({type(exc).__name__})"
    return out


def latency_check_rows(run: Run, front: Front) -> list[dict[str, Any]]:
    """The front's trials whose latency was predicted: trial, predicted_ms, measured_ms (None
    until `shiftnas search` measured it when it ended), error (relative, signed)."""
    out = []
    for t in front.trials:
        if t.latency_source != "predicted":
            continue
        pred = t.metric("latency_ms")
        meas = (run.latency_checks.get(t.number) or {}).get("measured_ms")
        out.append({"trial": t.number, "archid": t.archid, "predicted_ms": pred,
                    "measured_ms": meas,
                    "error": None if meas is None or pred is None else (pred - meas) / meas})
    return out


def _latency_section(run: Run, front: Front) -> list[str]:
    rows = latency_check_rows(run, front)
    if not rows:
        return []
    sources = Counter(t.latency_source for t in run.trials if t.reused_from is None
                      and t.latency_source is not None)
    fitted = max((t.latency.get("fitted_on", 0) for t in run.trials), default=0)
    limits = [c for c in run.constraints if c.metric == "latency_ms"]
    md = ["## Latency: predicted vs measured on the front", "",
          f"`latency.mode: predicted`: {sources.get('measured', 0)} trial(s) measured whole "
          f"(the calibration sample), {sources.get('predicted', 0)} predicted from their parts' "
          f"times by a predictor fitted on up to {fitted} measured networks. The search "
          f"compared, and checked constraints against, the predicted values; the front's were "
          f"measured when the search ended.", "",
          "| trial | predicted ms | measured ms | error |" + (" note |" if limits else ""),
          "|---:|---:|---:|---:|" + ("---|" if limits else "")]
    for r in rows:
        cells = [str(r["trial"]), _fmt(r["predicted_ms"], "latency_ms"),
                 "-" if r["measured_ms"] is None else f"{r['measured_ms']:.4g}",
                 "-" if r["error"] is None else f"{100 * r['error']:+.1f}%"]
        if limits:
            broken = [] if r["measured_ms"] is None else \
                [f"`{c}`" for c in limits if not c.holds({"latency_ms": r["measured_ms"]})]
            cells.append(f"measured, breaks {', '.join(broken)}" if broken else "")
        md.append("| " + " | ".join(cells) + " |")
    errs = [abs(r["error"]) for r in rows if r["error"] is not None]
    if errs:
        md += ["", f"Predictor error on its own front: mean |error| "
               f"**{100 * sum(errs) / len(errs):.1f}%**, max {100 * max(errs):.1f}% "
               f"({len(errs)} trial(s))."]
    if len(errs) < len(rows):
        md += ["", f"{len(rows) - len(errs)} front trial(s) not measured yet: `shiftnas search` "
               f"measures them when it ends."]
    return md + [""]


def write_report(run_dir: str | Path | Run, out_dir: str | Path | None = None,
                 reference: Sequence[float] | None = None) -> Path:
    """Write the plots and `report.md` into `out_dir` (default: the run directory)."""
    run = run_dir if isinstance(run_dir, Run) else open_run(run_dir)
    if out_dir is None and run.path is None:
        raise ConfigError("the run has no run directory here; give --out DIR for the report.")
    out = Path(out_dir) if out_dir is not None else run.path
    out.mkdir(parents=True, exist_ok=True)
    front = pareto_front(run, reference=reference)
    k = len(front.objectives)
    images: list[tuple[str, str]] = []
    if k >= 2:
        plot_pareto(run, front, out / "pareto.png")
        images.append(("Pareto front", "pareto.png"))
        write_html(run, front, out / "pareto.html")
    if k >= 3:
        plot_pairs(run, front, out / "pareto_pairs.png")
        images.append(("Pairs of objectives", "pareto_pairs.png"))
    if k in (2, 3):
        plot_hypervolume(run, front, out / "hypervolume.png")
        images.append(("Hypervolume over trials", "hypervolume.png"))
    plot_choices(run, front, out / "choices.png")
    images.append(("Block choices on the front", "choices.png"))

    objs = ", ".join(f"{o.name} ({o.direction})" for o in front.objectives)
    cons = ", ".join(str(c) for c in run.constraints) or "none"
    b = budget_summary(run)
    md = [f"# Search report: {run.name}", "",
          f"- engine: {run.engine or '-'}; device: {run.meta.device or '-'}; created: "
          f"{run.meta.created or '-'}; storage: `{run.storage}` (study {run.study_name})",
          f"- objectives: {objs}",
          f"- constraints: {cons}", "",
          f"## Pareto front ({len(front.trials)} of {len(front.candidates)} feasible complete "
          f"trials)", "",
          "Only feasible complete trials compete; pruned trials (partial accuracy) are drawn "
          "but not on the front, and a duplicate architecture counts once.", "",
          *_md_table(front, _measured_with(run, front)), ""]
    if front.hypervolume is not None:
        ref = ", ".join(f"{o.name} = {v:.6g}" for o, v in zip(front.objectives, front.reference))
        default = " (default: per objective the worst feasible value plus 10% of the range)" \
            if reference is None else " (given)"
        md += [f"Hypervolume: **{front.hypervolume:.6g}**, reference point {ref}{default}; "
               "maximised objectives are negated, so the hypervolume is in minimisation units.", ""]
    md += _latency_section(run, front)
    by_state = ", ".join(f"{s}: {n}" for s, n in b["by_state"].items() if n)
    budget = []
    if b["trials_budget"] is not None:
        budget.append(f"trials budget {b['trials_budget']}")
    if b["time_budget_s"] is not None:
        budget.append(f"time budget {fmt_duration(b['time_budget_s'])}")
    md += ["## How the budget was spent", "",
           f"- trials: {b['trials']} ({by_state or 'none'})"
           + (f"; {', '.join(budget)}" if budget else ""),
           f"- search wall time: {fmt_duration(b['elapsed_s'])}; evaluation time summed over "
           f"trials: {fmt_duration(b['total_time_s'])}, of which training "
           f"{fmt_duration(b['training_time_s'])}, timing latency "
           f"{fmt_duration(b['latency_time_s'])}, compiling and autotuning kernels "
           f"{fmt_duration(b['compile_time_s'])}",
           f"- duplicates answered from an earlier trial (reused, not retrained): "
           f"{b['reused_duplicates']}",
           f"- rejected as infeasible before training: {b['rejected_before_training']} "
           f"(infeasible in all: {b['infeasible']})", ""]
    md += ["## Plots", ""]
    for title, f in images:
        md += [f"### {title}", "", f"![{title}]({f})", ""]
    if k >= 2:
        md += ["Interactive front (hover for architectures): [pareto.html](pareto.html)", ""]
    return atomic_write(out / "report.md", "\n".join(md) + "\n")


def front_json(front: Front) -> str:
    """The front as JSON (for `shiftnas pareto --json`)."""
    return json.dumps({"objectives": [o.__dict__ for o in front.objectives],
                       "reference": front.reference, "hypervolume": front.hypervolume,
                       "front": front_rows(front)}, indent=2)
