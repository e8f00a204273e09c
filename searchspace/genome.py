"""The genome: frozen dataclasses for a block, a stage and a network, their
compact canonical strings, validation against docs/spec.md, and `archid`.

An architecture is data. Everything else (the builder, the cost model, the
exporter, the search) reads these dataclasses; nothing stores architecture
state in modules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal

from shiftnas.errors import ArchError
from shiftnas.kernels.reference import NEIGHBOURHOODS

MAX_E = 64  # expansion ratios above this are typos, not architectures
MAX_REPEAT = 1000  # most blocks a `block*count` run may stand for
MAX_MULT = 64  # channel multipliers above this are typos, not architectures
FAMILIES = ("csc", "asl_preact", "bottleneck3", "basic")
KINDS = ("fixed", "active", "sparse", "dwconv3x3", "conv3x3")
SHIFT_KINDS = ("fixed", "active", "sparse")
NBHDS = tuple(NEIGHBOURHOODS)
INITS = ("grid", "uniform")
PLACEMENTS = ("single", "multi")
DOWNS = ("conv", "shift", "avgpool")
SKELETONS = ("cifar", "imagenet")
STEMS = ("conv3x3", "conv3x3_nobn", "conv3x3s2_nobn", "conv7x7s2_maxpool")

# Where each family may take its stride (see the block classes in blocks.py).
FAMILY_DOWNS = {
    "csc": ("conv", "shift", "avgpool"),
    "asl_preact": ("shift", "conv", "avgpool"),
    "bottleneck3": ("avgpool", "conv", "shift"),
    "basic": ("conv",),
}
# The stride each family takes when nothing else is said (the published blocks).
DEFAULT_DOWN = {f: d[0] for f, d in FAMILY_DOWNS.items()}
# Block fields that each family may use, in the order they are decided: whether a
# field is used can depend on the ones before it (nbhd on kind and init), never after.
FAMILY_FIELDS = {
    "csc": ("kind", "init", "nbhd", "e", "stride", "down"),
    "asl_preact": ("kind", "init", "nbhd", "e", "stride", "down"),
    "bottleneck3": ("kind", "init", "nbhd", "placement", "e", "stride", "down"),
    "basic": ("mult", "kind", "init", "nbhd", "stride", "down"),
}


def allowed_downs(family: str, placement: str = "single") -> tuple[str, ...]:
    """Where a stride-2 block of this family may take its stride.

    A `single`-placement bottleneck3 has no shift before its first 1x1, so it
    cannot take its stride in a shift.
    """
    downs = FAMILY_DOWNS[family]
    if family == "bottleneck3" and placement == "single":
        downs = tuple(d for d in downs if d != "shift")
    return downs


def mid_width(e: float, c_out: int) -> int:
    """Middle width `M = round(e * C_out)`, rounding halves up (never below 1)."""
    return max(1, math.floor(e * c_out + 0.5))


def out_size(size: int, stride: int) -> int:
    """Spatial size after a stride-`s` op: `ceil(size / s)` (the spec's convention)."""
    return -(-size // stride)


def _fmt_num(v: float) -> str:
    """Shortest exact decimal, never in exponent form (`-` separates tokens)."""
    v = float(v)
    if v.is_integer():
        return str(int(v))
    return format(Decimal(repr(v)), "f")


@dataclass(frozen=True)
class BlockCfg:
    """One residual block. Fields a family does not use are normalised away."""

    family: str = "csc"  # block family: csc | asl_preact | bottleneck3 | basic (spec section 4)
    kind: str = "fixed"  # spatial op: fixed | active | sparse shift, or dwconv3x3 | conv3x3 baselines
    nbhd: str = "8c"  # shift neighbourhood: 4c | 8c | 5x5 (learned shifts: their initial offsets)
    init: str = "grid"  # learned shifts start at the neighbourhood's offsets (grid) or uniform(-1, 1)
    placement: str = "single"  # bottleneck3 only: middle shift only (single) or before every 1x1 (multi)
    e: float = 1.0  # expansion ratio: middle width M = round(e * C_out)
    stride: int = 1  # 1, or 2 to halve the resolution
    down: str = ""  # where the stride is taken: conv | shift | avgpool ("" = the family's default)
    mult: int = 0  # basic only: 0 = 3x3 convs; R >= 1 = each is `kind` over R copies + 1x1 (spec 7)

    def __post_init__(self) -> None:
        _check_choice("family", self.family, FAMILIES)
        _check_choice("kind", self.kind, KINDS)
        _check_choice("nbhd", self.nbhd, NBHDS)
        _check_choice("init", self.init, INITS)
        _check_choice("placement", self.placement, PLACEMENTS)
        if (isinstance(self.e, bool) or not isinstance(self.e, (int, float))
                or not 0 < self.e <= MAX_E):
            raise ArchError(f"`e` must be a number in (0, {MAX_E}], got {self.e!r}.")
        object.__setattr__(self, "e", float(self.e))
        if (isinstance(self.mult, bool) or not isinstance(self.mult, int)
                or not 0 <= self.mult <= MAX_MULT):
            raise ArchError(f"`mult` must be an integer in [0, {MAX_MULT}], got {self.mult!r}.")
        if self.stride not in (1, 2) or isinstance(self.stride, bool):
            raise ArchError(f"`stride` must be 1 or 2, got {self.stride!r}.")
        down = self.down or DEFAULT_DOWN[self.family]
        if down not in FAMILY_DOWNS[self.family]:
            raise ArchError(
                f"`down` must be one of {list(FAMILY_DOWNS[self.family])} for family "
                f"{self.family!r}, got {down!r}."
            )
        object.__setattr__(self, "down", down)

    @property
    def used_fields(self) -> tuple[str, ...]:
        """Fields that change this block's network, in deciding order (the rest are ignored).

        The one rule for "which fields matter": encoding, sampling, validation and
        the builder all ask it.
        """
        used = list(FAMILY_FIELDS[self.family])
        if self.family == "basic" and self.mult == 0:  # plain 3x3 convolutions: no spatial op
            used = [f for f in used if f not in ("kind", "init", "nbhd")]
        if self.kind not in SHIFT_KINDS:
            used = [f for f in used if f not in ("nbhd", "init")]
        elif self.kind == "fixed":
            used = [f for f in used if f != "init"]
        elif self.init == "uniform":
            used = [f for f in used if f != "nbhd"]
        if self.stride == 1:
            used.remove("down")
        return tuple(used)

    def canonical(self) -> BlockCfg:
        """The same block with unused fields at their defaults (equal blocks compare equal)."""
        used = set(self.used_fields)
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name != "family"}
        return dataclasses.replace(
            self, **{k: v for k, v in defaults.items() if k not in used}
        )

    def encode(self) -> str:
        return encode_block(self)



@dataclass(frozen=True)
class StageCfg:
    """A stage: blocks at one output width; only the first block may have a stride."""

    width: int  # output channels of every block in the stage
    blocks: tuple[BlockCfg, ...]  # depth = len(blocks)

    def __post_init__(self) -> None:
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise ArchError(f"stage `width` must be an integer >= 1, got {self.width!r}.")
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.blocks:
            raise ArchError("a stage needs at least one block (depth >= 1).")

    @property
    def depth(self) -> int:
        return len(self.blocks)


@dataclass(frozen=True)
class NetCfg:
    """A whole network: skeleton, stem, stages and the classifier."""

    stages: tuple[StageCfg, ...]
    skeleton: str = "cifar"  # cifar (32x32 input) | imagenet (224x224) : sets the usual stem
    stem: str = "conv3x3"  # conv3x3 (BN, ReLU) | conv3x3_nobn | conv3x3s2_nobn | conv7x7s2_maxpool
    stem_width: int = 16  # stem output channels
    in_chans: int = 3  # input channels (1 for grey-scale data sets)
    classes: int = 10  # classifier outputs
    input_size: int = 32  # input resolution (square) that costs are computed at
    name: str = field(default="", compare=False)  # a preset's name; not part of the architecture

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        _check_choice("skeleton", self.skeleton, SKELETONS)
        _check_choice("stem", self.stem, STEMS)
        for k in ("stem_width", "in_chans", "classes", "input_size"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ArchError(f"`{k}` must be an integer >= 1, got {v!r}.")
        if not self.stages:
            raise ArchError("a network needs at least one stage.")

    @property
    def blocks(self) -> list[tuple[str, BlockCfg, int, int]]:
        """`(path, block, c_in, c_out)` for every block, in order; path is `s{i}.b{j}`."""
        out, c_in = [], self.stem_width
        for i, st in enumerate(self.stages):
            for j, b in enumerate(st.blocks):
                out.append((f"s{i}.b{j}", b, c_in, st.width))
                c_in = st.width
        return out

    @property
    def preact_head(self) -> bool:
        """Pre-activation networks end with BN -> ReLU before pooling (spec, asl_preact)."""
        return self.stages[-1].blocks[-1].family == "asl_preact"

    def encode(self) -> str:
        return encode_net(self)

    @property
    def archid(self) -> str:
        return archid(self)

    def replace(self, **kw) -> NetCfg:
        return dataclasses.replace(self, **kw)

    def for_data(self, in_chans: int, classes: int, input_size: int) -> NetCfg:
        """The same network for a data set's channels, classes and resolution."""
        return dataclasses.replace(self, in_chans=in_chans, classes=classes, input_size=input_size)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ArchError(f"`{name}` must be one of {list(choices)}, got {value!r}.")


# ----------------------------------------------------------------------------
# Canonical strings
# ----------------------------------------------------------------------------

_VOCAB = {
    "kind": KINDS,
    "nbhd": NBHDS,
    "init": INITS,
    "placement": PLACEMENTS,
}


def encode_block(b: BlockCfg) -> str:
    """Canonical string of a block; see `decode_block` for the grammar."""
    used = b.used_fields
    toks = [b.family]
    for f in ("kind", "nbhd", "init", "placement"):
        if f in used:
            toks.append(getattr(b, f))
    if "e" in used:
        toks.append("e" + _fmt_num(b.e))
    if "mult" in used and b.mult:  # 0, the plain basic block, is not written
        toks.append(f"m{b.mult}")
    toks.append(f"s{b.stride}")
    if "down" in used:
        toks.append("d" + b.down)
    return "-".join(toks)


def decode_block(s: str) -> BlockCfg:
    """Parse a block string.

    Grammar: tokens joined by ``-``; the first is the family, then in this order,
    each only where the family uses it:

    - the spatial op ``fixed|active|sparse|dwconv3x3|conv3x3``
    - the neighbourhood ``4c|8c|5x5`` (shift kinds only)
    - the learned-shift initialisation ``grid|uniform`` (active and sparse only)
    - the placement ``single|multi`` (bottleneck3 only)
    - ``e<ratio>``: expansion, e.g. ``e3``, ``e0.25``
    - ``m<copies>``: basic only, each 3x3 conv as the spatial op over that many
      copies of its input and a 1x1 (docs/spec.md section 7), e.g. ``m3``
    - ``s<stride>``: ``s1`` or ``s2``
    - ``d<where>``: where a stride-2 block takes its stride, ``dconv|dshift|davgpool``

    Omitted fields take their defaults; a token a family does not use is an
    error. Example: ``csc-fixed-8c-e3-s2-dconv``, ``basic-s1``, ``basic-sparse-8c-grid-m3-s1``.
    """
    toks = s.strip().split("-")
    if not toks or toks[0] not in FAMILIES:
        raise ArchError(
            f"block {s!r}: must start with a family, one of {list(FAMILIES)}, got {toks[0]!r}."
        )
    kw: dict[str, object] = {"family": toks[0]}
    for t in toks[1:]:
        key = next((k for k, voc in _VOCAB.items() if t in voc), None)
        val: object = t
        if key is None:
            m = re.fullmatch(r"e(\d+(?:\.\d+)?)|s(\d+)|d(\w+)|m(\d+)", t)
            if not m:
                raise ArchError(f"block {s!r}: unknown token {t!r} (see decode_block's grammar).")
            if m.group(1) is not None:
                key, val = "e", float(m.group(1))
            elif m.group(2) is not None:
                key, val = "stride", int(m.group(2))
            elif m.group(3) is not None:
                key, val = "down", m.group(3)
            else:
                key, val = "mult", int(m.group(4))
        if key in kw:
            raise ArchError(f"block {s!r}: field {key!r} is given twice.")
        kw[key] = val
    try:
        b = BlockCfg(**kw)  # type: ignore[arg-type]
    except ArchError as exc:
        raise ArchError(f"block {s!r}: {exc}") from None
    unused = [k for k in kw if k != "family" and k not in b.used_fields and k != "stride"]
    if unused:
        raise ArchError(
            f"block {s!r}: {unused[0]!r} is not used by a {b.family} block "
            f"with kind {b.kind!r} and stride {b.stride}; drop the token."
        )
    return b.canonical()


def encode_net(net: NetCfg) -> str:
    """Canonical string of a network; see `decode_net` for the grammar."""
    head = "-".join(
        [net.skeleton, net.stem, f"w{net.stem_width}", f"c{net.in_chans}",
         f"n{net.classes}", f"i{net.input_size}"]
    )
    stages = []
    for st in net.stages:
        runs: list[list] = []
        for b in st.blocks:
            code = encode_block(b)
            if runs and runs[-1][0] == code:
                runs[-1][1] += 1
            else:
                runs.append([code, 1])
        body = ",".join(c if n == 1 else f"{c}*{n}" for c, n in runs)
        stages.append(f"{st.width}:{body}")
    return "|".join([head, *stages])


def decode_net(s: str) -> NetCfg:
    """Parse a network string.

    Grammar::

        net    := header ("|" stage)+
        header := skeleton "-" stem "-w" stem_width "-c" in_chans "-n" classes "-i" input_size
        stage  := width ":" run ("," run)*
        run    := block ["*" count]          (count consecutive identical blocks)

    Blocks follow `decode_block`. Example:
    ``cifar-conv3x3-w16-c3-n10-i32|16:basic-s1*3|32:basic-s2-dconv,basic-s1*2``.
    The canonical form writes every maximal run of identical blocks as one
    ``block*count``, so `encode_net(decode_net(s)) == s` for canonical `s`.
    """
    parts = s.strip().split("|")
    head = parts[0].split("-")
    if len(head) != 6 or len(parts) < 2:
        raise ArchError(
            f"network string {s[:60]!r}: expected 'skeleton-stem-w<W>-c<C>-n<N>-i<S>|stage|...'."
        )
    skeleton, stem = head[0], head[1]
    nums = {}
    for tok, key in zip(head[2:], ("w", "c", "n", "i")):
        if not re.fullmatch(rf"{key}\d+", tok):
            raise ArchError(f"network header {parts[0]!r}: expected '{key}<int>', got {tok!r}.")
        nums[key] = int(tok[1:])
    stages = []
    for p in parts[1:]:
        m = re.fullmatch(r"(\d+):(.+)", p)
        if not m:
            raise ArchError(f"stage {p!r}: expected '<width>:<block>[,<block>...]'.")
        blocks: list[BlockCfg] = []
        for run in m.group(2).split(","):
            code, _, n = run.partition("*")
            if n and not (n.isdigit() and 1 <= int(n) <= MAX_REPEAT):
                raise ArchError(f"stage {p!r}: repeat count in {run!r} must be an integer "
                                f"from 1 to {MAX_REPEAT}.")
            blocks += [decode_block(code)] * (int(n) if n else 1)
        stages.append(StageCfg(int(m.group(1)), tuple(blocks)))
    return NetCfg(
        stages=tuple(stages), skeleton=skeleton, stem=stem, stem_width=nums["w"],
        in_chans=nums["c"], classes=nums["n"], input_size=nums["i"],
    )


def archid(net: NetCfg) -> str:
    """Stable 12-hex-digit id: SHA-1 of the canonical string (unused fields excluded)."""
    return hashlib.sha1(encode_net(net).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------
# Validation against the spec
# ----------------------------------------------------------------------------


def shift_widths(b: BlockCfg, c_in: int, c_out: int) -> list[int]:
    """Channel counts of every shift in a block (empty when the block has none)."""
    if b.kind not in SHIFT_KINDS or (b.family == "basic" and not b.mult):
        return []
    if b.family == "basic":  # one shift over `mult` copies of each conv's input
        return [b.mult * c_in, b.mult * c_out]
    m = mid_width(b.e, c_out)
    if b.family == "bottleneck3" and b.placement == "multi":
        return [c_in, m, m]
    return [m]


def validate(net: NetCfg) -> NetCfg:
    """Check a network against the spec; raise `ArchError` naming the block. Returns `net`."""
    for path, b, c_in, c_out in net.blocks:
        where = f"block {path} ({encode_block(b)})"
        if not path.endswith(".b0") and b.stride != 1:
            raise ArchError(f"{where}: only the first block of a stage may have stride "
                            f"{b.stride}; use stride 1.")
        if b.stride > 1 and b.down not in allowed_downs(b.family, b.placement):
            raise ArchError(f"{where}: a {b.placement}-placement {b.family} block cannot take "
                            f"its stride in {b.down!r}; use one of "
                            f"{list(allowed_downs(b.family, b.placement))}"
                            + (" or `multi` placement (a shift before the first 1x1)."
                               if b.family == "bottleneck3" else "."))
        groups = NEIGHBOURHOODS[b.nbhd].groups
        if "nbhd" in b.used_fields:  # the groups are real: fixed, or learned from the grid
            for w in shift_widths(b, c_in, c_out):
                if w < groups:
                    raise ArchError(f"{where}: a {b.nbhd} shift needs at least {groups} channels "
                                    f"(one per group), got width {w}; widen the stage, raise e, "
                                    f"or use a smaller neighbourhood.")
    return net
