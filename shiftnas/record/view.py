"""The run directory: this machine's view of a search whose record lives in its storage.

    run.json        where the record is: storage URL (password masked), study, artifact store
    log.txt         what this machine's launches did, with times
    trials.jsonl    one line per trial as it finishes (for people who grep); a launch reads
                    it back only to refuse a storage that lost trials this view saw
                    finish; `shiftnas report` rewrites it from the storage
    trials.csv      the same as a table (written by `shiftnas report`)
    report.md, *.png, pareto.html, export/     written by `shiftnas report` / the search's end
    study.db | journal.log, artifacts/         the default storage and artifact store, when
                                               the budget names none

Everything here but the default storage and artifacts can be deleted and
rebuilt with `shiftnas report RUN_DIR`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shiftnas.errors import ConfigError
from shiftnas.files import atomic_write, file_lock, is_no_space, no_space
from shiftnas.metrics import METRICS

from .schema import FINISHED, TrialRecord, now_iso
from .storage import mask

POINTER = "run.json"  # in a run directory: where its storage, study and artifacts are


class RunDir:
    """Writes the view files of one run directory (several processes may share it)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def exists(self) -> bool:
        return (self.path / POINTER).is_file()

    def pointer(self) -> dict[str, Any] | None:
        """`run.json` when there is one (see `read_pointer`), else None."""
        return self.read_pointer() if self.exists() else None

    def read_pointer(self) -> dict[str, Any]:
        """`run.json`: storage (password masked), study, artifacts; a `ConfigError` if missing."""
        path = self.path
        expected = "a run directory written by `shiftnas search` (with run.json)"
        if not path.is_dir():
            raise ConfigError(f"run directory {str(path)!r} does not exist; expected {expected}.")
        try:
            d = json.loads((path / POINTER).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path} has no {POINTER}; expected {expected}, or give "
                              f"--storage URL --study NAME.") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path / POINTER} is unreadable ({exc}).") from None
        if not isinstance(d, dict) or not isinstance(d.get("storage"), str) or not d.get("study"):
            raise ConfigError(f"{path / POINTER}: expected an object with `storage` and `study`.")
        return d

    def write_pointer(self, storage: str, study: str, artifacts: str | None) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        d = {"storage": mask(storage), "study": study, "artifacts": artifacts,
             "updated": now_iso()}
        atomic_write(self.path / POINTER, json.dumps(d, indent=2) + "\n")

    def log(self, message: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path / "log.txt", "a") as fh:
                fh.write(f"{now_iso()} [{os.getpid()}] {message}\n")
        except OSError as exc:
            if is_no_space(exc):
                raise no_space(self.path / "log.txt", exc) from None
            raise

    # -- trials.jsonl ------------------------------------------------------------

    def append_trial(self, record: TrialRecord) -> None:
        """Append one finished trial as a whole line, under a lock, flushed to disk."""
        data = (json.dumps(record.to_dict(), sort_keys=True) + "\n").encode()
        path = self.path / "trials.jsonl"
        with file_lock(self.path / ".trials.lock"):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size and _last_byte(path) != b"\n":
                    data = b"\n" + data  # a line cut short by a kill must not swallow this one
                os.write(fd, data)
                os.fsync(fd)
            except OSError as exc:
                if is_no_space(exc):
                    raise no_space(path, exc, len(data)) from None
                raise
            finally:
                os.close(fd)

    def recorded_numbers(self) -> set[int]:
        """Trial numbers that the view has seen finish (to notice a storage that lost them)."""
        return {int(d["number"]) for _, d in read_jsonl(self.path / "trials.jsonl")
                if isinstance(d, dict) and isinstance(d.get("number"), int)
                and d.get("state") in FINISHED}

    def write_exports(self, records: Iterable[TrialRecord]) -> list[Path]:
        """Rewrite `trials.jsonl` and `trials.csv` from the storage's records."""
        records = sorted(records, key=lambda r: r.number)
        jsonl = "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in records)
        names = sorted({k for r in records for k in r.metrics},
                       key=lambda k: (k not in METRICS, list(METRICS).index(k) if k in METRICS
                                      else 0, k))
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["number", "state", "feasible", "archid", *names, "duration_s", "reused_from",
                    "reason", "arch"])
        for r in records:
            w.writerow([r.number, r.state, r.feasible, r.archid or "",
                        *[("" if r.metric(k) is None else r.metric(k)) for k in names],
                        "" if r.duration_s is None else round(r.duration_s, 3),
                        "" if r.reused_from is None else r.reused_from, r.reason or "",
                        r.arch or ""])
        return [atomic_write(self.path / "trials.jsonl", jsonl),
                atomic_write(self.path / "trials.csv", buf.getvalue())]


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """`(line number, object)` of every whole JSON line of an append-only log.

    A line cut short by a crash or a kill is skipped.
    """
    if not path.exists():
        return []
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append((lineno, json.loads(line)))
            except json.JSONDecodeError:
                continue
    return out
