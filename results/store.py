"""Reading a search run directory: `run.json` and `trials.jsonl` into frozen dataclasses.

A run directory (written by the search driver in `nas/`) holds::

    run.json        name, engine, objectives, constraints, budgets, storage, study_name, device
    trials.jsonl    one JSON object per line; the last line for a trial number wins
    archs/trial_00012.yaml, weights/trial_00012.pt (optional), study.db, log.txt

`load_run(run_dir)` reads it; `select_trial(run, "max accuracy where latency_ms <= 2")`
picks one trial with the small `--pick` grammar.
"""

from __future__ import annotations

import json
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shiftnas.errors import ConfigError

__all__ = ["Objective", "Constraint", "TrialRecord", "Run", "load_run", "select_trial",
           "STATES"]

STATES = ("complete", "pruned", "infeasible", "failed", "running")
DIRECTIONS = ("maximize", "minimize")
_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
        "==": operator.eq}


@dataclass(frozen=True)
class Objective:
    """One objective of the search."""

    name: str  # metric name, e.g. accuracy, latency_ms
    direction: str  # maximize | minimize

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"objective {self.name!r}: `direction` must be one of "
                              f"{list(DIRECTIONS)}, got {self.direction!r}.")

    @property
    def sign(self) -> float:
        """+1 for minimize, -1 for maximize: `sign * value` is to be minimised."""
        return 1.0 if self.direction == "minimize" else -1.0


@dataclass(frozen=True)
class Constraint:
    """A feasibility constraint `metric op value`, e.g. params <= 300000."""

    metric: str
    op: str  # <= | < | >= | > | ==
    value: float

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ConfigError(f"constraint on {self.metric!r}: `op` must be one of "
                              f"{list(_OPS)}, got {self.op!r}.")

    def holds(self, metrics: dict[str, float]) -> bool:
        v = metrics.get(self.metric)
        return v is not None and _OPS[self.op](v, self.value)

    def __str__(self) -> str:
        v = int(self.value) if float(self.value).is_integer() else self.value
        return f"{self.metric} {self.op} {v}"


@dataclass(frozen=True)
class TrialRecord:
    """The last recorded state of one trial (a line of trials.jsonl)."""

    number: int  # trial number, unique within the run
    state: str  # complete | pruned | infeasible | failed | running
    archid: str  # 12-hex-digit id of the architecture
    arch: str  # canonical network string
    metrics: dict[str, float] = field(default_factory=dict)  # any subset of the evaluators' metrics
    feasible: bool = True  # satisfies the run's constraints
    reason: str | None = None  # why it was pruned, rejected or failed
    started: str | None = None  # ISO time
    finished: str | None = None  # ISO time
    duration_s: float | None = None  # wall time of the evaluation
    reused_from: int | None = None  # trial whose result was reused for this duplicate archid

    @property
    def short(self) -> str:
        """Short label for plots: `#12`."""
        return f"#{self.number}"

    def metric(self, name: str) -> float | None:
        v = self.metrics.get(name)
        return None if v is None or not math.isfinite(v) else float(v)


@dataclass(frozen=True)
class Run:
    """A loaded run directory."""

    path: Path  # the run directory
    name: str
    engine: str  # optuna | ray
    created: str  # ISO time
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...]
    trials: tuple[TrialRecord, ...]  # sorted by number, one record per number
    trials_budget: int | None = None
    time_budget_s: float | None = None
    storage: str | None = None  # the study's storage URL
    study_name: str | None = None
    device: str | None = None

    def by_state(self, *states: str) -> list[TrialRecord]:
        """Trials in any of `states` (e.g. `run.by_state("complete")`)."""
        bad = [s for s in states if s not in STATES]
        if bad:
            raise ConfigError(f"unknown trial state {bad[0]!r}; states are {list(STATES)}.")
        return [t for t in self.trials if t.state in states]

    def candidates(self) -> list[TrialRecord]:
        """Feasible complete trials: those that may be on the front or be picked."""
        return [t for t in self.trials if t.state == "complete" and t.feasible]

    def column(self, metric: str, trials: list[TrialRecord] | None = None) -> list[float | None]:
        """`metric` of every trial (of `trials` if given), None where missing."""
        return [t.metric(metric) for t in (self.trials if trials is None else trials)]

    def trial(self, number: int) -> TrialRecord:
        for t in self.trials:
            if t.number == number:
                return t
        raise ConfigError(f"run {self.path}: no trial number {number}; it has trials "
                          f"{_ranges([t.number for t in self.trials])}.")

    def arch_file(self, number: int) -> Path:
        return self.path / "archs" / f"trial_{number:05d}.yaml"

    def weights_file(self, number: int) -> Path:
        return self.path / "weights" / f"trial_{number:05d}.pt"


