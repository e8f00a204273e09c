"""The search-vs-random benchmark's hypervolume curves, from rows as its CSV gives them back."""

from __future__ import annotations

import numpy as np

from benchmarks.search_vs_random import curves


def _rows(seed: int, hvs: list[float], seconds: list[float]) -> list[dict]:
    # As csv.DictReader returns them: every field a string, in file order.
    return [dict(variant="tpe", seed=str(seed), trials=str(k), elapsed_s=str(s), hypervolume=str(h))
            for k, (h, s) in enumerate(zip(hvs, seconds), 1)]


def test_curves_step_through_trials_in_numeric_order():
    # Twelve trials: "10" sorts before "2" as text, so a text sort puts trial 10's 0.9 at
    # the second step. Read by hand: the best so far after 2, 9, 10 and 12 trials.
    hvs = [0.1, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.4, 0.9, 0.5, 0.5]
    seconds = [10.0 * k for k in range(1, 13)]
    rows = _rows(0, hvs, seconds)[::-1]  # any order in the file
    by_trials = curves(rows, "trials", np.array([2.0, 9.0, 10.0, 12.0]))["tpe"]
    assert by_trials.tolist() == [[0.2, 0.4, 0.9, 0.9]]
    by_time = curves(rows, "elapsed_s", np.array([5.0, 25.0, 95.0, 100.0]))["tpe"]
    assert by_time.tolist() == [[0.0, 0.2, 0.4, 0.9]]  # nothing before the first trial ends
