"""Shift operations: the pure-torch reference, Triton kernels, autograd and dispatch.

Use the modules (`Shift`, `ActiveShift`, `SparseShift`) or the functional ops
in `shiftnas.kernels.dispatch`; both pick the fastest backend for the tensor's device
unless `SHIFTNAS_KERNELS=reference` forces the reference path.
"""

from __future__ import annotations

from ._autotune import compile_seconds
from .dispatch import available_backends, get_backend, register_backend
from .modules import (
    ActiveShift,
    CscInference,
    Shift,
    ShiftConv1x1,
    SparseShift,
    active_shift_parameters,
    shift_parameters,
    sparse_l1,
    spatial,
)
from .reference import NEIGHBOURHOODS, ShiftGroup, channel_offsets, shift_plan

__all__ = [
    "NEIGHBOURHOODS", "ShiftGroup", "shift_plan", "channel_offsets",
    "Shift", "ActiveShift", "SparseShift", "ShiftConv1x1", "CscInference", "spatial", "shift_parameters",
    "active_shift_parameters", "sparse_l1",
    "get_backend", "register_backend", "available_backends", "compile_seconds",
]
