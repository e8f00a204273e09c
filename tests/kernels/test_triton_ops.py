"""The Triton shift kernels against the pure-torch reference (spec sections 1-3).

Without a GPU these run under the Triton interpreter on the CPU (see
conftest.py), so shapes are small and odd. Every output buffer is poisoned
with NaN before a kernel writes it, so an element a kernel forgets fails.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")
HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

from shiftnas.kernels import _triton_shift, dispatch, triton_ops  # noqa: E402
from shiftnas.kernels import reference as ref  # noqa: E402
from shiftnas.kernels.precision import (  # noqa: E402
    conv_fp32_precision,
    set_conv_fp32_precision,
)

DEVICE = "cuda" if HAS_CUDA else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (atol, rtol) against the fp32 reference evaluated on the same low-precision inputs.
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 1e-2)}
# Channel counts that leave the centre group more than m channels.
CHANNELS = {"4c": 11, "8c": 20, "5x5": 27}
HW = (7, 9)


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    monkeypatch.setattr(_triton_shift, "_poison", True)


@pytest.fixture
def fp32_precision(request):
    """Set the one switch for fp32 GEMMs (`kernels.precision`), "ieee" unless parametrised."""
    old = conv_fp32_precision()
    set_conv_fp32_precision(getattr(request, "param", "ieee"))
    yield conv_fp32_precision()
    set_conv_fp32_precision(old)


def gemm_tolerance(dtype: torch.dtype, precision: str) -> tuple[float, float]:
    """`(a, b)` such that `|got - exact| <= a * sum_k |A_k B_k| + b * |exact|` per GEMM output.

    `a` covers what the products and the fp32 accumulation round: TF32 keeps 10
    mantissa bits of each fp32 input (a product is off by up to 2^-10); exact inputs
    leave the accumulation, with slack for its order (2^-16 ~ sqrt(K) * 2^-24 at
    K ~ 10^4 pixels in dW). `b` is the rounding of the result to the output dtype.
    """
    accumulate = 2.0 ** -16
    if dtype == torch.float32:
        return (2.0 ** -9 if precision == "tf32" else accumulate), 2.0 ** -22
    return accumulate, {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}[dtype]


def assert_gemm_close(got: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor,
                      dtype: torch.dtype, precision: str, name: str) -> None:
    """`got` against a float64 `exact` within `gemm_tolerance`, `bound` = the sums of |products|."""
    a, b = gemm_tolerance(dtype, precision)
    err = (got.detach().double().cpu() - exact).abs()
    bad = ~(err <= a * bound + b * exact.abs())  # NaN counts as bad
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{name} ({dtype}, {precision}): {int(bad.sum())}/{bad.numel()} elements beyond "
            f"the bound; first at {first}: got {got.flatten()[bad.flatten().nonzero()[0]].item()!r}, "
            f"exact {exact[first].item()!r}, allowed {(a * bound + b * exact.abs())[first].item():.3g}")


def fused_exact(x: torch.Tensor, w: torch.Tensor, plan, stride: int, g_dtype: torch.dtype):
    """The fused op's y, dx, dw in float64, and the same on |x|, |w|, |g| (their error bounds)."""
    exact = run(lambda a, b: ref.shift_conv1x1(a, plan, stride, b),
                x.detach().cpu().double(), w.detach().cpu().double(), g_dtype=g_dtype)
    bound = run(lambda a, b: ref.shift_conv1x1(a, plan, stride, b),
                x.detach().cpu().double().abs(), w.detach().cpu().double().abs(),
                g_dtype=g_dtype, g_abs=True)
    return [exact[0], *exact[1]], [bound[0], *bound[1]]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
                 name: str = "", exact: bool = False) -> None:
    """Compare in fp32; on failure report the max abs difference and the first bad index."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    atol, rtol = (0.0, 0.0) if exact else TOL[dtype or actual.dtype]
    bad = ~((a - e).abs() <= atol + rtol * e.abs())  # NaN counts as bad
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        diff = (a - e).abs().nan_to_num(float("inf")).max().item()
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements differ; max abs diff {diff:.3g}; "
            f"first at {first}: got {a[first].item()!r}, expected {e[first].item()!r}")


def make_x(c: int, dtype=torch.float32, channels_last: bool = False, n: int = 2, hw=HW) -> torch.Tensor:
    x = torch.randn(n, c, *hw, device=DEVICE).to(dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def run(fn, *inputs, g_dtype: torch.dtype | None = None, g_abs: bool = False):
    """`fn(*inputs)` and the gradients of every input for one fixed random output gradient.

    `g_dtype` rounds that gradient first, so an fp32 reference sees the same
    values as a low-precision kernel; `g_abs` takes its absolute values.
    """
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    g = g.to(g_dtype or y.dtype).to(device=y.device, dtype=y.dtype)
    g = g.abs() if g_abs else g
    y.backward(g)
    return y, [t.grad for t in leaves]


# ----------------------------------------------------------------------------
# Integer shift: bit-exact in every dtype
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("nbhd", ["4c", "8c", "5x5"])
def test_shift_matches_reference(nbhd, stride, dilation, channels_last):
    plan = ref.shift_plan(CHANNELS[nbhd], nbhd, dilation)
    x = make_x(CHANNELS[nbhd], channels_last=channels_last)
    y, (dx,) = run(lambda t: triton_ops.shift(t, plan, stride), x)
    y_ref, (dx_ref,) = run(lambda t: ref.shift_fn(t, plan, stride), x)
    assert_close(y, y_ref, name="y", exact=True)
    assert_close(dx, dx_ref, name="dx", exact=True)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("stride", [1, 2])
def test_shift_low_precision_is_exact(dtype, stride):
    plan = ref.shift_plan(20, "8c")
    x = make_x(20, dtype)
    y, (dx,) = run(lambda t: triton_ops.shift(t, plan, stride), x)
    y_ref, (dx_ref,) = run(lambda t: ref.shift_fn(t, plan, stride), x)
    assert y.dtype == dtype
    assert_close(y, y_ref, name="y", exact=True)
    assert_close(dx, dx_ref, name="dx", exact=True)


# (channels, nbhd, dilation) in 16-bit channels-last: the kernel moves 32-bit words (two
# channels) in 16-byte chunks (eight), so group sizes that are odd (30 channels of 8c:
# groups of 3, a word straddling two groups) or tiny (54 of 5x5: 2, five groups per chunk)
# exercise the per-word bit masks; an odd channel count (27) cannot be moved as words and
# takes the per-channel gather.
WORD_CASES = [(30, "8c", 1), (30, "8c", 2), (54, "5x5", 1), (26, "4c", 1), (27, "4c", 1), (72, "8c", 1)]


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("c,nbhd,dilation", WORD_CASES, ids=lambda v: str(v))
def test_shift_channels_last_16bit_is_exact(c, nbhd, dilation, stride):
    plan = ref.shift_plan(c, nbhd, dilation)
    x = make_x(c, torch.bfloat16, channels_last=True, hw=(6, 9))
    assert _triton_shift.words_ok(x) == (c % 2 == 0)
    y, (dx,) = run(lambda t: triton_ops.shift(t, plan, stride), x)
    y_ref, (dx_ref,) = run(lambda t: ref.shift_fn(t, plan, stride), x)
    assert_close(y, y_ref, name="y", exact=True)
    assert_close(dx, dx_ref, name="dx", exact=True)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_word_tables_hand_computed():
    """30 bf16 channels, 8c: groups of 3 (g0 = 0-2 ... g7 = 21-23, centre g8 = 24-29);
    word w holds channels 2w (low half) and 2w + 1; a chunk is 8 channels."""
    plan = ref.shift_plan(30, "8c")
    t = _triton_shift.word_tables(plan, torch.device("cpu"), 2)
    # chunk 1 (channels 8-15) meets groups 2, 3, 4, 5: four loads per chunk
    assert t.words == 15 and t.per_chunk == 4
    assert t.first.tolist() == [0, 2, 5, 8] and t.last.tolist() == [2, 5, 7, 8]
    lo, hi, both = 0xFFFF, -65536, -1  # low half (even channel), high half (odd), whole word
    assert t.masks[:, 0].tolist() == [both, 0, 0, 0]  # channels 0, 1: group 0 (k = 0)
    assert t.masks[:, 1].tolist() == [lo, hi, 0, 0]  # channel 2 in group 0, channel 3 in group 1
    assert t.masks[:, 4].tolist() == [lo, hi, 0, 0]  # chunk 1: channel 8 in g2 (k = 0), 9 in g3
    assert t.masks[:, 7].tolist() == [0, 0, lo, hi]  # channel 14 in g4 (k = 2), 15 in g5 (k = 3)
    assert t.offsets[0].tolist() == [-1, -1] and t.offsets[8].tolist() == [0, 0]


def test_shift_large_offsets_zero_whole_channels():
    """Offsets beyond the image give all-zero channels (every element still written)."""
    plan = ref.shift_plan(20, "8c", dilation=9)
    x = make_x(20)
    assert_close(triton_ops.shift(x, plan, 2), ref.shift(x, plan, 2), name="y", exact=True)


# ----------------------------------------------------------------------------
# Active shift
# ----------------------------------------------------------------------------


def make_theta(c: int) -> torch.Tensor:
    theta = torch.empty(c, 2).uniform_(-2.5, 2.5)
    theta[:4] = torch.tensor([[0.0, 0.0], [1.0, -1.0], [-0.5, 0.5], [2.0, 0.25]])  # integer and half
    return theta.to(DEVICE)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("stride", [1, 2])
def test_active_shift_matches_reference(stride, channels_last):
    torch.manual_seed(1)
    x, theta = make_x(13, channels_last=channels_last), make_theta(13)
    y, (dx, dth) = run(lambda a, t: triton_ops.active_shift(a, t, stride), x, theta)
    y_ref, (dx_ref, dth_ref) = run(lambda a, t: ref.active_shift(a, t, stride), x, theta)
    assert_close(y, y_ref, name="y")
    assert_close(dx, dx_ref, name="dx")
    assert_close(dth, dth_ref, torch.float32, name="dtheta")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("stride", [1, 2])
def test_active_shift_low_precision(dtype, stride):
    torch.manual_seed(2)
    x, theta = make_x(13, dtype), make_theta(13)
    y, (dx, dth) = run(lambda a, t: triton_ops.active_shift(a, t, stride), x, theta)
    assert y.dtype == dx.dtype == dtype and dth.dtype == torch.float32
    y_ref, (dx_ref, dth_ref) = run(lambda a, t: ref.active_shift(a, t, stride), x.float(), theta,
                                   g_dtype=dtype)
    assert_close(y, y_ref, dtype, name="y")
    assert_close(dx, dx_ref, dtype, name="dx")
    assert_close(dth, dth_ref, dtype, name="dtheta")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_sparse_shift_matches_reference(stride, channels_last):
    torch.manual_seed(3)
    x, theta = make_x(13, channels_last=channels_last), make_theta(13)
    theta[4:6] = torch.tensor([[1.5, -1.5], [2.5, 0.5]])  # round half to even: 2, -2, 2, 0
    y, (dx, dth) = run(lambda a, t: triton_ops.sparse_shift(a, t, stride), x, theta)
    y_ref, (dx_ref, dth_ref) = run(lambda a, t: ref.sparse_shift(a, t, stride), x, theta)
    assert_close(y, y_ref, name="y", exact=True)
    assert_close(dx, dx_ref, name="dx", exact=True)
    assert_close(dth, dth_ref, torch.float32, name="dtheta")


@pytest.mark.parametrize("op", ["active", "sparse"])
def test_dtheta_is_deterministic(op):
    fn = triton_ops.active_shift if op == "active" else triton_ops.sparse_shift
    x, theta = make_x(20, n=3), make_theta(20)
    _, (_, first) = run(lambda a, t: fn(a, t, 1), x, theta)
    _, (_, second) = run(lambda a, t: fn(a, t, 1), x, theta)
    assert torch.equal(first, second)


# ----------------------------------------------------------------------------
# Fused shift + 1x1 convolution
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("nbhd,dilation", [("4c", 1), ("8c", 1), ("8c", 2), ("5x5", 1)])
def test_shift_conv1x1_matches_reference(nbhd, dilation, stride, channels_last, fp32_precision):
    torch.manual_seed(4)
    c_in = CHANNELS[nbhd] + 10  # K spans more than one tile, groups straddle tiles
    plan = ref.shift_plan(c_in, nbhd, dilation)
    x = make_x(c_in, channels_last=channels_last)
    w = torch.randn(19, c_in, 1, 1, device=DEVICE) / c_in**0.5
    y, (dx, dw) = run(lambda a, b: triton_ops.shift_conv1x1(a, plan, stride, b), x, w)
    exact, bound = fused_exact(x, w, plan, stride, torch.float32)
    for name, got, e, b in zip(("y", "dx", "dw"), (y, dx, dw), exact, bound):
        assert_gemm_close(got, e, b, torch.float32, fp32_precision, name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_shift_conv1x1_low_precision(dtype):
    torch.manual_seed(5)
    plan = ref.shift_plan(20, "8c")
    x, w = make_x(20, dtype), (torch.randn(19, 20, 1, 1, device=DEVICE) / 20**0.5).to(dtype)
    y, (dx, dw) = run(lambda a, b: triton_ops.shift_conv1x1(a, plan, 2, b), x, w)
    exact, bound = fused_exact(x, w, plan, 2, dtype)
    for name, got, e, b in zip(("y", "dx", "dw"), (y, dx, dw), exact, bound):
        assert_gemm_close(got, e, b, dtype, "ieee", name)


def block_exact(h, w, plan, stride, in_bias, bias, res):
    """`relu(conv1x1(w, bias)(shift(relu(h + in_bias)))) + res` in float64 (spec-order channels)."""
    d = lambda t: None if t is None else t.detach().cpu().double()  # noqa: E731
    a = torch.relu(d(h) + d(in_bias).view(1, -1, 1, 1))
    y = torch.relu(torch.nn.functional.conv2d(ref.shift(a, plan, stride), d(w), d(bias)))
    return y + d(res), (d(h).abs(), d(w).abs())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("config", ["kernel", "two-pass"])
def test_fused_block_forward_matches_float64(dtype, channels_last, stride, config, fp32_precision):
    """The csc block's second half in one kernel: bias + ReLU on load, shift, 1x1, bias, ReLU, + res."""
    from shiftnas.kernels import _triton_fused as fused

    torch.manual_seed(7)
    c_in, c_out = 30, 18  # groups of 3: chunks and K tiles straddle groups
    plan = ref.shift_plan(c_in, "8c")
    h = make_x(c_in, dtype, channels_last)
    w = (torch.randn(c_out, c_in, 1, 1, device=DEVICE) / c_in**0.5).to(dtype)
    in_bias = torch.randn(c_in, device=DEVICE) * 0.5
    bias = torch.randn(c_out, device=DEVICE) * 0.5
    ho, wo = ref.out_hw(*HW, stride)
    res = torch.randn(2, c_out, ho, wo, device=DEVICE).to(dtype)
    res = res.to(memory_format=torch.channels_last) if channels_last else res
    name = fused.config_name(fused._gemm_configs()[0]) if config == "kernel" else fused.TWO_PASS
    y = fused.shift_conv1x1_forward(h, plan, stride, w, in_bias=in_bias, bias=bias, relu=True,
                                    residual=res, config=name)
    exact, _ = block_exact(h, w, plan, stride, in_bias, bias, res)
    bound = torch.nn.functional.conv2d(
        ref.shift(torch.relu(h.double().cpu() + in_bias.double().cpu().view(1, -1, 1, 1)).abs(), plan,
                  stride), w.double().cpu().abs()) + bias.double().cpu().abs().view(1, -1, 1, 1) \
        + res.double().cpu().abs()
    assert y.dtype == dtype and y.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # bf16 rounds the activated input once more (relu(h + b) is stored back to bf16 before the dot).
    extra = 2.0 ** -8 if dtype == torch.bfloat16 else 0.0
    a, b = gemm_tolerance(dtype, fp32_precision)
    err = (y.double().cpu() - exact).abs()
    assert (err <= (a + extra) * bound + b * exact.abs()).all(), err.max()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_shift_conv1x1_two_pass_candidates_match(stride, channels_last, fp32_precision):
    """The unfused candidates the autotuner may keep (shift then cuDNN's 1x1; its transpose then
    the shift) give the same y and dx as the float64 reference."""
    from shiftnas.kernels import _triton_fused as fused

    torch.manual_seed(8)
    plan = ref.shift_plan(27, "5x5", 1)
    x = make_x(27, channels_last=channels_last)
    w = torch.randn(13, 27, 1, 1, device=DEVICE) / 27**0.5
    y = fused.shift_conv1x1_forward(x, plan, stride, w, config=fused.TWO_PASS)
    ho, wo = ref.out_hw(*HW, stride)
    g = torch.randn(2, 13, ho, wo, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    g = g.to(memory_format=torch.channels_last) if channels_last else g
    dx = fused.shift_conv1x1_dinput(g, plan, stride, w, HW, config=fused.TWO_PASS)
    exact, bound = fused_exact(x, w, plan, stride, torch.float32)
    assert_gemm_close(y, exact[0], bound[0], torch.float32, fp32_precision, "y")
    assert_gemm_close(dx, exact[1], bound[1], torch.float32, fp32_precision, "dx")


def test_csc_block_inference_runs_as_two_kernels(monkeypatch):
    """A folded csc block through `fuse_blocks` gives the eager folded block's output (float64 ref)."""
    from shiftnas.kernels import ActiveShift, CscInference, Shift, SparseShift, portable
    from shiftnas.kernels import _triton_fused as fused
    from shiftnas.searchspace.blocks import CscBlock
    from shiftnas.searchspace.rewrite import fold_bn, fuse_blocks, fuse_shift_conv

    torch.manual_seed(9)
    calls = []
    forward = fused.shift_conv1x1_forward
    monkeypatch.setattr(fused, "shift_conv1x1_forward", lambda *a, **k: calls.append(k) or forward(*a, **k))
    factory = portable.spatial("fixed", "8c", shifts=(Shift, ActiveShift, SparseShift))
    for c_in, c_out, stride in ((12, 12, 1), (12, 20, 2)):  # identity and projection shortcuts
        block = fuse_shift_conv(CscBlock(c_in, c_out, 30, factory, stride=stride, down="shift"))
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.3, 0.3)
        fast = fuse_blocks(fold_bn(block))
        assert isinstance(fast, CscInference)
        x = make_x(c_in, channels_last=True, hw=(7, 6))
        with torch.no_grad():
            monkeypatch.setenv(dispatch.ENV_VAR, "reference")
            want = fold_bn(block).double()(x.double())
            monkeypatch.setenv(dispatch.ENV_VAR, "triton")
            n = len(calls)
            got = fast(x)
            assert len(calls) == n + 1 and calls[-1]["relu"] and calls[-1]["in_bias"] is not None
            assert (calls[-1]["residual"] is x) == (c_in == c_out and stride == 1)
        assert_close(got, want, torch.float32, name="fused block")
    with torch.enable_grad():  # training or autograd: the block's own modules (the plain fused op)
        n = len(calls)
        fast(make_x(12, channels_last=True, hw=(7, 6)).requires_grad_())
        assert calls[n:] == [{}]


