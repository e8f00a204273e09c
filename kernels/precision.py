"""Numeric policy of the custom shift ops: autocast and fp32 GEMM precision, decided once.

Two rules, both copied from what torch's own convolution does, so a network
computes the same way whether its 1x1 is cuDNN's or our fused kernel:

- **Autocast.** The plain shifts (integer, active, sparse) move values and
  interpolate them: like pooling, they run in their input's dtype (learned
  offsets stay fp32, their gradients come back fp32). The fused shift + 1x1 is
  a convolution: under `torch.autocast` it casts its input and weight to the
  autocast dtype of their device, as `torch.nn.functional.conv2d` does, and the
  casts are differentiable, so an fp32 weight gets an fp32 gradient.
- **fp32 precision.** fp32 GEMMs use TF32 exactly when torch's cuDNN
  convolutions do: `torch.backends.cudnn.conv.fp32_precision` (torch >= 2.9,
  where "none" inherits from `torch.backends.cudnn`, then `torch.backends`),
  or `torch.backends.cudnn.allow_tf32` on older torch. Both default to TF32 for
  convolutions; set `torch.backends.cudnn.conv.fp32_precision = "ieee"` for
  full fp32.
"""

from __future__ import annotations

import torch


def conv_fp32_precision() -> str:
    """`"tf32"` or `"ieee"`: what torch's cuDNN convolutions use for fp32 inputs right now."""
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        # The per-op flag, then its parents; "none" everywhere means full precision. Reading
        # the legacy `allow_tf32` instead raises once the two APIs have been mixed.
        for level in (conv, cudnn, torch.backends):
            value = getattr(level, "fp32_precision", "none")
            if value != "none":
                return "tf32" if value == "tf32" else "ieee"
        return "ieee"
    return "tf32" if cudnn.allow_tf32 else "ieee"


def set_conv_fp32_precision(precision: str) -> None:
    """Set the flag `conv_fp32_precision` reads (tests and benchmarks switch it with this)."""
    if precision not in ("tf32", "ieee"):
        raise ValueError(f"`precision` must be 'tf32' or 'ieee', got {precision!r}.")
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = precision
    else:
        torch.backends.cudnn.allow_tf32 = precision == "tf32"


def autocast_conv_args(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors cast to the autocast dtype of the first one's device, when autocast is on there.

    What autocast does to `conv2d`'s input and weight; a no-op outside autocast.
    """
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in tensors)


__all__ = ["autocast_conv_args", "conv_fp32_precision", "set_conv_fp32_precision"]
