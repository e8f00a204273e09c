"""The exported `model.py` is standalone and computes what the builder's model computes."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import textwrap

import pytest
import torch

from shiftnas.kernels import portable
from shiftnas.kernels.modules import ActiveShift, SparseShift
from shiftnas.results.export import export_arch, export_code, load_exported
from shiftnas.searchspace import (
    blocks,
    build_model,
    create_preset,
    decode_net,
    load_space,
    sample_random,
)

# Runs in a fresh `python -I` (no project on sys.path; the editable install's
# finder is dropped and project packages are blocked), so the exported files
# must stand on their own.
_DRIVER = textwrap.dedent('''
    import importlib.abc, importlib.util, json, sys
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                        and "editable" not in repr(f).lower()]

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"shiftnas", "searchspace", "kernels", "results", "nas",
                                      "evaluators"}:
                raise ImportError(f"exported code must not import {name}")
            return None

    sys.meta_path.insert(0, Block())
    import torch
    torch.set_num_threads(1)
    n = json.load(open("cases.json"))
    outs = []
    for i in range(n):
        spec = importlib.util.spec_from_file_location(f"model_{i}", f"model_{i}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        model = mod.create_model()
        model.load_state_dict(torch.load(f"state_{i}.pt", weights_only=True), strict=True)
        model.eval()
        x = torch.load(f"x_{i}.pt", weights_only=True)
        with torch.no_grad():
            outs.append(model(x))
    torch.save(outs, "outs.pt")
    print("ok", n)
''')


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights, BN statistics and thetas (negative, fractional, > 1, exact halves)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("theta"):
                t = torch.rand(p.shape, generator=g) * 7 - 3.5
                half = torch.rand(p.shape, generator=g) < 0.15  # round-half-to-even cases
                p.copy_(torch.where(half, torch.floor(t) + 0.5, t))
            elif p.dim() == 1 and "bn" in name or name.startswith(("stem.1", "head_norm")):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5 if name.endswith("weight")
                        else torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / max(1, p[0].numel())) ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)


def _cases():
    space = load_space("cifar_shift")
    nets = [create_preset(n, input_size=16) for n in
            ("shiftresnet20_e1", "resnet20", "asresnet20_w16_e1")]
    samples = [sample_random(space.for_data(3, 10, 16), seed) for seed in range(40)]
    samples += [sample_random(space.for_data(1, 7, 15), seed) for seed in range(100, 110)]
    return nets + [n for n in samples if _n_params(n) < 1_500_000]


def _n_params(net) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(net).parameters())


def test_exported_models_match_builder_in_fresh_interpreter(tmp_path):
    nets = _cases()
    kinds = {b.kind for net in nets for _, b, _, _ in net.blocks if b.family != "basic"}
    families = {b.family for net in nets for _, b, _, _ in net.blocks}
    assert {"fixed", "active", "sparse", "dwconv3x3", "conv3x3"} <= kinds
    assert families == {"csc", "asl_preact", "bottleneck3", "basic"}
    refs = []
    for i, net in enumerate(nets):
        model = build_model(net)
        _randomise(model, i)
        model.eval()
        x = torch.randn(2, net.in_chans, net.input_size, net.input_size,
                        generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            refs.append(model(x))
        (tmp_path / f"model_{i}.py").write_text(export_code(net, {"accuracy": 0.5}))
        torch.save(model.state_dict(), tmp_path / f"state_{i}.pt")
        torch.save(x, tmp_path / f"x_{i}.pt")
    (tmp_path / "cases.json").write_text(str(len(nets)))
    (tmp_path / "driver.py").write_text(_DRIVER)
    res = subprocess.run([sys.executable, "-I", "driver.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    outs = torch.load(tmp_path / "outs.pt", weights_only=True)
    for net, out, ref in zip(nets, outs, refs):
        scale = max(1.0, ref.abs().max().item())
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * scale,
                                   msg=lambda m, net=net: f"{net.encode()}: {m}")


def _top_defs(src: str) -> dict[str, str]:
    """Source text of every top-level class and function, by name."""
    tree = ast.parse(src)
    return {n.name: ast.get_source_segment(src, n) for n in tree.body
            if isinstance(n, (ast.ClassDef, ast.FunctionDef))}


def test_exported_source_is_the_builders_source():
    net = create_preset("shiftresnet20_e3")
    src = export_code(net, {"accuracy": 0.91, "params": 95642})
    tree = ast.parse(src)
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert mods <= {"torch", "collections", "__future__"}
    exported = _top_defs(src)
    # Every block, stem, network and shift-op definition is the package's own, byte for byte.
    for module in (blocks, portable):
        own = _top_defs(inspect.getsource(module))
        assert {"CscBlock", "ShiftNet", "Stem"} <= set(own) or {"Shift", "spatial"} <= set(own)
        for name, text in own.items():
            assert exported.get(name) == text, f"{module.__name__}.{name} differs in model.py"
    assert net.encode() in src and "accuracy: 0.91" in src and "docs/spec.md" in src
    assert "create_model" in exported


def test_imagenet_preset_state_dict_keys_match(tmp_path):
    net = create_preset("shift4c_resnet50")
    mod = _load(export_code(net), tmp_path)
    with torch.device("meta"):
        ours = mod.create_model().state_dict()
        ref = build_model(net).state_dict()
    assert list(ours) == list(ref)
    assert all(ours[k].shape == ref[k].shape for k in ref)


def _load(src: str, tmp_path):
    (tmp_path / "model.py").write_text(src)
    return load_exported(tmp_path / "model.py")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kind", ["active", "sparse"])
def test_exported_learned_shift_gradients_match_kernels(kind, stride, tmp_path):
    arch = (f"cifar-conv3x3-w16-c3-n10-i16|16:csc-{kind}-uniform-e1-s1"
            f"|32:csc-{kind}-uniform-e1-s2-dshift")
    mod = _load(export_code(decode_net(arch)), tmp_path)
    g = torch.Generator().manual_seed(7)
    theta = torch.rand(24, 2, generator=g) * 6 - 3
    theta[:4] = torch.tensor([[0.5, -1.5], [2.0, -2.0], [1.25, 0.0], [-0.5, 2.5]])
    x = torch.randn(2, 24, 9, 8, generator=g)
    gy = torch.randn(2, 24, 5 if stride == 2 else 9, 4 if stride == 2 else 8, generator=g)
    ours = (mod.ActiveShift if kind == "active" else mod.SparseShift)(24, stride, "uniform")
    ref = (ActiveShift if kind == "active" else SparseShift)(24, stride, "uniform",
                                                             backend="reference")
    results = []
    for m in (ours, ref):
        with torch.no_grad():
            m.theta.copy_(theta)
        xx = x.clone().requires_grad_(True)
        y = m(xx)
        y.backward(gy)
        results.append((y.detach(), xx.grad, m.theta.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_arch_writes_files_and_onnx_matches(tmp_path, exporter):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    arch = ("cifar-conv3x3-w32-c3-n10-i16|32:csc-fixed-8c-e1-s1,asl_preact-active-uniform-e1-s1"
            "|64:bottleneck3-sparse-4c-grid-multi-e1-s2-dshift,csc-fixed-5x5-e1-s1"
            "|96:csc-active-8c-grid-e1-s2-dshift,basic-s1")
    net = decode_net(arch)
    model = build_model(net)
    _randomise(model, 3)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    paths = export_arch(net, tmp_path / "out", {"accuracy": 0.7}, weights=tmp_path / "w.pt",
                        onnx=True, exporter=exporter)  # a named exporter: standard operators
    assert set(paths) == {"model", "arch", "weights", "onnx"}
    assert "accuracy" in paths["arch"].read_text()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    sess = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"input": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), torch.from_numpy(ref), rtol=1e-4,
                               atol=1e-4 * max(1.0, abs(ref).max()))
    import onnx

    ops = {n.op_type for n in onnx.load(str(paths["onnx"])).graph.node}
    assert {"Pad", "Slice", "Concat", "MatMul"} <= ops  # standard operators only
    assert all(n.domain in ("", "ai.onnx") for n in onnx.load(str(paths["onnx"])).graph.node)


def test_export_arch_fastest_onnx_with_custom_ops_and_a_standard_twin(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from shiftnas.kernels import ort_ops

    if not ort_ops.available():
        pytest.skip("needs a C++ compiler for the custom ops")
    arch = ("cifar-conv3x3-w16-c3-n10-i13|24:csc-fixed-8c-e2-s1,bottleneck3-sparse-4c-grid-multi-e1-s1"
            "|32:csc-active-8c-grid-e1-s2-dshift,csc-fixed-8c-e1-s1|48:csc-fixed-4c-e1-s2-dconv")
    net = decode_net(arch)
    model = build_model(net)
    _randomise(model, 5)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    # The fused custom op for every site, as a machine where it wins would choose (on this
    # one the timing may pick a standard formulation), so that every file is written.
    from shiftnas.evaluators import onnx_shift

    monkeypatch.setattr(onnx_shift, "choose", lambda sites, batch, threads, custom: {
        i: "fused" if custom else "dwconv" for i in sites})
    paths = export_arch(net, tmp_path / "out", weights=tmp_path / "w.pt", onnx=True)
    assert {"onnx", "onnx_standard", "ort_library", "ort_source", "ort_readme"} <= set(paths)
    assert "register_custom_ops_library" in paths["ort_readme"].read_text()
    x = torch.randn(3, 3, 13, 13)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(paths["ort_library"]))
    for key, opts in (("onnx", so), ("onnx_standard", ort.SessionOptions())):
        nodes = onnx.load(str(paths[key])).graph.node
        assert any(n.domain == "shiftnas" for n in nodes) == (key == "onnx")
        (out,) = ort.InferenceSession(str(paths[key]), opts).run(None, {"input": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(out), torch.from_numpy(ref), rtol=1e-4,
                                   atol=1e-4 * max(1.0, abs(ref).max()))
