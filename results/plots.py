"""Plots of a run: the Pareto front, pairwise objectives, hypervolume over trials, block
choices on the front, and an interactive HTML front.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no
global backend switch), so importing this module changes nothing for others.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from shiftnas.errors import ArchError
from shiftnas.files import atomic_path, atomic_write
from shiftnas.metrics import Objective
from shiftnas.record import Run, TrialRecord
from shiftnas.searchspace import decode_net
from shiftnas.searchspace.genome import SHIFT_KINDS

from .pareto import Front, hypervolume_history

__all__ = ["plot_pareto", "plot_pairs", "plot_hypervolume", "plot_choices", "write_html"]

# Trial categories, drawn in this order (later on top).
_STYLE = {
    "failed": dict(marker="X", s=28, c="#7f7f7f", alpha=0.6, label="failed"),
    "infeasible": dict(marker="x", s=26, c="#d62728", alpha=0.7, label="infeasible (constraint)"),
    "pruned": dict(marker="v", s=26, facecolors="none", edgecolors="#ff7f0e", alpha=0.9,
                   label="pruned (partial accuracy)"),
    "complete": dict(marker="o", s=22, c="#9ecae1", edgecolors="#3182bd", linewidths=0.5,
                     label="complete"),
    "front": dict(marker="o", s=46, c="#08306b", edgecolors="white", linewidths=0.8, zorder=5,
                  label="Pareto front"),
}
_LOG_DECADES = 1.5  # a positive axis spanning more decades than this is drawn in log scale


def _category(t: TrialRecord, front_ids: set[int]) -> str | None:
    if t.number in front_ids:
        return "front"
    if t.state == "complete":
        return "complete" if t.feasible else "infeasible"
    if t.state in ("pruned", "infeasible", "failed"):
        return t.state
    return None  # running


def _axis_label(o: Objective) -> str:
    return f"{o.name} ({'higher' if o.direction == 'maximize' else 'lower'} is better)"


def _maybe_log(ax, axis: str, values: Sequence[float]) -> None:
    v = np.asarray([x for x in values if x is not None and x > 0], dtype=float)
    if len(v) >= 2 and v.min() > 0 and math.log10(v.max() / v.min()) > _LOG_DECADES:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _save(fig: Figure, path: str | Path) -> Path:
    """Render `fig` to `path` through a temporary file: a kill never leaves a cut PNG."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format=path.suffix.lstrip(".") or "png")
    return path


def _xy_objectives(objs: Sequence[Objective]) -> tuple[Objective, Objective]:
    """Cost on x, quality on y when the first two objectives are one of each."""
    a, b = objs[0], objs[1]
    if a.direction == "maximize" and b.direction == "minimize":
        return b, a
    return a, b


def _scatter_trials(ax, run: Run, front: Front, ox: Objective, oy: Objective,
                    counts: Counter | None = None) -> None:
    """Scatter every trial by category. A trial with the x metric but not the y one (an
    infeasible trial rejected before training has no accuracy) is drawn on the lower edge."""
    ids = {t.number for t in front.trials}
    groups: dict[str, list[tuple[float, float]]] = {k: [] for k in _STYLE}
    edge: dict[str, list[float]] = {k: [] for k in _STYLE}
    for t in run.trials:
        cat = _category(t, ids)
        if cat is None or (t.reused_from is not None and cat != "front"):
            continue
        if counts is not None:
            counts[cat] += 1
        x, y = t.metric(ox.name), t.metric(oy.name)
        if x is not None and y is not None:
            groups[cat].append((x, y))
        elif x is not None:
            edge[cat].append(x)
    for cat, style in _STYLE.items():
        pts, xs_edge = groups[cat], edge[cat]
        n = counts[cat] if counts is not None else len(pts) + len(xs_edge)
        if not n:
            continue
        style = dict(style)
        notes = []
        if xs_edge:
            notes.append(f"{len(xs_edge)} without {oy.name}: on the lower edge")
        if n - len(pts) - len(xs_edge):
            notes.append(f"{n - len(pts) - len(xs_edge)} without metrics")
        label = f"{style.pop('label')} ({n}{''.join('; ' + m for m in notes)})"
        xs, ys = (zip(*pts) if pts else ((), ()))
        ax.scatter(xs, ys, label=label, **style)
    lo, hi = ax.get_ylim()  # the y range of the real points, before the edge ones
    for cat, style in _STYLE.items():
        if edge[cat]:
            style = {k: v for k, v in style.items() if k != "label"}
            ax.scatter(edge[cat], [lo] * len(edge[cat]), clip_on=False, **style)
    ax.set_ylim(lo, hi)


