"""One dispatch point for every shift op: the reference or a faster backend.

A backend is registered by name with the four ops below. The choice, in order:
the `backend=` argument, the environment variable `SHIFTNAS_KERNELS`
(`reference`, `cpu`, `triton` or `auto`), then `auto`: the Triton backend for
CUDA tensors when it is registered, the `cpu` backend (`kernels._cpu`: a
one-pass C++ shift, 1-1.5x a `clone` where the reference costs 2-25x) for CPU
tensors, the reference everywhere else.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from shiftnas.errors import ConfigError

from . import _cpu
from . import reference as ref


@dataclass(frozen=True)
class Backend:
    """The ops a backend provides; each is differentiable (autograd-aware)."""

    name: str
    shift: Callable  # (x, plan, stride) -> y
    active_shift: Callable  # (x, theta, stride) -> y
    sparse_shift: Callable  # (x, theta, stride) -> y
    shift_conv1x1: Callable  # (x, plan, stride, weight) -> y
    supports: Callable[[torch.Tensor], bool] = lambda x: True  # can it run on this tensor?
    fused_conv1x1: bool = False  # shift_conv1x1 is one kernel (else the shift, then torch's conv)
    # Inference only: (h, plan, stride, weight, *, in_bias, bias, relu, residual) ->
    # [relu](conv1x1(weight, bias)(shift(relu(h + in_bias)))) [+ residual], the second half
    # of a folded csc block as one kernel (`kernels.modules.CscInference`); None: not offered.
    shift_conv1x1_block: Callable | None = None


_BACKENDS: dict[str, Backend] = {
    "reference": Backend(
        "reference", ref.shift_fn, ref.active_shift, ref.sparse_shift, ref.shift_conv1x1
    ),
    "cpu": Backend(
        "cpu", _cpu.shift_fn, ref.active_shift, _cpu.sparse_shift, _cpu.shift_conv1x1,
        supports=_cpu.supports,
    ),
}
ENV_VAR = "SHIFTNAS_KERNELS"
CHOICES = ("auto", "reference", "cpu", "triton")  # what ENV_VAR may say


def register_backend(backend: Backend) -> None:
    """Make `backend` selectable by name (the Triton kernels call this on import)."""
    _BACKENDS[backend.name] = backend


def available_backends() -> list[str]:
    _load_optional()
    return list(_BACKENDS)


_LOAD_ERRORS: dict[str, str] = {}


def _load_optional() -> None:
    if "triton" not in _BACKENDS:
        try:
            from . import triton_ops  # noqa: F401  (registers itself)
        except ImportError as exc:  # triton is not installed: the reference serves
            _LOAD_ERRORS["triton"] = f"{type(exc).__name__}: {exc}"
            _BACKENDS.setdefault("triton", None)  # type: ignore[arg-type]
        except Exception as exc:  # installed but broken: say so once, then use the reference
            _LOAD_ERRORS["triton"] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"the Triton shift kernels failed to load ({exc}); using the "
                          f"reference ops", RuntimeWarning, stacklevel=3)
            _BACKENDS.setdefault("triton", None)  # type: ignore[arg-type]


def check_env() -> str:
    """The backend `SHIFTNAS_KERNELS` asks for (`auto` when unset); a typo is a `ConfigError`.

    The CLI calls this at start-up, so a bad value stops a command before any work.
    """
    name = os.environ.get(ENV_VAR, "auto").strip() or "auto"
    if name not in CHOICES:
        raise ConfigError(f"environment variable {ENV_VAR}={name!r}: must be one of "
                          f"{list(CHOICES)} (auto picks Triton for CUDA tensors, cpu for CPU "
                          f"tensors and the reference elsewhere); unset it or fix the value.")
    return name


def get_backend(x: torch.Tensor, backend: str | None = None) -> Backend:
    """The backend that runs an op on `x` (see the module docstring for the order)."""
    name = backend or check_env()
    if name == "auto":
        if x.is_cuda:
            _load_optional()
            b = _BACKENDS.get("triton")
            if b is not None and b.supports(x):
                return b
        elif x.device.type == "cpu":
            return _BACKENDS["cpu"]
        return _BACKENDS["reference"]
    _load_optional()
    b = _BACKENDS.get(name)
    if b is None:
        if name in _LOAD_ERRORS:
            raise ConfigError(f"kernel backend {name!r} is unavailable: {_LOAD_ERRORS[name]}; "
                              f"set {ENV_VAR}=auto or reference.")
        known = [k for k, v in _BACKENDS.items() if v is not None]
        raise ConfigError(f"kernel backend must be one of {known + ['auto']}, got {name!r}.")
    if not b.supports(x):
        raise ConfigError(f"kernel backend {name!r} cannot run on a {x.device.type} tensor "
                          f"(set {ENV_VAR}=auto to pick one that can).")
    return b


def shift(x, plan, stride: int = 1, *, backend: str | None = None) -> torch.Tensor:
    return get_backend(x, backend).shift(x, plan, stride)


def active_shift(x, theta, stride: int = 1, *, backend: str | None = None) -> torch.Tensor:
    return get_backend(x, backend).active_shift(x, theta, stride)


def sparse_shift(x, theta, stride: int = 1, *, backend: str | None = None) -> torch.Tensor:
    return get_backend(x, backend).sparse_shift(x, theta, stride)


def shift_conv1x1(x, plan, stride: int, weight, *, backend: str | None = None) -> torch.Tensor:
    return get_backend(x, backend).shift_conv1x1(x, plan, stride, weight)
