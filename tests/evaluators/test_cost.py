"""The analytic cost model against counting the built model and torch's FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from shiftnas.evaluators.cost import net_cost
from shiftnas.searchspace import build_model, create_preset, load_space, sample_random


def counted(net, size=None):
    model = build_model(net)
    size = size or net.input_size
    with FlopCounterMode(display=False) as fc:
        model(torch.randn(1, net.in_chans, size, size))
    return model, sum(p.numel() for p in model.parameters()), fc.get_total_flops() // 2


@pytest.mark.parametrize("name", ["resnet20", "shiftresnet20_e3", "asresnet20_w16_e3",
                                  "shift4c_resnet50", "asresnet_w32", "shift4c_flat_resnet35"])
def test_presets_match_parameter_count_and_flop_counter(name):
    net = create_preset(name)
    small = net.replace(input_size=64) if net.skeleton == "imagenet" else net
    model, params, macs = counted(small)
    cost = net_cost(small)
    assert cost.params == params
    assert cost.macs == macs
    # Per layer: every layer with parameters matches the module of the same name.
    mods = dict(model.named_modules())
    for layer in cost.layers:
        if layer.params:
            assert sum(p.numel() for p in mods[layer.name].parameters()) == layer.params, layer.name


@pytest.mark.parametrize("name", ["shift4c_resnet50", "shift4c_flat_resnet35"])
def test_imagenet_presets_at_full_resolution_match_the_flop_counter(name):
    """At 224x224, counted on the meta device (no memory, no arithmetic)."""
    net = create_preset(name)
    with torch.device("meta"):
        model = build_model(net)
        x = torch.empty(1, 3, 224, 224)
    with FlopCounterMode(display=False) as fc:
        model(x)
    assert net_cost(net).macs == fc.get_total_flops() // 2


def test_sampled_architectures_at_odd_sizes():
    space = load_space("cifar_shift").for_data(3, 7, 13)
    for seed in range(40):
        net = sample_random(space, seed)
        _, params, macs = counted(net)
        c = net_cost(net)
        assert (c.params, c.macs) == (params, macs), net.encode()


def test_memory_traffic_by_hand():
    """conv1x1 16->48 at 32x32, fp32: read 16*1024 activations + 768 weights, write 48*1024."""
    net = create_preset("shiftresnet20_e3")
    layer = next(x for x in net_cost(net).layers if x.name == "stages.0.0.conv1")
    assert layer.bytes_read == (16 * 1024 + 16 * 48) * 4 and layer.bytes_written == 48 * 1024 * 4
    shift = next(x for x in net_cost(net).layers if x.name == "stages.0.0.shift")
    assert shift.traffic == 2 * 48 * 1024 * 4 and shift.macs == 0 and shift.params == 0
    fused = next(x for x in net_cost(net, fuse_shift=True).layers if x.name == "stages.0.0.shift")
    assert fused.traffic == 0  # folded into the next 1x1 convolution's loads
    half = net_cost(net, dtype_bytes=2)
    assert half.traffic_bytes * 2 == net_cost(net).traffic_bytes
