"""Non-dominated sorting and hypervolume against brute force; fronts of a run."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from shiftnas.errors import ConfigError
from shiftnas.record import open_run
from shiftnas.results.pareto import (
    hypervolume,
    hypervolume_history,
    nondominated_mask,
    nondominated_ranks,
    pareto_front,
    reference_point,
)

from .fixtures import make_run


def _brute_ranks(p: np.ndarray) -> np.ndarray:
    n = len(p)
    ranks = np.full(n, -1)
    left, r = set(range(n)), 0
    while left:
        front = {i for i in left if not any(
            np.all(p[j] <= p[i]) and np.any(p[j] < p[i]) for j in left if j != i)}
        for i in front:
            ranks[i] = r
        left -= front
        r += 1
    return ranks


def _brute_hv(p: np.ndarray, ref: np.ndarray) -> float:
    """Exact: split space on every coordinate; a cell counts when some point dominates its corner."""
    axes = [np.unique(np.concatenate([p[:, d], [ref[d]]])) for d in range(len(ref))]
    axes = [a[a <= ref[d]] for d, a in enumerate(axes)]
    vol = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        lo = np.array([axes[d][i] for d, i in enumerate(cell)])
        hi = np.array([axes[d][i + 1] for d, i in enumerate(cell)])
        if np.any(np.all(p <= lo, axis=1)):
            vol += float(np.prod(hi - lo))
    return vol


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("seed", range(6))
def test_ranks_match_brute_force_with_ties(k, seed):
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 5, size=(40, k)).astype(float)  # few values: many ties and duplicates
    p[5] = p[6]
    assert np.array_equal(nondominated_ranks(p), _brute_ranks(p))
    assert np.array_equal(nondominated_mask(p), _brute_ranks(p) == 0)


def test_identical_points_are_both_nondominated():
    p = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 3.0], [0.5, 5.0]])
    assert nondominated_ranks(p).tolist() == [0, 0, 1, 0]
    assert nondominated_mask(p).tolist() == [True, True, False, True]
    assert nondominated_ranks(np.zeros((0, 2))).tolist() == []
    assert nondominated_mask(np.zeros((0, 2))).tolist() == []


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", range(8))
def test_hypervolume_matches_exact_grid(k, seed):
    rng = np.random.default_rng(100 + seed)
    n = 12 if k == 3 else 25
    p = np.round(rng.random((n, k)) * 4, 1)  # rounded: ties in every coordinate
    p[1] = p[2]
    ref = reference_point(p)
    assert hypervolume(p, ref) == pytest.approx(_brute_hv(p, ref), rel=1e-12, abs=1e-12)
    # Points outside the reference box count for nothing.
    inside = ref - 0.5
    assert hypervolume(p, inside) == pytest.approx(_brute_hv(p, inside), rel=1e-12, abs=1e-12)


def test_hypervolume_monte_carlo_and_errors():
    rng = np.random.default_rng(0)
    p = rng.random((30, 3))
    ref = np.array([1.1, 1.2, 1.3])
    s = rng.random((200_000, 3)) * ref
    mc = np.mean(np.any(np.all(p[None] <= s[:, None], axis=2), axis=1)) * np.prod(ref)
    assert hypervolume(p, ref) == pytest.approx(mc, rel=0.01)
    with pytest.raises(ConfigError, match="2 or 3 objectives"):
        hypervolume(rng.random((3, 4)), np.ones(4))
    assert hypervolume(np.zeros((0, 2)), [1, 1]) == 0.0


def test_reference_point_is_worst_plus_ten_percent():
    p = np.array([[0.0, 10.0], [2.0, 10.0]])
    assert reference_point(p).tolist() == pytest.approx([2.2, 11.0])


def test_front_of_run_skips_pruned_infeasible_and_duplicates(tmp_path):
    trials = [
        dict(number=0, state="complete", metrics={"accuracy": 0.8, "latency_ms": 2.0}),
        dict(number=1, state="complete", metrics={"accuracy": 0.9, "latency_ms": 3.0}),
        dict(number=2, state="pruned", metrics={"accuracy": 0.99, "latency_ms": 0.5}),
        dict(number=3, state="complete", feasible=False,
             metrics={"accuracy": 0.99, "latency_ms": 0.5}),
        dict(number=4, state="complete", metrics={"accuracy": 0.9, "latency_ms": 3.0},
             reused_from=1, same_arch_as=1),
        dict(number=5, state="complete", metrics={"accuracy": 0.85, "latency_ms": 2.0}),
        dict(number=6, state="complete", metrics={"accuracy": 0.85, "latency_ms": 2.0}),  # tie
        dict(number=7, state="failed", metrics={}),
    ]
    run = open_run(make_run(tmp_path, trials))
    front = pareto_front(run)
    assert [t.number for t in front.trials] == [1, 5, 6]  # best accuracy first
    assert 4 not in [t.number for t in front.candidates]
    # Minimisation: (-acc, lat); reference from candidates 0, 1, 5, 6.
    assert front.reference == pytest.approx((0.8 - 0.01, 3.0 + 0.1))
    # Front (-0.9, 3.0), (-0.85, 2.0) against (-0.79, 3.1): 0.11 * 0.1 + 0.06 * 1.0.
    assert front.hypervolume == pytest.approx(0.071)
    hist = hypervolume_history(run)
    assert [n for n, _ in hist] == list(range(8))
    hvs = [h for _, h in hist]
    assert all(a <= b + 1e-15 for a, b in zip(hvs, hvs[1:]))
    assert hvs[-1] == pytest.approx(front.hypervolume)
    user = pareto_front(run, reference=(0.5, 10.0))
    assert user.reference == pytest.approx((0.5, 10.0))
    with pytest.raises(ConfigError, match="not one of the run's objectives"):
        pareto_front(run, ["nope"])
