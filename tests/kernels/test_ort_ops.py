"""The ONNX Runtime custom ops of the shift against float64 loops written from docs/spec.md."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from shiftnas.kernels import ort_ops  # noqa: E402

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                    reason="needs a C++ compiler")


def _spec_shift(x: np.ndarray, theta: np.ndarray, stride: int) -> np.ndarray:
    """Spec sections 1-2 in float64: bilinear taps at i*s + dy, j*s + dx, zero outside (a zero
    border wider than any offset here stands for "outside")."""
    n, c, h, w = x.shape
    ho, wo, p = -(-h // stride), -(-w // stride), 5
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    y = np.zeros((n, c, ho, wo))
    for ch in range(c):
        dy, dx = float(theta[ch, 0]), float(theta[ch, 1])
        a, b = int(np.floor(dy)), int(np.floor(dx))
        u, v = dy - a, dx - b
        r = (np.arange(ho) * stride + a + p)[:, None]
        q = (np.arange(wo) * stride + b + p)[None, :]
        xc = xp[:, ch]
        y[:, ch] = ((1 - u) * (1 - v) * xc[:, r, q] + (1 - u) * v * xc[:, r, q + 1]
                    + u * (1 - v) * xc[:, r + 1, q] + u * v * xc[:, r + 1, q + 1])
    return y


def _session(nodes, inputs, inits):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("shiftnas", 1)])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    assert ort_ops.register(so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _theta(rng, c: int, bilinear: bool) -> np.ndarray:
    if not bilinear:
        return rng.integers(-2, 3, (c, 2)).astype(np.float32)
    t = rng.uniform(-2.5, 2.5, (c, 2))
    t[:3] = [[0.5, -1.5], [2.0, -2.0], [1.25, 0.0]]  # halves, integers, one axis integral
    return t.astype(np.float32)


@needs_compiler
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bilinear", [0, 1])
@pytest.mark.parametrize("shape", [(2, 11, 7, 9), (1, 5, 3, 26)])
def test_shift_op_matches_spec(shape, bilinear, stride):
    rng = np.random.default_rng(sum(shape) + 10 * bilinear + stride)
    x = rng.standard_normal(shape).astype(np.float32)
    theta = _theta(rng, shape[1], bool(bilinear))
    s = _session([helper.make_node("Shift", ["x", "t"], ["y"], domain="shiftnas", stride=stride,
                                   bilinear=bilinear)], ["x"], {"t": theta})
    (y,) = s.run(None, {"x": x})
    np.testing.assert_allclose(y, _spec_shift(x.astype(np.float64), theta, stride), atol=1e-5)


@needs_compiler
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bilinear", [0, 1])
@pytest.mark.parametrize(("relu", "after"), [(0, 1), (1, 1), (1, 0)])
@pytest.mark.parametrize("shape", [(2, 11, 7, 9, 5), (1, 40, 16, 16, 33)])
def test_fused_shift_conv1x1_matches_spec(shape, bilinear, stride, relu, after):
    n, c, h, w, co = shape
    rng = np.random.default_rng(c + 3 * bilinear + stride + relu)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    theta = _theta(rng, c, bool(bilinear))
    wt = rng.standard_normal((co, c, 1, 1)).astype(np.float32)
    b = rng.standard_normal(co).astype(np.float32)
    z = rng.standard_normal((n, co, -(-h // stride), -(-w // stride))).astype(np.float32)
    conv = np.einsum("oc,nchw->nohw", wt[:, :, 0, 0].astype(np.float64),
                     _spec_shift(x.astype(np.float64), theta, stride)) + b[None, :, None, None]
    act = (lambda v: np.maximum(v, 0)) if relu else (lambda v: v)
    plain = _session([helper.make_node("ShiftConv1x1", ["x", "w", "b", "t"], ["y"],
                                       domain="shiftnas", stride=stride, bilinear=bilinear,
                                       relu=relu)], ["x"], {"w": wt, "b": b, "t": theta})
    np.testing.assert_allclose(plain.run(None, {"x": x})[0], act(conv), rtol=1e-4, atol=1e-4)
    added = _session([helper.make_node("ShiftConv1x1Add", ["x", "w", "b", "t", "z"], ["y"],
                                       domain="shiftnas", stride=stride, bilinear=bilinear,
                                       relu=relu, add_after_relu=after)],
                     ["x", "z"], {"w": wt, "b": b, "t": theta})
    expect = act(conv) + z if after else act(conv + z)
    np.testing.assert_allclose(added.run(None, {"x": x, "z": z})[0], expect, rtol=1e-4, atol=1e-4)


def test_failed_build_warns_once_and_returns_none(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTNAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    ort_ops.library.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert ort_ops.library() is None and not ort_ops.available()
            assert not ort_ops.register(ort.SessionOptions())
        msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(msgs) == 1 and "could not be built" in msgs[0] and "C++ compiler" in msgs[0]
    finally:
        ort_ops.library.cache_clear()
