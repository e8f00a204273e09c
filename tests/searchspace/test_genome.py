"""Canonical strings, archid and validation of the genome."""

from __future__ import annotations

import dataclasses

import pytest

from shiftnas.errors import ArchError
from shiftnas.searchspace import (
    BlockCfg,
    NetCfg,
    StageCfg,
    create_preset,
    decode_block,
    decode_net,
    list_presets,
    load_space,
    sample_random,
    validate,
)


@pytest.mark.parametrize("name", list_presets())
def test_presets_round_trip(name):
    net = create_preset(name)
    s = net.encode()
    assert decode_net(s).encode() == s
    assert decode_net(s) == net


def test_samples_round_trip_and_archids_are_stable():
    space = load_space("cifar_shift")
    nets = [sample_random(space, seed) for seed in range(200)]
    for net in nets:
        assert decode_net(net.encode()) == net
    assert len({n.archid for n in nets}) == len({n.encode() for n in nets})
    # A fixed, documented id: the hash of the canonical string must not drift between versions.
    assert create_preset("shiftresnet20_e3").archid == "7e7167f1c919"


def test_unused_fields_do_not_change_the_architecture():
    a = BlockCfg("basic", kind="active", nbhd="5x5", e=6).canonical()
    b = BlockCfg("basic").canonical()
    assert a == b and a.encode() == "basic-s1"
    c = BlockCfg("csc", kind="dwconv3x3", nbhd="4c", e=3)
    assert c.encode() == "csc-dwconv3x3-e3-s1"
    # uniform-initialised learned shifts do not use the neighbourhood
    assert BlockCfg("csc", "active", "5x5", "uniform").encode() == "csc-active-uniform-e1-s1"


def test_block_grammar_examples():
    b = decode_block("bottleneck3-fixed-4c-multi-e0.25-s2-davgpool")
    assert (b.family, b.kind, b.nbhd, b.placement, b.e, b.stride, b.down) == (
        "bottleneck3", "fixed", "4c", "multi", 0.25, 2, "avgpool")
    assert decode_block("csc-e3").encode() == "csc-fixed-8c-e3-s1"  # defaults fill the rest


@pytest.mark.parametrize("text,match", [
    ("conv-s1", "must start with a family"),
    ("csc-fixed-8c-e3-s1-bogus", "unknown token 'bogus'"),
    ("basic-fixed-s1", "'kind' is not used by a basic block"),
    ("csc-fixed-4c-8c-s1", "'nbhd' is given twice"),
    ("csc-fixed-8c-s1-dshift", "'down' is not used"),
    ("basic-s2-dshift", "`down` must be one of \\['conv'\\]"),
    ("csc-fixed-8c-e0-s1", "`e` must be a number in \\(0, 64\\]"),
    ("csc-fixed-8c-e1e400-s1", "unknown token 'e1e400'"),
    ("csc-fixed-8c-e100-s1", "`e` must be a number in"),
])
def test_bad_block_strings_say_what_is_wrong(text, match):
    with pytest.raises(ArchError, match=match):
        decode_block(text)


def test_bad_network_strings():
    with pytest.raises(ArchError, match="expected 'skeleton-stem"):
        decode_net("cifar-conv3x3|16:basic-s1")
    with pytest.raises(ArchError, match="stem"):
        decode_net("cifar-conv9x9-w16-c3-n10-i32|16:basic-s1")
    with pytest.raises(ArchError, match="repeat count"):
        decode_net("cifar-conv3x3-w16-c3-n10-i32|16:basic-s1*x")
    with pytest.raises(ArchError, match="from 1 to 1000"):
        decode_net("cifar-conv3x3-w16-c3-n10-i32|16:basic-s1*99999999999")


def test_small_expansions_round_trip_without_exponents():
    for e in (1e-5, 0.125, 1 / 3, 2.5):
        b = BlockCfg("csc", e=e)
        assert "e-" not in b.encode() and decode_block(b.encode()) == b.canonical()


def _net(width: int, block: BlockCfg, stem_width: int = 32) -> NetCfg:
    return NetCfg((StageCfg(width, (block, block)),), stem_width=stem_width)


def test_validation_names_block_width_and_neighbourhood():
    with pytest.raises(ArchError) as info:
        validate(_net(16, BlockCfg("csc", "fixed", "5x5", e=1)))
    msg = str(info.value)
    assert "block s0.b0" in msg and "5x5" in msg and "width 16" in msg and "25 channels" in msg
    # the first shift of a multi-placement bottleneck3 works on the block's input width
    with pytest.raises(ArchError, match="s0.b0.*width 16"):
        validate(_net(64, BlockCfg("bottleneck3", "fixed", "5x5", placement="multi", e=1), 16))
    # learned shifts with uniform init have no groups, so no minimum width
    validate(_net(8, BlockCfg("csc", "active", "5x5", "uniform")))


def test_only_first_block_of_a_stage_may_stride():
    b = BlockCfg("csc")
    net = NetCfg((StageCfg(16, (b, dataclasses.replace(b, stride=2))),))
    with pytest.raises(ArchError, match="s0.b1.*only the first block"):
        validate(net)


def test_bottleneck3_stride_in_shift_needs_multi():
    b = BlockCfg("bottleneck3", placement="single", stride=2, down="shift")
    with pytest.raises(ArchError, match="multi"):
        validate(NetCfg((StageCfg(64, (b,)),), stem_width=64))
