"""Shift operations: the pure-torch reference, Triton kernels, autograd and dispatch.

Use the modules (`Shift`, `ActiveShift`, `SparseShift`) or the functional ops
in `kernels.dispatch`; both pick the fastest backend for the tensor's device
unless `SHIFTNAS_KERNELS=reference` forces the reference path.
"""

from __future__ import annotations

from .dispatch import available_backends, get_backend, register_backend
from .modules import (
    ActiveShift,
    Shift,
    SparseShift,
    shift_parameters,
    shift_then_conv,
    sparse_l1,
)
from .reference import NEIGHBOURHOODS, ShiftGroup, channel_offsets, shift_plan

__all__ = [
    "NEIGHBOURHOODS", "ShiftGroup", "shift_plan", "channel_offsets",
    "Shift", "ActiveShift", "SparseShift", "shift_parameters", "sparse_l1", "shift_then_conv",
    "get_backend", "register_backend", "available_backends",
]
