"""Mixed precision through every shift op and a whole shift network, on every backend.

Under `torch.autocast` the plain shifts run in their input's dtype and the fused
shift + 1x1 casts like a convolution (`kernels.precision`). Each op, forward
and backward, is compared with a float64 evaluation of the spec's reference on
the same fp32 inputs, within bfloat16's precision (8 significant bits: a
relative error of 2^-8 per rounding); a network is compared with itself in fp32.
Without a GPU the Triton backend runs under the interpreter on CPU tensors;
with one, the same tests also run under CUDA autocast.
"""

from __future__ import annotations

import os

import pytest
import torch

from shiftnas.kernels import ShiftConv1x1, dispatch
from shiftnas.kernels import reference as ref
from shiftnas.searchspace import build_model, decode_net

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _cases() -> list[tuple[str, str]]:
    """(backend, device) pairs this machine can run."""
    cases = [("reference", "cpu"), ("cpu", "cpu")]
    if INTERPRET and not HAS_CUDA:
        cases.append(("triton", "cpu"))
    if HAS_CUDA:
        cases += [("reference", "cuda"), ("triton", "cuda")]
    return cases


CASES = pytest.mark.parametrize("backend,device", _cases(), ids=lambda v: str(v))
PLAN = ref.shift_plan(20, "8c")  # 20 channels: the centre group gets 4, the others 2
BF16_REL = 3e-2  # a few bfloat16 roundings (2^-8 each) on sums that cancel partly


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float64."""
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    return ((g - w).norm() / w.norm().clamp_min(1e-30)).item()


def run(op, inputs: list[torch.Tensor], upstream: torch.Tensor, autocast_on: str | None):
    """`op(*inputs)` and the gradients of `sum(op * upstream)` w.r.t. the inputs."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    if autocast_on:
        with torch.autocast(autocast_on, dtype=torch.bfloat16):
            y = op(*leaves)
    else:
        y = op(*leaves)
    (y.double() * upstream.double()).sum().backward()
    return y, [t.grad for t in leaves]


def f64(op, inputs: list[torch.Tensor], upstream: torch.Tensor):
    """The reference op in float64 on the same values."""
    return run(op, [t.double().cpu() for t in inputs], upstream.cpu(), None)


def make(device: str, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape) * scale).to(device)


@CASES
@pytest.mark.parametrize("stride", [1, 2])
def test_integer_shift_keeps_its_input_dtype_under_autocast(backend, device, stride):
    torch.manual_seed(0)
    x = make(device, 3, 20, 7, 9).bfloat16()  # what an autocast conv hands the next op
    g = make(device, 3, 20, *ref.out_hw(7, 9, stride))
    y, (dx,) = run(lambda t: dispatch.shift(t, PLAN, stride, backend=backend), [x], g, device)
    y_ref, (dx_ref,) = f64(lambda t: ref.shift_fn(t, PLAN, stride), [x], g.bfloat16())
    assert y.dtype == torch.bfloat16 and dx.dtype == torch.bfloat16
    # Moving values is exact; the gradient adds at most one term per element at stride <= 2.
    assert torch.equal(y.double().cpu(), y_ref) and torch.equal(dx.double().cpu(), dx_ref)


@CASES
@pytest.mark.parametrize("kind", ["active", "sparse"])
def test_learned_shifts_run_in_the_input_dtype_and_keep_fp32_offsets(backend, device, kind):
    torch.manual_seed(1)
    x = make(device, 2, 20, 7, 9).bfloat16()
    theta = make(device, 20, 2, scale=1.3)  # an fp32 parameter, as the modules hold it
    g = make(device, 2, 20, 7, 9)
    op = getattr(dispatch, f"{kind}_shift")
    refop = ref.active_shift if kind == "active" else ref.sparse_shift
    y, (dx, dtheta) = run(lambda a, t: op(a, t, 1, backend=backend), [x, theta], g, device)
    y_ref, (dx_ref, dtheta_ref) = f64(lambda a, t: refop(a, t, 1), [x, theta], g)
    assert y.dtype == torch.bfloat16 and dx.dtype == torch.bfloat16
    assert dtheta.dtype == torch.float32  # the offsets' gradient stays in their dtype
    assert rel_err(y, y_ref) < BF16_REL, "y"
    assert rel_err(dx, dx_ref) < BF16_REL, "dx"
    assert rel_err(dtheta, dtheta_ref) < BF16_REL, "dtheta"


@CASES
@pytest.mark.parametrize("stride", [1, 2])
def test_fused_shift_conv1x1_casts_like_a_convolution(backend, device, stride):
    torch.manual_seed(2)
    x = make(device, 2, 20, 7, 9)  # fp32 input: autocast must cast it, as conv2d does
    w = make(device, 6, 20, 1, 1, scale=0.25)  # an fp32 weight
    g = make(device, 2, 6, *ref.out_hw(7, 9, stride))
    y, (dx, dw) = run(lambda a, b: dispatch.shift_conv1x1(a, PLAN, stride, b, backend=backend),
                      [x, w], g, device)
    y_ref, (dx_ref, dw_ref) = f64(lambda a, b: ref.shift_conv1x1(a, PLAN, stride, b), [x, w], g)
    assert y.dtype == torch.bfloat16  # the autocast dtype, like conv2d's output
    assert dx.dtype == torch.float32 and dw.dtype == torch.float32  # the leaves' dtypes
    for name, got, want in (("y", y, y_ref), ("dx", dx, dx_ref), ("dw", dw, dw_ref)):
        assert rel_err(got, want) < BF16_REL, name


ARCH = ("cifar-conv3x3-w16-c1-n10-i9|16:csc-fixed-8c-e2-s1,csc-active-4c-grid-e1-s1"
        "|24:bottleneck3-fixed-4c-multi-e1-s2-davgpool,asl_preact-sparse-8c-grid-e1-s1")


@CASES
def test_a_fixed_shift_network_trains_under_autocast(backend, device, monkeypatch):
    torch.manual_seed(3)
    net = build_model(decode_net(ARCH)).to(device)  # built with the dispatching modules
    x = make(device, 8, 1, 9, 9)
    labels = torch.arange(8, device=device)

    def step(kernels: str, autocast_on: bool):
        monkeypatch.setenv(dispatch.ENV_VAR, kernels)
        net.zero_grad()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast_on):
            logits = net(x)
            loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        return logits.float(), torch.cat([p.grad.flatten() for p in net.parameters()])

    if backend == "triton":
        assert any(isinstance(m, ShiftConv1x1) for m in net.modules())  # the fused op is in it
    logits32, grads32 = step("reference", False)  # the spec's ops in fp32
    logits16, grads16 = step(backend, True)
    # Five blocks deep with every convolution rounding to bfloat16, the logits stay within
    # about 1% of fp32; the gradients within about 15% in norm (BN biases' sums cancel), and
    # so they are compared by direction (measured on CPU: cosine 0.985-0.994 over 3 seeds).
    assert rel_err(logits16, logits32) < 0.03
    assert torch.isfinite(grads16).all()
    cos = torch.nn.functional.cosine_similarity(grads16.double(), grads32.double(), dim=0)
    assert cos.item() > 0.97
