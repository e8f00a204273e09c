"""Export of a chosen architecture: standalone PyTorch code, its arch file, weights and ONNX.

`export_code(net, metrics)` writes the source of a `model.py` that imports only
torch and implements every shift inline, exactly as SHIFT_SPEC.md defines it:

- fixed shift: zero pad, one strided slice per contiguous channel group, concat
  (ONNX: Pad, Slice, Concat);
- active shift: the bilinear map of spec section 2 written as two per-channel
  sampling matrices, ``y = M_rows @ x @ M_cols^T`` (ONNX: Floor, Equal, MatMul);
- sparse shift: the same matrices at ``round(theta)`` (half to even, like
  ``torch.round`` and ONNX ``Round``), with a straight-through backward in training.

The exported model has the same module tree as `searchspace.build_model(net)`,
so state dicts load either way with ``strict=True``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from shiftnas.errors import ConfigError
from shiftnas.kernels.reference import NEIGHBOURHOODS
from shiftnas.searchspace import NetCfg, decode_net, save_arch, validate
from shiftnas.searchspace.genome import SHIFT_KINDS, mid_width

__all__ = ["export_code", "export_arch", "export_onnx", "export_trial"]

# ----------------------------------------------------------------------------
# Source templates (each emitted only when the architecture uses it)
# ----------------------------------------------------------------------------

_HELPERS = '''
def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


def conv3x3(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, groups=groups, bias=False)


def avgpool2x2() -> nn.AvgPool2d:
    # ceil_mode keeps ceil(H / 2) on odd sizes, averaging only real pixels.
    return nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)
'''

_PLAN = '''
def shift_plan(channels: int, nbhd: str) -> list[tuple[int, int, int, int]]:
    """Contiguous channel groups `(c0, c1, dy, dx)`: with m = C // G, non-centre group g
    takes channels [g*m, (g+1)*m) in the neighbourhood's order; the centre group the rest."""
    offsets = NEIGHBOURHOODS[nbhd]
    m = channels // (len(offsets) + 1)
    if m == 0:
        raise ValueError(f"a {nbhd} shift needs at least {len(offsets) + 1} channels, got {channels}")
    plan = [(g * m, (g + 1) * m, dy, dx) for g, (dy, dx) in enumerate(offsets)]
    return plan + [(len(offsets) * m, channels, 0, 0)]
