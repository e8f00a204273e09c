"""Architecture files (YAML) and the `NAME|ARCH.yaml` argument every command takes.

An architecture file is a mapping with the canonical string under `arch`::

    arch: cifar-conv3x3-w16-c3-n10-i32|16:csc-fixed-8c-e3-s1*3|...
    archid: 7e7167f1c919        # optional; checked against `arch` when present
    name: my-net                # optional
    metrics: {accuracy: 0.93}   # optional, informational (written by search and export)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from shiftnas.config import read_yaml
from shiftnas.errors import ArchError

from .genome import NetCfg, archid, decode_net, validate
from .presets import create_preset, is_preset

_KEYS = {"arch", "archid", "name", "metrics"}


def arch_to_dict(net: NetCfg, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"arch": net.encode(), "archid": net.archid}
    if net.name:
        d["name"] = net.name
    if metrics:
        d["metrics"] = metrics
    return d


def save_arch(net: NetCfg, path: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(arch_to_dict(net, metrics), sort_keys=False, width=10_000))
    return path


def arch_from_dict(d: Any, where: str) -> NetCfg:
    if not isinstance(d, dict) or "arch" not in d:
        raise ArchError(f"{where}: an architecture file is a mapping with an `arch` string "
                        f"(the canonical network string); got {type(d).__name__}"
                        f"{' without `arch`' if isinstance(d, dict) else ''}.")
    unknown = set(d) - _KEYS
    if unknown:
        raise ArchError(f"{where}: unknown key {sorted(unknown)[0]!r}; allowed: {sorted(_KEYS)}.")
    if not isinstance(d["arch"], str):
        raise ArchError(f"{where}: `arch` must be a string, got {type(d['arch']).__name__}.")
    try:
        net = decode_net(d["arch"])
    except ArchError as exc:
        raise ArchError(f"{where}: `arch`: {exc}") from None
    if "archid" in d and str(d["archid"]) != archid(net):
        raise ArchError(f"{where}: `archid` {d['archid']!r} does not match the `arch` string "
                        f"(whose archid is {archid(net)!r}); fix or delete `archid`.")
    if d.get("name"):
        net = dataclasses.replace(net, name=str(d["name"]))
    return net


def load_arch(spec: str | Path, *, classes: int | None = None, input_size: int | None = None,
              in_chans: int | None = None, check: bool = True) -> NetCfg:
    """A preset name, an architecture YAML file, or a canonical network string -> `NetCfg`."""
    spec = str(spec)
    if is_preset(spec):
        net = create_preset(spec)
    elif spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
        net = arch_from_dict(read_yaml(spec, "architecture file", ArchError), spec)
    elif "|" in spec:
        net = decode_net(spec)
    else:
        raise ArchError(f"{spec!r} is neither a preset name (`shiftnas presets` lists them), "
                        f"an architecture .yaml file, nor a network string.")
    over = {k: v for k, v in (("classes", classes), ("input_size", input_size),
                              ("in_chans", in_chans)) if v is not None}
    if over:
        net = dataclasses.replace(net, **over)
    if not check:
        return net
    try:
        return validate(net)
    except ArchError as exc:
        raise ArchError(f"{spec}: {exc}") from None
