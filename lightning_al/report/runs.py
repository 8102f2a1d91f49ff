"""Loading finished (or interrupted) active-learning runs from their run directories.

A run directory (``checkpoints/<run_name>/``, or a copy of its light records; the layout is
``lightning_al.run_folder``'s) holds ``config.yaml`` (the run's full LightningCLI config),
``rounds/round_<r>.jsonl`` (one row per example acquired in round r) and, when the run evaluated,
``metrics.jsonl`` (one row per (round, evaluation)). Everything in the report is computed from these files.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from lightning_al import run_folder
from lightning_al.strategies import name_of, strategy_from_spec

#: Score columns that uncertainty strategies write into the round files.
SCORE_COLUMNS: tuple[str, ...] = ("entropy", "confidence", "margin", "min_margin", "max_entropy", "num_tokens")
ACQUIRED_COLUMNS: tuple[str, ...] = ("run", "id", "task", "round", "prompt_tokens", "response_tokens")


@dataclass
class Run:
    """One active-learning run: its identity (strategy, m, seed), acquired examples and metrics.

    ``acquired`` has one row per acquired example (all rounds, column ``run`` added); ``metrics`` has one row
    per (round, evaluation) of ``metrics.jsonl`` (empty when the run wrote none). ``finished`` is True when the
    metrics reach round m-1 or, without metrics, when every round file 0..m-1 exists. ``score_column`` is the
    round-file column the strategy ranks by (None for random); ``rounds_done`` counts the completed rounds.
    """

    path: Path
    name: str
    strategy: str
    rounds: int
    seed: int | None
    budget: int | None
    retraining: str | None
    config: dict[str, Any]
    acquired: pd.DataFrame
    metrics: pd.DataFrame
    finished: bool
    score_column: str | None = None
    rounds_done: int = 0

    @property
    def cell(self) -> str:
        """Label of the run's (strategy, m) cell, e.g. ``entropy m=4``."""
        return f"{self.strategy} m={self.rounds}"


def strategy_of(config: dict[str, Any]) -> tuple[str, str | None]:
    """(report name, own score column) of the config's ``loop.strategy``.

    The name is the strategy registry's (``lightning_al.strategies.name_of``):
    ``lightning_al.strategies.EntropySampling`` or ``entropy`` -> ``("entropy", "entropy")``; the generic
    ``UncertaintySampling`` with ``init_args.score: s`` -> ``("uncertainty-s-highest|lowest", s)``. A strategy
    that cannot be built here (a class of another package) is named after its class, with no score column.
    """
    spec = (config.get("loop") or {}).get("strategy")
    if spec is None:
        return "random", None
    try:
        strategy = strategy_from_spec(spec)
    except ValueError:
        class_path = spec.get("class_path", "") if isinstance(spec, dict) else str(spec)
        return class_path.rsplit(".", 1)[-1].removesuffix("Sampling").lower() or "unknown", None
    return name_of(strategy), strategy.score


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def load_run(run_dir: str | Path) -> Run:
    """Load one run directory; FileNotFoundError when it is missing, ValueError when it is not a run."""
    path = Path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"run directory not found: {path}")
    config_path, rounds_dir = path / run_folder.CONFIG, run_folder.rounds_dir(path)
    if not config_path.is_file():
        raise ValueError(f"{path} is not a run directory: it has no {run_folder.CONFIG}")
    if not rounds_dir.is_dir():
        raise ValueError(f"{path} is not a run directory: it has no {run_folder.ROUNDS}/ folder")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{config_path}: malformed YAML ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a YAML mapping")  # noqa: TRY004 - bad file content
    loop = config.get("loop") or {}
    m = _int_or_none(loop.get("rounds"))
    if m is None or m < 1:
        raise ValueError(f"{config_path}: loop.rounds must be a positive integer, got {loop.get('rounds')!r}")
    name = str(config.get("run_name") or path.name)
    strategy, score_column = strategy_of(config)
    seed = _int_or_none(loop.get("seed"))
    if seed is None:
        seed = _int_or_none(config.get("seed_everything"))

    rows: list[dict[str, Any]] = []
    for r, p in run_folder.round_files(path):
        rows.extend({"run": name, "round": r, **row} for row in run_folder.read_jsonl(p))
    acquired = pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(ACQUIRED_COLUMNS))
    acquired["run"] = name

    metrics = pd.DataFrame(run_folder.read_metrics(path))
    if not metrics.empty and {"round", "evaluation"} <= set(metrics.columns):
        metrics = metrics.drop_duplicates(["round", "evaluation"], keep="last").reset_index(drop=True)
    rounds_done, finished = run_folder.progress(path, m)
    return Run(
        path=path, name=name, strategy=strategy, rounds=m, seed=seed, budget=_int_or_none(loop.get("budget")),
        retraining=loop.get("retraining"), config=config, acquired=acquired, metrics=metrics, finished=finished,
        score_column=score_column, rounds_done=rounds_done,
    )


def find_run_dirs(path: str | Path) -> list[Path]:
    """``path`` itself when it holds a config.yaml, else the run directories one or two levels below it."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"path not found: {root}")
    if (root / run_folder.CONFIG).exists() or not root.is_dir():
        return [root]
    found = sorted(p for p in root.iterdir() if p.is_dir() and run_folder.is_run_dir(p))
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not run_folder.is_run_dir(p)):
        found.extend(sorted(p for p in child.iterdir() if p.is_dir() and run_folder.is_run_dir(p)))
    if not found:
        raise ValueError(f"no run directories (config.yaml + rounds/) in {root} or one or two levels below it")
    return found


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Load every run in ``paths`` (run directories or folders of them), each once, with unique names.

    Runs are ordered by (strategy, m, seed, name); random sampling, the baseline, comes first.
    """
    seen: set[Path] = set()
    runs: list[Run] = []
    for path in paths:
        for run_dir in find_run_dirs(path):
            if run_dir.resolve() not in seen:
                seen.add(run_dir.resolve())
                runs.append(load_run(run_dir))
    names = [run.name for run in runs]
    for run in runs:
        if names.count(run.name) > 1:  # two studies reusing a run_name: fall back on the unambiguous path
            run.name = str(run.path)
            run.acquired["run"] = run.name
    runs.sort(key=lambda r: (*strategy_order(r.strategy), r.rounds, r.seed if r.seed is not None else -1, r.name))
    return runs


def strategy_order(strategy: str) -> tuple[bool, str]:
    """Sort key of strategy names: random (the baseline) first, the rest alphabetically."""
    return strategy != "random", strategy


def all_acquired(runs: Sequence[Run]) -> pd.DataFrame:
    """All acquired rows of all runs, with run, strategy, m, seed and finished columns in front."""
    frames = []
    for run in runs:
        frame = run.acquired.copy()
        frame.insert(1, "strategy", run.strategy)
        frame.insert(2, "m", run.rounds)
        frame.insert(3, "seed", run.seed)
        frame.insert(4, "finished", run.finished)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run", "strategy", "m", "seed", "finished", *ACQUIRED_COLUMNS[1:]])
    return pd.concat([f for f in frames if not f.empty] or frames[:1], ignore_index=True)


def is_number(value: Any) -> bool:
    """True for a real number (ints, floats, numpy scalars) that is neither a bool nor NaN."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return False
    return not math.isnan(value)