def _ranges(nums: list[int]) -> str:
    if not nums:
        return "none"
    return f"{min(nums)}..{max(nums)}" if len(nums) > 1 else str(nums[0])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}).") from None


def _req(d: dict, key: str, types: type | tuple, where: str) -> Any:
    if key not in d:
        raise ConfigError(f"{where}: missing key `{key}`.")
    v = d[key]
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ConfigError(f"{where}: `{key}` must be {_tname(types)}, got {v!r}.")
    if not isinstance(v, types):
        raise ConfigError(f"{where}: `{key}` must be {_tname(types)}, got {v!r}.")
    return v


def _tname(types: type | tuple) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join({"int": "an integer", "float": "a number", "str": "a string",
                        "dict": "a mapping", "list": "a list", "bool": "true/false",
                        "NoneType": "null"}.get(t.__name__, t.__name__) for t in ts)


def _opt(d: dict, key: str, types: type | tuple, where: str) -> Any:
    if d.get(key) is None:
        return None
    return _req(d, key, types, where)


def _parse_trial(d: Any, where: str) -> TrialRecord:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: a trial is a JSON object, got {type(d).__name__}.")
    state = _req(d, "state", str, where)
    if state not in STATES:
        raise ConfigError(f"{where}: `state` must be one of {list(STATES)}, got {state!r}.")
    metrics = d.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise ConfigError(f"{where}: `metrics` must be a mapping, got {metrics!r}.")
    clean: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if v is None:
                continue
            raise ConfigError(f"{where}: metric `{k}` must be a number, got {v!r}.")
        clean[str(k)] = float(v)
    return TrialRecord(
        number=_req(d, "number", int, where), state=state,
        archid=_req(d, "archid", str, where), arch=_req(d, "arch", str, where),
        metrics=clean, feasible=bool(d.get("feasible", True)),
        reason=_opt(d, "reason", str, where), started=_opt(d, "started", str, where),
        finished=_opt(d, "finished", str, where),
        duration_s=_opt(d, "duration_s", (int, float), where),
        reused_from=_opt(d, "reused_from", int, where),
    )


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """`(line number, object)` of every whole JSON line of an append-only log.

    A line cut short by a crash or a kill is skipped: the last line when it
    has no newline yet, or an earlier line that a later append followed. A
    file with lines but none readable is an error.
    """
    if not path.exists():
        return []
    out, bad = [], None
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            bad = bad or (lineno, exc)
    if bad and not out:
        raise ConfigError(f"{path}:{bad[0]}: not valid JSON ({bad[1]}).")
    return out


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory; raise `ConfigError` naming the missing or malformed part."""
    path = Path(run_dir)
    expected = ("a run directory written by `shiftnas search` (run.json, trials.jsonl, "
                "archs/, weights/)")
    if not path.is_dir():
        raise ConfigError(f"run directory {str(path)!r} does not exist; expected {expected}.")
    meta_path = path / "run.json"
    if not meta_path.is_file():
        raise ConfigError(f"{path} has no run.json; expected {expected}.")
    meta = _read_json(meta_path)
    where = str(meta_path)
    if not isinstance(meta, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(meta).__name__}.")
    objs = _req(meta, "objectives", list, where)
    if not objs:
        raise ConfigError(f"{where}: `objectives` must list at least one objective.")
    objectives = []
    for i, o in enumerate(objs):
        w = f"{where}: objectives[{i}]"
        if not isinstance(o, dict):
            raise ConfigError(f"{w}: expected {{name, direction}}, got {o!r}.")
        objectives.append(Objective(_req(o, "name", str, w), _req(o, "direction", str, w)))
    constraints = []
    for i, c in enumerate(meta.get("constraints") or []):
        w = f"{where}: constraints[{i}]"
        if not isinstance(c, dict):
            raise ConfigError(f"{w}: expected {{metric, op, value}}, got {c!r}.")
        constraints.append(Constraint(_req(c, "metric", str, w), _req(c, "op", str, w),
                                      float(_req(c, "value", (int, float), w))))
    trials_path = path / "trials.jsonl"
    if not trials_path.is_file():
        raise ConfigError(f"{path} has no trials.jsonl; expected {expected}.")
    last: dict[int, TrialRecord] = {}
    for lineno, d in read_jsonl(trials_path):
        rec = _parse_trial(d, f"{trials_path}:{lineno}")
        last[rec.number] = rec
    return Run(
        path=path, name=str(meta.get("name") or path.name), engine=str(meta.get("engine", "")),
        created=str(meta.get("created", "")), objectives=tuple(objectives),
        constraints=tuple(constraints), trials=tuple(last[k] for k in sorted(last)),
        trials_budget=_opt(meta, "trials_budget", int, where),
        time_budget_s=_opt(meta, "time_budget_s", (int, float), where),
        storage=_opt(meta, "storage", str, where), study_name=_opt(meta, "study_name", str, where),
        device=_opt(meta, "device", str, where),
    )


# ----------------------------------------------------------------------------
# --pick
# ----------------------------------------------------------------------------

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PICK = re.compile(r"\s*(max|min)\s+(\w+)\s*(?:\s+where\s+(.+?))?\s*")
_COND = re.compile(rf"\s*(\w+)\s*(<=|>=|==|<|>)\s*({_NUM})\s*")


def parse_pick(expr: str) -> tuple[str, str, list[tuple[str, str, float]]]:
    """Parse `"(max|min) METRIC [where COND (and COND)*]"`, COND `"METRIC (<=|<|>=|>|==) NUMBER"`."""
    m = _PICK.fullmatch(expr)
    if not m:
        raise ConfigError(f"--pick {expr!r}: expected '(max|min) METRIC [where METRIC OP NUMBER "
                          f"(and METRIC OP NUMBER)*]', e.g. 'max accuracy where latency_ms <= 2'.")
    conds = []
    if m.group(3):
        for part in re.split(r"\s+and\s+", m.group(3)):
            c = _COND.fullmatch(part)
            if not c:
                raise ConfigError(f"--pick {expr!r}: condition {part.strip()!r} must be "
                                  f"'METRIC OP NUMBER' with OP one of {list(_OPS)}.")
            conds.append((c.group(1), c.group(2), float(c.group(3))))
    return m.group(1), m.group(2), conds


def select_trial(run: Run, expr: str) -> TrialRecord:
    """The feasible complete trial that `expr` (the `--pick` grammar) selects.

    Ties go to the trial with the better non-dominated rank, then the lowest number.
    """
    sense, metric, conds = parse_pick(expr)
    pool = [t for t in run.candidates() if t.metric(metric) is not None
            and all(t.metric(k) is not None and _OPS[op](t.metric(k), v) for k, op, v in conds)]
    if not pool:
        known = sorted({k for t in run.candidates() for k in t.metrics})
        raise ConfigError(f"--pick {expr!r}: no feasible complete trial of {run.path} matches "
                          f"({len(run.candidates())} feasible complete trials; their metrics: "
                          f"{known}).")
    sign = -1.0 if sense == "max" else 1.0
    # On a tie, prefer the trial that is better on the run's objectives (a lower
    # non-dominated rank), so a tie never picks a dominated trial; then the lowest number.
    from .pareto import nondominated_ranks

    objs = [o for o in run.objectives if all(t.metric(o.name) is not None for t in pool)]
    ranks = (nondominated_ranks([[o.sign * t.metric(o.name) for o in objs] for t in pool])
             if objs else [0] * len(pool))
    rank = {t.number: int(r) for t, r in zip(pool, ranks)}
    return min(pool, key=lambda t: (sign * t.metric(metric), rank[t.number], t.number))  # type: ignore[operator]
