"""The budget file: what to search, for what, within what budget. Plain YAML into dataclasses.

Every field is documented in `examples/budget-reference.yaml`. Parsing is
strict: an unknown key, a wrong type, an out-of-range value or a
contradiction is one `ConfigError` naming the field's path, the value, the
rule and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shiftnas.config import FieldError, cfg_from_dict, is_int, is_num, read_yaml
from shiftnas.config import check as _rule
from shiftnas.errors import ConfigError, ShiftNASError
from shiftnas.evaluators.datasets import DataCfg
from shiftnas.evaluators.decompose import decomposed_dirs
from shiftnas.evaluators.latency import LatencyCfg
from shiftnas.evaluators.proxies import PROXIES
from shiftnas.evaluators.training import TrainCfg
from shiftnas.metrics import METRICS, Constraint, Objective, metric
from shiftnas.searchspace import Space, load_space

ENGINES = ("optuna", "ray")
SAMPLERS = ("nsga2", "nsga3", "tpe", "random", "qmc", "gp")
KEEP_WEIGHTS = ("all", "front", "none")
# Fields that may change when a run is resumed or joined; any other change is another search.
# The first ones are amounts; the rest say *where* things are, not what a trial means.
RESUMABLE = ("trials", "time_budget", "workers", "threads", "export", "onnx",
             "stop_after_failures", "keep_weights", "storage", "artifacts", "out_dir",
             "decomposed")
LOCATION = (("data", "path"),)  # nested location fields (the data may move)


@dataclass(frozen=True)
class PruningCfg:
    """Pareto-aware successive halving on validation accuracy (see nas.pruning)."""

    enabled: bool = True  # stop dominated trials early
    eta: int = 3  # at each rung keep the top 1/eta of the trials there, by non-dominated rank
    min_epochs: int = 1  # the first rung; later rungs at min_epochs * eta^k epochs
    min_trials: int = 3  # a rung prunes nothing until this many trials have reached it

    def __post_init__(self) -> None:
        _rule(isinstance(self.enabled, bool), "enabled", "must be true or false", self.enabled)
        _rule(is_int(self.eta) and self.eta >= 2, "eta", "must be an integer >= 2", self.eta)
        _rule(is_int(self.min_epochs) and self.min_epochs >= 1, "min_epochs",
              "must be an integer >= 1", self.min_epochs)
        _rule(is_int(self.min_trials) and self.min_trials >= 1, "min_trials",
              "must be an integer >= 1", self.min_trials)


@dataclass(frozen=True)
class RayCfg:
    """Where and how the Ray Tune engine runs trials."""

    address: str | None = None  # an existing cluster ("auto", "ray://head:10001"); None = local Ray
    num_cpus: int | None = None  # CPUs of a local Ray (None = all of this machine's)
    cpus_per_trial: float = 1.0  # CPUs reserved per trial
    gpus_per_trial: float = 0.0  # GPUs reserved per trial (fractions share a GPU)

    def __post_init__(self) -> None:
        _rule(self.address is None or isinstance(self.address, str), "address",
              "must be a string or null", self.address)
        _rule(self.num_cpus is None or (is_int(self.num_cpus) and self.num_cpus >= 1),
              "num_cpus", "must be an integer >= 1 or null", self.num_cpus)
        _rule(is_num(self.cpus_per_trial) and self.cpus_per_trial > 0, "cpus_per_trial",
              "must be a number > 0", self.cpus_per_trial)
        _rule(is_num(self.gpus_per_trial) and self.gpus_per_trial >= 0, "gpus_per_trial",
              "must be a number >= 0", self.gpus_per_trial)


@dataclass(frozen=True)
class Budget:
    """A parsed budget file; build one with `load_budget`."""

    name: str  # the run's name: its directory is out_dir/name
    out_dir: str = "runs"  # where run directories go
    seed: int = 0  # seeds the sampler, the training and the split
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    data: DataCfg = field(default_factory=DataCfg)  # the data set (evaluators.datasets.DataCfg)
    space: Any = "cifar_shift"  # a space file path, a built-in space name, or an inline mapping
    objectives: tuple[Objective, ...] = (Objective("accuracy", "maximize"),
                                         Objective("params", "minimize"))
    constraints: tuple[Constraint, ...] = ()  # hard limits, checked before any training
    engine: str = "optuna"  # optuna | ray
    sampler: str = "tpe"  # tpe | nsga2 | nsga3 | random | qmc | gp (tpe: benchmarks/RESULTS.md)
    population_size: int = 10  # NSGA-II/III generation size; start-up (random) trials of tpe / gp
    trials: int | None = 30  # trial budget (finished trials of the whole run)
    time_budget: float | None = None  # wall-clock budget in seconds ("90s", "10m", "2h" accepted)
    train: TrainCfg = field(default_factory=TrainCfg)  # proxy training (evaluators.training)
    pruning: PruningCfg = field(default_factory=PruningCfg)
    latency: LatencyCfg = field(default_factory=LatencyCfg)  # latency measurement
    proxies: tuple[str, ...] = ()  # zero-cost proxies to record (those in objectives are added)
    storage: str | None = None  # Optuna storage URL; None = default_storage (nas/commands.py)
    artifacts: str | None = None  # artifact store: a folder, s3://bucket or gs://bucket; None = run dir
    keep_weights: str = "all"  # proxy-trained weights kept: all complete trials | front | none
    stop_after_failures: int = 5  # stop when this many trials in a row failed (0 = never)
    workers: int = 1  # parallel trial processes (Optuna) or concurrent trials (Ray)
    threads: int = 1  # CPU threads per trial process (small nets gain nothing from more)
    ray: RayCfg = field(default_factory=RayCfg)
    export: str | None = "max accuracy"  # which trial to export when the search ends (None = none)
    onnx: bool = False  # export ONNX as well
    decomposed: tuple[str, ...] = ()  # `shiftnas decompose` folders: first trials, weights as init

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    @property
    def metrics_needed(self) -> set[str]:
        return {o.name for o in self.objectives} | {c.metric for c in self.constraints}

    @property
    def needs_training(self) -> bool:
        return "accuracy" in self.metrics_needed

    @property
    def needs_latency(self) -> bool:
        return "latency_ms" in self.metrics_needed

    def load_space(self) -> Space:
        return load_space(self.space, where="budget.space")

    def to_dict(self) -> dict[str, Any]:
        """The budget as a plain mapping, every default filled in (`load_budget` reads it back)."""
        d = dataclasses.asdict(self)
        d["objectives"] = [{"metric": o.name, "direction": o.direction} for o in self.objectives]
        d["constraints"] = [str(c) for c in self.constraints]
        d["proxies"] = list(self.proxies)
        return json.loads(json.dumps(d, default=list))

    def meaning(self) -> dict[str, Any]:
        """The fields that change what a trial means: not the amounts, not where things are.

        The space counts by its content, so editing a space file is another search.
        """
        d = {k: v for k, v in self.to_dict().items() if k not in RESUMABLE}
        for section, key in LOCATION:
            d[section] = {k: v for k, v in d[section].items() if k != key}
        d["space"] = self.load_space().to_dict()
        return d

    def settings_hash(self) -> str:
        return hashlib.sha1(json.dumps(self.meaning(), sort_keys=True).encode()).hexdigest()[:12]

    def changed_fields(self, other_meaning: Mapping[str, Any]) -> list[str]:
        """Top-level fields whose meaning differs from `other_meaning` (another `meaning()`)."""
        mine = self.meaning()
        return sorted(k for k in set(mine) | set(other_meaning)
                      if mine.get(k) != other_meaning.get(k))


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(v: Any, where: str) -> float | None:
    """Seconds from a number or a string like `90s`, `10m`, `1h30m`."""
    if v is None:
        return None
    if is_num(v) and v > 0 and math.isfinite(v):
        return float(v)
    m = _DURATION.fullmatch(v.strip()) if isinstance(v, str) and v.strip() else None
    if not m or not any(m.groups()):
        raise ConfigError(f"{where}: must be a positive number of seconds or a duration like "
                          f"'90s', '10m', '1h30m', got {v!r}.")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    if h * 3600 + mi * 60 + s <= 0:
        raise ConfigError(f"{where}: must be a positive duration, got {v!r}.")
    return h * 3600 + mi * 60 + s


def _objectives(v: Any, where: str) -> tuple[Objective, ...]:
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{where}: must be a non-empty list of objectives, e.g. "
                          f"[accuracy, latency_ms] or [{{metric: accuracy, direction: maximize}}], "
                          f"got {v!r}.")
    out: list[Objective] = []
    for i, o in enumerate(v):
        w = f"{where}[{i}]"
        if isinstance(o, str):
            o = {"metric": o}
        if not isinstance(o, Mapping) or set(o) - {"metric", "direction"} or "metric" not in o:
            raise ConfigError(f"{w}: an objective is a metric name or {{metric: NAME, direction: "
                              f"maximize|minimize}}, got {o!r}.")
        name = o["metric"]
        if not isinstance(name, str):
            raise ConfigError(f"{w}.metric: must be a metric name, got {name!r}.")
        direction = o.get("direction", metric(name, f"{w}.metric").direction)
        if direction not in ("maximize", "minimize"):
            raise ConfigError(f"{w}.direction: must be maximize or minimize, got {direction!r}.")
        if any(x.name == name for x in out):
            raise ConfigError(f"{w}: objective {name!r} is listed twice.")
        out.append(Objective(name, direction))
    return tuple(out)


_SECTIONS = {"data": DataCfg, "train": TrainCfg, "latency": LatencyCfg, "pruning": PruningCfg,
             "ray": RayCfg}


def budget_from_dict(d: Any, where: str = "budget") -> Budget:
    """Strictly parse a budget mapping (see the module docstring)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: a budget file holds a mapping of fields, got "
                          f"{type(d).__name__}.")
    fields = {f.name for f in dataclasses.fields(Budget)}
    for k in d:
        if k not in fields:
            raise ConfigError(f"{where}.{k}: unknown key; allowed: {sorted(fields)}.")
    if "name" not in d:
        raise ConfigError(f"{where}.name: is required (the run's name; its directory is "
                          f"out_dir/name).")
    kw: dict[str, Any] = {}
    for k, v in d.items():
        w = f"{where}.{k}"
        if k in _SECTIONS:
            kw[k] = cfg_from_dict(_SECTIONS[k], v, w)
        elif k == "objectives":
            kw[k] = _objectives(v, w)
        elif k == "constraints":
            if not isinstance(v, list):
                raise ConfigError(f"{w}: must be a list of strings like 'params <= 300000', got {v!r}.")
            kw[k] = tuple(Constraint.parse(c, f"{w}[{i}]") for i, c in enumerate(v))
        elif k == "decomposed":
            kw[k] = decomposed_dirs(v, w)
        elif k == "time_budget":
            kw[k] = parse_duration(v, w)
        elif k == "proxies":
            if not isinstance(v, list) or any(p not in PROXIES for p in v):
                raise ConfigError(f"{w}: must be a list of proxy names from {list(PROXIES)}, got {v!r}.")
            kw[k] = tuple(v)
        else:
            kw[k] = v
    try:
        b = Budget(**kw)
        _check_budget(b)
    except FieldError as exc:
        raise ConfigError(f"{where}.{exc.name}: {exc.rule}, got {exc.value!r}.") from None
    except ConfigError as exc:  # a rule whose message already starts with the field's name
        raise ConfigError(f"{where}.{exc}") from None
    try:
        b.load_space()
    except ShiftNASError as exc:
        raise ConfigError(f"{where}.space: {exc}") from None
    if b.export is not None:
        from shiftnas.results.pareto import parse_pick

        try:
            _, picked, conds = parse_pick(b.export)
        except ShiftNASError as exc:
            raise ConfigError(f"{where}.export: {exc}") from None
        unknown = [m for m in [picked, *(c[0] for c in conds)] if m not in METRICS]
        if unknown:
            raise ConfigError(f"{where}.export: unknown metric {unknown[0]!r} in {b.export!r}; "
                              f"metrics are {list(METRICS)}.")
    return b


