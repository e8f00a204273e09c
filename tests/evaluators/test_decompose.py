"""`shiftnas decompose`: exact cases against hand-built weights, bad input, export, evaluate."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from shiftnas.evaluators.decompose import TAPS, DecomposeCfg, decompose, write_decomposed
from shiftnas.nas.cli import main
from shiftnas.results.export import export_arch, load_exported
from shiftnas.searchspace import build_model, decode_net, load_arch
from tests.searchspace.test_spec_functional import randomise

# Two stages of plain basic blocks on digits (1 x 8 x 8, 10 classes); the second strided.
ARCH = "cifar-conv3x3-w6-c1-n10-i8|6:basic-s1|8:basic-s2-dconv"
QUICK = dict(calibrate=300, holdout=100, batch_size=100)


def trained_looking(net, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_model(net, fuse=False)
    randomise(model, seed)
    return {k: v.clone() for k, v in model.state_dict().items()}


def convs(state):
    """The 3x3 convolutions of the blocks, by the name their 1x1 takes."""
    return {k: v for k, v in state.items()
            if k.startswith("stages") and k.endswith(("conv1.weight", "conv2.weight"))}


def logits_with_original_bn(d, state, x):
    """The decomposed network with the original BN statistics (before recalibration)."""
    sd = dict(d.state_dict)
    sd.update({k: v for k, v in state.items() if "running" in k})
    m = build_model(d.net).eval()
    m.load_state_dict(sd)
    with torch.no_grad():
        return m(x)


def test_nine_depthwise_kernels_reproduce_every_layer(digits):
    net = decode_net(ARCH)
    state = trained_looking(net)
    d = decompose(net, state, digits, DecomposeCfg(to="depthwise", rank=9, **QUICK))
    assert d.net.encode() == ("cifar-conv3x3-w6-c1-n10-i8|6:basic-dwconv3x3-m9-s1"
                              "|8:basic-dwconv3x3-m9-s2-dconv")
    for name, w in convs(state).items():
        c = w.shape[1]
        pw = d.state_dict[name][:, :, 0, 0]  # (O, 9C): column t*C + i
        dw = d.state_dict[name.replace("conv", "shift")][:, 0]  # (9C, 3, 3)
        # The composite kernel sum_t pw[:, t*C + i] * dw[t*C + i] must be W[:, i], up to the
        # float32 activations the fit sees (2e-4 of the largest weight, measured).
        got = torch.einsum("otc,tcyx->ocyx", pw.reshape(-1, 9, c), dw.reshape(9, c, 3, 3))
        torch.testing.assert_close(got, w, rtol=1e-3, atol=1e-3 * w.abs().max().item())
    for r in d.layers:
        assert r.error < 1e-4 and r.error_local < 1e-4 and r.kept == 9
    x = digits.val_x[:50]
    model = build_model(net).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(logits_with_original_bn(d, state, x), ref, rtol=1e-3, atol=1e-3)


def test_a_layer_that_is_one_shift_per_channel_and_a_1x1_is_recovered(digits):
    """Every block convolution has one nonzero tap per input channel (drawn at random):
    E = 1 must find exactly those taps, and the 1x1 must be their columns."""
    net = decode_net(ARCH)
    state = trained_looking(net, seed=1)
    for k in state:  # every channel alive after its ReLU: a dead one has no tap to find
        if k.endswith(".bias") and not k.startswith("fc"):
            state[k] = state[k].abs() + 1.0
    rng = np.random.default_rng(7)
    chosen = {}
    for name, w in convs(state).items():
        taps = rng.integers(0, 9, size=w.shape[1])
        mask = torch.zeros_like(w).reshape(w.shape[0], w.shape[1], 9)
        mask[:, np.arange(w.shape[1]), taps] = 1
        state[name] = w * mask.reshape(w.shape)
        chosen[name] = taps
    d = decompose(net, state, digits, DecomposeCfg(to="shift", taps=1, **QUICK))
    # 6 channels are too few for the 8c groups: these offsets would start uniform.
    assert d.net.encode().startswith("cifar-conv3x3-w6-c1-n10-i8|6:basic-sparse-uniform-m1-s1")
    for name, taps in chosen.items():
        theta = d.state_dict[name.replace("conv", "shift").replace("weight", "theta")]
        assert theta.tolist() == [[float(dy), float(dx)] for dy, dx in (TAPS[t] for t in taps)]
        w = state[name].reshape(*state[name].shape[:2], 9)
        want = w[:, np.arange(w.shape[1]), taps]  # (O, C): each channel's one column
        torch.testing.assert_close(d.state_dict[name][:, :, 0, 0], want, rtol=1e-4,
                                   atol=1e-4 * want.abs().max().item())
    assert max(r.error for r in d.layers) < 1e-4
    assert all(r.datafree_error < 1e-4 for r in d.layers)  # its own largest taps: already exact
    x = digits.val_x[:50]
    model = build_model(net).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(logits_with_original_bn(d, state, x), model(x),
                                   rtol=1e-3, atol=1e-3)


def test_three_taps_fit_better_than_one_and_the_table_is_written(digits, tmp_path):
    net = decode_net(ARCH)
    state = trained_looking(net, seed=2)
    one = decompose(net, state, digits, DecomposeCfg(to="shift", taps=1, **QUICK))
    three = decompose(net, state, digits, DecomposeCfg(to="shift", taps=3, **QUICK))
    for a, b in zip(one.layers, three.layers):
        assert b.fit_error <= a.fit_error + 1e-9 and a.fit_error < a.datafree_error
        assert b.params_after == 3 * a.params_after - 0  # 1x1 and offsets both triple
    paths = write_decomposed(three, tmp_path / "d")
    rows = paths["layers"].read_text().splitlines()
    assert rows[0].startswith("layer,kept,error,error_local") and len(rows) == 1 + 4
    first = rows[1].split(",")
    # stages.0.0.conv1: 6 -> 6 channels at 8x8: 324 weights, 20,736 MACs before; after,
    # 3 taps: 18*6 weights in the 1x1 and 2*18 offsets, 18*6*64 MACs.
    assert first[0] == "stages.0.0.conv1" and first[1] == "3"
    assert [int(v) for v in first[6:]] == [324, 144, 20736, 6912]


@pytest.fixture
def exported(tmp_path):
    net = decode_net(ARCH)
    state = trained_looking(net, seed=3)
    torch.save(state, tmp_path / "w.pt")
    from shiftnas.searchspace import save_arch
    save_arch(net, tmp_path / "arch.yaml")
    return tmp_path


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_command_writes_a_network_that_exports_and_loads(exported, capsys):
    out = exported / "dec"
    code, text, err = run(capsys, "decompose", str(exported / "arch.yaml"), "--weights",
                          str(exported / "w.pt"), "--to", "shift", "--taps", "2",
                          "--calibrate", "200", "--holdout", "100", "--out", str(out))
    assert code == 0, err
    assert "stages.1.0.conv1" in text and "after BN recalibration" in text
    net = load_arch(out / "arch.yaml")
    assert net.encode().count("basic-sparse-8c-grid-m2") == 2  # 12 and 16 shifted channels
    exp = export_arch(net, exported / "export", weights=out / "weights.pt", onnx=True)
    mod = load_exported(exp["model"])
    model = mod.create_model().eval()
    model.load_state_dict(torch.load(exp["weights"], weights_only=True))
    ours = build_model(net).eval()
    ours.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x), rtol=1e-5, atol=1e-5)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(exp["onnx"]), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(got, ours(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    # The export's arch.yaml brings its weights.pt: decompose needs no --weights for it.
    code, _, err = run(capsys, "decompose", str(exp["arch"]), "--to", "depthwise",
                       "--calibrate", "100", "--holdout", "50", "--out", str(exported / "again"))
    assert code == 2 and "no convertible layer" in err  # already separable


def one_paragraph(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


class _Code:  # pickled, it would run code when loaded without weights_only
    def __reduce__(self):
        return (print, ("loaded",))


@pytest.mark.parametrize("case", ["garbage", "code", "not a state dict", "other shapes",
                                  "other classes"])
def test_a_weight_file_that_does_not_fit_is_one_paragraph(exported, capsys, case):
    w = exported / "bad.pt"
    if case == "garbage":
        w.write_bytes(b"not a torch file at all")
    elif case == "code":
        w.write_bytes(pickle.dumps(_Code()))
    elif case == "not a state dict":
        torch.save([torch.zeros(2)], w)
    elif case == "other shapes":
        torch.save(trained_looking(decode_net(ARCH.replace("w6", "w4"))), w)
    else:
        torch.save(trained_looking(decode_net(ARCH.replace("n10", "n4"))), w)
    code, out, err = run(capsys, "decompose", str(exported / "arch.yaml"), "--weights", str(w),
                         "--to", "shift", "--out", str(exported / "o"))
    assert code == 2 and "loaded" not in out
    msg = one_paragraph(err)
    assert str(w) in msg
    expect = {"garbage": "weights_only=True", "code": "weights_only=True",
              "not a state dict": "not a state dict", "other shapes": "of another shape",
              "other classes": "fc.weight: [4, 8] in the file, [10, 8] in the architecture"}
    assert expect[case] in msg
    assert not (exported / "o").exists()


def test_no_convertible_layer_and_bad_flags_are_one_paragraph(exported, capsys):
    code, _, err = run(capsys, "decompose", "shiftresnet20_e3", "--weights",
                       str(exported / "w.pt"), "--to", "shift", "--out", str(exported / "o"))
    assert code == 2 and "no convertible layer" in one_paragraph(err)
    assert "csc" in err
    code, _, err = run(capsys, "decompose", str(exported / "arch.yaml"), "--to", "shift",
                       "--rank", "2", "--out", str(exported / "o"))
    assert code == 2 and "--rank" in one_paragraph(err)
    code, _, err = run(capsys, "decompose", "resnet20", "--to", "depthwise",
                       "--out", str(exported / "o"))
    assert code == 2 and "needs the trained weights" in one_paragraph(err)


def test_evaluate_reports_before_after_and_from_scratch(exported, capsys):
    out = exported / "dec"
    assert run(capsys, "decompose", str(exported / "arch.yaml"), "--weights",
               str(exported / "w.pt"), "--to", "depthwise", "--calibrate", "200",
               "--holdout", "100", "--out", str(out))[0] == 0
    code, text, err = run(capsys, "evaluate", str(out / "arch.yaml"), "--weights",
                          str(out / "weights.pt"), "--scratch", "--epochs", "1", "--lr", "0.01",
                          "--latency", "--json")
    assert code == 0, err
    res = json.loads(text)
    for k in ("accuracy_initial", "accuracy", "scratch_accuracy", "latency_ms"):
        assert 0 <= res[k] and (k == "latency_ms" or res[k] <= 1), k
    assert res["epochs"] == 1 and len(res["scratch_history"]) == 1
    code, _, err = run(capsys, "evaluate", str(out / "arch.yaml"), "--scratch")
    assert code == 2 and "--weights" in one_paragraph(err)
