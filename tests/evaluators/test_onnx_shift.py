"""Every ONNX formulation of a shift computes the PyTorch network's function; the choice is
recorded; a failed custom-op build falls back to standard ONNX with one warning."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from shiftnas.evaluators import LatencyCfg, measure_latency, onnx_shift  # noqa: E402
from shiftnas.kernels import ort_ops  # noqa: E402
from shiftnas.searchspace import build_model, decode_net, fold_bn  # noqa: E402

# Fixed 4c/8c, active (|theta| > 1 too) and sparse shifts; csc and bottleneck3 (single and
# multi: a shift on the block input), shifts at stride 2 and before a strided 1x1, odd sizes.
NETS = [
    "cifar-conv3x3-w16-c3-n10-i11|18:csc-fixed-8c-e1-s1|27:csc-fixed-4c-e1-s2-dshift",
    "cifar-conv3x3-w16-c3-n10-i9|16:csc-active-uniform-e2-s1|24:csc-sparse-uniform-e1-s2-dconv",
    "cifar-conv3x3-w16-c3-n10-i10|16:bottleneck3-fixed-8c-multi-e1-s1"
    "|32:bottleneck3-active-8c-grid-single-e1-s2-davgpool",
    "cifar-conv3x3-w16-c3-n10-i7|16:bottleneck3-sparse-8c-grid-multi-e1-s2-dshift",
]


def _randomised(net, seed: int) -> nn.Module:
    """The builder's portable network with random BN statistics and thetas beyond +-1."""
    g = torch.Generator().manual_seed(seed)
    model = build_model(net, fuse=False, portable=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("theta"):
                p.copy_(torch.rand(p.shape, generator=g) * 5 - 2.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return fold_bn(model)


def _run(graph, x: torch.Tensor, custom: bool) -> np.ndarray:
    sess = ort.InferenceSession(graph.SerializeToString(), onnx_shift.session_options(1, custom),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("arch", NETS)
def test_every_formulation_matches_the_pytorch_network(arch):
    net = decode_net(arch)
    model = _randomised(net, 0)
    x = torch.randn(2, net.in_chans, net.input_size, net.input_size,
                    generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).double()
    custom = ort_ops.available()
    forms = (onnx_shift.FORMULATIONS if custom else onnx_shift.STANDARD) + ("gather",)
    for form in forms:  # export_markers replaces the shifts in place: a copy each time
        graph, markers = onnx_shift.export_markers(copy.deepcopy(model), x)
        assert len(markers) >= 2
        onnx_shift.lower(graph, markers, {m.site: form for m in markers})
        domains = {n.domain for n in graph.graph.node}
        assert ("shiftnas" in domains) == (form in onnx_shift.CUSTOM)
        if form == "fused":  # every shift here feeds a 1x1 convolution
            ops = [n.op_type for n in graph.graph.node if n.domain == "shiftnas"]
            assert ops and all(o.startswith("ShiftConv1x1") for o in ops)
        out = torch.from_numpy(_run(graph, x, form in onnx_shift.CUSTOM)).double()
        scale = max(1.0, ref.abs().max().item())
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * scale,
                                   msg=lambda m, form=form: f"{arch} as {form}: {m}")


def test_latency_picks_and_records_the_formulation():
    net = decode_net(NETS[0])
    r = measure_latency(net, LatencyCfg(backend="onnxruntime", warmup=1, repeats=3, lock=None))
    assert r.backend == "onnxruntime" and r.formulation
    counts = dict(part.rsplit(" ", 1) for part in r.formulation.split(", "))
    assert sum(map(int, counts.values())) == 2 and set(counts) <= set(onnx_shift.FORMULATIONS)
    # The choice was timed once per shape and cached: the next network reuses it.
    site_map = onnx_shift.sites(*onnx_shift.export_markers(
        build_model(net, fuse=False, portable=True).eval(), torch.randn(1, 3, 11, 11)))
    assert "?" not in onnx_shift.known_picks(site_map, 1, 1, ort_ops.available()).values()
    # What the report's front table says: the runtime and the same formulation.
    latency = {"backend": "onnxruntime", "warmup": 1, "repeats": 3}
    assert onnx_shift.describe(net, latency) in (f"onnxruntime ({r.formulation})",
                                                 f"onnxruntime (standard ONNX: {r.formulation})")
    assert onnx_shift.describe(net, {"backend": "eager"}) == "eager"


def test_failed_build_falls_back_to_standard_onnx(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    ort_ops.library.cache_clear()
    try:
        net = decode_net(NETS[0])
        cfg = LatencyCfg(backend="onnxruntime", warmup=1, repeats=3, lock=None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = measure_latency(net, cfg)
            again = measure_latency(decode_net(NETS[3]), cfg)
        built = [w for w in caught if "could not be built" in str(w.message)]
        assert len(built) == 1  # one warning for the process, not one per network
        for res in (r, again):
            assert res.formulation.startswith("standard ONNX, custom ops unavailable: ")
            assert not {"fused", "custom"} & {p.rsplit(" ", 1)[0] for p in
                                              res.formulation.split(": ", 1)[1].split(", ")}
    finally:
        ort_ops.library.cache_clear()
