"""What the strategies selected: overlap of acquired sets, task mix, lengths, scores and diversity.

All functions are pure: they read the ``acquired`` and ``metrics`` frames of loaded runs, nothing else.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from itertools import combinations
from typing import Any

import pandas as pd

from lightning_al.report.runs import SCORE_COLUMNS, Run, strategy_order

OVERLAP_COLUMNS = ["kind", "group", "pair", "seed", "jaccard", "run_a", "run_b", "n_a", "n_b", "n_common"]


def jaccard(a: set[Hashable], b: set[Hashable]) -> float:
    """|a ∩ b| / |a ∪ b|; two empty sets are identical (1.0)."""
    union = len(a | b)
    return 1.0 if union == 0 else len(a & b) / union


def task_entropy(tasks: Iterable[Hashable]) -> float:
    """Shannon entropy (nats) of the task distribution of an acquired set; 0.0 for an empty or one-task set."""
    counts = Counter(tasks)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


def final_ids(run: Run) -> set[str]:
    """Ids of every example the run acquired, over all its rounds."""
    return set(run.acquired["id"].astype(str)) if "id" in run.acquired.columns else set()


def _overlap_row(kind: str, group: str, a: Run, b: Run) -> dict[str, Any]:
    ids_a, ids_b = final_ids(a), final_ids(b)
    label = f"m={a.rounds} vs m={b.rounds}" if kind == "m" else f"{a.strategy} vs {b.strategy}"
    return {
        "kind": kind, "group": group, "pair": label, "seed": a.seed, "jaccard": jaccard(ids_a, ids_b),
        "run_a": a.name, "run_b": b.name, "n_a": len(ids_a), "n_b": len(ids_b), "n_common": len(ids_a & ids_b),
    }


def overlap_table(runs: Sequence[Run], finished_only: bool = True) -> pd.DataFrame:
    """Jaccard overlap of the final acquired id sets, one row per compared pair of runs with the same seed.

    kind ``m``: same strategy and seed, two values of m (group = the strategy, pair = ``m=2 vs m=4``);
    kind ``strategy``: same m and seed, two strategies (group = ``m=4``, pair = ``entropy vs random``).
    Unfinished runs are left out by default: their sets are incomplete.
    """
    kept = [r for r in runs if r.finished or not finished_only]
    rows: list[dict[str, Any]] = []
    for a, b in combinations(kept, 2):
        if a.seed != b.seed:
            continue
        if a.strategy == b.strategy and a.rounds != b.rounds:
            first, second = (a, b) if a.rounds < b.rounds else (b, a)
            rows.append(_overlap_row("m", a.strategy, first, second))
        elif a.rounds == b.rounds and a.strategy != b.strategy:
            first, second = (a, b) if strategy_order(a.strategy) < strategy_order(b.strategy) else (b, a)
            rows.append(_overlap_row("strategy", f"m={a.rounds}", first, second))
    return pd.DataFrame(rows, columns=OVERLAP_COLUMNS)


def overlap_summary(overlap: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std (ddof=1; NaN for one seed) of the Jaccard overlap over seeds, per (kind, group, pair)."""
    columns = ["kind", "group", "pair", "jaccard_mean", "jaccard_std", "n_seeds"]
    if overlap.empty:
        return pd.DataFrame(columns=columns)
    grouped = overlap.groupby(["kind", "group", "pair"], sort=False)["jaccard"]
    out = grouped.agg(jaccard_mean="mean", jaccard_std="std", n_seeds="count").reset_index()
    return out[columns]


def _lengths_and_scores(frame: pd.DataFrame, score_columns: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "n": len(frame),
        "tasks": int(frame["task"].nunique()) if "task" in frame.columns else 0,
        "task_entropy": task_entropy(frame["task"]) if "task" in frame.columns else float("nan"),
    }
    for column in ("prompt_tokens", "response_tokens"):
        values = pd.to_numeric(frame[column], errors="coerce") if column in frame.columns else pd.Series(dtype=float)
        row[f"{column}_mean"] = values.mean()
        row[f"{column}_median"] = values.median()
    for column in score_columns:
        row[f"{column}_mean"] = pd.to_numeric(frame[column], errors="coerce").mean() if column in frame.columns else float("nan")
    return row


def _selection_metrics(run: Run) -> dict[int, dict[str, Any]]:
    """``metrics.jsonl`` rows of the ``selection`` evaluation, by round."""
    metrics = run.metrics
    if metrics.empty or "evaluation" not in metrics.columns:
        return {}
    rows = metrics[metrics["evaluation"] == "selection"]
    return {int(row["round"]): row for row in rows.to_dict("records")}


def selection_summary(runs: Sequence[Run]) -> pd.DataFrame:
    """Per run: one ``round`` row per acquisition round and one ``final`` row for the cumulative labeled set.

    Columns: n acquired, number of tasks, task entropy (nats), mean/median prompt and response tokens, the mean
    of each score column present in any run (NaN where a run has none, e.g. random), and diversity from the
    ``selection`` metrics (round rows: ``diversity`` of the round's set and ``diversity_labeled`` after it;
    final row: ``diversity_labeled`` of the last round with selection metrics).
    """
    score_columns = [c for c in SCORE_COLUMNS if any(c in run.acquired.columns for run in runs)]
    rows: list[dict[str, Any]] = []
    for run in runs:
        ident = {"run": run.name, "strategy": run.strategy, "m": run.rounds, "seed": run.seed,
                 "finished": run.finished}
        selection = _selection_metrics(run)
        acquired = run.acquired
        rounds = sorted(int(r) for r in acquired["round"].unique()) if not acquired.empty else []
        for r in rounds:
            sel = selection.get(r, {})
            rows.append({
                **ident, "scope": "round", "round": r,
                **_lengths_and_scores(acquired[acquired["round"] == r], score_columns),
                "diversity": sel.get("diversity"), "diversity_labeled": sel.get("diversity_labeled"),
            })
        if rounds:
            last = selection[max(selection)] if selection else {}
            rows.append({
                **ident, "scope": "final", "round": rounds[-1], **_lengths_and_scores(acquired, score_columns),
                "diversity": last.get("diversity_labeled"), "diversity_labeled": last.get("diversity_labeled"),
            })
    frame = pd.DataFrame(rows)
    for column in ("diversity", "diversity_labeled"):
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def task_composition(runs: Sequence[Run]) -> pd.DataFrame:
    """Fraction of each task in each run's final acquired set: rows = run names, columns = tasks."""
    data = {
        run.name: run.acquired["task"].value_counts(normalize=True)
        for run in runs if not run.acquired.empty and "task" in run.acquired.columns
    }
    return pd.DataFrame(data).T.fillna(0.0).sort_index(axis=1) if data else pd.DataFrame()