def test_fp32_gemms_follow_torchs_convolution_precision_switch():
    """One switch, torch's own: TF32 exactly where cuDNN convolutions would use it."""
    from shiftnas.kernels._triton_fused import _dot_meta

    cudnn = torch.backends.cudnn
    levels = [lvl for lvl in (getattr(cudnn, "conv", None), getattr(cudnn, "rnn", None), cudnn)
              if lvl is not None and hasattr(lvl, "fp32_precision")]
    saved = [lvl.fp32_precision for lvl in levels] if levels else cudnn.allow_tf32
    try:
        for precision in ("tf32", "ieee"):
            set_conv_fp32_precision(precision)
            assert conv_fp32_precision() == precision
            assert _dot_meta(torch.float32, interpret=False)["DOT_PRECISION"] == precision
            assert _dot_meta(torch.bfloat16, interpret=False)["DOT_PRECISION"] == "ieee"
        for allow, precision in ((True, "tf32"), (False, "ieee")):  # the legacy API too
            cudnn.allow_tf32 = allow
            assert conv_fp32_precision() == precision
        with pytest.raises(ValueError, match="'tf32' or 'ieee'"):
            set_conv_fp32_precision("highest")
    finally:
        if levels:
            for lvl, value in zip(levels, saved):
                lvl.fp32_precision = value
        else:
            cudnn.allow_tf32 = saved


