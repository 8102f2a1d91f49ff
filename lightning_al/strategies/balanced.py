"""Task-balanced acquisition (after Arabelly et al. 2025): a quota per task, the most uncertain within it.

Uncertainty alone can spend the whole budget on the one task the model finds hardest; a per-task
quota keeps every task in the labeled set while still choosing the informative examples inside each.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from lightning_al.strategies.base import AcquisitionStrategy, check_aligned, check_k, top_k, uncertainty

Allocation = Literal["uniform", "inverse_confidence"]


def largest_remainder(shares: np.ndarray, k: int) -> np.ndarray:
    """Integer counts summing to k, proportional to ``shares`` (>= 0, not all 0): floor of each exact
    quota, then one more to the largest remainders; equal remainders go to the earlier entry."""
    quotas = k * shares / shares.sum()
    counts = np.floor(quotas).astype(np.int64)
    # Float rounding of the quotas must never hand out more than k.
    while counts.sum() > k:
        counts[np.argmax(counts)] -= 1
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[: k - counts.sum()]] += 1
    return counts


def allocate(sizes: np.ndarray, shares: np.ndarray, k: int) -> np.ndarray:
    """Split k over groups of ``sizes`` candidates in proportion to ``shares``; a group that cannot fill
    its quota takes all it has and the rest is split again over the others (same rule), until k is placed."""
    if k > sizes.sum():
        raise ValueError(f"cannot acquire {k} of {sizes.sum()} candidates")
    counts = np.zeros(len(sizes), dtype=np.int64)
    open_ = sizes > 0
    left = k
    while left:
        weights = np.where(open_, shares, 0.0)
        if weights.sum() <= 0:  # every open group has share 0: split what is left equally
            weights = open_.astype(np.float64)
        add = largest_remainder(weights, left)
        add = np.minimum(add, sizes - counts)
        counts += add
        left = k - counts.sum()
        open_ = counts < sizes
    return counts


class TaskBalancedSampling(AcquisitionStrategy):
    """Split k across the candidates' tasks, then take the most uncertain candidates within each task.

    Tasks are handled in sorted name order: the quotas are rounded by largest remainder (ties to the
    earlier task), and a task with fewer candidates than its quota gives the remainder to the others.

    Args:
        score: The predict_step score that ranks candidates within a task (by its uncertainty u).
        allocation: ``uniform``: the same quota for every task; ``inverse_confidence``: quotas ∝ each
            task's mean uncertainty u over its candidates (tasks the model is least sure of get more).
    """

    needs_tasks = True

    def __init__(self, score: str = "confidence", allocation: Allocation = "uniform") -> None:
        if allocation not in ("uniform", "inverse_confidence"):
            raise ValueError(f"allocation must be uniform or inverse_confidence, got {allocation!r}")
        uncertainty(score, np.zeros(0))
        self.score = score
        self.allocation = allocation

    def quotas(self, tasks: np.ndarray, u: np.ndarray, k: int) -> dict[str, int]:
        """How many candidates each task gets (sorted task names)."""
        names, inverse, sizes = np.unique(np.asarray(tasks).astype(str), return_inverse=True, return_counts=True)
        if self.allocation == "uniform":
            shares = np.ones(len(names))
        else:
            # u >= 0 up to rounding (an entropy of -1e-9); a share must not be negative.
            shares = np.maximum(np.bincount(inverse, weights=u, minlength=len(names)) / sizes, 0.0)
        return dict(zip(names.tolist(), allocate(sizes, shares, k).tolist()))

    def select(self, candidates, scores, k, rng, *, tasks=None, **inputs):
        check_k(candidates, k)
        check_aligned(f"{self.score} scores", scores, candidates)
        check_aligned("tasks", tasks, candidates)
        u = uncertainty(self.score, scores)
        tasks = np.asarray(tasks).astype(str)
        chosen = []
        for name, count in self.quotas(tasks, u, k).items():
            members = np.flatnonzero(tasks == name)
            chosen.append(members[top_k(u[members], count, highest=True)])
        return np.sort(candidates[np.concatenate(chosen)]) if chosen else candidates[:0]
