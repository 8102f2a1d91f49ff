"""The difference of a metric between two cells: a paired bootstrap over the examples, plus the seeds' variance.

Both cells were evaluated on the same examples, so a resample of the examples applies to both (the
pairing that removes the examples' own difficulty from the difference): one draw of the examples per
replicate, shared by all runs. Examples are resampled within their task, so that each task keeps its
size (the macro average over tasks stays defined), with the deviations of a task's resample weights
scaled by sqrt(n_k / (n_k - 1)) (the rescaling bootstrap): a plain resample of n_k examples has
(n_k - 1) / n_k of their variance, which matters for subjects with a handful of questions.

Seeds are not resampled. With 2 or 3 seeds a cell, a bootstrap over seeds has the spread of those few
values and calls a difference far too often (with 2 seeds, a third to two fifths of the time when
there is none, in simulation). The interval is instead

    estimate ± t(df) · sqrt(V_examples + V_seeds),

- ``V_examples``: the variance of the example bootstrap of the seed-averaged difference, plus what a task of
  one example would add, which no resample within it can show (``lone_task_variance``: the CPU study's 500 MMLU
  questions include a subject of one);
- ``V_seeds``: the seed-to-seed sample variance of each cell's value (of the per-seed differences when
  the cells share seeds: they pair) over the number of seeds; a cell of one run takes the variance of
  the cells that have several; with one run in every cell, 0: the interval shows the examples' noise only. It also holds the answers' own noise from seed to seed, which ``V_examples``
  counts already: the interval errs wide. (Subtracting that share, a variance-components estimate, held
  0 only 83-91% of the time with 3 seeds in simulation, for want of a better estimate from so few.)
- ``df``: Welch-Satterthwaite's, from infinity for the examples' part and seeds - 1 for the seeds'.

``benchmarks/interval_coverage.py`` simulates studies of the CPU study's shape with no true difference
(results in ``benchmarks/results/interval-coverage.md``): with 3 seeds a cell this interval held 0 in 92-99%
of comparisons (a little under 95% for a loss-like metric), the pooled one below 94-99% when runs vary
alike in every cell.

A study of many cells knows more about a training run's noise than any two cells: ``pool`` fits every
run's value of a metric as cell + seed + noise (a two-way layout with seeds as blocks) and gives the
noise's variance, on (cells - 1)(seeds - 1) degrees of freedom in a full grid (10 for 6 cells of 3 seeds).
Two cells of one run each (the same seed: they pair) have no seed variance of their own, and take
V_seeds = 2·residual instead of showing the examples' noise only. With ``always_pooled`` every paired
comparison takes 2·residual / shared seeds: narrower intervals than the comparison's own 1-2 degrees of
freedom give (t = 2.2 instead of 4.3), but only if a run varies alike in every cell, which 3 seeds a cell
cannot check: with random's runs 3x as noisy as the others', the pooled intervals held 0 in only 87-95% of
random's comparisons in that simulation (a review's, with one cell 2-3x as noisy: 81-88% of that cell's).
Hence not the default. Unpaired comparisons always keep their own (their seeds' effects are estimated from the
few seeds only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: (z of a two-sided 5% test) + (z of 80% power): a difference of 2.80 standard errors is detected 80% of the time.
DETECTABLE_Z = 1.959963984540054 + 0.8416212335729143


@dataclass(frozen=True)
class Difference:
    """A - B: the estimate on the data, its standard error (examples' and seeds' parts) and interval."""

    estimate: float
    low: float
    high: float
    se: float
    examples: int
    seeds_a: int
    seeds_b: int
    paired_seeds: bool
    se_examples: float = math.nan
    se_seeds: float = math.nan
    df: float = math.inf
    #: Where the seeds' part came from: ``pooled`` (the study's), ``own`` (these cells' runs) or ``none``.
    seed_variance: str = "none"

    @property
    def defined(self) -> bool:
        """False when the records give no finite estimate or interval (a NaN loss, an empty task), or a
        difference without any variance to judge it by (every task of one example, one seed a cell)."""
        finite = all(math.isfinite(x) for x in (self.estimate, self.low, self.high))
        return finite and (self.se > 0 or self.estimate == 0)

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0."""
        return self.defined and (self.low > 0 or self.high < 0)

    @property
    def p_value(self) -> float:
        """The two-sided p-value of "no difference" that goes with the interval (below 1 - level exactly when the
        interval excludes 0): the estimate's t statistic on ``df`` degrees of freedom."""
        if not self.defined:
            return math.nan
        if self.se == 0:
            return 1.0
        return float(2 * stats.t.sf(abs(self.estimate) / self.se, self.df))


@dataclass(frozen=True)
class SeedVariance:
    """One run's variance of a metric about the fit cell + seed, pooled over a study's cells (see ``pool``):
    half the variance of a seed-by-seed difference between two cells."""

    residual: float
    residual_df: int


