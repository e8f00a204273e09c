"""What a search can trade off: one table of metrics, and the objectives and constraints on them.

Every fact about a metric lives in its `Metric` row: the direction an
objective on it takes by default, the stage of a trial that produces it
(cost before anything runs, then latency, proxies, training), the value the
sampler is told when a trial never measured it, its unit and how it prints.
Budget validation, the trial evaluator, the progress line and the report all
read this table. Adding a metric is one row here and the code that computes it
in its stage (docs/design.md, "How to add a metric", says where each stage's is);
the report's front table shows the objectives and its own headline columns.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import ConfigError

STAGES = ("cost", "latency", "proxy", "train")  # the order a trial is spent in
DIRECTIONS = ("maximize", "minimize")


def _si(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.0f}"


@dataclass(frozen=True)
class Metric:
    """One row of the metric table."""

    name: str
    direction: str  # maximize | minimize: an objective's default direction
    stage: str  # cost | latency | proxy | train: when a trial knows the value
    unit: str = ""  # printed after the value
    short: str = ""  # label in progress lines (default: the name)
    compact: Callable[[float], str] = lambda v: f"{v:.4g}"  # the value, as a report prints it

    @property
    def worst(self) -> float:
        """What the sampler is told for a trial that never measured this metric."""
        if self.name == "accuracy":
            return 0.0
        return -1e12 if self.direction == "maximize" else 1e12

    def fmt(self, v: float | None) -> str:
        """`acc 0.912`, `lat 1.234ms`, `params 95.6k`: one value for a progress line."""
        if v is None or not math.isfinite(v):
            return f"{self.short or self.name} -"
        return f"{self.short or self.name} {self.compact(v)}{self.unit}"


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", "maximize", "train", short="acc", compact=lambda v: f"{v:.4f}"),
    Metric("latency_ms", "minimize", "latency", "ms", "lat", lambda v: f"{v:.4g}"),
    Metric("params", "minimize", "cost", compact=_si),
    Metric("macs", "minimize", "cost", compact=_si),
    Metric("traffic_mb", "minimize", "cost", "MB", "traffic"),
    Metric("synflow", "maximize", "proxy"),
    Metric("naswot", "maximize", "proxy"),
    Metric("grad_norm", "maximize", "proxy"),
    Metric("snip", "maximize", "proxy"),
    Metric("meco", "maximize", "proxy"),
)}


def fmt_duration(s: float | None) -> str:
    """`4m07s`, `1h02m`: a duration in seconds as progress lines and reports print it."""
    if s is None or not math.isfinite(s):
        return "-"
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def metric(name: str, where: str = "metric") -> Metric:
    """The table row of `name`; an unknown name is a `ConfigError` listing the known ones."""
    if not isinstance(name, str) or name not in METRICS:
        raise ConfigError(f"{where}: unknown metric {name!r}; metrics are {list(METRICS)}.")
    return METRICS[name]


def metrics_of(stage: str) -> tuple[str, ...]:
    return tuple(n for n, m in METRICS.items() if m.stage == stage)


@dataclass(frozen=True)
class Objective:
    """One objective of the search: a metric and a direction."""

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


OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq,
}
_CONSTRAINT = re.compile(r"\s*([A-Za-z_]\w*)\s*(<=|>=|<|>|==)\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*")


@dataclass(frozen=True)
class Constraint:
    """A feasibility constraint `metric op value`, e.g. params <= 300000."""

    metric: str
    op: str  # <= | < | >= | > | ==
    value: float

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ConfigError(f"constraint on {self.metric!r}: `op` must be one of "
                              f"{list(OPS)}, got {self.op!r}.")

    @classmethod
    def parse(cls, text: object, where: str = "constraint") -> Constraint:
        """`'params <= 300000'` -> Constraint; the metric must be in the table."""
        m = _CONSTRAINT.fullmatch(text) if isinstance(text, str) else None
        if not m:
            raise ConfigError(f"{where}: a constraint is a string 'METRIC OP NUMBER' such as "
                              f"'params <= 300000' or 'latency_ms <= 2.0', got {text!r}.")
        name, op, value = m.groups()
        metric(name, where)
        return cls(name, op, float(value))

    def holds(self, metrics: Mapping[str, float]) -> bool:
        v = metrics.get(self.metric)
        return v is not None and OPS[self.op](v, self.value)

    def violation(self, metrics: Mapping[str, float]) -> float | None:
        """How far the constraint is broken, relative to its bound (<= 0: it holds; None: unknown)."""
        v = metrics.get(self.metric)
        if v is None:
            return None
        if self.holds(metrics):
            return 0.0
        return abs(v - self.value) / max(abs(self.value), 1e-9) + 1e-9

    def __str__(self) -> str:
        v = int(self.value) if float(self.value).is_integer() else self.value
        return f"{self.metric} {self.op} {v}"
