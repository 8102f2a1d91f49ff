"""Paired bootstrap of the difference of a metric between two cells, hierarchical over seeds.

Both cells were evaluated on the same examples, so a resample of the examples applies to both (the
pairing that removes the examples' own difficulty from the difference). With several seeds per cell,
each replicate first resamples the seeds (the seed pairs when the cells share their seeds), then the
examples -- one draw of the examples per replicate, shared by all runs, since every run answered the
same evaluation set. Examples are resampled within their task, so that each task keeps its size (the
macro average over tasks stays defined). The interval is the percentile interval of the replicates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: (z of a two-sided 5% test) + (z of 80% power): a difference of 2.80 standard errors is detected 80% of the time.
DETECTABLE_Z = 1.959963984540054 + 0.8416212335729143


@dataclass(frozen=True)
class Difference:
    """A - B: the estimate on the data, its bootstrap standard error and 95% percentile interval."""

    estimate: float
    low: float
    high: float
    se: float
    examples: int
    seeds_a: int
    seeds_b: int
    paired_seeds: bool

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0."""
        return self.low > 0 or self.high < 0


def example_weights(tasks: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """(replicates, n) counts of each example in a resample drawn with replacement within each task."""
    weights = np.zeros((replicates, len(tasks)))
    for task in np.unique(tasks):
        where = np.flatnonzero(tasks == task)
        weights[:, where] = rng.multinomial(len(where), np.full(len(where), 1.0 / len(where)), size=replicates)
    return weights


def statistic(num: np.ndarray, den: np.ndarray, tasks: np.ndarray, weights: np.ndarray, macro: bool) -> np.ndarray:
    """(replicates, seeds) metric values of each seed's (seeds, n) ``num`` / ``den`` under each weighting."""
    if not macro:
        return (weights @ num.T) / (weights @ den.T)
    per_task = [(weights[:, tasks == t] @ num[:, tasks == t].T) / (weights[:, tasks == t] @ den[:, tasks == t].T)
                for t in np.unique(tasks)]
    return np.mean(per_task, axis=0)


def paired_difference(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], tasks: np.ndarray,
                      macro: bool, seeds_a: list | None = None, seeds_b: list | None = None,
                      replicates: int = 2000, seed: int = 0, level: float = 0.95) -> Difference:
    """The mean over seeds of cell A's metric minus cell B's, with a paired bootstrap interval.

    Args:
        a: (num, den) of cell A, each (seeds, n): per example numerator and denominator of the metric
            (correct and 1, or NLL and tokens), the n examples in the same order for every run.
        b: (num, den) of cell B, the same n examples.
        tasks: The task of each example (resampling is within tasks; ``macro`` averages over them).
        macro: The metric is the mean over tasks of each task's ratio (else the ratio of the sums).
        seeds_a: Seed of each of A's runs; when A and B have the same seeds, seeds are resampled in pairs.
        seeds_b: Seed of each of B's runs.
        replicates: Bootstrap replicates.
        seed: Seed of the resampling (the same report twice gives the same intervals).
        level: Coverage of the interval.
    """
    num_a, den_a = (np.atleast_2d(np.asarray(x, dtype=float)) for x in a)
    num_b, den_b = (np.atleast_2d(np.asarray(x, dtype=float)) for x in b)
    tasks = np.asarray(tasks)
    rng = np.random.default_rng(seed)
    estimate = (statistic(num_a, den_a, tasks, np.ones((1, len(tasks))), macro).mean()
                - statistic(num_b, den_b, tasks, np.ones((1, len(tasks))), macro).mean())
    weights = example_weights(tasks, replicates, rng)
    values_a = statistic(num_a, den_a, tasks, weights, macro)  # (replicates, seeds of A)
    values_b = statistic(num_b, den_b, tasks, weights, macro)
    paired = seeds_a is not None and seeds_b is not None and list(seeds_a) == list(seeds_b)
    s_a, s_b = values_a.shape[1], values_b.shape[1]
    if paired and s_a > 1:
        draw = rng.integers(0, s_a, size=(replicates, s_a))
        diff = np.take_along_axis(values_a - values_b, draw, axis=1).mean(1)
    else:
        if s_a > 1:
            values_a = np.take_along_axis(values_a, rng.integers(0, s_a, size=(replicates, s_a)), axis=1)
        if s_b > 1:
            values_b = np.take_along_axis(values_b, rng.integers(0, s_b, size=(replicates, s_b)), axis=1)
        diff = values_a.mean(1) - values_b.mean(1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(diff, [tail, 100 - tail])
    return Difference(float(estimate), float(low), float(high), float(diff.std(ddof=1)), len(tasks), s_a, s_b, paired)
