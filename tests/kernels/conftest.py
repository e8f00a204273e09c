"""Run the Triton kernel tests under the interpreter when there is no GPU.

The variable must be set before anything imports triton, so it lives here.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
