"""The latency predictor: parts cut from the timed network, the regression, save and load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shiftnas.config import cfg_from_dict
from shiftnas.errors import ConfigError
from shiftnas.evaluators import LatencyCfg
from shiftnas.evaluators.latency import _as_model, _prepare
from shiftnas.evaluators.predictor import (
    FEATURES,
    LatencyPredictor,
    NetworkPredictor,
    PartTimes,
    _pieces,
    features,
    part_keys,
)
from shiftnas.kernels import ShiftConv1x1
from shiftnas.searchspace import decode_net

FAST = dict(warmup=1, repeats=3, lock=None)
A = decode_net("cifar-conv3x3-w16-c1-n10-i8|16:csc-fixed-8c-e1-s1*2|32:csc-fixed-8c-e1-s2-dconv")
B = decode_net("cifar-conv3x3-w16-c1-n10-i8|16:csc-fixed-8c-e1-s1*2|32:basic-s2-dconv")
C = decode_net("cifar-conv3x3-w16-c1-n10-i8|16:asl_preact-active-8c-grid-e2-s1"
               "|24:asl_preact-sparse-4c-grid-e1-s2-davgpool")


def _synthetic(n: int, seed: int = 0) -> list[dict[str, float]]:
    g = np.random.default_rng(seed)
    return [{"const": 1.0, "parts_ms": float(g.uniform(0.2, 5)), "parts": float(g.integers(4, 12)),
             "mmacs": float(g.uniform(1, 30)), "traffic_mb": float(g.uniform(0.5, 5))}
            for _ in range(n)]


TRUE = {"const": 0.05, "parts_ms": 0.8, "parts": -0.012, "mmacs": 0.003, "traffic_mb": 0.02}


def _latency(row, coef=TRUE) -> float:
    return sum(c * row[k] for k, c in coef.items())


def test_the_regression_recovers_known_coefficients():
    rows = _synthetic(40)
    model = LatencyPredictor.fit(rows, [_latency(r) for r in rows], prior_weight=0.0)
    for k, v in TRUE.items():  # `parts` may go negative: a call's cost paid once, not per part
        assert model.coef[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    assert model.n == 40 and model.fit_error["max"] < 1e-6
    new = _synthetic(5, seed=1)
    assert [model.predict(r) for r in new] == pytest.approx([_latency(r) for r in new])


def test_terms_that_add_time_stay_non_negative_and_the_prior_holds_without_data():
    assert LatencyPredictor.fit([], [], prior_weight=1.0).coef == pytest.approx(
        {"const": 0, "parts_ms": 1, "parts": 0, "mmacs": 0, "traffic_mb": 0})
    rows = _synthetic(30, seed=2)
    # Latency that falls with MACs: the best fit would give mmacs a negative coefficient.
    y = [_latency(r, {**TRUE, "mmacs": -0.01}) + 0.5 for r in rows]
    model = LatencyPredictor.fit(rows, y, prior_weight=0.0)
    assert all(model.coef[k] >= 0 for k, (_, signed) in FEATURES.items() if not signed)
    # A strong prior keeps a fit on two networks close to "the sum of the parts".
    two = LatencyPredictor.fit(rows[:2], [3 * r["parts_ms"] for r in rows[:2]], prior_weight=1e6)
    assert two.coef["parts_ms"] == pytest.approx(1.0, abs=1e-3)


def test_the_fit_minimises_relative_error():
    # Two networks, one feature: ms = c * parts_ms with c = 1 for the first and 2 for the
    # second. Relative errors (c - 1) and (c - 2) / 2 weigh alike: c = 1.2 minimises their
    # squares (d/dc: (c - 1) + (c - 2) / 4 = 0); absolute least squares would give 1.8.
    rows = [{"parts_ms": 1.0}, {"parts_ms": 2.0}]
    model = LatencyPredictor.fit(rows, [1.0, 4.0], names=["parts_ms"], prior_weight=0.0)
    assert model.coef["parts_ms"] == pytest.approx(1.2)
    assert model.predict({"parts_ms": 1.0}) == pytest.approx(1.2)
    assert model.predict({"parts_ms": 10.0, "const": 1}) == pytest.approx(12.0)
    with pytest.raises(ConfigError, match="unknown predictor feature 'flops'"):
        LatencyPredictor.fit(rows, [1.0, 4.0], names=["flops"])
    with pytest.raises(ConfigError, match="one positive measurement"):
        LatencyPredictor.fit(rows, [1.0, 0.0], names=["parts_ms"])


def test_a_prediction_is_never_below_a_tenth_of_the_parts():
    model = LatencyPredictor({"parts_ms": 1.0, "parts": -1.0})
    assert model.predict({"parts_ms": 2.0, "parts": 10}) == pytest.approx(0.2)


def test_parts_are_cut_from_the_network_that_is_timed():
    """The pieces, applied in turn, compute the prepared network: the same modules, fused."""
    cfg = LatencyCfg(**FAST)
    prepared, _ = _prepare(_as_model(A)[0], cfg, torch.device("cpu"))
    pieces = _pieces(prepared)
    assert len(pieces) == len(part_keys(A)) == 5  # stem, three blocks, head
    assert isinstance(pieces[1].conv2, ShiftConv1x1)  # fused as in the network
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        y = x
        for p in pieces:
            y = p(y)
        torch.testing.assert_close(y, prepared(x))


def test_part_times_are_cached_and_shared(tmp_path):
    cfg = LatencyCfg(**FAST)
    path = tmp_path / "parts.json"
    times = PartTimes(cfg, path=path)
    ta = times.times(A)
    assert len(ta) == 5 and all(t > 0 for t in ta)
    assert times.measured == 4  # the two equal s1 blocks at the same resolution: timed once
    assert ta[1] == ta[2]
    times.times(B)
    assert times.measured == 5  # only B's last block is new (its head has A's key)
    other = PartTimes(cfg, path=path)  # another worker, same file
    assert other.times(A) == ta and other.measured == 0
    stored = json.loads(path.read_text())
    assert all(k.startswith("part:") for k in stored) and len(stored) == 5
    # Another backend or batch size is another part.
    assert PartTimes(LatencyCfg(**FAST, batch_size=2), path=path).key("x", (1, 8, 8)) != \
        times.key("x", (1, 8, 8))
    # The same entries give the fastest runs under `statistic: min`, without timing again.
    fastest = PartTimes(LatencyCfg(**FAST, statistic="min"), path=path)
    tmin = fastest.times(A)
    assert fastest.measured == 0 and all(0 < a <= b for a, b in zip(tmin, ta))
    assert tmin == [stored[k]["min_ms"] for k in (times.key(*ks) for ks in part_keys(A))]


def test_features_of_a_network():
    cfg = LatencyCfg(**FAST)
    f = features(A, [0.1, 0.2, 0.2, 0.3, 0.05], cfg)
    assert set(FEATURES) <= set(f)
    assert f["parts_ms"] == f["sum_ms"] == pytest.approx(0.85) and f["parts"] == 5
    assert f["const"] == 1 and f["call_ms"] == 0
    # Five calls, each with a fixed cost of 0.01 ms the network pays once: 0.85 - 4 * 0.01.
    assert features(A, [0.1, 0.2, 0.2, 0.3, 0.05], cfg, call_ms=0.01)["parts_ms"] == \
        pytest.approx(0.81)
    f2 = features(A, [0.1] * 5, LatencyCfg(**FAST, batch_size=2))
    assert f2["mmacs"] == pytest.approx(2 * f["mmacs"])


def test_save_and_load_round_trip(tmp_path):
    cfg = LatencyCfg(**FAST)
    pred = NetworkPredictor(cfg)
    pred.calibrate([A, B, C], [1.0, 1.2, 2.5])
    path = pred.save(tmp_path / "pred.json")
    d = json.loads(path.read_text())
    assert d["format"] == "shiftnas-latency-predictor/1" and d["n"] == 3 and d["parts"]
    again = NetworkPredictor.load(path, cfg)
    assert again.model.coef == pred.model.coef
    assert again.predict(C) == pytest.approx(pred.predict(C))
    assert again.parts.measured == 0  # the saved part times are used, nothing timed again
    with pytest.raises(ConfigError, match="fitted with batch_size = 1"):
        NetworkPredictor.load(path, LatencyCfg(**FAST, batch_size=4))
    (tmp_path / "bad.json").write_text(json.dumps({"coef": {"parts_ms": 1}}))
    with pytest.raises(ConfigError, match="not a saved latency predictor"):
        NetworkPredictor.load(tmp_path / "bad.json", cfg)
    (tmp_path / "bad.json").write_text(json.dumps({**d, "coef": {"flops": 1}}))
    with pytest.raises(ConfigError, match="coef: must map feature names"):
        NetworkPredictor.load(tmp_path / "bad.json", cfg)


def test_onnxruntime_parts_and_the_cost_of_a_call(tmp_path):
    pytest.importorskip("onnxruntime")
    cfg = LatencyCfg(backend="onnxruntime", **FAST)
    parts = PartTimes(cfg, path=tmp_path / "parts.json")
    times = parts.times(C)  # learned shifts export through the portable ops
    assert len(times) == 4 and all(t > 0 for t in times)
    call = parts.call_ms()  # a session run that adds 1 to one number
    assert 0 < call < max(times) and PartTimes(cfg, path=tmp_path / "parts.json").call_ms() == call
    f = parts.features(C)
    assert f["parts_ms"] == pytest.approx(sum(times) - 3 * call) and f["call_ms"] == call
    assert PartTimes(LatencyCfg(**FAST)).call_ms() == 0  # eager: parts are called as in the net


@pytest.mark.parametrize("change, match", [
    ({"mode": "guess"}, r"latency\.mode: must be one of \['measured', 'predicted'\], got 'guess'"),
    ({"calibrate": 1}, r"latency\.calibrate: must be an integer >= 2"),
    ({"calibrate": "8"}, r"latency\.calibrate: must be an integer >= 2 .*got '8'"),
])
def test_latency_mode_validation(change, match):
    with pytest.raises(ConfigError, match=match):
        cfg_from_dict(LatencyCfg, change, "budget.latency")
    assert cfg_from_dict(LatencyCfg, {"mode": "predicted", "calibrate": 4}, "latency").calibrate == 4
