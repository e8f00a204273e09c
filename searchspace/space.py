"""Search-space files (YAML) and sampling from them.

A space says which values every per-block and per-stage choice may take, and
whether a block choice is drawn per block, shared by a stage, or shared by the
whole network. Sampling is define-by-run: `sample(space, trial)` asks an
Optuna trial only the questions the architecture needs (a block that does not
exist, or a field its family does not use, asks nothing), and
`sample_random(space, rng)` answers the same questions from a numpy generator.

File format (every key optional except `stages`; see spaces/cifar_shift.yaml)::

    name: my_space
    skeleton: cifar            # cifar | imagenet
    stem: conv3x3              # see genome.STEMS
    stem_width: 32             # an int, or a list to choose from
    in_chans: 3                # usually set from the data set by the search
    classes: 10
    input_size: 32
    stages:                    # one entry per stage
      - {depth: [1, 2, 3], width: [32, 48], stride: 1}
      - {depth: [1, 2], width: [64, 96], stride: 2, block: {e: [1, 3]}}   # per-stage override
    block:                     # each: a value, a list, or {choices: [...], per: block|stage|network}
      family: {choices: [csc, asl_preact], per: block}
      nbhd: {choices: [4c, 8c], per: stage}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shiftnas.config import read_yaml
from shiftnas.errors import SpaceError

from .genome import (
    DOWNS,
    FAMILIES,
    FAMILY_FIELDS,
    INITS,
    KINDS,
    MAX_E,
    MAX_MULT,
    NBHDS,
    PLACEMENTS,
    SKELETONS,
    STEMS,
    BlockCfg,
    NetCfg,
    StageCfg,
    allowed_downs,
)

SPACES_DIR = Path(__file__).parent / "spaces"
DEFAULT_SPACE = "cifar_shift"
PER = ("block", "stage", "network")
BLOCK_FIELDS: dict[str, tuple] = {
    "family": FAMILIES, "kind": KINDS, "nbhd": NBHDS, "init": INITS,
    "placement": PLACEMENTS, "e": (), "down": DOWNS, "mult": (),
}
_DEFAULT_BLOCK = {k: getattr(BlockCfg(), k) for k in BLOCK_FIELDS if k != "down"}
_DEFAULT_BLOCK["down"] = ""


@dataclass(frozen=True)
class Choice:
    """The values one decision may take and how widely a drawn value is shared."""

    values: tuple  # allowed values, in the order they are offered to the sampler
    per: str = "block"  # block | stage | network


# What a space that says nothing about a block field means: the genome's default, fixed.
_BASE_BLOCK = {k: Choice((v,), "network") for k, v in _DEFAULT_BLOCK.items()}


@dataclass(frozen=True)
class StageSpace:
    depth: tuple[int, ...]  # allowed block counts
    width: tuple[int, ...]  # allowed output widths
    stride: int  # stride of the stage's first block
    block: Mapping[str, Choice]  # choices for each block field


@dataclass(frozen=True)
class Space:
    """A parsed search space; build one with `load_space`."""

    stages: tuple[StageSpace, ...]
    block: Mapping[str, Choice] = dataclasses.field(default_factory=dict)  # top-level choices
    name: str = "space"
    skeleton: str = "cifar"
    stem: str = "conv3x3"
    stem_width: tuple[int, ...] = (16,)
    in_chans: int = 3
    classes: int = 10
    input_size: int = 32

    def for_data(self, in_chans: int, classes: int, input_size: int) -> Space:
        """The same space for a data set's channels, classes and resolution."""
        return dataclasses.replace(self, in_chans=in_chans, classes=classes, input_size=input_size)

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping that `load_space` reads back to an equal space."""
        def ch(c: Choice) -> dict:
            return {"choices": list(c.values), "per": c.per}
        return {
            "name": self.name, "skeleton": self.skeleton, "stem": self.stem,
            "stem_width": list(self.stem_width), "in_chans": self.in_chans,
            "classes": self.classes, "input_size": self.input_size,
            "block": {k: ch(v) for k, v in self.block.items() if v != _BASE_BLOCK[k]},
            "stages": [{"depth": list(s.depth), "width": list(s.width), "stride": s.stride,
                        "block": {k: ch(v) for k, v in s.block.items()
                                  if v != self.block.get(k)}} for s in self.stages],
        }


# ----------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------

_TOP_KEYS = {"name", "skeleton", "stem", "stem_width", "in_chans", "classes", "input_size",
             "stages", "block"}
_STAGE_KEYS = {"depth", "width", "stride", "block"}


def load_space(src: str | Path | Mapping, *, where: str = "space") -> Space:
    """Read a space from a YAML path, a built-in name (`cifar_shift`) or a mapping.

    Raises `SpaceError` naming the field, the value and the rule.
    """
    if isinstance(src, Mapping):
        return _parse(src, where)
    path = Path(src)
    if not path.exists() and (SPACES_DIR / f"{src}.yaml").exists():
        path = SPACES_DIR / f"{src}.yaml"
    if not path.is_file():
        builtin = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
        raise SpaceError(f"space file {str(src)!r} does not exist; give a YAML path or one of "
                         f"the built-in spaces {builtin}.")
    return _parse(read_yaml(path, "space file", SpaceError), str(path))


def _err(where: str, msg: str) -> SpaceError:
    return SpaceError(f"{where}: {msg}")


def _int_list(v: Any, where: str, lo: int = 1) -> tuple[int, ...]:
    vals = v if isinstance(v, list) else [v]
    if not vals or any(isinstance(x, bool) or not isinstance(x, int) or x < lo for x in vals):
        raise _err(where, f"must be an integer >= {lo} or a non-empty list of them, got {v!r}.")
    return tuple(vals)


def _choice(key: str, v: Any, where: str) -> Choice:
    per = "block"
    if isinstance(v, Mapping):
        extra = set(v) - {"choices", "per"}
        if extra or "choices" not in v:
            raise _err(where, f"a choice is a value, a list, or {{choices: [...], per: ...}}; "
                              f"got keys {sorted(v)}.")
        per, v = v.get("per", "block"), v["choices"]
        if per not in PER:
            raise _err(f"{where}.per", f"must be one of {list(PER)}, got {per!r}.")
    vals = tuple(v) if isinstance(v, list) else (v,)
    if not vals:
        raise _err(where, "needs at least one value.")
    for x in vals:
        if key == "e":
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x <= MAX_E:
                raise _err(where, f"expansion ratios must be numbers in (0, {MAX_E}], got {x!r}.")
        elif key == "mult":
            if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= MAX_MULT:
                raise _err(where, f"copies per channel (mult) must be integers in "
                                  f"[0, {MAX_MULT}], got {x!r}.")
        elif x not in BLOCK_FIELDS[key]:
            raise _err(where, f"{x!r} is not a valid {key}; allowed: {list(BLOCK_FIELDS[key])}.")
    if len(set(vals)) != len(vals):
        raise _err(where, f"lists a value twice: {list(vals)}.")
    return Choice(vals, per)


def _block_choices(d: Any, where: str, base: Mapping[str, Choice]) -> dict[str, Choice]:
    if d is None:
        return dict(base)
    if not isinstance(d, Mapping):
        raise _err(where, f"must be a mapping of block fields, got {type(d).__name__}.")
    out = dict(base)
    for k, v in d.items():
        if k not in BLOCK_FIELDS:
            raise _err(f"{where}.{k}", f"unknown block field; allowed: {list(BLOCK_FIELDS)}.")
        out[k] = _choice(k, v, f"{where}.{k}")
    return out


def _parse(d: Any, where: str) -> Space:
    if not isinstance(d, Mapping):
        raise _err(where, f"a space file holds a mapping, got {type(d).__name__}.")
    unknown = set(d) - _TOP_KEYS
    if unknown:
        raise _err(f"{where}.{sorted(unknown)[0]}", f"unknown key; allowed: {sorted(_TOP_KEYS)}.")
    for k, allowed in (("skeleton", SKELETONS), ("stem", STEMS)):
        if k in d and d[k] not in allowed:
            raise _err(f"{where}.{k}", f"must be one of {list(allowed)}, got {d[k]!r}.")
    for k in ("in_chans", "classes", "input_size"):
        if k in d:
            _int_list(d[k], f"{where}.{k}")
            if isinstance(d[k], list):
                raise _err(f"{where}.{k}", f"must be a single integer, got {d[k]!r}.")
    block = _block_choices(d.get("block"), f"{where}.block", _BASE_BLOCK)
    stages_in = d.get("stages")
    if not isinstance(stages_in, list) or not stages_in:
        raise _err(f"{where}.stages", "must be a non-empty list of stages.")
    stages = []
    for i, s in enumerate(stages_in):
        w = f"{where}.stages[{i}]"
        if not isinstance(s, Mapping):
            raise _err(w, f"a stage is a mapping with keys {sorted(_STAGE_KEYS)}.")
        unknown = set(s) - _STAGE_KEYS
        if unknown:
            raise _err(f"{w}.{sorted(unknown)[0]}", f"unknown key; allowed: {sorted(_STAGE_KEYS)}.")
        for k in ("depth", "width"):
            if k not in s:
                raise _err(f"{w}.{k}", "is required.")
        stride = s.get("stride", 1 if i == 0 else 2)
        if stride not in (1, 2) or isinstance(stride, bool):
            raise _err(f"{w}.stride", f"must be 1 or 2, got {stride!r}.")
        stages.append(StageSpace(_int_list(s["depth"], f"{w}.depth"),
                                 _int_list(s["width"], f"{w}.width"), stride,
                                 _block_choices(s.get("block"), f"{w}.block", block)))
    defaults = NetCfg.__dataclass_fields__
    return Space(
        stages=tuple(stages), block=block, name=str(d.get("name", Path(where).stem)),
        skeleton=d.get("skeleton", "cifar"), stem=d.get("stem", "conv3x3"),
        stem_width=_int_list(d.get("stem_width", defaults["stem_width"].default),
                             f"{where}.stem_width"),
        in_chans=d.get("in_chans", 3), classes=d.get("classes", 10),
        input_size=d.get("input_size", 32),
    )


# ----------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------

Suggest = Callable[[str, list], Any]


def sample_with(space: Space, suggest: Suggest) -> NetCfg:
    """Draw a network, asking `suggest(name, choices)` for each decision that matters.

    Names are stable and static (`s1.depth`, `s1.b0.family`, `s2.nbhd`,
    `s1.b0.down.csc`), so each name always has the same choices, as Optuna's
    samplers require. Shared (`per: stage|network`) decisions are asked once.
    A block's fields are asked in `FAMILY_FIELDS` order, each only if the block
    uses it given the answers so far (`BlockCfg.used_fields`).
    """
    asked: dict[str, Any] = {}

    def pick(name: str, values: tuple) -> Any:
        if len(values) == 1:
            return values[0]
        if name not in asked:
            asked[name] = suggest(name, list(values))
        return asked[name]

    def field(i: int, j: int, key: str, values: tuple | None = None, tag: str = "") -> Any:
        ch = space.stages[i].block[key]
        per = ch.per
        if per == "network" and space.block and ch != space.block.get(key):
            per = "stage"  # a stage's own override is shared within that stage only
        scope = {"block": f"s{i}.b{j}.", "stage": f"s{i}.", "network": ""}[per]
        return pick(f"{scope}{key}{tag}", ch.values if values is None else values)

    stem_width = pick("stem_width", space.stem_width)
    stages = []
    for i, st in enumerate(space.stages):
        depth = pick(f"s{i}.depth", st.depth)
        width = pick(f"s{i}.width", st.width)
        blocks = []
        for j in range(depth):
            kw: dict[str, Any] = {"family": field(i, j, "family"), "stride": st.stride if j == 0 else 1}
            for key in FAMILY_FIELDS[kw["family"]]:
                if key == "stride" or key not in BlockCfg(**kw).used_fields:
                    continue
                if key == "down":
                    ok = allowed_downs(kw["family"], kw.get("placement", "single"))
                    offered = tuple(d for d in space.stages[i].block["down"].values if d in ok)
                    # The name carries what restricts the choices, so each name's choices are fixed.
                    single_b3 = kw["family"] == "bottleneck3" and kw.get("placement") == "single"
                    tag = "." + kw["family"] + ("-single" if single_b3 else "")
                    kw["down"] = field(i, j, "down", offered or ("",), tag)
                else:
                    kw[key] = field(i, j, key)
            blocks.append(BlockCfg(**kw).canonical())
        stages.append(StageCfg(width, tuple(blocks)))
    return NetCfg(tuple(stages), space.skeleton, space.stem, stem_width,
                  space.in_chans, space.classes, space.input_size)


def sample(space: Space, trial) -> NetCfg:
    """Draw a network through an Optuna trial (define-by-run, conditional parameters)."""
    return sample_with(space, trial.suggest_categorical)


def sample_random(space: Space, rng: np.random.Generator | int | None = None) -> NetCfg:
    """Draw a network uniformly at every decision, without Optuna."""
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return sample_with(space, lambda name, values: values[int(gen.integers(len(values)))])
