"""Figures of the report: PNG files drawn with matplotlib's Agg canvas (no display, no pyplot global state).

Each function draws one figure (learning curves: one per metric), returns the PNG's path, and returns None
when there is no data to draw, so that the report can say the figure was skipped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_al.report.runs import Run, strategy_order
from lightning_al.report.selection import task_composition

DPI = 100
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_STYLES = ("-", "--", ":", "-.")


def slug(text: str) -> str:
    """A file-name-safe version of a metric key: ``bbh/exact_match`` -> ``bbh_exact_match``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "metric"


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _colors(strategies: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """A stable color per strategy (tab10 over the sorted strategy names, random first)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {s: cmap(i % 10) for i, s in enumerate(sorted(set(strategies), key=strategy_order))}


def _grid(n: int, ncols: int = 3) -> tuple[int, int]:
    cols = min(n, ncols)
    return (n + cols - 1) // cols, cols


def plot_learning_curve(main: pd.DataFrame, key: str, out_dir: Path) -> Path | None:
    """``key`` (e.g. ``heldout/loss``) vs labeled examples: one line per (strategy, m), mean over seeds.

    ``main`` is ``tables.main_metrics(metrics_long(runs))``. A band shows ± std where a point has > 1 seed.
    """
    data = main[(main["key"] == key) & main["labeled"].notna()]
    if data.empty:
        return None
    stats = data.groupby(["strategy", "m", "labeled"])["value"].agg(["mean", "std", "count"]).reset_index()
    colors = _colors(stats["strategy"].tolist())
    ms = sorted(stats["m"].unique())
    figure = _figure(6.4, 4.2)
    ax = figure.add_subplot()
    cells = sorted(stats.groupby(["strategy", "m"]), key=lambda item: (strategy_order(item[0][0]), item[0][1]))
    for (strategy, m), cell in cells:
        cell = cell.sort_values("labeled")
        i = ms.index(m)
        ax.plot(cell["labeled"], cell["mean"], color=colors[strategy], marker=_MARKERS[i % len(_MARKERS)],
                linestyle=_STYLES[i % len(_STYLES)], label=f"{strategy} m={m}")
        if (cell["count"] > 1).any():
            std = cell["std"].fillna(0.0)
            ax.fill_between(cell["labeled"], cell["mean"] - std, cell["mean"] + std, color=colors[strategy],
                            alpha=0.15, linewidth=0)
    ax.set_xlabel("labeled examples")
    ax.set_ylabel(key)
    ax.set_title(f"{key} vs labeled examples (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(figure, out_dir / f"curve_{slug(key)}.png")


def plot_learning_curves(main: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One learning-curve PNG per main metric key, in order of first appearance."""
    paths = [plot_learning_curve(main, key, out_dir) for key in dict.fromkeys(main["key"])]
    return [p for p in paths if p is not None]


def plot_final_metrics(final: pd.DataFrame, out_dir: Path) -> Path | None:
    """Grouped bars of the final main metrics: one panel per metric, strategies on x, one bar per m, ± std.

    ``final`` is ``tables.final_long(runs)``.
    """
    if final.empty:
        return None
    keys = list(dict.fromkeys(final["key"]))
    strategies = sorted(final["strategy"].unique(), key=strategy_order)
    ms = sorted(final["m"].unique())
    rows, cols = _grid(len(keys))
    figure = _figure(4.2 * cols, 3.4 * rows)
    width = 0.8 / len(ms)
    for index, key in enumerate(keys):
        ax = figure.add_subplot(rows, cols, index + 1)
        part = final[final["key"] == key].set_index(["strategy", "m"])
        for j, m in enumerate(ms):
            mean = [part["mean"].get((s, m), np.nan) for s in strategies]
            std = [part["std"].get((s, m), np.nan) for s in strategies]
            x = np.arange(len(strategies)) - 0.4 + width * (j + 0.5)
            ax.bar(x, mean, width, yerr=np.nan_to_num(std), capsize=3, label=f"m={m}")
        ax.set_xticks(np.arange(len(strategies)), strategies, rotation=20, fontsize="small")
        ax.set_title(key, fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
        if index == 0:
            ax.legend(fontsize="small")
    return _save(figure, out_dir / "final_metrics.png")


def _run_label(run: Run) -> str:
    label = f"{run.strategy} m={run.rounds} seed={run.seed}"
    return label if run.finished else f"{label} (unfinished)"


def plot_task_composition(runs: Sequence[Run], out_dir: Path) -> Path | None:
    """Stacked horizontal bars: the fraction of each task in every run's final acquired set."""
    composition = task_composition(runs)
    if composition.empty:
        return None
    labels = {run.name: _run_label(run) for run in runs}
    figure = _figure(8.0, 1.2 + 0.35 * len(composition))
    ax = figure.add_subplot()
    left = np.zeros(len(composition))
    y = np.arange(len(composition))
    for task in composition.columns:
        ax.barh(y, composition[task].to_numpy(), left=left, label=str(task))
        left += composition[task].to_numpy()
    ax.set_yticks(y, [labels.get(name, name) for name in composition.index], fontsize="small")
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of the acquired set")
    ax.set_title("Task composition of the final selected sets")
    ax.legend(fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(figure, out_dir / "task_composition.png")


def plot_score_distributions(runs: Sequence[Run], out_dir: Path) -> Path | None:
    """Per uncertainty strategy and m: the distribution of its own score over the examples acquired each round.

    Seeds are pooled. Violins where a round has two or more distinct values, points otherwise.
    """
    cells: dict[tuple[str, int, str], list[pd.DataFrame]] = {}
    for run in runs:
        column = run.score_column
        if column and column in run.acquired.columns:
            cells.setdefault((run.strategy, run.rounds, column), []).append(run.acquired[["round", column]])
    if not cells:
        return None
    keys = sorted(cells, key=lambda k: (strategy_order(k[0]), k[1]))
    rows, cols = _grid(len(keys))
    figure = _figure(4.2 * cols, 3.2 * rows)
    for index, (strategy, m, column) in enumerate(keys):
        ax = figure.add_subplot(rows, cols, index + 1)
        data = pd.concat(cells[(strategy, m, column)])
        data = data.assign(score=pd.to_numeric(data[column], errors="coerce")).dropna(subset=["score"])
        rounds = sorted(int(r) for r in data["round"].unique())
        values = [data.loc[data["round"] == r, "score"].to_numpy() for r in rounds]
        spread = [i for i, v in enumerate(values) if len(np.unique(v)) > 1]
        if spread:
            ax.violinplot([values[i] for i in spread], positions=[rounds[i] for i in spread], showmedians=True)
        for i, v in enumerate(values):
            if i not in spread:
                ax.plot([rounds[i]] * len(v), v, "o", color="C0")
        ax.set_xticks(rounds)
        ax.set_xlabel("round")
        ax.set_ylabel(column)
        ax.set_title(f"{strategy} m={m}: {column} of acquired", fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    return _save(figure, out_dir / "score_distributions.png")


def plot_lengths(runs: Sequence[Run], out_dir: Path) -> Path | None:
    """Box plots of prompt and response lengths (tokens) of the final acquired sets, per (strategy, m) cell."""
    cells: dict[tuple[str, int], list[pd.DataFrame]] = {}
    for run in runs:
        if {"prompt_tokens", "response_tokens"} <= set(run.acquired.columns) and not run.acquired.empty:
            cells.setdefault((run.strategy, run.rounds), []).append(run.acquired)
    if not cells:
        return None
    keys = sorted(cells, key=lambda k: (strategy_order(k[0]), k[1]))
    figure = _figure(max(6.0, 1.0 + 0.9 * len(keys)) * 2, 4.0)
    for index, column in enumerate(("prompt_tokens", "response_tokens")):
        ax = figure.add_subplot(1, 2, index + 1)
        values = [pd.to_numeric(pd.concat(cells[k])[column], errors="coerce").dropna().to_numpy() for k in keys]
        ax.boxplot(values)
        ax.set_xticks(np.arange(1, len(keys) + 1), [f"{s}\nm={m}" for s, m in keys], fontsize="small")
        ax.set_ylabel(f"{column.replace('_', ' ')}")
        ax.set_title(f"{column.split('_')[0]} length of acquired examples", fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    return _save(figure, out_dir / "lengths.png")
