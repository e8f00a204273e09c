"""Choosing the evaluation device from what a user wrote (`auto`, `cpu`, `cuda`, `cuda:1`)."""

from __future__ import annotations

import torch

from shiftnas.errors import ConfigError


def resolve_device(name: str, where: str = "device") -> str:
    """`auto` is `cuda` when torch sees a GPU, else `cpu`; anything else must exist here."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{where}: {name!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{where}: {name!r} was asked for but torch sees no CUDA device; "
                              f"use auto or cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{where}: {name!r} does not exist; this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s).")
    elif dev.type != "cpu":
        raise ConfigError(f"{where}: {name!r} is not supported; use auto, cpu, cuda or cuda:N.")
    return name
