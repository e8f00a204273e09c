"""Results of a search: Pareto fronts and hypervolume, plots, reports, and export of a
chosen architecture as standalone PyTorch code and ONNX. Runs are read through
`shiftnas.record` (`open_run`), the one owner of the search's record."""

from __future__ import annotations

from .export import export_arch, export_code, export_onnx, export_trial
from .pareto import (
    Front,
    hypervolume,
    hypervolume_history,
    nondominated_ranks,
    pareto_front,
    select_trial,
)
from .report import write_report

__all__ = [
    "Front", "pareto_front", "nondominated_ranks", "hypervolume", "hypervolume_history",
    "select_trial", "write_report", "export_code", "export_arch", "export_onnx", "export_trial",
]
