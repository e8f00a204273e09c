"""Shared fixtures: the digits bundle, small networks, a private cache directory."""

from __future__ import annotations

import pytest

from shiftnas.evaluators import DataCfg, load_data
from shiftnas.searchspace import decode_net


@pytest.fixture(scope="session")
def digits():
    return load_data(DataCfg(name="digits", seed=0))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Lock files and caches go to the test's own folder, never to ~/.cache."""
    monkeypatch.setenv("SHIFTNAS_CACHE", str(tmp_path / "cache"))


def _small_net(kind: str = "fixed", family: str = "csc", width: int = 16, in_chans: int = 1,
              size: int = 8, classes: int = 10):
    """A two-stage network on `in_chans x size x size` input; `kind` sets the spatial op."""
    if family == "basic":
        block = "basic"
    else:
        extra = {"fixed": "fixed-8c", "active": "active-8c-grid", "sparse": "sparse-8c-grid"}
        block = f"{family}-{extra.get(kind, kind)}" + ("-single" if family == "bottleneck3" else "") + "-e1"
    s = (f"cifar-conv3x3-w{width}-c{in_chans}-n{classes}-i{size}|{width}:{block}-s1"
         f"|{2 * width}:{block}-s2")
    return decode_net(s)


@pytest.fixture(scope="session")
def small_net():
    """`small_net(kind, family, width, ...)` -> a two-stage `NetCfg` (see `_small_net`)."""
    return _small_net
