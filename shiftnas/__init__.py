"""shiftnas: neural architecture search over the shift design space.

The installed package is `shiftnas` alone; its parts live in the repository's
top-level folders and install as subpackages:

- `shiftnas.searchspace`: the genome, canonical strings, space files, sampling,
  the builder and the presets;
- `shiftnas.kernels`: the shift ops (pure-torch reference, Triton kernels, dispatch);
- `shiftnas.evaluators`: analytic cost, data sets, proxy training, latency, proxies;
- `shiftnas.nas`: budget files, the trial loop, the search drivers, pruning, the CLI;
- `shiftnas.results`: Pareto fronts, hypervolume, plots, reports, export;
- `shiftnas.record` (in `shiftnas/record/`): the search's record, the Optuna study.

`shiftnas.errors` and `shiftnas.config` sit below all of them. The names
below are the public API; they are imported on first use, so
`import shiftnas` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ArchError, ConfigError, DataError, ShiftNASError, SpaceError, StorageError

__version__ = "0.2.0"

# public name -> the module that defines it
_LAZY = {
    "BlockCfg": "shiftnas.searchspace",
    "StageCfg": "shiftnas.searchspace",
    "NetCfg": "shiftnas.searchspace",
    "encode_net": "shiftnas.searchspace",
    "decode_net": "shiftnas.searchspace",
    "build_model": "shiftnas.searchspace",
    "create_preset": "shiftnas.searchspace",
    "list_presets": "shiftnas.searchspace",
    "load_arch": "shiftnas.searchspace",
    "load_space": "shiftnas.searchspace",
    "sample": "shiftnas.searchspace",
    "sample_random": "shiftnas.searchspace",
    "net_cost": "shiftnas.evaluators",
    "load_data": "shiftnas.evaluators",
    "train": "shiftnas.evaluators",
    "measure_latency": "shiftnas.evaluators",
    "load_budget": "shiftnas.nas.budget",
    "run_search": "shiftnas.nas.commands",
    "open_run": "shiftnas.record",
    "pareto_front": "shiftnas.results",
    "export_arch": "shiftnas.results",
}

__all__ = [
    "__version__",
    "ShiftNASError", "ArchError", "SpaceError", "ConfigError", "DataError", "StorageError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'shiftnas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
