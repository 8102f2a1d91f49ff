"""Paired comparisons of cells from their per-example records: does m matter, does a strategy beat random?

For every main metric of the last round: each pair of m values of a strategy (``m=2 − m=1``) and each
strategy against random at the same m (``entropy − random``), as an estimate with a 95% interval from
a paired bootstrap over the examples every run of both cells answered, widened by the seeds' own
variance when a cell has several (see ``bootstrap``), and a verdict: the difference when the interval
excludes 0, "within noise" when it does not. ``detectable`` says how small a difference each evaluation
set could detect at its size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import reduce
from itertools import combinations

import numpy as np
import pandas as pd

from lightning_al.report.bootstrap import DETECTABLE_Z, Difference, SeedVariance, paired_difference, pool
from lightning_al.report.records import aggregate, answer_sets, final_records, measure, metrics_of
from lightning_al.report.runs import Run, strategy_order

PAIRED_COLUMNS = ["kind", "group", "comparison", "key", "examples", "seeds_a", "seeds_b", "paired_seeds", "estimate",
                  "low", "high", "se", "se_examples", "se_seeds", "df", "seed_variance", "p", "p_holm", "difference",
                  "call", "verdict"]
BASELINE = "random"
SEED_VARIANCE_COLUMNS = ["key", "runs", "cells", "sd of a run (pooled)", "df", "cell sd min", "cell sd max"]


def cell_pairs(cells: Sequence[tuple[str, int]]) -> list[tuple[str, str, str, tuple[str, int], tuple[str, int]]]:
    """(kind, group, label, cell A, cell B) of every comparison: A − B.

    ``m``: each pair of m values of a strategy, larger m first (``m=2 − m=1``); ``strategy``: each strategy
    against random at the same m (``entropy − random``).
    """
    pairs = []
    strategies = sorted({s for s, _ in cells}, key=strategy_order)
    for strategy in strategies:
        ms = sorted(m for s, m in cells if s == strategy)
        for low, high in combinations(ms, 2):
            pairs.append(("m", strategy, f"m={high} − m={low}", (strategy, high), (strategy, low)))
    for m in sorted({m for _, m in cells}):
        if (BASELINE, m) in cells:
            for strategy in strategies:
                if strategy != BASELINE and (strategy, m) in cells:
                    pairs.append(("strategy", f"m={m}", f"{strategy} − {BASELINE}", (strategy, m), (BASELINE, m)))
    return pairs


def _aligned(records: list[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """(num, den) of shape (runs, n) and the tasks of the n examples every run answered, in one order."""
    measures = [measure(frame).set_index("id") for frame in records]
    common = sorted(reduce(lambda a, b: a & b, (set(m.index) for m in measures)))
    if not common:
        return None
    num = np.stack([m.loc[common, "num"].to_numpy() for m in measures])
    den = np.stack([m.loc[common, "den"].to_numpy() for m in measures])
    return num, den, measures[0].loc[common, "task"].to_numpy(), len(common)


def call(label: str, d: Difference, lower_is_better: bool) -> str:
    """``m=2 better`` (the side of ``label`` that is better), ``within noise``, or ``undefined`` (no finite
    estimate or interval: a NaN in the records)."""
    if not d.defined:
        return "undefined"
    if not d.significant:
        return "within noise"
    a, b = (part.strip() for part in label.split("−", 1))
    return f"{a if (d.estimate < 0) == lower_is_better else b} better"


def verdict(label: str, d: Difference, lower_is_better: bool) -> str:
    """``m=2 − m=1 = +0.031 [+0.004, +0.058] (m=2 better)``, or ``within noise``."""
    said = call(label, d, lower_is_better)
    return said if not d.significant else f"{label} = {interval(d)} ({said})"


def interval(d: Difference) -> str:
    """``+0.031 [+0.004, +0.058]``: 3 decimals, more when the interval is narrower than 0.01 (small loss
    differences), so that its ends stay apart, or when an end would print as 0 without being 0 (so that an
    interval that excludes 0 never seems to touch it)."""
    if not d.defined:
        return f"{d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
    width = d.high - d.low
    decimals = 3 if not width > 0 or width >= 0.01 else min(6, math.ceil(-math.log10(width)) + 1)
    for end in (d.low, d.high):
        while decimals < 6 and end != 0 and round(end, decimals) == 0:
            decimals += 1
    return f"{d.estimate:+.{decimals}f} [{d.low:+.{decimals}f}, {d.high:+.{decimals}f}]"


Cells = dict[tuple[str, int], list[tuple[Run, dict[str, pd.DataFrame]]]]


def _cells(runs: Sequence[Run]) -> Cells:
    """The finished runs with records of their last round, by cell (strategy, m), each cell's runs by seed."""
    cells: Cells = {}
    for run in runs:
        records = final_records(run) if run.finished else {}
        if records:
            cells.setdefault((run.strategy, run.rounds), []).append((run, records))
    return {c: sorted(items, key=lambda item: (item[0].seed is None, item[0].seed)) for c, items in cells.items()}