def plot_pareto(run: Run, front: Front, path: str | Path) -> Path:
    """`pareto.png`: every trial by state, the front highlighted, stepped and labelled.

    With more than two objectives the first two are drawn and the highlighted
    front is the one over all objectives (see `plot_pairs`).
    """
    ox, oy = _xy_objectives(front.objectives)
    fig = Figure(figsize=(8, 5.6), layout="constrained")
    ax = fig.add_subplot()
    _maybe_log(ax, "x", run.column(ox.name))
    _maybe_log(ax, "y", run.column(oy.name))
    counts: Counter = Counter()
    _scatter_trials(ax, run, front, ox, oy, counts)
    fr = [(t.metric(ox.name), t.metric(oy.name), t) for t in front.trials]
    if len(front.objectives) == 2 and fr:
        fr.sort(key=lambda p: (p[0], p[1]))
        xs, ys = [p[0] for p in fr], [p[1] for p in fr]
        ax.step(xs, ys, where="post" if ox.direction == "minimize" else "pre",
                color="#08306b", lw=1.2, alpha=0.8, zorder=4)
    for i, (x, y, t) in enumerate(fr):  # alternate above / below so neighbours stay legible
        ax.annotate(t.short, (x, y), xytext=(4, 4 if i % 2 == 0 else -11),
                    textcoords="offset points", fontsize=7, color="#08306b", zorder=6)
    ax.set_xlabel(_axis_label(ox))
    ax.set_ylabel(_axis_label(oy))
    more = "" if len(front.objectives) == 2 else f" (front over all {len(front.objectives)} objectives)"
    ax.set_title(f"{run.name}: {len(front.trials)} of {len(front.candidates)} feasible complete "
                 f"trials on the front{more}", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    # Below the axes, never over a point (inside, "best" still covered trials).
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=8,
               ncols=2, frameon=False)
    return _save(fig, path)


def plot_pairs(run: Run, front: Front, path: str | Path) -> Path:
    """`pareto_pairs.png`: scatter matrix of every pair of objectives (for 3 or more)."""
    objs = front.objectives
    k = len(objs)
    fig = Figure(figsize=(2.9 * k, 2.7 * k), layout="constrained")
    axes = fig.subplots(k, k, squeeze=False)
    for i, oi in enumerate(objs):
        for j, oj in enumerate(objs):
            ax = axes[i][j]
            if i == j:
                vals = [v for v in run.column(oi.name, front.candidates) if v is not None]
                fv = [t.metric(oi.name) for t in front.trials]
                bins = np.histogram_bin_edges(vals or [0.0], bins=12)
                ax.hist(vals, bins=bins, color="#9ecae1", label="feasible complete")
                ax.hist(fv, bins=bins, color="#08306b", label="front")
                if i == 0:
                    ax.legend(fontsize=6)
            else:
                _maybe_log(ax, "x", run.column(oj.name))
                _maybe_log(ax, "y", run.column(oi.name))
                _scatter_trials(ax, run, front, oj, oi)
                for t in front.trials:
                    x, y = t.metric(oj.name), t.metric(oi.name)
                    ax.annotate(t.short, (x, y), xytext=(2, 2), textcoords="offset points",
                                fontsize=5, color="#08306b")
            if i == k - 1:
                ax.set_xlabel(oj.name + (" (max)" if oj.direction == "maximize" else " (min)"))
            if j == 0:
                ax.set_ylabel(oi.name + (" (max)" if oi.direction == "maximize" else " (min)"))
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.2)
    handles, labels = axes[0][1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize=8)
    fig.suptitle(f"{run.name}: pairs of objectives; the front is over all {k}", fontsize=10)
    return _save(fig, path)