'''

_FIXED = '''
class Shift(nn.Module):
    """Fixed integer shift (spec 1): y[n,c,i,j] = x[n,c,i*s+dy_c, j*s+dx_c], zero outside.

    Zero pad by the largest offset, then one strided slice per channel group and a
    concat: plain Pad/Slice/Concat in ONNX. No parameters.
    """

    def __init__(self, channels: int, nbhd: str, stride: int = 1):
        super().__init__()
        self.channels, self.nbhd, self.stride = channels, nbhd, stride
        self.plan = shift_plan(channels, nbhd)
        self.pad = max(max(abs(dy), abs(dx)) for _, _, dy, dx in self.plan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, s = self.pad, self.stride
        h, w = x.shape[-2:]
        xp = F.pad(x, (p, p, p, p))
        # Rows p+dy, p+dy+s, ... (ceil(h / s) of them) are the sources i*s + dy.
        return torch.cat(
            [xp[:, c0:c1, p + dy:p + dy + h:s, p + dx:p + dx + w:s] for c0, c1, dy, dx in self.plan],
            dim=1,
        )

    def extra_repr(self) -> str:
        return f"{self.channels}, nbhd={self.nbhd}, stride={self.stride}"
'''

_LEARNED = '''
def sampling_matrix(offset: torch.Tensor, n_in: int, n_out: int, stride: int) -> torch.Tensor:
    """Per-channel bilinear sampling weights `(C, n_out, n_in)` along one axis.

    Output index i reads the real position p = i*stride + offset_c: weight 1-u at
    floor(p) and u at floor(p)+1 (u = p - floor(p)); taps outside [0, n_in) are
    simply absent, which is the spec's zero padding. u's derivative is 1, so
    autograd gives spec section 2's gradients.
    """
    a = torch.floor(offset).detach()
    u = (offset - a)[:, None, None]
    src = torch.arange(n_out, device=offset.device, dtype=offset.dtype) * stride
    pos = (a[:, None] + src[None, :])[:, :, None]  # (C, n_out, 1), integers
    grid = torch.arange(n_in, device=offset.device, dtype=offset.dtype)[None, None, :]
    return (1 - u) * (grid == pos).to(offset.dtype) + u * (grid == pos + 1).to(offset.dtype)


def bilinear_shift(x: torch.Tensor, theta: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Active shift (spec 2), theta[c] = (alpha_c, beta_c): y = M_rows @ x @ M_cols^T."""
    h, w = x.shape[-2:]
    ho, wo = (h + stride - 1) // stride, (w + stride - 1) // stride
    rows = sampling_matrix(theta[:, 0], h, ho, stride).to(x.dtype)  # (C, Ho, H)
    cols = sampling_matrix(theta[:, 1], w, wo, stride).to(x.dtype)  # (C, Wo, W)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(1, 2))


class _LearnedShift(nn.Module):
    def __init__(self, channels: int, stride: int = 1, init: str = "grid", nbhd: str = "8c"):
        super().__init__()
        self.channels, self.stride, self.init, self.nbhd = channels, stride, init, nbhd
        # theta[c] = (alpha_c, beta_c): vertical and horizontal offsets of channel c.
        self.theta = nn.Parameter(torch.empty(channels, 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init == "uniform":
                self.theta.uniform_(-1.0, 1.0)
            else:  # start at the neighbourhood's offsets
                for c0, c1, dy, dx in shift_plan(self.channels, self.nbhd):
                    self.theta[c0:c1, 0], self.theta[c0:c1, 1] = float(dy), float(dx)

    def extra_repr(self) -> str:
        return f"{self.channels}, stride={self.stride}, init={self.init}, nbhd={self.nbhd}"
'''

_ACTIVE = '''
class ActiveShift(_LearnedShift):
    """Active Shift Layer (spec 2): learned real-valued offsets, bilinear interpolation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bilinear_shift(x, self.theta, self.stride)
'''

_SPARSE = '''
class SparseShift(_LearnedShift):
    """Sparse Shift Layer (spec 3): integer shift by round(theta) (half to even).

    In training the backward is straight-through: dx is the adjoint of the rounded
    shift, dtheta the active shift's gradient at the real-valued theta.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = bilinear_shift(x, torch.round(self.theta), self.stride)
        if self.training and self.theta.requires_grad:
            real = bilinear_shift(x.detach(), self.theta, self.stride)
            y = y + (real - real.detach())  # adds exactly 0; carries dtheta
        return y

    def l1(self) -> torch.Tensor:
        """`sum |alpha| + |beta|`: the penalty that pushes shifts to zero."""
        return self.theta.abs().sum()
'''

_SHORTCUT = '''
class Shortcut(nn.Module):
    """Projection shortcut: [avgpool 2x2] -> conv1x1 (stride s) -> [BN]."""

    def __init__(self, c_in: int, c_out: int, stride: int, down: str, bn: bool = True):
        super().__init__()
        pooled = stride > 1 and down == "avgpool"
        self.pool = avgpool2x2() if pooled else nn.Identity()
        self.conv = conv1x1(c_in, c_out, 1 if pooled else stride)
        self.bn = nn.BatchNorm2d(c_out) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.pool(x)))
'''

_BLOCKS = {
    "csc": '''
class CscBlock(nn.Module):
    """ShiftResNet block: conv1x1 -> BN -> ReLU -> SHIFT -> conv1x1 -> BN (+ shortcut) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, mid: int, op: OpFactory, stride: int = 1,
                 down: str = "conv"):
        super().__init__()
        self.conv1, self.bn1, self.act1 = conv1x1(c_in, mid), nn.BatchNorm2d(mid), nn.ReLU()
        self.shift = op(mid, stride if down == "shift" else 1)
        self.pool = avgpool2x2() if stride > 1 and down == "avgpool" else nn.Identity()
        self.conv2 = conv1x1(mid, c_out, stride if down == "conv" else 1)
        self.bn2 = nn.BatchNorm2d(c_out)
        projected = stride != 1 or c_in != c_out
        self.shortcut = Shortcut(c_in, c_out, stride, down) if projected else nn.Identity()
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.conv2(self.pool(self.shift(y)))
        return self.act2(self.bn2(y) + self.shortcut(x))
''',
    "asl_preact": '''
class AslPreactBlock(nn.Module):
    """AS-ResNet pre-activation block: a = ReLU(BN(x)); conv1x1 -> BN -> ReLU -> SHIFT -> conv1x1; + shortcut."""

    def __init__(self, c_in: int, c_out: int, mid: int, op: OpFactory, stride: int = 1,
                 down: str = "shift"):
        super().__init__()
        self.bn0, self.act0 = nn.BatchNorm2d(c_in), nn.ReLU()
        self.conv1, self.bn1, self.act1 = conv1x1(c_in, mid), nn.BatchNorm2d(mid), nn.ReLU()
        self.shift = op(mid, stride if down == "shift" else 1)
        self.pool = avgpool2x2() if stride > 1 and down == "avgpool" else nn.Identity()
        self.conv2 = conv1x1(mid, c_out, stride if down == "conv" else 1)
        # The projection reads the pre-activated input and has no BN.
        projected = stride != 1 or c_in != c_out
        self.shortcut = Shortcut(c_in, c_out, stride, down, bn=False) if projected else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act0(self.bn0(x))
        y = self.act1(self.bn1(self.conv1(a)))
        y = self.conv2(self.pool(self.shift(y)))
        return y + (x if self.shortcut is None else self.shortcut(a))
''',
    "bottleneck3": '''
class Bottleneck3Block(nn.Module):
    """Multi-shift residual block: three [shift] + conv1x1 stages, an inner residual around the middle one."""

    def __init__(self, c_in: int, c_out: int, mid: int, op: OpFactory, placement: str = "single",
                 stride: int = 1, down: str = "avgpool"):
        super().__init__()
        multi = placement == "multi"
        self.shift0 = op(c_in, stride if down == "shift" else 1) if multi else nn.Identity()
        self.conv1 = conv1x1(c_in, mid, stride if down == "conv" else 1)
        self.bn1, self.act1 = nn.BatchNorm2d(mid), nn.ReLU()
        self.pool = avgpool2x2() if stride > 1 and down == "avgpool" else nn.Identity()
        self.shift = op(mid, 1)
        self.conv2, self.bn2, self.act2 = conv1x1(mid, mid), nn.BatchNorm2d(mid), nn.ReLU()
        self.shift2 = op(mid, 1) if multi else nn.Identity()
        self.conv3, self.bn3 = conv1x1(mid, c_out), nn.BatchNorm2d(c_out)
        projected = stride != 1 or c_in != c_out
        self.shortcut = Shortcut(c_in, c_out, stride, down) if projected else nn.Identity()
        self.act3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.pool(self.act1(self.bn1(self.conv1(self.shift0(x)))))
        y = self.act2(self.bn2(self.conv2(self.shift(r))) + r)
        y = self.bn3(self.conv3(self.shift2(y)))
        return self.act3(y + self.shortcut(x))
''',
    "basic": '''
class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with BN/ReLU, projection shortcut when shapes change."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, down: str = "conv"):
        super().__init__()
        self.conv1, self.bn1, self.act1 = conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out), nn.ReLU()
        self.conv2, self.bn2 = conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        projected = stride != 1 or c_in != c_out
        self.shortcut = Shortcut(c_in, c_out, stride, down) if projected else nn.Identity()
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(y + self.shortcut(x))
''',
}

_BLOCK_CLASS = {"csc": "CscBlock", "asl_preact": "AslPreactBlock",
                "bottleneck3": "Bottleneck3Block", "basic": "BasicBlock"}

_STEMS = {
    "conv3x3": "nn.Sequential(conv3x3(in_chans, width), nn.BatchNorm2d(width), nn.ReLU())",
    "conv3x3_nobn": "nn.Sequential(conv3x3(in_chans, width))",
    "conv3x3s2_nobn": "nn.Sequential(conv3x3(in_chans, width, 2))",
    "conv7x7s2_maxpool": (
        "nn.Sequential(\n"
        "        nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False),\n"
        "        nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),\n"
        "    )"
    ),
}

_NET = '''
class ShiftNet(nn.Module):
    """Stem, stages of blocks, [BN -> ReLU for pre-activation nets], global pool, Linear."""

    def __init__(self, stem: nn.Module, stages: list[list[nn.Module]], width: int, classes: int,
                 preact_head: bool = False):
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*[nn.Sequential(*blocks) for blocks in stages])
        self.head_norm = nn.BatchNorm2d(width) if preact_head else nn.Identity()
        self.head_act = nn.ReLU() if preact_head else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_act(self.head_norm(self.stages(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.forward_features(x)), 1))
