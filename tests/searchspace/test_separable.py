"""Separable basic blocks (`mult`, docs/spec.md section 7): strings, the spec, exact forms, cost."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from shiftnas.errors import ArchError
from shiftnas.evaluators.cost import net_cost
from shiftnas.searchspace import (
    build_model,
    create_preset,
    decode_block,
    decode_net,
    load_space,
    sample_random,
)
from tests.searchspace.test_spec_functional import check, randomise

KINDS = ["sparse-8c-grid", "active-uniform", "fixed-8c", "dwconv3x3", "conv3x3"]


def net_of(block: str, size: int = 11, width: int = 12, stem: int = 10):
    """Two stages of `block` (the second strided) on a 3 x size x size input."""
    return decode_net(f"cifar-conv3x3-w{stem}-c3-n7-i{size}|{width}:{block}-s1"
                      f"|{2 * width}:{block}-s2-dconv,{block}-s1")


def test_block_strings_round_trip_and_plain_basic_is_unchanged():
    b = decode_block("basic-sparse-8c-grid-m3-s1")
    assert (b.family, b.kind, b.mult) == ("basic", "sparse", 3)
    assert b.encode() == "basic-sparse-8c-grid-m3-s1"
    assert decode_block("basic-m0-s1").encode() == "basic-s1"
    assert decode_block("basic-dwconv3x3-m1-s2").encode() == "basic-dwconv3x3-m1-s2-dconv"
    # The documented ResNet-20 id (main's) must not move: plain blocks write no `m`.
    assert create_preset("resnet20").archid == "9a9f46890c3e"


@pytest.mark.parametrize("text,match", [
    ("basic-sparse-8c-grid-s1", "'kind' is not used by a basic block"),
    ("csc-fixed-8c-m3-s1", "'mult' is not used by a csc block"),
    ("basic-dwconv3x3-m65-s1", "`mult` must be an integer in \\[0, 64\\]"),
    ("basic-dwconv3x3-m2-m3-s1", "'mult' is given twice"),
])
def test_bad_separable_strings(text, match):
    with pytest.raises(ArchError, match=match):
        decode_block(text)


def test_a_narrow_grid_shift_is_rejected_with_the_copies_counted():
    """An 8c grid needs 9 channels: 4 channels x 2 copies = 8 is too few, x 3 = 12 is enough."""
    with pytest.raises(ArchError, match="at least 9 channels .* got width 8"):
        build_model(decode_net("cifar-conv3x3-w4-c1-n2-i8|4:basic-fixed-8c-m2-s1"))
    build_model(decode_net("cifar-conv3x3-w4-c1-n2-i8|4:basic-fixed-8c-m3-s1"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mult", [1, 3])
def test_separable_blocks_match_the_spec(kind, mult):
    """Builder (fused pairs included) against spec_impl's section 7, odd size, stride 2."""
    check(net_of(f"basic-{kind}-m{mult}"), seed=mult)


def _plain_and_separable(kind: str, seed: int = 0):
    """A trained-looking plain basic network, and the `kind`-m9 one holding the same
    convolutions in section 7's exact form (the formulas written out by hand)."""
    plain_net = net_of("basic", size=9, width=9, stem=9)
    sep_net = net_of(f"basic-{kind}-m9", size=9, width=9, stem=9)
    torch.manual_seed(seed)
    plain = build_model(plain_net).double().eval()
    randomise(plain, seed)
    sep = build_model(sep_net).double().eval()
    sd = sep.state_dict()
    grid = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)] + [(0, 0)]
    for k, v in plain.state_dict().items():
        if v.dim() != 4 or v.shape[-1] != 3 or k.startswith("stem"):
            sd[k] = v
            continue
        o, c = v.shape[:2]
        pre = k[: -len("conv1.weight")]
        pw = torch.zeros(o, 9 * c, 1, 1, dtype=v.dtype)
        if kind == "dwconv3x3":  # copy t: one-hot kernel at tap t (row-major)
            dw = torch.zeros(9 * c, 1, 3, 3, dtype=v.dtype)
            for t in range(9):
                dw[t * c:(t + 1) * c, 0, t // 3, t % 3] = 1
                pw[:, t * c:(t + 1) * c, 0, 0] = v[:, :, t // 3, t % 3]
            sd[k.replace("conv", "shift")] = dw
        else:  # fixed 8c: copy g is the g-th offset of the table, the centre is copy 8
            for g, (dy, dx) in enumerate(grid):
                pw[:, g * c:(g + 1) * c, 0, 0] = v[:, :, 1 + dy, 1 + dx]
        sd[k] = pw
        assert pre  # stage block convolutions only
    sep.load_state_dict(sd)
    return plain, sep, plain_net


@pytest.mark.parametrize("kind", ["dwconv3x3", "fixed-8c"])
def test_nine_copies_reproduce_a_3x3_convolution_exactly(kind):
    plain, sep, net = _plain_and_separable(kind)
    x = torch.randn(3, net.in_chans, net.input_size, net.input_size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(sep(x), plain(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_cost_matches_the_model_and_the_flop_counter(kind):
    net = net_of(f"basic-{kind}-m3", size=13)
    model = build_model(net)
    with FlopCounterMode(display=False) as fc:
        model(torch.randn(1, 3, 13, 13))
    cost = net_cost(net)
    assert cost.params == sum(p.numel() for p in model.parameters())
    assert cost.macs == fc.get_total_flops() // 2
    mods = dict(model.named_modules())
    for layer in cost.layers:
        if layer.params:
            assert sum(p.numel() for p in mods[layer.name].parameters()) == layer.params, layer.name


def test_separable_cost_by_hand():
    """16 -> 16 at 8x8, E = 3 sparse taps: the 1x1 has 48*16 weights, the shift 2*48 offsets;
    R = 1 depthwise: 16*9 weights and 16*9*64 MACs, then 16*16*64."""
    net = decode_net("cifar-conv3x3-w16-c1-n10-i8|16:basic-sparse-8c-grid-m3-s1")
    layers = {x.name: x for x in net_cost(net).layers}
    assert layers["stages.0.0.shift1"].params == 96 and layers["stages.0.0.shift1"].macs == 0
    assert layers["stages.0.0.conv1"].params == 768 and layers["stages.0.0.conv1"].macs == 768 * 64
    # The shift reads 16 channels once and writes the 48 shifted copies (fp32).
    assert layers["stages.0.0.shift1"].bytes_written == 48 * 64 * 4
    dw = decode_net("cifar-conv3x3-w16-c1-n10-i8|16:basic-dwconv3x3-m1-s1")
    layers = {x.name: x for x in net_cost(dw).layers}
    assert (layers["stages.0.0.shift2"].params, layers["stages.0.0.shift2"].macs) == (144, 144 * 64)
    assert layers["stages.0.0.conv2"].macs == 256 * 64


def test_spaces_may_search_the_copies():
    space = load_space({"stages": [{"depth": 2, "width": 16}],
                        "block": {"family": "basic", "kind": ["sparse", "dwconv3x3"],
                                  "mult": [0, 1, 3]}}).for_data(1, 10, 8)
    mults = {b.mult for s in range(30) for _, b, _, _ in sample_random(space, s).blocks}
    assert mults == {0, 1, 3}
    with pytest.raises(Exception, match="mult"):
        load_space({"stages": [{"depth": 1, "width": 16}], "block": {"mult": [-1]}})