def test_shift_conv1x1_dweight_is_deterministic():
    plan = ref.shift_plan(20, "8c")
    x, w = make_x(20, n=3), torch.randn(17, 20, 1, 1, device=DEVICE)
    _, (_, first) = run(lambda a, b: triton_ops.shift_conv1x1(a, plan, 1, b), x, w)
    _, (_, second) = run(lambda a, b: triton_ops.shift_conv1x1(a, plan, 1, b), x, w)
    assert torch.equal(first, second)


# ----------------------------------------------------------------------------
# Argument checks, poisoning, dispatch
# ----------------------------------------------------------------------------


def test_poison_fills_outputs_with_nan():
    assert torch.isnan(_triton_shift.alloc((2, 3), make_x(3))).all()


def test_bad_arguments_are_rejected():
    x = make_x(20)
    with pytest.raises(ValueError, match="must cover channels"):
        triton_ops.shift(x, ref.shift_plan(18, "8c"), 1)
    with pytest.raises(ValueError, match="stride"):
        triton_ops.shift(x, ref.shift_plan(20, "8c"), 0)
    with pytest.raises(ValueError, match=r"shape \(C, 2\)"):
        triton_ops.active_shift(x, torch.zeros(19, 2, device=DEVICE))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        triton_ops.shift(x.double(), ref.shift_plan(20, "8c"), 1)
    with pytest.raises(ValueError, match="weight"):
        triton_ops.shift_conv1x1(x, ref.shift_plan(20, "8c"), 1, torch.zeros(4, 19, 1, 1, device=DEVICE))


