"""The search's record: one Optuna study, in a storage that may span machines, holds everything.

This package is the only code that writes the study; the search (`shiftnas.nas`) and
the readers (`shiftnas.results`) both stand on it. Its modules, bottom to top:

- `schema`: what is stored: `TrialRecord` (one trial, as measured or as read back; its
  fields marked as attributes are the one list of keys), `RunMeta`, the study's keys;
- `storage`: storage URLs and their rules, the Optuna storage behind one, artifact stores;
- `store`: `SearchStore`, the live study and its verbs (the only writer);
- `view`: `RunDir`, the run directory (a view of the record, plus local logs);
- `run`: `Run`, a snapshot for reports and exports, and `open_run`.

The proxy-trained weights go through Optuna's artifact store, so a search spans
machines that share nothing but the storage URL and the artifact store.
"""

from __future__ import annotations

from .run import Run, candidates, locate, open_run, read_run
from .schema import (
    FINISHED,
    STATES,
    TRIAL_ATTRS,
    RunMeta,
    TrialRecord,
    now_iso,
    stored_violations,
    worker_id,
)
from .storage import absolute_url, check_url, make_storage, mask, sqlite_path
from .store import NATIVE_CONSTRAINTS, SearchStore, claim_new, new_session_id
from .view import POINTER, RunDir

__all__ = [
    "TrialRecord", "RunMeta", "STATES", "FINISHED", "TRIAL_ATTRS", "SearchStore", "Run",
    "open_run", "read_run", "candidates", "locate", "RunDir", "POINTER", "check_url",
    "absolute_url", "make_storage", "mask", "sqlite_path", "now_iso", "worker_id",
    "new_session_id", "claim_new", "stored_violations", "NATIVE_CONSTRAINTS",
]
