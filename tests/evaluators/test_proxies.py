"""Zero-cost proxies: finite, deterministic, sensitive to the architecture and to shift offsets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from shiftnas.errors import ConfigError
from shiftnas.evaluators import PROXIES, compute_proxies
from shiftnas.evaluators.proxies import naswot, synflow
from shiftnas.kernels import ActiveShift
from shiftnas.kernels.modules import shift_parameters
from shiftnas.searchspace import build_model


def test_finite_deterministic_and_architecture_dependent(digits, small_net):
    a = compute_proxies(small_net("fixed"), digits, batch_size=32, seed=0)
    assert set(a) == set(PROXIES) and all(math.isfinite(v) for v in a.values())
    assert compute_proxies(small_net("fixed"), digits, batch_size=32, seed=0) == a
    b = compute_proxies(small_net("fixed", width=32), digits, batch_size=32, seed=0)
    c = compute_proxies(small_net("active", "bottleneck3"), digits, batch_size=32, seed=0)
    for name in PROXIES:
        assert a[name] != b[name] and a[name] != c[name], name
    # Wider network: more paths, more synaptic flow.
    assert b["synflow"] > a["synflow"]


def test_every_family_and_kind_scores(digits, small_net):
    for family in ("csc", "asl_preact", "bottleneck3", "basic"):
        for kind in ("sparse", "dwconv3x3"):
            s = compute_proxies(small_net(kind, family), digits, batch_size=8)
            assert all(math.isfinite(v) for v in s.values()), (family, kind, s)


def test_proxies_see_the_shift_offsets(digits, small_net):
    torch.manual_seed(0)
    model = build_model(small_net("active").replace(in_chans=1, input_size=8))
    before = compute_proxies(model, digits, batch_size=32)
    with torch.no_grad():
        for t in shift_parameters(model):
            t.add_(0.37)  # fractional offsets: a different (bilinear) network
    after = compute_proxies(model, digits, batch_size=32)
    for name in ("synflow", "grad_norm", "snip", "naswot"):
        assert before[name] != after[name], name


def test_synflow_counts_theta_terms():
    # conv -> active shift -> conv: with theta away from integers, dR/dtheta is
    # non-zero, so synflow must exceed the weights-only sum.
    torch.manual_seed(0)
    shift = ActiveShift(4, init="uniform")
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), shift, nn.Conv2d(4, 2, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    score = synflow(model, (1, 1, 6, 6))
    m = model.double()
    with torch.no_grad():
        for p in m.parameters():
            if p is not shift.theta:
                p.abs_()
    r = m(torch.ones(1, 1, 6, 6, dtype=torch.float64)).sum()
    r.backward()
    with torch.no_grad():
        weights_only = float(sum((p * p.grad).abs().sum() for p in m.parameters()
                                 if p is not shift.theta))
        theta_term = float((shift.theta * shift.theta.grad).abs().sum())
    assert theta_term > 0
    assert score == pytest.approx(math.log(weights_only + theta_term), rel=1e-9)


def test_naswot_matches_a_hand_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU())
    x = torch.randn(4, 5)
    with torch.no_grad():
        h1 = model[1](model[0](x))
        h2 = model[3](model[2](h1))
    k = torch.zeros(4, 4, dtype=torch.float64)
    for h in (h1, h2):
        c = (h > 0).double()
        k += c @ c.T + (1 - c) @ (1 - c).T
    assert naswot(model, x) == pytest.approx(torch.linalg.slogdet(k)[1].item())


def test_naswot_is_finite_for_identical_inputs():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    assert math.isfinite(naswot(model, torch.ones(4, 3)))
    with pytest.raises(ConfigError, match="nn.ReLU"):
        naswot(nn.Linear(3, 4), torch.ones(4, 3))


def test_argument_errors(digits, small_net):
    with pytest.raises(ConfigError, match=r"unknown proxy 'zen'; allowed"):
        compute_proxies(small_net(), digits, names=("zen",))
    with pytest.raises(ConfigError, match="batch_size"):
        compute_proxies(small_net(), digits, batch_size=1)
