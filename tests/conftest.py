"""Test-wide setup: Triton runs under its CPU interpreter when there is no GPU."""

from __future__ import annotations

import os

import torch

# Must happen before any Triton kernel is defined (imports are lazy elsewhere).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# One thread: tiny tensors gain nothing from more, and lose a lot when cores are busy.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    import pytest

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