'''

_MAIN = '''
if __name__ == "__main__":
    model = create_model().eval()
    x = torch.randn(1, IN_CHANS, INPUT_SIZE, INPUT_SIZE)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params} parameters; output {tuple(model(x).shape)} for input {tuple(x.shape)}")
'''


def _fmt_metric(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _op_call(kind: str, nbhd: str, init: str) -> str:
    if kind == "fixed":
        return f'spatial("fixed", nbhd="{nbhd}")'
    if kind in ("active", "sparse") and init == "uniform":
        return f'spatial("{kind}", init="uniform")'
    if kind in ("active", "sparse"):
        return f'spatial("{kind}", nbhd="{nbhd}", init="grid")'
    return f'spatial("{kind}")'


def _spatial_factory(kinds: set[str]) -> str:
    branches = {
        "fixed": 'if kind == "fixed":\n            return Shift(channels, nbhd, stride)',
        "active": 'if kind == "active":\n            return ActiveShift(channels, stride, init, nbhd)',
        "sparse": 'if kind == "sparse":\n            return SparseShift(channels, stride, init, nbhd)',
        "dwconv3x3": 'if kind == "dwconv3x3":\n            return conv3x3(channels, channels, stride, groups=channels)',
        "conv3x3": 'if kind == "conv3x3":\n            return conv3x3(channels, channels, stride)',
    }
    body = "\n        ".join(branches[k] for k in branches if k in kinds)
    return f'''
