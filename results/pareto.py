"""Pareto fronts and hypervolume of a run, for any number of objectives and directions.

Every objective is turned into minimisation first (maximised ones are negated).
A point dominates another when it is no worse in every objective and strictly
better in one, so identical points never dominate each other: both stay on the
front. On a run, only feasible complete trials compete (pruned trials carry a
partial accuracy), and a duplicate architecture (`reused_from`, or a repeated
archid) counts once, as its first trial. `select_trial` picks one trial with the
small `--pick` grammar from the same candidates, so a pick and the front agree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shiftnas.errors import ConfigError
from shiftnas.metrics import OPS, Objective
from shiftnas.record import Run, TrialRecord, candidates

__all__ = ["nondominated_ranks", "nondominated_mask", "hypervolume", "reference_point", "Front", "pareto_front",
           "hypervolume_history", "parse_pick", "select_trial"]


def _as_points(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    p = np.asarray(points, dtype=float)
    if p.ndim != 2:
        raise ConfigError(f"points must be a 2-D array (n points x k objectives), got shape {p.shape}.")
    return p


def nondominated_ranks(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Fast non-dominated sort (Deb et al.) of minimisation points: rank 0 is the front.

    `points` is `(n, k)`; returns `(n,)` integer ranks. O(k n^2).
    """
    p = _as_points(points)
    n = len(p)
    if n == 0:
        return np.zeros(0, dtype=int)
    le = np.all(p[:, None, :] <= p[None, :, :], axis=2)
    lt = np.any(p[:, None, :] < p[None, :, :], axis=2)
    dom = le & lt  # dom[i, j]: i dominates j
    count = dom.sum(axis=0)  # how many dominate j
    ranks = np.full(n, -1, dtype=int)
    current = np.flatnonzero(count == 0)
    r = 0
    while current.size:
        ranks[current] = r
        count = count - dom[current].sum(axis=0)
        count[ranks >= 0] = -1
        current = np.flatnonzero(count == 0)
        r += 1
    return ranks


