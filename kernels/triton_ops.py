"""The Triton backend of the shift ops, registered with `kernels.dispatch` on import.

The kernels live in `_triton_shift` (integer shift), `_triton_active` (active
and sparse shift) and `_triton_fused` (shift + 1x1 convolution). They run on
CUDA tensors, and on CPU tensors under the Triton interpreter
(`TRITON_INTERPRET=1` set before this module is imported), which is how the
tests check them on a machine without a GPU.

Compile and autotune cost: `compile_seconds()` is the seconds this process
spent compiling Triton kernels and timing autotune candidates so far (take
the difference around a trial), `CompileTimer` the same as a context manager
(`with CompileTimer() as t: ...; t.seconds`), `stats()` the breakdown
(compile / autotune seconds, shape classes tuned here or reused from the
choice file under `$SHIFTNAS_CACHE/triton/`).
"""

from __future__ import annotations

import os

import torch

from ._autotune import CompileTimer, compile_seconds, stats
from ._triton_active import active_shift, sparse_shift
from ._triton_fused import shift_conv1x1, shift_conv1x1_block
from ._triton_shift import INTERPRET, shift
from .dispatch import Backend, register_backend


def supports(x: torch.Tensor) -> bool:
    """True for CUDA tensors, and for CPU tensors while the interpreter is on."""
    if x.is_cuda:
        return True
    return x.device.type == "cpu" and INTERPRET and os.environ.get("TRITON_INTERPRET") == "1"


BACKEND = Backend(
    name="triton",
    shift=shift,
    active_shift=active_shift,
    sparse_shift=sparse_shift,
    shift_conv1x1=shift_conv1x1,
    supports=supports,
    fused_conv1x1=True,
    shift_conv1x1_block=shift_conv1x1_block,
)
register_backend(BACKEND)

__all__ = ["BACKEND", "CompileTimer", "active_shift", "compile_seconds", "shift", "shift_conv1x1",
           "shift_conv1x1_block", "sparse_shift", "stats", "supports"]