OpFactory = Callable[[int, int], nn.Module]  # (channels, stride) -> the block's spatial op


def spatial(kind: str, nbhd: str = "8c", init: str = "grid") -> OpFactory:
    """The factory of a block's spatial op: a shift or a 3x3 convolution baseline."""

    def make(channels: int, stride: int) -> nn.Module:
        {body}
        raise ValueError(f"unknown spatial op {{kind!r}}")

    return make
'''


def _block_call(family: str, b, c_in: int, c_out: int) -> str:
    cls = _BLOCK_CLASS[family]
    down = f', down="{b.down}"' if b.stride > 1 else ""
    if family == "basic":
        return f"{cls}({c_in}, {c_out}, stride={b.stride}{down})"
    mid = mid_width(b.e, c_out)
    op = _op_call(b.kind, b.nbhd, b.init)
    place = f', placement="{b.placement}"' if family == "bottleneck3" else ""
    return f"{cls}({c_in}, {c_out}, mid={mid}, op={op}{place}, stride={b.stride}{down})"


def export_code(net: NetCfg, metrics: dict[str, Any] | None = None) -> str:
    """The source of a standalone `model.py` (imports only torch) for `net`.

    Its `create_model()` returns a module whose state dict has the same keys and
    shapes as `searchspace.build_model(net)`'s and whose eval-mode forward is the
    same function. Only the block classes and shift kinds `net` uses are emitted.
    """
    net = validate(net)
    blocks = net.blocks
    families = {b.family for _, b, _, _ in blocks}
    kinds = {b.kind for _, b, _, _ in blocks if b.family != "basic"}
    learned = kinds & {"active", "sparse"}
    nbhds = sorted({b.nbhd for _, b, _, _ in blocks if b.family != "basic" and b.kind in SHIFT_KINDS})
    arch = net.encode()

    doc = [f'"""{net.name or "Exported shiftnas architecture"} (archid {net.archid}):'
           " standalone PyTorch model.", "",
           "Architecture (canonical network string, see shiftnas's decode_net):", "",
           "    " + arch.replace("|", "\n    |"), ""]
    if metrics:
        doc += ["Metrics recorded for it:", ""]
        doc += [f"    {k}: {_fmt_metric(v)}" for k, v in metrics.items()]
        doc.append("")
    doc += [
        "Generated by `shiftnas export`; needs only torch. Shifts follow SHIFT_SPEC.md: fixed",
        "(integer, contiguous channel groups, zero padding), active (bilinear, learned theta)",
        "and sparse (learned theta, rounded half to even in the forward pass). The state dict",
        "matches shiftnas's `build_model`, so weights load either way with strict=True:",
        "",
        "    model = create_model()",
        '    model.load_state_dict(torch.load("weights.pt"))',
        '"""',
    ]
    imports = ["from __future__ import annotations", ""]
    if kinds:
        imports += ["from collections.abc import Callable", ""]
    imports += ["import torch"]
    if "fixed" in kinds:
        imports += ["import torch.nn.functional as F"]
    imports += ["from torch import nn"]
    consts = (f"ARCH = {arch!r}\n"
              f"IN_CHANS, NUM_CLASSES, INPUT_SIZE = {net.in_chans}, {net.classes}, {net.input_size}")
    sections = ["\n".join(doc) + "\n\n" + "\n".join(imports) + "\n\n" + consts]
    if nbhds:
        sections[-1] += ("\n\n# Non-centre offsets (dy, dx) of each neighbourhood, in the spec's order."
                         "\nNEIGHBOURHOODS = {\n")
        sections[-1] += "".join(f'    "{nb}": {list(NEIGHBOURHOODS[nb].offsets)},\n'
                                for nb in nbhds) + "}"
    sections.append(_HELPERS)
    if nbhds or learned:
        sections.append(_PLAN)
    if "fixed" in kinds:
        sections.append(_FIXED)
    if learned:
        sections.append(_LEARNED)
        sections += [t for k, t in (("active", _ACTIVE), ("sparse", _SPARSE)) if k in learned]
    if kinds:
        sections.append(_spatial_factory(kinds))
    sections.append(_SHORTCUT)
    sections += [_BLOCKS[f] for f in _BLOCK_CLASS if f in families]
    sections.append(_NET)
    sections.append(f'def make_stem(in_chans: int, width: int) -> nn.Sequential:\n'
                    f'    """Stem: {net.stem}."""\n    return {_STEMS[net.stem]}')
    lines = []
    for i, st in enumerate(net.stages):
        lines.append(f"            [  # stage {i}: width {st.width}")
        lines += [f"                {_block_call(b.family, b, c_in, c_out)},"
                  for path, b, c_in, c_out in blocks if path.startswith(f"s{i}.")]
        lines.append("            ],")
    sections.append(f'''def create_model() -> ShiftNet:
    """The exported architecture, freshly initialised (load trained weights with load_state_dict)."""
    return ShiftNet(
        stem=make_stem(IN_CHANS, {net.stem_width}),
        stages=[
{chr(10).join(lines)}
        ],
        width={net.stages[-1].width},
        classes=NUM_CLASSES,
        preact_head={net.preact_head},
    )