def pool(values: Sequence[np.ndarray], seeds: Sequence[Sequence | None]) -> SeedVariance:
    """The pooled seed variance of a metric from each cell's per-run ``values`` and their ``seeds``.

    Least squares on cell and seed indicators, over the runs that pair: a known seed, run once in its cell
    (a seed repeated in a cell, as when a run folder is passed twice, would add a degree of freedom that is
    not there), and a finite value (a NaN run leaves the others' variance defined). A cell of one run adds
    no degree of freedom, it only fixes its own mean. With no degree of freedom: NaN on 0.
    """
    rows = []
    for c, (v, ss) in enumerate(zip(values, seeds)):
        ss = list(ss) if ss is not None else [None] * len(v)
        rows += [(c, s, float(x)) for x, s in zip(np.asarray(v, dtype=float), ss)
                 if s is not None and ss.count(s) == 1 and math.isfinite(x)]
    if not rows:
        return SeedVariance(math.nan, 0)
    levels = sorted({s for _, s, _ in rows}, key=repr)
    design = np.zeros((len(rows), len(values) + len(levels)))
    for i, (c, s, _) in enumerate(rows):
        design[i, c] = 1.0
        design[i, len(values) + levels.index(s)] = 1.0
    y = np.array([x for _, _, x in rows])
    fit, *_ = np.linalg.lstsq(design, y, rcond=None)
    df = len(rows) - int(np.linalg.matrix_rank(design))
    return SeedVariance(float(((y - design @ fit) ** 2).sum()) / df if df > 0 else math.nan, df)


def example_weights(tasks: np.ndarray, replicates: int, rng: np.random.Generator, rescale: bool = True) -> np.ndarray:
    """(replicates, n) weights of each example: counts of a resample drawn with replacement within each task,
    with ``rescale`` their deviation from 1 scaled by sqrt(n_k / (n_k - 1)) so that a task's resample has its
    full variance (the weights of a task still sum to its size; an example drawn 0 times weighs a little
    below 0, harmless where every example's denominator is the same). A task of one example adds none here:
    ``lone_task_variance`` gives its share."""
    weights = np.ones((replicates, len(tasks)))
    for task in np.unique(tasks):
        where = np.flatnonzero(tasks == task)
        n = len(where)
        if n > 1:
            counts = rng.multinomial(n, np.full(n, 1.0 / n), size=replicates)
            weights[:, where] = 1 + (math.sqrt(n / (n - 1)) if rescale else 1.0) * (counts - 1)
    return weights


def lone_task_variance(ratio: np.ndarray, share: np.ndarray, tasks: np.ndarray) -> float:
    """The variance that resampling within tasks leaves out: a task of one example is drawn as itself every time.

    Its example varies about its task's mean as much as an example of the tasks that have several does (their
    pooled within-task variance of ``ratio``, the per-example A - B), and counts in the metric with its ``share``
    (1 / tasks for a mean over tasks, its denominator's share of all for a ratio of sums). 0 without a task of
    one example, or without a task of several to take the variance from.
    """
    lone, squares, df = [], 0.0, 0
    for task in np.unique(tasks):
        where = np.flatnonzero(tasks == task)
        if len(where) == 1:
            lone.append(float(share[where[0]]))
        else:
            squares += float(((ratio[where] - ratio[where].mean()) ** 2).sum())
            df += len(where) - 1
    if not lone or df == 0:
        return 0.0
    return squares / df * float(np.square(lone).sum())


def statistic(num: np.ndarray, den: np.ndarray, tasks: np.ndarray, weights: np.ndarray, macro: bool) -> np.ndarray:
    """(replicates, seeds) metric values of each seed's (seeds, n) ``num`` / ``den`` under each weighting."""
    if not macro:
        return (weights @ num.T) / (weights @ den.T)
    per_task = [(weights[:, tasks == t] @ num[:, tasks == t].T) / (weights[:, tasks == t] @ den[:, tasks == t].T)
                for t in np.unique(tasks)]
    return np.mean(per_task, axis=0)


def _pairable(seeds_a: list | None, seeds_b: list | None) -> list:
    """The seeds both cells ran exactly once (an unknown seed, None, never pairs), in one order."""
    if seeds_a is None or seeds_b is None:
        return []
    a, b = list(seeds_a), list(seeds_b)
    return sorted({s for s in a if s is not None and a.count(s) == 1 and b.count(s) == 1}, key=repr)


def _seed_parts(values: list[np.ndarray]) -> list[tuple[float, int]]:
    """(variance of the cell's mean over its seeds, degrees of freedom) of each cell's per-seed ``values``.

    A cell with one seed takes the seed-to-seed variance of the cells that have several (pooled): one
    training run varies as much as another cell's. With no cell of several seeds: none (examples only).
    """
    several = [(float(v.var(ddof=1)), len(v) - 1) for v in values if len(v) > 1]
    pooled_df = sum(k for _, k in several)
    pooled = sum(var * k for var, k in several) / pooled_df if several else 0.0
    return [(float(v.var(ddof=1)) / len(v), len(v) - 1) if len(v) > 1 else (pooled, pooled_df)
            for v in values if len(v) > 1 or several]


