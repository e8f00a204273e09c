"""The Optuna engine: worker processes run the trials of one study in the search's storage.

`run_optuna(launch, store)` starts `workers - 1` processes beside this one. Each
runs `study.optimize` over the trial loop (`nas.loop`) until the trial or time budget
of the *whole search* (every launcher on every machine, as the storage counts it) is
spent, or `stop_after_failures` trials in a row have failed: then every worker stops
and the launch ends with the common reason. This module holds the processes and the
signals: worker processes follow their parent; they stop when it is interrupted,
terminated or killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shiftnas.errors import ShiftNASError
from shiftnas.evaluators.datasets import DataBundle
from shiftnas.record import RunDir, SearchStore, new_session_id

from .budget import Budget
from .loop import TrialFailed, TrialLoop
from .progress import Progress
from .sampling import make_sampler
from .trial import TrialEvaluator


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the running trial is failed (and retried on resume)."""


class SearchFailed(ShiftNASError):
    """Too many trials in a row failed: the search stopped (exit code 1)."""

    exit_code = 1


@dataclass(frozen=True)
class Launch:
    """Everything a worker needs to join the search (picklable for spawned processes)."""

    budget: Budget
    url: str  # the storage (full URL, password included: never printed)
    study: str
    artifacts: str | None
    run_dir: Path
    device: str
    seed_session: str = field(default_factory=new_session_id)


# The stop signals this process received. Signal handling is process-wide by nature: once
# Ctrl-C or SIGTERM has arrived, whatever exception unwinds the stack (a KeyboardInterrupt
# that landed inside Optuna's own bookkeeping can surface as another error) is the stop.
STOP_SIGNALS: list[int] = []


def on_sigterm(signum, _frame) -> None:
    STOP_SIGNALS.append(signum)
    raise Terminated()


def on_sigint(signum, frame) -> None:
    STOP_SIGNALS.append(signum)
    signal.default_int_handler(signum, frame)


def run_worker(launch: Launch, worker: int = 0, *, data: DataBundle | None = None,
               quiet: bool = False, store: SearchStore | None = None) -> str | None:
    """Run trials until the search's budget is spent; return a failure-streak reason, if any.

    `store`: the launch's own, already open (worker 0); other workers open theirs.
    """
    b = launch.budget
    view = RunDir(launch.run_dir)
    if store is None:
        store = SearchStore.open(launch.url, launch.study, sampler=make_sampler(b),
                                 artifacts=launch.artifacts)
    evaluator = TrialEvaluator(b, store, launch.device, log=view.log, data=data,
                               run_dir=launch.run_dir)
    loop = TrialLoop(b, store, view, evaluator, evaluator.space(),
                     None if quiet else Progress(b, store), f"{launch.seed_session}-{worker}")
    loop.touch()
    view.log(f"worker {worker} joined study {launch.study}")
    if loop.keep_going():
        store.optimize(loop.objective, loop.after, catch=(TrialFailed,))
    loop.touch()
    return loop.stopped


def _follow_parent() -> None:
    """Die with the parent: SIGTERM on its death (Linux) or when it is stopped, handled like
    Ctrl-C. Ctrl-C itself goes to the parent alone, which then stops the workers."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_entry(launch: Launch, worker: int, parent: int) -> None:
    _follow_parent()
    if os.getppid() != parent:  # the parent died before we could ask to follow it
        return
    torch.set_num_threads(launch.budget.threads)
    try:
        why = run_worker(launch, worker, quiet=True)
    except BaseException:
        if STOP_SIGNALS:
            sys.exit(143)  # the parent says "interrupted"; a worker adds no traceback
        raise
    except ShiftNASError as exc:
        print(f"shiftnas search (worker {worker}): error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(3 if why else 0)


def run_optuna(launch: Launch, store: SearchStore, data: DataBundle | None = None) -> None:
    """Run the search with `workers` processes on one storage (this one, on `store`, included)."""
    b = launch.budget
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_entry, args=(launch, k, os.getpid()))
             for k in range(1, b.workers)]
    for p in procs:
        p.start()
    threads = torch.get_num_threads()
    torch.set_num_threads(b.threads)
    why = None
    try:
        why = run_worker(launch, 0, data=data, store=store)
    except BaseException:
        for p in procs:  # interrupted: stop the workers too, and wait for them
            if p.is_alive():
                with contextlib.suppress(OSError):
                    os.kill(p.pid, signal.SIGTERM)
        raise
    finally:
        torch.set_num_threads(threads)
        for p in procs:
            p.join()
    if why is None and any(p.exitcode == 3 for p in procs):
        why = store.failure_streak(b.stop_after_failures) or "see log.txt"
    if why is not None:
        raise SearchFailed(
            f"stopped after {b.stop_after_failures} failed trials in a row: {why}. Finished "
            f"trials are kept; fix the cause and rerun to resume (failed trials are retried "
            f"once), or raise `stop_after_failures`.")
