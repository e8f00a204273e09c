"""Every preset family equals the spec's functional float64 implementation with the same weights.

`tests/spec_impl.py` is written from docs/spec.md alone; here the builder's
network (fused shift+1x1 pairs included) and that implementation get the same
randomised weights, BN statistics and shift offsets, and their logits must
agree to 1e-4 relative. A change of a block's meaning (a ReLU moved, a pool
floored instead of ceiled, a tie rounded away from zero) fails here even when
the parameter and MAC counts stay the same.
"""

from __future__ import annotations

import pytest
import torch

from shiftnas.searchspace import build_model, create_preset, load_space, sample_random
from tests import spec_impl


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights of unit-ish gain, BN statistics far from identity, thetas with fractions and halves."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("theta"):
                t = torch.rand(p.shape, generator=g, dtype=p.dtype) * 5 - 2.5
                half = torch.rand(p.shape, generator=g) < 0.2  # exact .5: round half to even
                p.copy_(torch.where(half, torch.floor(t) + 0.5, t))
            elif p.dim() == 1:  # BN affine and the classifier bias
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.5 if name.endswith(
                    "weight") else torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (2.0 / fan_in) ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) * 0.2)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)


def check(net, seed: int = 0, batch: int = 2) -> None:
    torch.manual_seed(seed)
    model = build_model(net).double().eval()
    randomise(model, seed)
    x = torch.randn(batch, net.in_chans, net.input_size, net.input_size, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ours = model(x)
        ref = spec_impl.forward(net, model.state_dict(), x)
    scale = ref.abs().max().item()
    assert scale > 1e-3  # the signal reached the logits
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * scale, msg=net.encode())


# One or two presets of every family; odd input sizes exercise ceil(H / 2) and the borders.
PRESETS = {
    "resnet20": 15,
    "shiftresnet20_e3": 15,
    "shiftresnet56_e1": 8,
    "asresnet20_w16_e3": 15,
    "asresnet_w32": 37,
    "shift4c_resnet50": 37,
    "shift4c_flat_resnet35": 29,
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_matches_the_spec(name):
    check(create_preset(name, input_size=PRESETS[name]), seed=len(name))


@pytest.mark.parametrize("seed", range(6))
def test_sampled_networks_match_the_spec(seed):
    """Samples of the default space cover sparse shifts, 3x3 baselines, 5x5 and every `down`."""
    space = load_space("cifar_shift").for_data(3, 10, 13)
    check(sample_random(space, 1000 + seed), seed=seed)


def test_the_csc_block_is_the_released_one():
    """Wu et al.'s block: ReLU on the branch before the sum, none after it (spec section 4).

    A post-add ReLU is another function with the same parameter and MAC counts:
    with these weights the two differ by a lot.
    """
    model = build_model(create_preset("shiftresnet20_e3")).double().eval()
    randomise(model, 3)
    h = torch.randn(2, 16, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    blk = model.stages[0][1]  # identity shortcut
    with torch.no_grad():
        out = blk(h)
    assert (out < 0).any()  # a post-add ReLU could never give a negative value
    branch = out - h
    assert (branch >= 0).all() and (branch > 0).any()  # the branch itself was ReLU'd