def _check_budget(b: Budget) -> None:
    _rule(isinstance(b.name, str) and re.fullmatch(r"[\w.-]+", b.name or "") is not None, "name",
          "must be a non-empty name of letters, digits, '.', '_' or '-'", b.name)
    _rule(isinstance(b.out_dir, str) and b.out_dir != "", "out_dir", "must be a directory path",
          b.out_dir)
    _rule(is_int(b.seed), "seed", "must be an integer", b.seed)
    _rule(isinstance(b.device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", b.device) is not None,
          "device", "must be auto, cpu, cuda or cuda:N", b.device)
    _rule(isinstance(b.space, (str, Mapping)), "space",
          "must be a space file path, a built-in space name or an inline mapping", b.space)
    _rule(b.engine in ENGINES, "engine", f"must be one of {list(ENGINES)}", b.engine)
    _rule(b.sampler in SAMPLERS, "sampler", f"must be one of {list(SAMPLERS)}", b.sampler)
    _rule(is_int(b.population_size) and b.population_size >= 2, "population_size",
          "must be an integer >= 2", b.population_size)
    _rule(b.trials is None or (is_int(b.trials) and b.trials >= 1), "trials",
          "must be an integer >= 1 or null", b.trials)
    _rule(b.trials is not None or b.time_budget is not None, "trials",
          "and `time_budget` cannot both be null (the search would never stop); set one", b.trials)
    _rule(is_int(b.workers) and b.workers >= 1, "workers", "must be an integer >= 1", b.workers)
    _rule(is_int(b.threads) and b.threads >= 1, "threads", "must be an integer >= 1", b.threads)
    if b.storage is not None:
        from shiftnas.record import check_url

        check_url(b.storage, "storage")  # a ConfigError naming `storage`
    _rule(b.artifacts is None or (isinstance(b.artifacts, str) and b.artifacts != ""),
          "artifacts", "must be a folder, s3://bucket, gs://bucket or null", b.artifacts)
    _rule(b.keep_weights in KEEP_WEIGHTS, "keep_weights", f"must be one of {list(KEEP_WEIGHTS)}",
          b.keep_weights)
    _rule(is_int(b.stop_after_failures) and b.stop_after_failures >= 0, "stop_after_failures",
          "must be an integer >= 0 (0 = never stop for failures)", b.stop_after_failures)
    _rule(b.export is None or isinstance(b.export, str), "export",
          "must be a pick expression like 'max accuracy where latency_ms <= 2', or null", b.export)
    _rule(isinstance(b.onnx, bool), "onnx", "must be true or false", b.onnx)
    for lo in b.constraints:
        for hi in b.constraints:
            if (lo.metric == hi.metric and lo.op in (">=", ">", "==") and hi.op in ("<=", "<", "==")
                    and (lo.value > hi.value or (lo.value == hi.value and not (
                        lo.op in (">=", "==") and hi.op in ("<=", "=="))))):
                _rule(False, "constraints", f"contradict each other ('{lo}' and '{hi}': no "
                      f"architecture can satisfy both); relax one", [str(lo), str(hi)])


def load_budget(path: str | Path, *, trials: int | None = None, workers: int | None = None) -> Budget:
    """Read and check a budget file; `trials` / `workers` override the file (CLI flags)."""
    d = read_yaml(path, "budget file")
    b = budget_from_dict(d, where=f"{path}: budget")
    over = {k: v for k, v in (("trials", trials), ("workers", workers)) if v is not None}
    return dataclasses.replace(b, **over) if over else b
