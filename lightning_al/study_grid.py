"""The grid of a study: the typed ``study:`` section of a config and the cells it spans.

``lightning_al.cli`` registers ``StudyGrid`` on the run's parser (so ``--print_config`` shows it typed, and a
plain ``fit`` of a study config ignores it); ``lightning_al.study`` runs its cells.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from lightning_al.strategies import REGISTRY, name_of, strategy_from_name


@dataclass
class StudyGrid:
    """Acquisition strategies x rounds m x seeds, each cell an ordinary ``fit`` run.

    Args:
        name: Study name: cells go to ``checkpoints/<name>/<strategy>-m<m>-s<seed>`` (default: the config
            file's name).
        strategies: Strategies compared: short names (random, entropy, confidence, ...) or class paths.
        rounds: The m values (``loop.rounds``) compared.
        seeds: ``seed_everything`` of the cells; seeds are outermost, so a study cut short still has every
            (strategy, m) cell of its first seeds and its comparisons are paired.
        records_dir: Keep each finished cell's light records (config, rounds, metrics, per-example evaluations)
            in ``<records_dir>/<cell>``; a cell whose records are there is finished and never re-run, and the
            report reads them. None: only the run folders.
    """

    name: str | None = None
    strategies: list[str] = field(default_factory=lambda: ["random"])
    rounds: list[int] = field(default_factory=lambda: [1])
    seeds: list[int] = field(default_factory=lambda: [0])
    records_dir: str | None = None


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    strategy: str  # as the grid spells it: the cell's ``--loop.strategy``
    rounds: int
    seed: int

    @property
    def name(self) -> str:
        """``<strategy>-m<m>-s<seed>``, the strategy named as the report names it: ``entropy`` whether the grid
        says ``entropy`` or ``lightning_al.strategies.EntropySampling``."""
        return f"{name_of(strategy_from_name(self.strategy))}-m{self.rounds}-s{self.seed}"


def cells(grid: StudyGrid) -> list[Cell]:
    """Every (strategy, m, seed) of the grid, seeds outermost."""
    if not grid.strategies or not grid.rounds or not grid.seeds:
        raise ValueError("study: strategies, rounds and seeds must each hold at least one value")
    for strategy in grid.strategies:
        try:
            strategy_from_name(strategy)
        except ValueError:
            raise ValueError(f"study.strategies: unknown strategy {strategy!r}; use one of {list(REGISTRY)} "
                             "or a class path") from None
    if any(m < 1 for m in grid.rounds):
        raise ValueError(f"study.rounds: every m must be >= 1, got {list(grid.rounds)}")
    return [Cell(s, m, seed) for seed, s, m in itertools.product(grid.seeds, grid.strategies, grid.rounds)]
