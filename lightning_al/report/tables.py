"""Metric tables of a study: every per-round metric (long), final metrics by strategy × m, cost per cell.

A metric is any numeric key of a ``metrics.jsonl`` row except the row's coordinates (round, labeled, epoch,
step). Main metrics are the un-slashed keys of quality evaluations (``heldout/loss``, ``bbh/exact_match``...);
per-task keys (``exact_match/boolean_expressions``) and the ``cost`` / ``selection`` rows are not main metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from lightning_al.report.runs import Run, is_number, strategy_order

#: Keys of a metrics row that locate it rather than measure something.
COORDINATES: tuple[str, ...] = ("round", "labeled", "epoch", "step", "evaluation")
#: Evaluations that are bookkeeping rather than model quality: reported in their own tables.
NON_QUALITY: tuple[str, ...] = ("cost", "selection")
#: Cost columns shown first, in this order (any other numeric key of the cost row follows).
COST_KEYS: tuple[str, ...] = ("tokens_scored", "tokens_trained", "wall_seconds", "scoring_passes")
LONG_COLUMNS = ["run", "strategy", "m", "seed", "finished", "round", "labeled", "evaluation", "metric", "value"]


def metrics_long(runs: Sequence[Run]) -> pd.DataFrame:
    """Every numeric metric of every run and round, one row each (columns: ``LONG_COLUMNS``)."""
    rows: list[dict[str, Any]] = []
    for run in runs:
        for record in run.metrics.to_dict("records"):
            ident = {
                "run": run.name, "strategy": run.strategy, "m": run.rounds, "seed": run.seed,
                "finished": run.finished, "round": record.get("round"), "labeled": record.get("labeled"),
                "evaluation": str(record.get("evaluation", "")),
            }
            for key, value in record.items():
                if key not in COORDINATES and is_number(value):
                    rows.append({**ident, "metric": key, "value": float(value)})
    frame = pd.DataFrame(rows, columns=LONG_COLUMNS)
    for column in ("round", "labeled"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def main_metrics(long: pd.DataFrame) -> pd.DataFrame:
    """Rows of the main metrics only, with a ``key`` column ``<evaluation>/<metric>``."""
    # Per-task / per-subject keys ("exact_match/navigate") and example counts are not main metrics.
    keep = (~long["evaluation"].isin(NON_QUALITY) & ~long["metric"].str.contains("/", regex=False)
            & (long["metric"] != "examples"))
    out = long[keep].copy()
    out["key"] = out["evaluation"] + "/" + out["metric"]
    return out


def final_long(runs: Sequence[Run]) -> pd.DataFrame:
    """Final (round m-1 of finished runs) value of each main metric: mean, std (ddof=1) and n over seeds.

    Columns: strategy, m, evaluation, metric, key, mean, std, n. Unfinished runs are left out.
    """
    columns = ["strategy", "m", "evaluation", "metric", "key", "mean", "std", "n"]
    finished = [run for run in runs if run.finished]
    main = main_metrics(metrics_long(finished))
    main = main[main["round"] == main["m"] - 1]
    if main.empty:
        return pd.DataFrame(columns=columns)
    grouped = main.groupby(["strategy", "m", "evaluation", "metric", "key"], sort=False)["value"]
    out = grouped.agg(mean="mean", std="std", n="count").reset_index()
    return _sort_cells(out)[columns]


def final_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per (strategy, m) of finished runs: n_seeds, then ``<key>:mean`` and ``<key>:std`` per main metric.

    std is the sample standard deviation over seeds (ddof=1; NaN with one seed).
    """
    finished = [run for run in runs if run.finished]
    cells: dict[tuple[str, int], int] = {}
    for run in finished:
        cells[(run.strategy, run.rounds)] = cells.get((run.strategy, run.rounds), 0) + 1
    table = pd.DataFrame([{"strategy": s, "m": m, "n_seeds": n} for (s, m), n in cells.items()],
                         columns=["strategy", "m", "n_seeds"])
    long = final_long(finished)
    for key in dict.fromkeys(long["key"]):
        part = long[long["key"] == key].set_index(["strategy", "m"])
        index = pd.MultiIndex.from_frame(table[["strategy", "m"]])
        table[f"{key}:mean"] = part["mean"].reindex(index).to_numpy()
        table[f"{key}:std"] = part["std"].reindex(index).to_numpy()
    return _sort_cells(table).reset_index(drop=True)


def cost_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Per run (cell strategy × m × seed): the values of its last ``cost`` row (cumulative up to that round)."""
    rows: list[dict[str, Any]] = []
    for run in runs:
        metrics = run.metrics
        if metrics.empty or "evaluation" not in metrics.columns:
            continue
        cost = metrics[metrics["evaluation"] == "cost"]
        if cost.empty:
            continue
        last = cost.sort_values("round").iloc[-1].to_dict()
        values = {k: v for k, v in last.items() if k not in COORDINATES and is_number(v)}
        ordered = {k: values.get(k) for k in COST_KEYS} | {k: v for k, v in values.items() if k not in COST_KEYS}
        rows.append({"run": run.name, "strategy": run.strategy, "m": run.rounds, "seed": run.seed,
                     "finished": run.finished, "round": last.get("round"), "labeled": last.get("labeled"), **ordered})
    return pd.DataFrame(rows)


def _sort_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort by strategy (random first) then m, keeping the row order within a cell."""
    if frame.empty:
        return frame
    order = frame["strategy"].map(strategy_order)
    return frame.assign(_s=order, _m=frame["m"]).sort_values(["_s", "_m"], kind="stable").drop(columns=["_s", "_m"])


def format_value(value: Any, digits: int = 4) -> str:
    """A table cell: '' for missing, ``digits`` significant digits for floats, str() otherwise."""
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def mean_std(mean: float, std: float, digits: int = 4) -> str:
    """``mean ± std``; just the mean when std is undefined (a single seed)."""
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return format_value(mean, digits)
    if abs(std) <= 1e-12 * max(abs(mean), 1.0):  # equal values' std in floating point (3e-17): zero
        std = 0.0
    return f"{mean:.{digits}g} ± {std:.2g}"


def to_markdown(frame: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (no ``tabulate`` needed); '|' in cells is escaped."""
    def cell(value: Any) -> str:
        if hasattr(value, "item") and not isinstance(value, str):
            value = value.item()  # numpy scalar -> Python scalar
        return format_value(value, digits).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(str(c).replace("|", "\\|") for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
