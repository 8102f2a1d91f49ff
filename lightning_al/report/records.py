"""Per-example evaluation records of a run (``evaluations/round_<r>/<set>.jsonl``), as measures.

A measure is what a main metric aggregates, one value pair per example: a numerator and a
denominator (``correct`` and 1 for accuracy / exact match, the summed NLL and the token count for the
held-out loss), with the example's id and task. Every main metric of a set is then a ratio of sums:
``micro`` over all examples, or ``macro``, the mean over tasks of each task's ratio -- the same values
metrics.jsonl holds for that round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lightning_al import run_folder
from lightning_al.report.runs import Run


@dataclass(frozen=True)
class Metric:
    """A main metric computed from records: ``key`` as in metrics.jsonl (``bbh/exact_match``), the records
    file it reads, ``macro`` (mean over tasks) or micro, and whether lower values are better."""

    key: str
    file: str
    macro: bool
    lower_is_better: bool = False


def read_records(run: Run, round: int) -> dict[str, pd.DataFrame]:
    """The records of one round of a run, by file name (``heldout_loss``, ``bbh``, ...); {} when there are none."""
    return {name: pd.DataFrame(rows) for name, rows in run_folder.read_records(run.path, round).items()}


def answer_sets(run: Run) -> frozenset[str]:
    """The names of the run's held-out answer sets (``HeldOutAnswers`` in its config's ``data.evaluations``):
    their right / wrong records look like BBH's, but metrics.jsonl names them ``answer_exact_match``."""
    evaluations = (run.config.get("data") or {}).get("evaluations")
    names = {(e.get("init_args") or {}).get("name") or "heldout" for e in evaluations or []
             if isinstance(e, dict) and str(e.get("class_path", "")).rsplit(".", 1)[-1] == "HeldOutAnswers"}
    return frozenset(names or {"heldout"})


def metrics_of(file: str, frame: pd.DataFrame, answers: frozenset[str] = frozenset({"heldout"})) -> list[Metric]:
    """The main metrics a records file supports: the loss for NLL records; for right / wrong records the
    set's metric macro over tasks and its ``_micro`` (named as in metrics.jsonl: ``accuracy`` for multiple
    choice, ``exact_match`` for generation, ``answer_exact_match`` for the held-out answer sets ``answers``,
    see ``answer_sets``)."""
    columns = set(frame.columns)
    if {"nll", "tokens"} <= columns:
        return [Metric("heldout/loss", file, macro=False, lower_is_better=True)]
    if "correct" not in columns:
        return []
    name = "accuracy" if "chosen" in columns else "answer_exact_match" if file in answers else "exact_match"
    return [Metric(f"{file}/{name}", file, macro=True), Metric(f"{file}/{name}_micro", file, macro=False)]


def measure(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns ``id``, ``task``, ``num``, ``den`` of a records frame (NLL / tokens, or correct / 1); an id
    recorded twice counts once (its first row)."""
    frame = frame.drop_duplicates("id")
    if {"nll", "tokens"} <= set(frame.columns):
        num, den = frame["nll"].astype(float), frame["tokens"].astype(float)
    else:
        num, den = frame["correct"].astype(float), pd.Series(1.0, index=frame.index)
    task = frame["task"].astype(str) if "task" in frame.columns else pd.Series("", index=frame.index)
    return pd.DataFrame({"id": frame["id"].astype(str), "task": task, "num": num, "den": den})


def aggregate(num: np.ndarray, den: np.ndarray, tasks: np.ndarray, macro: bool) -> float:
    """A metric's value from per-example numerators and denominators (the definition metrics.jsonl uses)."""
    if not macro:
        return float(num.sum() / den.sum())
    return float(np.mean([num[tasks == t].sum() / den[tasks == t].sum() for t in np.unique(tasks)]))


def final_records(run: Run) -> dict[str, pd.DataFrame]:
    """The records of the run's last round (m - 1), or {} when it has none (an unfinished or older run)."""
    return read_records(run, run.rounds - 1)


ANSWERED_COLUMNS = ["run", "strategy", "m", "seed", "set", "examples", "answered", "answered_share",
                    "right_when_answered"]


def answered_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Per finished run and generative set (records with an extracted ``answer``: BBH, held-out answers), after
    the last round: how many generations end in an answer the extraction can read, and the share of those
    that are right (columns: ``ANSWERED_COLUMNS``).

    A small model's chain of thought often runs out of tokens before "So the answer is ...": exact match
    then counts that as a wrong answer, and two cells can differ in exact match by how often they finish
    rather than by how well they reason. This table tells the two apart.
    """
    rows = []
    for run in runs:
        if not run.finished:
            continue
        for name, frame in final_records(run).items():
            if not {"answer", "correct"} <= set(frame.columns):
                continue
            frame = frame.drop_duplicates("id")
            read = frame["answer"].notna() & (frame["answer"].astype(str).str.strip() != "")
            right = frame.loc[read, "correct"].astype(float)
            rows.append({"run": run.name, "strategy": run.strategy, "m": run.rounds, "seed": run.seed, "set": name,
                         "examples": len(frame), "answered": int(read.sum()),
                         "answered_share": float(read.mean()) if len(frame) else float("nan"),
                         "right_when_answered": float(right.mean()) if len(right) else float("nan")})
    return pd.DataFrame(rows, columns=ANSWERED_COLUMNS)
