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


def _set(layer: nn.Module, weight: list) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=layer.weight.dtype).view_as(layer.weight))
    return layer


def test_synflow_matches_a_hand_computation():
    # Ones (1, 1, 2, 2) -> 1x1 conv to 2 channels (|w| = 0.5, 2) -> Linear(8 -> 1) with |c| per
    # channel (1, 2, 3, 4) and (0.5, 0.5, 0.5, 0.5): R = 0.5*10 + 2*2 = 9. Each weight's term
    # |p dR/dp| sums to R per layer, so synflow = log(2 R) = log(18).
    model = nn.Sequential(_set(nn.Conv2d(1, 2, 1, bias=False), [0.5, -2.0]), nn.Flatten(),
                          _set(nn.Linear(8, 1, bias=False), [1, -2, 3, 4, 0.5, 0.5, -0.5, 0.5]))
    assert synflow(model, (1, 1, 2, 2)) == pytest.approx(math.log(18.0), rel=1e-12)


def test_synflow_counts_the_shift_offsets():
    # Ones (1, 1, 1, 3) -> 1x1 conv (w = 2): h = [2, 2, 2] -> active shift theta = (0, 0.5):
    # y_j = (h_j + h_{j+1}) / 2 = [2, 2, 1] (zero beyond the edge) -> Linear([1, 2, 3]): R = 9.
    # Terms: Linear sum c_j y_j = 9; conv w dR/dw = 9 (R = 4.5 w); beta dR/dbeta =
    # 0.5 * |sum_j c_j (h_{j+1} - h_j)| = 0.5 * |3 * (0 - 2)| = 3; alpha's term is 0 * ... = 0.
    shift = ActiveShift(1, init="uniform", backend="reference")
    with torch.no_grad():
        shift.theta.copy_(torch.tensor([[0.0, 0.5]]))
    model = nn.Sequential(_set(nn.Conv2d(1, 1, 1, bias=False), [2.0]), shift, nn.Flatten(),
                          _set(nn.Linear(3, 1, bias=False), [1.0, 2.0, 3.0]))
    assert synflow(model, (1, 1, 1, 3)) == pytest.approx(math.log(21.0), rel=1e-12)


def test_naswot_matches_a_hand_computation():
    # Four inputs, three ReLU units: pre-activations x W^T + b with W = [[1, 0], [0, 1], [1, 1]],
    # b = [0, 0, -1.5] give the codes 111, 100, 010, 000. The kernel counts the units on which
    # two codes agree:
    k = torch.tensor([[3, 1, 1, 0],
                      [1, 3, 1, 2],
                      [1, 1, 3, 2],
                      [0, 2, 2, 3]], dtype=torch.float64)
    lin = _set(nn.Linear(2, 3), [[1, 0], [0, 1], [1, 1]])
    with torch.no_grad():
        lin.bias.copy_(torch.tensor([0.0, 0.0, -1.5]))
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert naswot(nn.Sequential(lin, nn.ReLU()), x) == pytest.approx(math.log(torch.det(k).item()))


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
