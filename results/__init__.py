"""Results of a search: the run store, Pareto fronts and hypervolume, plots, reports, and
export of a chosen architecture as standalone PyTorch code and ONNX."""

from __future__ import annotations

from .export import export_arch, export_code, export_onnx
from .pareto import Front, hypervolume, hypervolume_history, nondominated_ranks, pareto_front
from .report import write_report
from .store import Run, TrialRecord, load_run, select_trial

__all__ = [
    "Run", "TrialRecord", "load_run", "select_trial",
    "Front", "pareto_front", "nondominated_ranks", "hypervolume", "hypervolume_history",
    "write_report", "export_code", "export_arch", "export_onnx",
]