def _study_values(cells: Cells) -> dict[str, tuple[list[np.ndarray], list[list]]]:
    """Per main metric: each cell's per-run values (on the examples every run of the study answered) and seeds."""
    out: dict[str, tuple[list[np.ndarray], list[list]]] = {}
    items = [(c, run, records) for c, entries in cells.items() for run, records in entries]
    seeds = [[run.seed for run, _ in cells[cell]] for cell in cells]
    files = reduce(lambda x, y: x & y, (set(records) for _, _, records in items)) if items else set()
    for file in sorted(files):
        frames = [records[file] for _, _, records in items]
        if any(frame.empty for frame in frames) or (aligned := _aligned(frames)) is None:
            continue
        num, den, tasks, _ = aligned
        for metric in metrics_of(file, frames[0], answer_sets(items[0][1])):
            values = [aggregate(num[i], den[i], tasks, metric.macro) for i in range(len(items))]
            per_cell = [np.array([v for (c, _, _), v in zip(items, values) if c == cell]) for cell in cells]
            out[metric.key] = (per_cell, seeds)
    return out


def seed_variance_table(runs: Sequence[Run]) -> tuple[pd.DataFrame, dict[str, SeedVariance]]:
    """Per main metric, how much one training run's value varies, pooled over the study's cells
    (``bootstrap.pool``: about the fit cell + seed) as a standard deviation with its degrees of freedom,
    beside the smallest and largest sd of a single cell of several runs about its mean (seed effects
    included). Returns the table (``SEED_VARIANCE_COLUMNS``) and the pooled variances by metric."""
    rows, pooled = [], {}
    for key, (values, seeds) in _study_values(_cells(runs)).items():
        pooled[key] = variance = pool(values, seeds)
        own = [float(v.std(ddof=1)) for v in values if len(v) > 1]
        rows.append({"key": key, "runs": sum(len(v) for v in values), "cells": len(values),
                     "sd of a run (pooled)": math.sqrt(variance.residual), "df": variance.residual_df,
                     "cell sd min": min(own, default=math.nan), "cell sd max": max(own, default=math.nan)})
    return pd.DataFrame(rows, columns=SEED_VARIANCE_COLUMNS), pooled