def test_dispatch_selects_triton(monkeypatch):
    x = make_x(20)
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    backend = dispatch.get_backend(x, "triton")
    assert backend is triton_ops.BACKEND and backend.supports(x)
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    assert dispatch.get_backend(x).name == "reference"
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    assert dispatch.get_backend(x).name == "triton"
    plan = ref.shift_plan(20, "8c")
    assert_close(dispatch.shift(x, plan, 2), ref.shift(x, plan, 2), name="y", exact=True)


def test_supports_cpu_only_under_interpreter(monkeypatch):
    cpu = torch.zeros(1, 1, 1, 1)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_ops.supports(cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_ops.supports(cpu) == _triton_shift.INTERPRET


# ----------------------------------------------------------------------------
# GPU only: realistic shapes, compiled kernels
# ----------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,fp32_precision", [(torch.float32, "ieee"), (torch.float32, "tf32"),
                                                  (torch.float16, "ieee"), (torch.bfloat16, "ieee")],
                         ids=["fp32", "fp32-tf32", "fp16", "bf16"], indirect=["fp32_precision"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_gpu_realistic_shapes(dtype, channels_last, fp32_precision):
    torch.manual_seed(6)
    plan = ref.shift_plan(64, "8c")
    x = make_x(64, dtype, channels_last, n=8, hw=(32, 32))
    for stride in (1, 2):
        y, (dx,) = run(lambda t, s=stride: triton_ops.shift(t, plan, s), x)
        y_ref, (dx_ref,) = run(lambda t, s=stride: ref.shift_fn(t, plan, s), x)
        assert_close(y, y_ref, name="shift y", exact=True)
        assert_close(dx, dx_ref, name="shift dx", exact=True)
        theta = make_theta(64)
        y, (dx, dth) = run(lambda a, t, s=stride: triton_ops.active_shift(a, t, s), x, theta)
        y_ref, (dx_ref, _) = run(lambda a, t, s=stride: ref.active_shift(a, t, s), x.float(), theta,
                                 g_dtype=dtype)
        assert_close(y, y_ref, dtype, name="active y")
        assert_close(dx, dx_ref, dtype, name="active dx")
        w = (torch.randn(96, 64, 1, 1, device=DEVICE) / 8).to(dtype)
        y, (dx, dw) = run(lambda a, b, s=stride: triton_ops.shift_conv1x1(a, plan, s, b), x, w)
        exact, bound = fused_exact(x, w, plan, stride, dtype)
        for name, got, e, b in zip(("fused y", "fused dx", "fused dw"), (y, dx, dw), exact, bound):
            assert_gemm_close(got, e, b, dtype, fp32_precision, name)
