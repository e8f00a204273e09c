"""Rewrites of a built network that keep its function: BN folding, shift+1x1 and block fusion.

Both walk the pairs that blocks declare (`FOLDS` and `fusable` in
`searchspace.blocks`) instead of guessing module names, so renaming a layer
cannot silently stop a rewrite, and a new block family states its own pairs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from shiftnas.kernels import CscInference, Shift, ShiftConv1x1


def fuse_shift_conv(model: nn.Module) -> nn.Module:
    """Run every declared (fixed shift, 1x1 conv) pair as one `ShiftConv1x1`, in place.

    The shift's slot becomes `nn.Identity` and the convolution's slot a
    `ShiftConv1x1` holding the convolution's own parameters, so the state dict
    does not change. Learned shifts and 3x3 ops are left alone.
    """
    for mod in list(model.modules()):
        for op_name, conv_name in getattr(mod, "fusable", ()):
            op, conv = getattr(mod, op_name), getattr(mod, conv_name)
            if (isinstance(op, Shift) and type(conv) is nn.Conv2d and conv.kernel_size == (1, 1)
                    and conv.groups == 1 and conv.stride[0] == conv.stride[1]):
                setattr(mod, conv_name, ShiftConv1x1(op, conv))
                setattr(mod, op_name, nn.Identity())
    return model


@torch.no_grad()
def _fold_pair(parent: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) \
            or bn.running_mean is None or bn.running_var is None:
        return  # a stem without BN, a pair already folded
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    bias = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    setattr(parent, bn_name, nn.Identity())


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every declared (conv, BN) pair folded into the conv.

    BNs that come before their convolution (pre-activation: asl_preact's `bn0`
    and the network's `head_norm`) are not in any pair and stay. The copy
    computes the same function as `model.eval()` up to rounding.
    """
    m = copy.deepcopy(model).eval()
    for mod in list(m.modules()):
        for conv_name, bn_name in getattr(type(mod), "FOLDS", ()):
            _fold_pair(mod, conv_name, bn_name)
    return m


def fuse_blocks(model: nn.Module) -> nn.Module:
    """Run every folded csc block as two kernels (`kernels.CscInference`), in place; inference only.

    Apply after `fold_bn` on a model built with fused shifts: a block whose BNs
    are folded and whose shift reads into `ShiftConv1x1` becomes cuDNN's first
    1x1 and one kernel that applies the bias and ReLU on load, shifts, runs the
    second 1x1 and adds the bias, ReLU and shortcut. Other blocks are left
    alone; the state dict keys gain the wrapper's `block.` prefix. A block
    given as the model itself comes back wrapped.
    """
    if CscInference.eligible(model):
        return CscInference(model)
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if CscInference.eligible(child):
                setattr(mod, name, CscInference(child))
    return model
