"""Presets: the spec's exact numbers, its layouts, and the whole registry builds and trains a step."""

from __future__ import annotations

import pytest
import torch

from shiftnas.evaluators.cost import net_cost
from shiftnas.searchspace import build_model, create_preset, list_presets


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_spec_numbers():
    assert n_params(build_model(create_preset("resnet20"))) == 272_474
    net = create_preset("shiftresnet20_e3")
    assert n_params(build_model(net)) == 95_642
    assert net_cost(net).macs == 16_433_792


def test_shiftresnet_layout_follows_the_spec():
    # Hand count of section 6: stem 464, then per csc block conv1x1 + BN + conv1x1 + BN (+ projection).
    def csc(cin, cout, e, proj):
        m = e * cout
        return cin * m + 2 * m + m * cout + 2 * cout + (cin * cout + 2 * cout if proj else 0)

    for depth in (20, 56, 110):
        n = (depth - 2) // 6
        for e in (1, 3, 6, 9):
            expect = 464 + 64 * 10 + 10
            for cin, cout in ((16, 16), (16, 32), (32, 64)):
                expect += csc(cin, cout, e, cin != cout) + (n - 1) * csc(cout, cout, e, False)
            assert n_params(build_model(create_preset(f"shiftresnet{depth}_e{e}"))) == expect


def test_asresnet_layout_follows_the_spec():
    net = create_preset("asresnet20_w16_e1")
    m = build_model(net)
    assert isinstance(m.stem[0], torch.nn.Conv2d) and len(m.stem) == 1  # no BN in the stem
    assert isinstance(m.head_norm, torch.nn.BatchNorm2d)  # ends with BN -> ReLU -> pool -> Linear
    first = m.stages[1][0]
    assert first.shift.stride == 2 and first.conv2.stride == (1, 1)  # stride in the shift
    assert first.shortcut.conv.stride == (2, 2) and isinstance(first.shortcut.bn, torch.nn.Identity)
    # A parametric name not in the list still works.
    assert create_preset("asresnet110_w24_e2").stages[0].width == 24

    img = build_model(create_preset("asresnet_w32"))
    assert [len(s) for s in img.stages] == [1, 3, 4, 6, 3]
    assert img.stages[0][0].shortcut is None  # the extra block: width w, stride 1
    assert img.stages[1][0].shortcut is not None  # stride 2 with w -> w: projection anyway
    assert img.fc.in_features == 256 and img.fc.out_features == 1000


def test_shift4c_layout_follows_the_spec():
    m = build_model(create_preset("shift4c_resnet50"), fuse=False)  # the blocks as written
    assert [len(s) for s in m.stages] == [3, 4, 6, 3]
    b = m.stages[1][0]
    assert b.conv1.out_channels == 128 and b.conv3.out_channels == 512  # M = planes, C_out = 4 planes
    assert isinstance(b.pool, torch.nn.AvgPool2d) and isinstance(b.shortcut.pool, torch.nn.AvgPool2d)
    assert b.shift0.nbhd == "4c" and b.shift2.nbhd == "4c"  # multi placement
    assert isinstance(m.stem[3], torch.nn.MaxPool2d) and m.stem[0].kernel_size == (7, 7)
    flat = create_preset("shift4c_flat_resnet35")
    assert [s.depth for s in flat.stages] == [1, 1, 8, 1]
    assert build_model(flat).stages[0][0].conv1.out_channels == 256  # M = C_out


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_builds_runs_and_backpropagates(name):
    net = create_preset(name)
    size = 16 if net.skeleton == "cifar" else 32  # small inputs keep the registry test fast
    net = net.replace(input_size=size)
    torch.manual_seed(0)
    model = build_model(net)
    x = torch.randn(2, 3, size, size)
    y = model(x)
    assert y.shape == (2, net.classes) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert n_params(model) == net_cost(net).params
