"""The shift search space: the genome, its strings, space files, sampling, the builder, presets."""

from __future__ import annotations

from .archfile import arch_to_dict, load_arch, save_arch
from .blocks import BLOCKS, ShiftNet
from .builder import block_args, build_model
from .genome import (
    BlockCfg,
    NetCfg,
    StageCfg,
    archid,
    decode_block,
    decode_net,
    encode_block,
    encode_net,
    validate,
)
from .presets import create_preset, is_preset, list_presets, register_preset
from .rewrite import fold_bn, fuse_shift_conv
from .space import Space, load_space, sample, sample_random

__all__ = [
    "BlockCfg", "StageCfg", "NetCfg", "encode_block", "decode_block", "encode_net",
    "decode_net", "archid", "validate",
    "build_model", "block_args", "ShiftNet", "BLOCKS", "fold_bn", "fuse_shift_conv",
    "create_preset", "list_presets", "register_preset", "is_preset",
    "Space", "load_space", "sample", "sample_random",
    "load_arch", "save_arch", "arch_to_dict",
]