def paired_table(runs: Sequence[Run], replicates: int = 2000, seed: int = 0,
                 pooled: dict[str, SeedVariance] | None = None, always_pooled: bool = False) -> pd.DataFrame:
    """Every comparison of ``cell_pairs`` on every main metric both cells' final records support.

    Only finished runs with records of their last round take part. ``pooled``: the study's seed variances
    by metric (``seed_variance_table``), for paired runs without a seed variance of their own, or with
    ``always_pooled`` for every paired comparison (see ``paired_difference``). Columns: ``PAIRED_COLUMNS``
    (``seed_variance``: where each comparison's seeds' part came from; ``p``: the p-value that goes with the
    interval; ``p_holm``: adjusted by ``holm`` over the main metrics' comparisons, NaN for micro averages).
    """
    cells = _cells(runs)
    rows = []
    for kind, group, label, cell_a, cell_b in cell_pairs(list(cells)):
        a, b = cells[cell_a], cells[cell_b]
        files = reduce(lambda x, y: x & y, (set(records) for _, records in a + b))
        for file in sorted(files):
            frames = [records[file] for _, records in a + b]
            if any(frame.empty for frame in frames) or (aligned := _aligned(frames)) is None:
                continue
            num, den, tasks, n = aligned
            for metric in metrics_of(file, frames[0], answer_sets(a[0][0])):
                d = paired_difference((num[: len(a)], den[: len(a)]), (num[len(a):], den[len(a):]), tasks,
                                      metric.macro, [r.seed for r, _ in a], [r.seed for r, _ in b],
                                      replicates=replicates, seed=seed, pooled=(pooled or {}).get(metric.key),
                                      always_pooled=always_pooled)
                rows.append({"kind": kind, "group": group, "comparison": label, "key": metric.key, "examples": n,
                             "seeds_a": d.seeds_a, "seeds_b": d.seeds_b, "paired_seeds": d.paired_seeds,
                             "estimate": d.estimate, "low": d.low, "high": d.high, "se": d.se,
                             "se_examples": d.se_examples, "se_seeds": d.se_seeds, "df": d.df,
                             "seed_variance": d.seed_variance, "p": d.p_value, "difference": interval(d),
                             "call": call(label, d, metric.lower_is_better),
                             "verdict": verdict(label, d, metric.lower_is_better)})
    table = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    # The family: the main metrics, not their micro averages (the same answers counted another way).
    main = ~table["key"].astype(str).str.endswith("_micro")
    table["p_holm"] = math.nan
    table.loc[main, "p_holm"] = holm(table.loc[main, "p"].to_numpy(dtype=float))
    return table


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's adjusted p-values: a comparison whose adjusted p is below 0.05 differs with a 5% chance that any of the
    family's calls is wrong when nothing differs (the family: every finite p given; NaN stays NaN).

    A study makes many comparisons (7 × 4 main metrics for 3 strategies × 2 m), and at 95% each interval excludes 0
    by chance one time in 20: this says which calls survive that many looks.
    """
    p = np.asarray(p, dtype=float)
    adjusted = np.full(len(p), math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def detectable(runs: Sequence[Run], paired: pd.DataFrame) -> pd.DataFrame:
    """Per main metric: examples, the mean value over finished runs, and the smallest difference detectable
    (5% two-sided, 80% power): for a right / wrong metric from two independent samples of that size at
    that rate, 2.80·sqrt(2p(1−p)/n), or for a mean over K tasks 2.80·sqrt(2·Σ_k p_k(1−p_k)/n_k)/K (each task
    at its own size and rate); and from this study's paired comparisons, 2.80 × their median standard error
    (the examples' bootstrap, in which pairing removes the examples' difficulty, plus the seeds' variance where
    cells have several: with one seed a cell it is usually the smaller)."""
    values: dict[str, list[tuple[int, float, bool, bool, pd.DataFrame]]] = {}
    for run in runs:
        if not run.finished:
            continue
        for file, frame in final_records(run).items():
            if frame.empty:
                continue
            m = measure(frame)
            per_task = m.groupby("task").agg(num=("num", "sum"), den=("den", "sum"), n=("num", "size"))
            per_task = per_task.assign(rate=per_task["num"] / per_task["den"])[["rate", "n"]]
            for metric in metrics_of(file, frame, answer_sets(run)):
                value = aggregate(m["num"].to_numpy(), m["den"].to_numpy(), m["task"].to_numpy(), metric.macro)
                values.setdefault(metric.key, []).append((len(m), value, metric.lower_is_better, metric.macro, per_task))
    rows = []
    for key, entries in values.items():
        n = max(e[0] for e in entries)
        p = float(np.mean([e[1] for e in entries]))
        binary, macro = not entries[0][2], entries[0][3]
        if not binary:
            independent = float("nan")
        elif macro:
            tasks = pd.concat([e[4] for e in entries]).groupby(level=0).agg(rate=("rate", "mean"), n=("n", "max"))
            variance = float((tasks["rate"] * (1 - tasks["rate"]) / tasks["n"]).sum())
            independent = DETECTABLE_Z * math.sqrt(2 * variance) / len(tasks)
        else:
            independent = DETECTABLE_Z * math.sqrt(2 * p * (1 - p) / n)
        ses = paired.loc[paired["key"] == key, "se"] if not paired.empty else pd.Series(dtype=float)
        observed = DETECTABLE_Z * float(ses.median()) if len(ses) else float("nan")
        rows.append({"key": key, "examples": n, "mean": p, "detectable (independent)": independent,
                     "detectable (paired, this study)": observed})
    return pd.DataFrame(rows, columns=["key", "examples", "mean", "detectable (independent)",
                                       "detectable (paired, this study)"])
