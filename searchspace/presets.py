"""Reference architectures of docs/spec.md section 6, registered by name.

Each preset is a genome (`NetCfg`); `create_preset("shiftresnet20_e3")` returns
it, `list_presets("shiftresnet*")` lists names. AS-ResNet names are
parametric: any `asresnet{20,110}_w{W}_e{E}` is understood, a few are listed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable

from shiftnas.errors import ArchError

from .genome import BlockCfg, NetCfg, StageCfg

_PRESETS: dict[str, Callable[[], NetCfg]] = {}


def register_preset(name: str) -> Callable[[Callable[[], NetCfg]], Callable[[], NetCfg]]:
    def deco(fn: Callable[[], NetCfg]) -> Callable[[], NetCfg]:
        _PRESETS[name] = fn
        return fn
    return deco


def list_presets(pattern: str = "*") -> list[str]:
    """Registered preset names matching a shell-style `pattern`, sorted."""
    return sorted(n for n in _PRESETS if fnmatch.fnmatchcase(n, pattern))


def is_preset(name: str) -> bool:
    return name in _PRESETS or _ASRESNET.fullmatch(name) is not None


def create_preset(name: str, *, classes: int | None = None, input_size: int | None = None,
                  in_chans: int | None = None) -> NetCfg:
    """The genome of preset `name`, optionally for another class count, input size or channels."""
    if name in _PRESETS:
        net = _PRESETS[name]()
    elif m := _ASRESNET.fullmatch(name):
        net = _asresnet_cifar(int(m["depth"]), int(m["w"]), float(m["e"]))
    else:
        close = [n for n in _PRESETS if n.startswith(name[:6])][:5]
        hint = f" Did you mean one of {close}?" if close else ""
        raise ArchError(f"unknown preset {name!r}; `shiftnas presets` lists them.{hint}")
    over = {k: v for k, v in (("classes", classes), ("input_size", input_size),
                              ("in_chans", in_chans)) if v is not None}
    return dataclasses.replace(net, name=name, **over)


# ----------------------------------------------------------------------------
# Skeletons
# ----------------------------------------------------------------------------


def _stages(widths, depths, block: BlockCfg, first_stride: tuple[int, ...]) -> tuple[StageCfg, ...]:
    return tuple(
        StageCfg(w, (dataclasses.replace(block, stride=s),) + (block,) * (d - 1))
        for w, d, s in zip(widths, depths, first_stride)
    )


def _cifar(depth: int, block: BlockCfg, widths=(16, 32, 64), stem="conv3x3") -> NetCfg:
    n = (depth - 2) // 6
    return NetCfg(_stages(widths, (n, n, n), block, (1, 2, 2)), "cifar", stem, widths[0])


for _d in (20, 56, 110):
    register_preset(f"resnet{_d}")(lambda d=_d: _cifar(d, BlockCfg("basic")))
    for _e in (1, 3, 6, 9):
        register_preset(f"shiftresnet{_d}_e{_e}")(
            lambda d=_d, e=_e: _cifar(d, BlockCfg("csc", "fixed", "8c", e=e))
        )

_ASRESNET = re.compile(r"asresnet(?P<depth>20|110)_w(?P<w>\d+)_e(?P<e>\d+(\.\d+)?)")


def _asresnet_cifar(depth: int, w: int, e: float) -> NetCfg:
    block = BlockCfg("asl_preact", "active", init="uniform", e=e)
    return _cifar(depth, block, (w, 2 * w, 4 * w), stem="conv3x3_nobn")


for _d in (20, 110):
    for _w in (16, 32, 64):
        for _e in (1, 3, 6):
            register_preset(f"asresnet{_d}_w{_w}_e{_e}")(
                lambda d=_d, w=_w, e=_e: _asresnet_cifar(d, w, e)
            )


def _asresnet_imagenet(w: int) -> NetCfg:
    block = BlockCfg("asl_preact", "active", init="uniform", e=1)
    stages = (StageCfg(w, (block,)),) + _stages(
        (w, 2 * w, 4 * w, 8 * w), (3, 4, 6, 3), block, (2, 2, 2, 2)
    )
    return NetCfg(stages, "imagenet", "conv3x3s2_nobn", w, classes=1000, input_size=224)


for _w in (32, 50, 68):
    register_preset(f"asresnet_w{_w}")(lambda w=_w: _asresnet_imagenet(w))


def _shift4c_resnet(layers: tuple[int, ...], e: float) -> NetCfg:
    block = BlockCfg("bottleneck3", "fixed", "4c", placement="multi", e=e)
    planes = (64, 128, 256, 512)
    stages = _stages(tuple(4 * p for p in planes), layers, block, (1, 2, 2, 2))
    return NetCfg(stages, "imagenet", "conv7x7s2_maxpool", 64, classes=1000, input_size=224)


# ResNet-style bottleneck: M = planes = C_out / 4; the flattened variant: M = C_out.
register_preset("shift4c_resnet50")(lambda: _shift4c_resnet((3, 4, 6, 3), 0.25))
register_preset("shift4c_resnet101")(lambda: _shift4c_resnet((3, 4, 23, 3), 0.25))
register_preset("shift4c_flat_resnet35")(lambda: _shift4c_resnet((1, 1, 8, 1), 1.0))