def paired_difference(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], tasks: np.ndarray,
                      macro: bool, seeds_a: list | None = None, seeds_b: list | None = None,
                      replicates: int = 2000, seed: int = 0, level: float = 0.95,
                      pooled: SeedVariance | None = None, always_pooled: bool = False) -> Difference:
    """The mean over seeds of cell A's metric minus cell B's, with its interval (see the module's docstring).

    Args:
        a: (num, den) of cell A, each (seeds, n): per example numerator and denominator of the metric
            (correct and 1, or NLL and tokens), the n examples in the same order for every run.
        b: (num, den) of cell B, the same n examples.
        tasks: The task of each example (resampling is within tasks; ``macro`` averages over them).
        macro: The metric is the mean over tasks of each task's ratio (else the ratio of the sums).
        seeds_a: Seed of each of A's runs. When the cells share 2 or more seeds (each run once in both), or
            each is one run of the same seed, the runs of those seeds pair (their difference is taken seed by
            seed) and only they take part; otherwise every run takes part, unpaired.
        seeds_b: Seed of each of B's runs.
        replicates: Bootstrap replicates.
        seed: Seed of the resampling (the same report twice gives the same intervals).
        level: Coverage of the interval.
        pooled: The study's pooled seed variance of this metric (``pool``), for cells that pair when it has
            degrees of freedom: the seeds' part of two runs of the same seed, which have none of their own.
        always_pooled: Take ``pooled`` for every comparison of cells that pair, not only lone runs.
    """
    num_a, den_a = (np.atleast_2d(np.asarray(x, dtype=float)) for x in a)
    num_b, den_b = (np.atleast_2d(np.asarray(x, dtype=float)) for x in b)
    shared = _pairable(seeds_a, seeds_b)
    paired = len(shared) >= 2 or (len(shared) == 1 and len(num_a) == len(num_b) == 1)
    if paired:
        keep_a = [list(seeds_a).index(s) for s in shared]
        keep_b = [list(seeds_b).index(s) for s in shared]
        num_a, den_a, num_b, den_b = num_a[keep_a], den_a[keep_a], num_b[keep_b], den_b[keep_b]
    tasks = np.asarray(tasks)
    whole = np.ones((1, len(tasks)))
    value_a, value_b = statistic(num_a, den_a, tasks, whole, macro)[0], statistic(num_b, den_b, tasks, whole, macro)[0]
    estimate = float(value_a.mean() - value_b.mean())

    # Rescaled weights only where every example of a task has the same denominator (right / wrong): a ratio
    # of sums with token-count denominators could come near 0 under the slightly negative weights.
    same = all(np.all(d[:, tasks == t] == d[:1, tasks == t][:, :1]) for d in (den_a, den_b) for t in np.unique(tasks))
    weights = example_weights(tasks, replicates, np.random.default_rng(seed), rescale=same)
    boot_a = statistic(num_a, den_a, tasks, weights, macro)  # (replicates, seeds of A)
    boot_b = statistic(num_b, den_b, tasks, weights, macro)
    v_examples = float((boot_a.mean(axis=1) - boot_b.mean(axis=1)).var(ddof=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (num_a / den_a).mean(axis=0) - (num_b / den_b).mean(axis=0)
    share = np.full(len(tasks), 1.0 / len(np.unique(tasks))) if macro else (
        (den_a.mean(axis=0) + den_b.mean(axis=0)) / (den_a.mean(axis=0).sum() + den_b.mean(axis=0).sum()))
    v_examples += lone_task_variance(ratio, share, tasks)
    parts = _seed_parts([value_a - value_b] if paired else [value_a, value_b])
    source = "own" if parts else "none"
    if (pooled is not None and paired and pooled.residual_df > 0 and math.isfinite(pooled.residual)
            and (always_pooled or not parts)):
        parts, source = [(2 * pooled.residual / len(value_a), pooled.residual_df)], "pooled"
    v_seeds = sum(v for v, _ in parts)
    se = math.sqrt(v_examples + v_seeds)
    # Welch-Satterthwaite: the examples' part has (practically) infinite degrees of freedom.
    spread = sum(v * v / k for v, k in parts if v > 0)
    df = (v_examples + v_seeds) ** 2 / spread if spread > 0 else math.inf
    half = (stats.t.ppf(0.5 + level / 2, df) if math.isfinite(df) else stats.norm.ppf(0.5 + level / 2)) * se
    return Difference(estimate, estimate - half, estimate + half, se, len(tasks), len(value_a), len(value_b), paired,
                      se_examples=math.sqrt(v_examples), se_seeds=math.sqrt(v_seeds), df=df, seed_variance=source)
