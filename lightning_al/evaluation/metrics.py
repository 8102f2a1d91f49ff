"""Accuracy per group (task, subject) with its macro and micro averages, as a torchmetrics Metric.

The state is one slot per example of the evaluation set (right or wrong, and seen), reduced with
``max`` across processes. Under DDP, Lightning's distributed sampler pads the last batches with
repeated examples so that every rank has as many; a per-example state counts each example once,
where summed counts would count the repeats twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric


class GroupedAccuracy(Metric):
    """Accuracy of each group plus ``macro`` (mean over groups that have examples) and ``micro``
    (over all examples).

    Args:
        groups: Group names, e.g. BBH task names.
        example_groups: The group index of every example of the evaluation set; updates name
            examples by their position in this list.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, groups: Sequence[str], example_groups: Sequence[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.groups = list(groups)
        self.register_buffer("example_groups", torch.as_tensor(list(example_groups), dtype=torch.long), persistent=False)
        n = len(self.example_groups)
        self.add_state("correct", default=torch.zeros(n, dtype=torch.float32), dist_reduce_fx="max")
        self.add_state("seen", default=torch.zeros(n, dtype=torch.float32), dist_reduce_fx="max")

    def update(self, correct: torch.Tensor, example: torch.Tensor) -> None:
        example = example.to(self.correct.device, torch.long)
        self.correct[example] = correct.to(self.correct.device, torch.float32)
        self.seen[example] = 1.0

    def compute(self) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        """``macro``, ``micro``, ``examples`` (the count) and ``groups`` (accuracy of each group that has examples)."""
        groups = self.example_groups.to(self.correct.device)
        total = torch.zeros(len(self.groups), dtype=torch.float64, device=groups.device).index_add_(
            0, groups, self.seen.double())
        right = torch.zeros_like(total).index_add_(0, groups, (self.correct * self.seen).double())
        present = total > 0
        per_group = right / total.clamp(min=1)
        nan = torch.tensor(float("nan"))
        return {
            "macro": per_group[present].mean() if present.any() else nan,
            "micro": right.sum() / total.sum() if present.any() else nan,
            "examples": total.sum(),
            "groups": {name: per_group[i] for i, name in enumerate(self.groups) if present[i]},
        }
