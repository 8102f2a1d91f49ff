"""Reports of active-learning studies, computed from run directories alone (no model is loaded).

``make_report(run_dirs, out)`` writes report.md, CSV tables and PNG figures; ``main`` is ``lightning-al report``.
``paired_table`` compares cells from the runs' per-example evaluation records (paired bootstrap intervals).
The loaders and tables are importable on their own; matplotlib is only imported with the figures.
"""

from __future__ import annotations

from typing import Any

from lightning_al.report.bootstrap import Difference, paired_difference
from lightning_al.report.paired import detectable, paired_table
from lightning_al.report.runs import Run, all_acquired, load_run, load_runs
from lightning_al.report.selection import (
    jaccard,
    overlap_summary,
    overlap_table,
    selection_summary,
    task_composition,
    task_entropy,
)
from lightning_al.report.tables import cost_table, final_long, final_table, metrics_long, to_markdown

__all__ = [
    "Difference", "Run", "all_acquired", "cost_table", "detectable", "final_long", "final_table", "jaccard", "load_run",
    "load_runs", "main", "make_report", "metrics_long", "overlap_summary", "overlap_table", "paired_difference",
    "paired_table", "selection_summary", "task_composition", "task_entropy", "to_markdown",
]


def __getattr__(name: str) -> Any:
    """``make_report`` and ``main`` are imported on first use: they pull in matplotlib."""
    if name in ("make_report", "main"):
        from lightning_al.report import command

        return getattr(command, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