def plot_hypervolume(run: Run, front: Front, path: str | Path) -> Path:
    """`hypervolume.png`: hypervolume of the front of the first k trials, by trial number."""
    hist = hypervolume_history(run, [o.name for o in front.objectives], front.reference)
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    if hist:
        xs, ys = zip(*hist)
        ax.step(xs, ys, where="post", color="#08306b", lw=1.5)
        gains = [(x, y) for (x, y), (_, prev) in zip(hist, [(None, 0.0), *hist[:-1]]) if y > prev]
        if gains:
            gx, gy = zip(*gains)
            ax.scatter(gx, gy, s=18, color="#08306b", zorder=3, label="front improved")
            ax.legend(fontsize=8, loc="lower right")
    ref = ", ".join(f"{o.name}={v:.4g}" for o, v in zip(front.objectives, front.reference or ()))
    ax.set_title(f"{run.name}: hypervolume over trials\nreference {ref} (maximised objectives "
                 f"negated)", fontsize=9)
    ax.set_xlabel("trial number")
    ax.set_ylabel("hypervolume")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def _choice_counts(trials: Sequence[TrialRecord]) -> dict[str, Counter]:
    out: dict[str, Counter] = {k: Counter() for k in ("family", "spatial op", "neighbourhood",
                                                      "placement", "expansion e")}
    for t in trials:
        try:
            net = decode_net(t.arch)
        except ArchError:
            continue
        for _, b, _, _ in net.blocks:
            out["family"][b.family] += 1
            if b.family == "basic":
                continue
            out["spatial op"][b.kind] += 1
            out["expansion e"][f"e{b.e:g}"] += 1
            if b.kind in SHIFT_KINDS and "nbhd" in b.used_fields:
                out["neighbourhood"][b.nbhd] += 1
            if b.family == "bottleneck3":
                out["placement"][b.placement] += 1
    return out


