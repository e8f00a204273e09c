"""The evaluation device: which one a user means, and who may use it while latency is timed.

`resolve_device` turns what a user wrote (`auto`, `cpu`, `cuda`, `cuda:1`) into
a device this machine has. `DeviceLock` keeps a latency measurement alone on
its device across processes: trainers share the device with each other, a
measurement takes it exclusively, and a measurement that is waiting stops new
training from starting (writer preference), so it never waits long.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from shiftnas.errors import ConfigError
from shiftnas.files import cache_dir, file_lock


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


def device_key(device: str | torch.device) -> str:
    """`cpu` or `gpu-N`: the name of a device's lock files."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"gpu-{device.index if device.index is not None else torch.cuda.current_device()}"
    return device.type


class DeviceLock:
    """A reader-writer lock on one device, shared by every process that names the same file.

    Two `flock`s make it: the device lock itself (shared for training,
    exclusive for measuring) and a turnstile that a waiting measurement holds,
    so that no new training starts while it waits. `path=None` locks nothing;
    `"auto"` uses `cache_dir()/<cpu|gpu-N>.lock`.
    """

    def __init__(self, device: str | torch.device, path: str | Path | None = "auto"):
        if path == "auto":
            path = cache_dir() / f"{device_key(device)}.lock"
        self.path = None if path is None else Path(path)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the device alone (a latency measurement)."""
        if self.path is None:
            yield
            return
        with file_lock(self._turnstile), file_lock(self.path):
            yield

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Use the device beside other trainers, but never during a measurement."""
        if self.path is None:
            yield
            return
        with file_lock(self._turnstile):
            pass  # wait here while a measurement waits for the device
        with file_lock(self.path, shared=True):
            yield

    @property
    def _turnstile(self) -> Path:
        assert self.path is not None
        return self.path.with_name(self.path.name + ".turnstile")


def device_lock(device: str | torch.device, path: str | Path | None = "auto"):
    """Hold `device` exclusively for the block (a shorthand for `DeviceLock(...).exclusive()`)."""
    return DeviceLock(device, path).exclusive()