def nondominated_mask(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """`(n,)` booleans: which minimisation points are on the first front (rank 0).

    O(n log n + n * |front|) time and O(n) memory, where `nondominated_ranks`
    needs O(n^2) of both: a front of 50,000 trials takes well under a second.
    After a lexicographic sort every dominator of a point comes before it, and
    whatever dominates a point is itself on the front or dominated by a front
    point that then dominates it too, so each point is checked against the
    front found so far only.
    """
    p = _as_points(points)
    keep = np.zeros(len(p), dtype=bool)
    front: list[np.ndarray] = []
    for i in np.lexsort(p.T[::-1]):
        q = p[i]
        if front:
            f = np.asarray(front)
            if np.any(np.all(f <= q, axis=1) & np.any(f < q, axis=1)):
                continue
        front.append(q)
        keep[i] = True
    return keep


def _hv2(p: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by 2-D minimisation points `p` (all strictly better than `ref`)."""
    if len(p) == 0:
        return 0.0
    p = p[np.lexsort((p[:, 1], p[:, 0]))]
    area, best_y = 0.0, ref[1]
    for x, y in p:
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


def hypervolume(points: np.ndarray | Sequence[Sequence[float]],
                ref: np.ndarray | Sequence[float]) -> float:
    """Hypervolume dominated by minimisation `points` and bounded by `ref` (2 or 3 objectives).

    Points that are not strictly better than `ref` in every objective add nothing.
    """
    p, r = _as_points(points), np.asarray(ref, dtype=float)
    k = r.shape[0]
    if k not in (2, 3) or (len(p) and p.shape[1] != k):
        raise ConfigError(f"hypervolume needs 2 or 3 objectives and a reference point of the "
                          f"same length; got points {p.shape} and reference {r.shape}.")
    p = p[np.all(p < r, axis=1)] if len(p) else p.reshape(0, k)
    if k == 2:
        return _hv2(p, r)
    # 3-D: sweep over the third objective; each slab is a 2-D problem.
    p = p[np.argsort(p[:, 2], kind="stable")]
    vol = 0.0
    for i in range(len(p)):
        z_next = p[i + 1, 2] if i + 1 < len(p) else r[2]
        if z_next > p[i, 2]:
            vol += _hv2(p[: i + 1, :2], r[:2]) * (z_next - p[i, 2])
    return vol


def reference_point(points: np.ndarray | Sequence[Sequence[float]], margin: float = 0.1) -> np.ndarray:
    """Default reference of minimisation `points`: per objective the worst value plus
    `margin` times the range (or `margin` times max(|worst|, 1) when the range is 0)."""
    p = _as_points(points)
    if len(p) == 0:
        raise ConfigError("a reference point needs at least one feasible complete trial.")
    worst, best = p.max(axis=0), p.min(axis=0)
    span = worst - best
    span = np.where(span > 0, span, np.maximum(np.abs(worst), 1.0))
    return worst + margin * span


@dataclass(frozen=True)
class Front:
    """The Pareto front of a run and what it was computed from."""

    objectives: tuple[Objective, ...]
    trials: tuple[TrialRecord, ...]  # front members, sorted by the first objective (best first)
    candidates: tuple[TrialRecord, ...]  # feasible complete non-duplicate trials with every objective
    reference: tuple[float, ...] | None  # hypervolume reference, in the objectives' own units
    hypervolume: float | None  # in minimisation units (None for 1 or > 3 objectives)

    def values(self, trials: Sequence[TrialRecord] | None = None) -> np.ndarray:
        """`(n, k)` objective values (own units) of `trials` (default: the front)."""
        ts = self.trials if trials is None else trials
        return np.array([[t.metric(o.name) for o in self.objectives] for t in ts], dtype=float)


def _objectives(run: Run, names: Sequence[str] | None) -> tuple[Objective, ...]:
    if not names:
        return run.objectives
    by = {o.name: o for o in run.objectives}
    out = []
    for n in names:
        if n not in by:
            raise ConfigError(f"objective {n!r} is not one of the run's objectives "
                              f"{[o.name for o in run.objectives]}.")
        out.append(by[n])
    return tuple(out)


def _candidates(trials: Sequence[TrialRecord], objs: Sequence[Objective]) -> list[TrialRecord]:
    """`shiftnas.record.candidates` that have every objective."""
    return [t for t in candidates(trials) if all(t.metric(o.name) is not None for o in objs)]


def _minimise(values: np.ndarray, objs: Sequence[Objective]) -> np.ndarray:
    return values * np.array([o.sign for o in objs]) if len(values) else values.reshape(0, len(objs))


def pareto_front(run: Run, objectives: Sequence[str] | None = None,
                 reference: Sequence[float] | None = None) -> Front:
    """The front of `run` over `objectives` (default: all of the run's).

    `reference` (objectives' own units) bounds the hypervolume; by default
    `reference_point` of the feasible complete trials.
    """
    objs = _objectives(run, objectives)
    cands = _candidates(run.trials, objs)
    vals = np.array([[t.metric(o.name) for o in objs] for t in cands], dtype=float)
    pts = _minimise(vals, objs)
    on_front = nondominated_mask(pts)
    front = [t for t, f in zip(cands, on_front) if f]
    front.sort(key=lambda t: (objs[0].sign * t.metric(objs[0].name), t.number))  # type: ignore[operator]
    ref_min = hv = None
    if len(objs) in (2, 3) and len(cands):
        ref_min = _ref_min(objs, reference, pts)
        hv = hypervolume(pts[on_front], ref_min)
    ref = None if ref_min is None else tuple(float(v) for v in ref_min * [o.sign for o in objs])
    return Front(objs, tuple(front), tuple(cands), ref, hv)


def _ref_min(objs: Sequence[Objective], reference: Sequence[float] | None,
             pts: np.ndarray) -> np.ndarray:
    if reference is None:
        return reference_point(pts)
    if len(reference) != len(objs):
        raise ConfigError(f"reference point {list(reference)} must have one value per objective "
                          f"{[o.name for o in objs]}.")
    return np.asarray(reference, dtype=float) * np.array([o.sign for o in objs])


def hypervolume_history(run: Run, objectives: Sequence[str] | None = None,
                        reference: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """`(trial number, hypervolume of the front of trials 0..number)` for every trial.

    The reference is fixed for the whole history (default: from all feasible
    complete trials), so the curve never decreases.
    """
    objs = _objectives(run, objectives)
    if len(objs) not in (2, 3):
        raise ConfigError(f"hypervolume needs 2 or 3 objectives, the run has "
                          f"{[o.name for o in objs]}; choose some with --objectives.")
    cands = _candidates(run.trials, objs)
    if not cands:
        return [(t.number, 0.0) for t in run.trials]
    pts = _minimise(np.array([[t.metric(o.name) for o in objs] for t in cands]), objs)
    ref = _ref_min(objs, reference, pts)
    by_number = {t.number: p for t, p in zip(cands, pts)}
    front: list[np.ndarray] = []
    hv, out = 0.0, []
    for t in run.trials:
        p = by_number.get(t.number)
        if p is not None and not any(np.all(q <= p) and np.any(q < p) for q in front):
            front = [q for q in front if not (np.all(p <= q) and np.any(p < q))] + [p]
            hv = hypervolume(np.array(front), ref)
        out.append((t.number, hv))
    return out


# ----------------------------------------------------------------------------
# --pick
# ----------------------------------------------------------------------------

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PICK = re.compile(r"\s*(max|min)\s+(\w+)\s*(?:\s+where\s+(.+?))?\s*")
_COND = re.compile(rf"\s*(\w+)\s*(<=|>=|==|<|>)\s*({_NUM})\s*")


def parse_pick(expr: str) -> tuple[str, str, list[tuple[str, str, float]]]:
    """Parse `"(max|min) METRIC [where COND (and COND)*]"`, COND `"METRIC (<=|<|>=|>|==) NUMBER"`."""
    m = _PICK.fullmatch(expr) if isinstance(expr, str) else None
    if not m:
        raise ConfigError(f"--pick {expr!r}: expected '(max|min) METRIC [where METRIC OP NUMBER "
                          f"(and METRIC OP NUMBER)*]', e.g. 'max accuracy where latency_ms <= 2'.")
    conds = []
    if m.group(3):
        for part in re.split(r"\s+and\s+", m.group(3)):
            c = _COND.fullmatch(part)
            if not c:
                raise ConfigError(f"--pick {expr!r}: condition {part.strip()!r} must be "
                                  f"'METRIC OP NUMBER' with OP one of {list(OPS)}.")
            conds.append((c.group(1), c.group(2), float(c.group(3))))
    return m.group(1), m.group(2), conds


def select_trial(run: Run, expr: str) -> TrialRecord:
    """The candidate trial (see `pareto_front`) that `expr` (the `--pick` grammar) selects.

    Ties go to the trial with the better non-dominated rank, then the lowest number.
    """
    sense, metric, conds = parse_pick(expr)
    pool = [t for t in run.candidates() if t.metric(metric) is not None
            and all(t.metric(k) is not None and OPS[op](t.metric(k), v) for k, op, v in conds)]
    if not pool:
        known = sorted({k for t in run.candidates() for k in t.metrics})
        raise ConfigError(f"--pick {expr!r}: no feasible complete trial of {run.study_name} "
                          f"matches ({len(run.candidates())} feasible complete trials; their "
                          f"metrics: {known}).")
    sign = -1.0 if sense == "max" else 1.0
    # On a tie, prefer the trial that is better on the run's objectives (a lower
    # non-dominated rank), so a tie never picks a dominated trial; then the lowest number.
    objs = [o for o in run.objectives if all(t.metric(o.name) is not None for t in pool)]
    ranks = (nondominated_ranks([[o.sign * t.metric(o.name) for o in objs] for t in pool])
             if objs else [0] * len(pool))
    rank = {t.number: int(r) for t, r in zip(pool, ranks)}
    return min(pool, key=lambda t: (sign * t.metric(metric), rank[t.number], t.number))  # type: ignore[operator]
