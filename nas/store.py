"""The run directory, written the same way by every engine and every worker.

    run.json        what the run optimises (objectives, constraints, budget, storage)
    budget.yaml     the budget file as used, every default filled in
    study.db        the Optuna storage (Optuna engine, default SQLite)
    trials.jsonl    one line per finished trial (the last line of a trial number wins)
    rungs.jsonl     validation accuracy of every trial at every pruning rung
    archs/          one architecture file per trial
    weights/        the proxy-trained weights of complete trials
    log.txt         what happened, with times

Appends are whole lines written under an exclusive lock and flushed to disk,
so a crash or a kill loses at most the trial that was running, and several
worker processes can share one directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from shiftnas.errors import ConfigError
from shiftnas.results.store import read_jsonl
from shiftnas.searchspace import NetCfg, save_arch

from .budget import RESUMABLE, Budget


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunStore:
    """Reads and appends the files of one run directory."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)

    # -- creation and resume -------------------------------------------------

    def init(self, budget: Budget, storage: str, device: str) -> bool:
        """Create the directory for `budget`, or check that it continues the same search.

        Returns True when an existing run is resumed.
        """
        run_json = self.dir / "run.json"
        if run_json.exists():
            meta = self.meta()
            if meta.get("settings") != budget.settings_hash():
                old = yaml.safe_load((self.dir / "budget.yaml").read_text()) or {}
                changed = budget.changed_fields(old)
                raise ConfigError(
                    f"run directory {self.dir} holds a search with other settings (changed: "
                    f"{', '.join(changed) or 'unknown'}); only {', '.join(RESUMABLE)} may change "
                    f"on resume. Give the budget another `name` to start a new run."
                )
            if meta.get("storage") != storage:  # `storage` may change on resume
                self.update_meta(storage=storage)
            return True
        for sub in ("archs", "weights"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "budget.yaml").write_text(yaml.safe_dump(budget.to_dict(), sort_keys=False))
        meta = {
            "name": budget.name, "engine": budget.engine, "created": now_iso(),
            "objectives": [{"name": o.name, "direction": o.direction} for o in budget.objectives],
            "constraints": [{"metric": c.metric, "op": c.op, "value": c.value}
                            for c in budget.constraints],
            "trials_budget": budget.trials, "time_budget_s": budget.time_budget,
            "storage": storage, "study_name": budget.name, "device": device,
            "settings": budget.settings_hash(), "elapsed_s": 0.0,
        }
        _atomic_write(run_json, json.dumps(meta, indent=2))
        return False

    def meta(self) -> dict[str, Any]:
        try:
            return json.loads((self.dir / "run.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{self.dir}/run.json is missing or unreadable ({exc}); is this a "
                              f"shiftnas run directory?") from None

    def update_meta(self, **kw: Any) -> None:
        with self._lock():
            meta = self.meta()
            meta.update(kw)
            _atomic_write(self.dir / "run.json", json.dumps(meta, indent=2))

    # -- appends -------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _append(self, name: str, record: dict[str, Any]) -> None:
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        with self._lock():
            fd = os.open(self.dir / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                # A line cut short by an earlier kill must not swallow this one.
                if os.fstat(fd).st_size and _last_byte(self.dir / name) != b"\n":
                    data = b"\n" + data
                os.write(fd, data)  # one write call: a record is never interleaved
                os.fsync(fd)
            finally:
                os.close(fd)

    def record_trial(self, record: dict[str, Any]) -> None:
        self._append("trials.jsonl", record)

    def record_rung(self, number: int, epoch: int, accuracy: float, costs: dict[str, float]) -> None:
        self._append("rungs.jsonl", {"number": number, "epoch": epoch, "accuracy": accuracy,
                                     "costs": costs})

    def save_arch(self, number: int, net: NetCfg, metrics: dict[str, Any] | None = None) -> Path:
        return save_arch(net, self.dir / "archs" / f"trial_{number:05d}.yaml", metrics)

    def weights_path(self, number: int) -> Path:
        return self.dir / "weights" / f"trial_{number:05d}.pt"

    def log(self, message: str) -> None:
        with open(self.dir / "log.txt", "a") as fh:
            fh.write(f"{now_iso()} [{os.getpid()}] {message}\n")

    # -- reads ---------------------------------------------------------------

    def _lines(self, name: str) -> list[dict[str, Any]]:
        return [d for _, d in read_jsonl(self.dir / name)]

    def trials(self) -> dict[int, dict[str, Any]]:
        """Finished trials by number (the last record of a number wins)."""
        return {r["number"]: r for r in self._lines("trials.jsonl")}

    def finished_by_archid(self, archid: str) -> dict[str, Any] | None:
        """The first fully evaluated trial of this architecture, if any (for duplicates)."""
        for r in sorted(self.trials().values(), key=lambda r: r["number"]):
            if r["archid"] == archid and r["state"] in ("complete", "infeasible") \
                    and r.get("reused_from") is None:
                return r
        return None

    def rung(self, epoch: int) -> dict[int, dict[str, Any]]:
        """Every trial's record at the rung `epoch` (one per trial number)."""
        return {r["number"]: r for r in self._lines("rungs.jsonl") if r["epoch"] == epoch}


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
