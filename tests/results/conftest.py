"""Shared fixtures of the results tests: one torch thread (small models; threads only contend)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny convolutions on 2 busy cores: one thread 0.2 ms, two threads ~45 ms (OpenMP waits).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