build = create_model  # the same factory under a shorter name''')
    sections.append(_MAIN)
    return "\n\n\n".join(sec.strip("\n") for sec in sections) + "\n"


# ----------------------------------------------------------------------------
# Writing an export directory
# ----------------------------------------------------------------------------


def load_exported(path: str | Path):
    """Import an exported `model.py` as a module (for tests and `--onnx`)."""
    spec = importlib.util.spec_from_file_location(f"shiftnas_export_{abs(hash(str(path)))}", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def export_onnx(model: torch.nn.Module, path: str | Path, in_chans: int, input_size: int,
                exporter: str = "auto") -> Path:
    """Export `model` (in eval mode) to ONNX for `(batch, in_chans, S, S)` inputs, batch dynamic.

    `exporter`: ``dynamo`` (torch.export based; needs torch >= 2.5 and the
    onnxscript package; opset 18), ``torchscript`` (the legacy exporter; opset
    17) or ``auto``: dynamo when onnxscript is importable, else torchscript.
    Every shift lowers to standard operators: Pad/Slice/Concat for fixed shifts,
    MatMul with constant sampling matrices for active and sparse shifts.
    """
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ConfigError(f"`exporter` must be auto, dynamo or torchscript, got {exporter!r}.")
    path = Path(path)
    model = model.eval()
    has_dynamo = "dynamo" in inspect.signature(torch.onnx.export).parameters
    if exporter == "auto":
        exporter = ("dynamo" if has_dynamo and importlib.util.find_spec("onnxscript")
                    else "torchscript")
    kw: dict[str, Any] = dict(input_names=["input"], output_names=["logits"])
    if exporter == "dynamo":
        if not has_dynamo:
            raise ConfigError(f"the dynamo ONNX exporter needs torch >= 2.5, this is "
                              f"{torch.__version__}; use exporter='torchscript'.")
        # Batch 2: torch.export specialises a dimension whose example size is 1.
        x = torch.randn(2, in_chans, input_size, input_size)
        kw.update(dynamo=True, opset_version=18,
                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:
        x = torch.randn(1, in_chans, input_size, input_size)
        kw.update(opset_version=17, do_constant_folding=True,
                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        if has_dynamo:
            kw["dynamo"] = False
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), **kw)
    except Exception as exc:
        hint = ("" if exporter == "dynamo" else
                " (the legacy exporter may be gone from this torch: pip install onnxscript "
                "for the dynamo exporter)")
        raise ConfigError(f"ONNX export to {path} with the {exporter} exporter failed: "
                          f"{type(exc).__name__}: {exc}{hint}") from exc
    return path


def export_arch(net: NetCfg, out_dir: str | Path, metrics: dict[str, Any] | None = None, *,
                weights: str | Path | None = None, onnx: bool = False,
                exporter: str = "auto") -> dict[str, Path]:
    """Write `model.py`, `arch.yaml`, [`weights.pt`] and [`model.onnx`] into `out_dir`.

    `weights` is a state dict file of the builder's model (a run's
    `weights/trial_N.pt`); it is copied, and loaded into the ONNX export.
    Returns the paths written, by kind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str))}
    paths = {"model": out / "model.py", "arch": out / "arch.yaml"}
    paths["model"].write_text(export_code(net, clean or None))
    save_arch(net, paths["arch"], clean or None)
    if weights is not None:
        paths["weights"] = out / "weights.pt"
        shutil.copyfile(weights, paths["weights"])
    if onnx:
        model = load_exported(paths["model"]).create_model()
        if weights is not None:
            state = torch.load(paths["weights"], map_location="cpu", weights_only=True)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ConfigError(f"weights {weights} do not fit the architecture: {exc}") from None
        paths["onnx"] = export_onnx(model, out / "model.onnx", net.in_chans, net.input_size,
                                    exporter)
    return paths


def export_trial(run, trial, out_dir: str | Path, *, onnx: bool = False) -> dict[str, Path]:
    """Export one trial of a run (`results.store.Run`, `TrialRecord`) with its trained weights.

    A duplicate trial (`reused_from`) exports the weights of the trial it reused.
    """
    weights = None
    for n in (trial.number, trial.reused_from):
        if n is not None and run.weights_file(n).is_file():
            weights = run.weights_file(n)
            break
    return export_arch(decode_net(trial.arch), out_dir, {"trial": trial.number, **trial.metrics},
                       weights=weights, onnx=onnx)