def plot_choices(run: Run, front: Front, path: str | Path) -> Path:
    """`choices.png`: share of blocks with each choice, on the front vs all complete trials."""
    everyone = _choice_counts([t for t in run.by_state("complete") if t.reused_from is None])
    onfront = _choice_counts(front.trials)
    cats = [c for c in everyone if everyone[c]]
    fig = Figure(figsize=(11, 1.2 + 2.0 * max(1, math.ceil(len(cats) / 2))), layout="constrained")
    axes = fig.subplots(max(1, math.ceil(len(cats) / 2)), 2, squeeze=False).ravel()
    for ax, cat in zip(axes, cats):
        keys = sorted(everyone[cat], key=lambda k: (-everyone[cat][k], k))
        tot_all, tot_front = sum(everyone[cat].values()), sum(onfront[cat].values())
        y = np.arange(len(keys))
        share_all = [everyone[cat][k] / tot_all for k in keys]
        share_front = [onfront[cat][k] / tot_front if tot_front else 0.0 for k in keys]
        ax.barh(y + 0.2, share_all, 0.4, color="#9ecae1", label="all complete trials")
        ax.barh(y - 0.2, share_front, 0.4, color="#08306b", label="Pareto front")
        ax.set_yticks(y, keys, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(f"{cat} (blocks: {tot_front} on the front, {tot_all} in all)", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(True, axis="x", alpha=0.3)
    for ax in axes[len(cats):]:
        ax.set_visible(False)
    if cats:
        axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{run.name}: block choices, share of blocks (front: {len(front.trials)} "
                 f"trials)", fontsize=10)
    return _save(fig, path)


# ----------------------------------------------------------------------------
# Interactive HTML
# ----------------------------------------------------------------------------


def _hover(t: TrialRecord) -> str:
    lines = [f"trial {t.number} ({t.state}{'' if t.feasible else ', infeasible'})", t.arch]
    lines += [f"{k}: {v:.6g}" for k, v in t.metrics.items()]
    if t.reason:
        lines.append(f"reason: {t.reason}")
    return "\n".join(lines)


def write_html(run: Run, front: Front, path: str | Path) -> Path:
    """`pareto.html`: hover a point for its architecture string and metrics.

    Uses plotly (with plotly.js inline, so it opens offline) when installed,
    else a small self-contained SVG page with `<title>` tooltips.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ox, oy = _xy_objectives(front.objectives)
    ids = {t.number for t in front.trials}
    groups: dict[str, list[TrialRecord]] = {k: [] for k in _STYLE}
    for t in run.trials:
        cat = _category(t, ids)
        if cat and t.metric(ox.name) is not None and t.metric(oy.name) is not None:
            groups[cat].append(t)
    try:
        import plotly.graph_objects as go
    except ImportError:
        atomic_write(path, _svg_page(run, groups, ox, oy))
        return path
    colors = {"failed": "#7f7f7f", "infeasible": "#d62728", "pruned": "#ff7f0e",
              "complete": "#6baed6", "front": "#08306b"}
    symbols = {"failed": "x", "infeasible": "x-thin-open", "pruned": "triangle-down-open",
               "complete": "circle", "front": "circle"}
    fig = go.Figure()
    for cat, ts in groups.items():
        if not ts:
            continue
        if cat == "front":
            ts = sorted(ts, key=lambda t: t.metric(ox.name))
        fig.add_trace(go.Scatter(
            x=[t.metric(ox.name) for t in ts], y=[t.metric(oy.name) for t in ts],
            mode="markers+text" if cat == "front" else "markers", name=f"{cat} ({len(ts)})",
            text=[t.short for t in ts] if cat == "front" else None, textposition="top right",
            hovertext=[_hover(t).replace("\n", "<br>") for t in ts], hoverinfo="text",
            marker=dict(color=colors[cat], symbol=symbols[cat], size=11 if cat == "front" else 8),
        ))
    log = {}
    for axis, o in (("x", ox), ("y", oy)):
        v = [x for x in run.column(o.name) if x is not None and x > 0]
        if len(v) >= 2 and math.log10(max(v) / min(v)) > _LOG_DECADES:
            log[f"{axis}axis_type"] = "log"
    fig.update_layout(title=f"{run.name}: Pareto front ({len(front.trials)} trials)",
                      xaxis_title=_axis_label(ox), yaxis_title=_axis_label(oy),
                      template="plotly_white", **log)
    with atomic_path(path) as tmp:
        fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)
    return path


def _svg_page(run: Run, groups: dict[str, list[TrialRecord]], ox: Objective,
              oy: Objective) -> str:
    w, h, m = 760, 480, 60
    pts = [t for ts in groups.values() for t in ts]
    colors = {"failed": "#7f7f7f", "infeasible": "#d62728", "pruned": "#ff7f0e",
              "complete": "#6baed6", "front": "#08306b"}

    def scale(vals: list[float]) -> tuple:
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        use_log = lo > 0 and hi / lo > 10 ** _LOG_DECADES
        f = math.log10 if use_log else float
        a, b = f(lo), f(hi)
        b = b if b > a else a + 1
        return f, a, b

    fx, ax0, ax1 = scale([t.metric(ox.name) for t in pts])  # type: ignore[misc]
    fy, ay0, ay1 = scale([t.metric(oy.name) for t in pts])  # type: ignore[misc]

    def xy(t: TrialRecord) -> tuple[float, float]:
        x = m + (fx(t.metric(ox.name)) - ax0) / (ax1 - ax0) * (w - 2 * m)
        y = h - m - (fy(t.metric(oy.name)) - ay0) / (ay1 - ay0) * (h - 2 * m)
        return x, y

    body = [f'<rect x="{m}" y="{m}" width="{w - 2 * m}" height="{h - 2 * m}" fill="none" '
            f'stroke="#999"/>',
            f'<text x="{w / 2}" y="{h - 15}" text-anchor="middle">{html.escape(_axis_label(ox))}</text>',
            f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" text-anchor="middle">'
            f'{html.escape(_axis_label(oy))}</text>']
    front = sorted(groups["front"], key=lambda t: t.metric(ox.name))
    if front:
        body.append('<polyline fill="none" stroke="#08306b" points="'
                    + " ".join(f"{x:.1f},{y:.1f}" for x, y in map(xy, front)) + '"/>')
    for cat, ts in groups.items():
        for t in ts:
            x, y = xy(t)
            r = 6 if cat == "front" else 4
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{colors[cat]}" '
                        f'fill-opacity="0.8"><title>{html.escape(_hover(t))}</title></circle>')
            if cat == "front":
                body.append(f'<text x="{x + 6:.1f}" y="{y - 6:.1f}" font-size="10">{t.short}</text>')
    legend = " ".join(f'<span style="color:{colors[c]}">&#9679; {c} ({len(ts)})</span>'
                      for c, ts in groups.items() if ts)
    title = html.escape(f"{run.name}: Pareto front")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body style='font-family:sans-serif'><h3>{title}</h3><p>{legend}</p>"
            f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' "
            f"font-family='sans-serif' font-size='12'>{''.join(body)}</svg>"
            f"<p>Hover a point for its architecture and metrics.</p></body></html>")
