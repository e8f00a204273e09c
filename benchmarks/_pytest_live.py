"""A pytest plugin that prints each failing test's id the moment it fails, xdist workers included.

`python -m pytest -p benchmarks._pytest_live ...` (from the repository root):
`FAILED <nodeid>` (or `ERROR <nodeid> (setup)`) on the real stderr as soon as the
report arrives, so a run cut short by its time limit still names what failed.
`benchmarks/gpu_check.sh` uses it.
"""

from __future__ import annotations

import sys

_worker = False  # an xdist worker: the controller prints its reports, once


def pytest_configure(config) -> None:
    global _worker
    _worker = hasattr(config, "workerinput")


def pytest_runtest_logreport(report) -> None:
    if _worker or not report.failed:
        return
    kind, when = ("FAILED", "") if report.when == "call" else ("ERROR", f" ({report.when})")
    print(f"{kind} {report.nodeid}{when}", file=sys.__stderr__, flush=True)
