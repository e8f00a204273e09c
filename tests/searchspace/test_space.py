"""Space files and define-by-run sampling; every default-space sample builds and costs as predicted."""

from __future__ import annotations

import optuna
import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from shiftnas.errors import SpaceError
from shiftnas.evaluators.cost import net_cost
from shiftnas.searchspace import build_model, load_space, sample, sample_random, validate


def test_default_space_covers_every_dimension():
    sp = load_space("cifar_shift")
    blk = sp.stages[0].block
    assert set(blk["family"].values) == {"csc", "asl_preact", "bottleneck3", "basic"}
    assert set(blk["kind"].values) == {"fixed", "active", "sparse", "dwconv3x3", "conv3x3"}
    assert set(blk["nbhd"].values) == {"4c", "8c", "5x5"}
    assert set(blk["placement"].values) == {"single", "multi"}
    assert set(blk["down"].values) == {"conv", "shift", "avgpool"}
    assert len(blk["e"].values) > 1 and all(len(s.depth) > 1 and len(s.width) > 1 for s in sp.stages)
    assert load_space(sp.to_dict()) == sp
    load_space("imagenet_shift")


def test_sampling_is_seeded():
    sp = load_space("cifar_shift")
    assert sample_random(sp, 7) == sample_random(sp, 7)
    assert len({sample_random(sp, s).archid for s in range(20)}) == 20


def test_default_space_samples_build_run_and_match_the_cost_model():
    """A few hundred seeded samples, at digits' 1x8x8 input to stay fast."""
    sp = load_space("cifar_shift").for_data(1, 10, 8)
    torch.manual_seed(0)
    for seed in range(300):
        net = validate(sample_random(sp, seed))
        model = build_model(net)
        x = torch.randn(2, 1, 8, 8)
        if seed % 10 == 0:  # the FLOP counter is slow; cross-check MACs on a tenth
            with FlopCounterMode(display=False) as fc:
                y = model(x[:1])
            assert fc.get_total_flops() // 2 == net_cost(net).macs, net.encode()
        y = model(x)
        y.logsumexp(1).mean().backward()
        assert y.shape == (2, 10) and torch.isfinite(y).all()
        assert sum(p.numel() for p in model.parameters()) == net_cost(net).params, net.encode()


def test_optuna_asks_only_what_exists():
    sp = load_space({
        "stages": [{"depth": [1, 2], "width": 32, "stride": 1},
                   {"depth": 1, "width": 64, "stride": 2}],
        "stem_width": 32,
        "block": {"family": ["csc", "basic"], "kind": ["fixed", "active"],
                  "nbhd": {"choices": ["4c", "8c"], "per": "stage"},
                  "init": {"choices": ["grid", "uniform"], "per": "network"},
                  "e": [1, 3], "down": ["conv", "shift"]},
    })
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(60):
        trial = study.ask()
        net = sample(sp, trial)
        study.tell(trial, 0.0)
        p = trial.params
        if net.stages[0].depth == 1:
            assert not any(k.startswith("s0.b1.") for k in p)
        for path, b, _, _ in net.blocks:
            if b.family == "basic":
                assert f"{path}.kind" not in p and f"{path}.e" not in p
        assert not any(k.endswith(".nbhd") and ".b" in k for k in p)  # per-stage: one question
        if not any(b.kind == "active" for _, b, _, _ in net.blocks):
            assert "init" not in p
        if "s1.b0.down.basic" in p:
            pytest.fail("basic blocks take their stride in the conv: nothing to ask")


@pytest.mark.parametrize("doc,match", [
    ({"stages": []}, "stages: must be a non-empty list"),
    ({"stages": [{"depth": 1}]}, r"stages\[0\].width: is required"),
    ({"stages": [{"depth": 1, "width": 16, "strides": 2}]}, r"stages\[0\].strides: unknown key"),
    ({"stages": [{"depth": 0, "width": 16}]}, r"stages\[0\].depth: must be an integer >= 1"),
    ({"stages": [{"depth": 1, "width": 16}], "block": {"family": ["resnet"]}},
     r"block.family: 'resnet' is not a valid family"),
    ({"stages": [{"depth": 1, "width": 16}], "block": {"e": {"choices": [1], "per": "layer"}}},
     r"block.e.per: must be one of"),
    ({"stages": [{"depth": 1, "width": 16}], "blocks": {}}, r"space.blocks: unknown key"),
    ({"stages": [{"depth": 1, "width": 16}], "stem": "conv5x5"}, r"space.stem: must be one of"),
])
def test_malformed_space_files_name_the_field(doc, match):
    with pytest.raises(SpaceError, match=match):
        load_space(doc)


def test_space_file_errors(tmp_path):
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"stages": [{"depth": [1, 2], "width": [32, 48]}]}))
    assert load_space(good).stages[0].width == (32, 48)


def test_stage_override_of_a_network_choice_stays_in_its_stage():
    sp = load_space({
        "stem_width": 16,
        "stages": [{"depth": 1, "width": 16},
                   {"depth": 2, "width": 32, "block": {"kind": {"choices": ["fixed", "active"],
                                                                 "per": "network"}}}],
        "block": {"family": "csc", "kind": {"choices": ["sparse", "dwconv3x3"], "per": "network"}},
    })
    assert load_space(sp.to_dict()) == sp
    seen = set()
    for seed in range(40):
        net = sample_random(sp, seed)
        assert net.stages[0].blocks[0].kind in ("sparse", "dwconv3x3")
        kinds = {b.kind for b in net.stages[1].blocks}
        assert len(kinds) == 1 and kinds <= {"fixed", "active"}  # shared within the stage
        seen |= kinds
    assert seen == {"fixed", "active"}
