"""Accuracy per group (task, subject) with its macro and micro averages, as a torchmetrics Metric.

The states are per-group sums, so under DDP every rank's counts add up before ``compute`` (torchmetrics
syncs on compute); nothing is averaged twice and ranks with fewer examples weigh what they hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric


class GroupedAccuracy(Metric):
    """Accuracy of each group plus ``macro`` (mean over groups that have examples) and ``micro``
    (over all examples).

    Args:
        groups: Group names, e.g. BBH task names; updates give each example's group index.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, groups: Sequence[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.groups = list(groups)
        self.add_state("correct", default=torch.zeros(len(self.groups), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(len(self.groups), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, correct: torch.Tensor, group: torch.Tensor) -> None:
        group = group.to(self.correct.device, torch.long)
        self.correct.index_add_(0, group, correct.to(self.correct.device, torch.float64))
        self.total.index_add_(0, group, torch.ones_like(group, dtype=torch.float64))

    def compute(self) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        """``macro``, ``micro``, ``examples`` (the count) and ``groups`` (accuracy of each group that has examples)."""
        seen = self.total > 0
        per_group = self.correct / self.total.clamp(min=1)
        return {
            "macro": per_group[seen].mean() if seen.any() else torch.tensor(float("nan")),
            "micro": self.correct.sum() / self.total.sum() if seen.any() else torch.tensor(float("nan")),
            "examples": self.total.sum(),
            "groups": {name: per_group[i] for i, name in enumerate(self.groups) if seen[i]},
        }
