"""Metrics that count each evaluation example once: accuracy per group (task, subject) with its
macro and micro averages, and a per-example weighted mean (the held-out loss).

The state is one slot per example of the evaluation set (unseen, wrong or right), reduced across
processes by keeping the first process that saw the example. Under DDP, Lightning's distributed
sampler pads the last batches with repeated examples so that every rank has as many; a per-example
state counts each example once, where summed counts would count the repeats twice, and keeping the
first rank's answer is what the per-example records keep (a repeat in another batch can be answered
differently in low precision: a ``max`` would count it right if either was).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def _first_seen(outcomes: torch.Tensor) -> torch.Tensor:
    """(processes, n) outcomes, in process order, to (n,): each example's from the first process that saw it."""
    first = (outcomes > 0).float().argmax(dim=0)  # 0 where none saw it: that row holds 0 too
    return outcomes.gather(0, first.unsqueeze(0)).squeeze(0)


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
        # 0: not seen, 1: wrong, 2: right.
        self.add_state("outcome", default=torch.zeros(n, dtype=torch.float32), dist_reduce_fx=_first_seen)

    def update(self, correct: torch.Tensor, example: torch.Tensor) -> None:
        example = example.to(self.outcome.device, torch.long)
        self.outcome[example] = 1.0 + (correct.to(self.outcome.device, torch.float32) > 0).float()

    def compute(self) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        """``macro``, ``micro``, ``examples`` (the count) and ``groups`` (accuracy of each group that has examples)."""
        groups = self.example_groups.to(self.outcome.device)
        total = torch.zeros(len(self.groups), dtype=torch.float64, device=groups.device).index_add_(
            0, groups, (self.outcome > 0).double())
        right = torch.zeros_like(total).index_add_(0, groups, (self.outcome == 2).double())
        present = total > 0
        per_group = right / total.clamp(min=1)
        nan = torch.tensor(float("nan"))
        return {
            "macro": per_group[present].mean() if present.any() else nan,
            "micro": right.sum() / total.sum() if present.any() else nan,
            "examples": total.sum(),
            "groups": {name: per_group[i] for i, name in enumerate(self.groups) if present[i]},
        }


class ExampleMean(Metric):
    """A weighted mean over examples in which every example counts once, however many times it is
    seen: ``sum(total) / sum(weight)`` over distinct example keys.

    Each update records per example its key (e.g. its pool index), a ``total`` (e.g. the summed NLL
    of its response tokens) and a ``weight`` (its token count). The records are concatenated across
    processes and a repeated key is dropped, so the repeats with which Lightning's distributed
    sampler pads the last batches do not count twice; the records of one key must be equal (the
    same example under the same model), so which one is kept does not matter.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("example", default=[], dist_reduce_fx="cat")
        self.add_state("total", default=[], dist_reduce_fx="cat")
        self.add_state("weight", default=[], dist_reduce_fx="cat")

    def update(self, total: torch.Tensor, example: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        # On the metric's device: the records are gathered across processes there (NCCL: the GPU).
        total = torch.as_tensor(total).detach().to(self.device).reshape(-1)
        example = torch.as_tensor(example).to(self.device).reshape(-1).long()
        weight = torch.ones_like(total) if weight is None else torch.as_tensor(weight).to(self.device).reshape(-1)
        if not len(total) == len(example) == len(weight):
            raise ValueError(f"ExampleMean.update: {len(total)} totals, {len(example)} keys, {len(weight)} weights")
        # Float64 sums, so that the mean does not depend on the order or the split of the examples.
        dtype = torch.float32 if total.device.type == "mps" else torch.float64
        self.example.append(example)
        self.total.append(total.to(dtype))
        self.weight.append(weight.to(dtype))

    def compute(self) -> torch.Tensor:
        """The mean; NaN before any example (an empty held-out split)."""
        if isinstance(self.example, list) and not self.example:
            return torch.tensor(float("nan"))
        example, total, weight = (dim_zero_cat(s) if isinstance(s, list) else s
                                  for s in (self.example, self.total, self.weight))
        if example.numel() == 0:
            return torch.tensor(float("nan"))
        keys, inverse = torch.unique(example, return_inverse=True)
        order = torch.arange(len(example), device=example.device)
        first = torch.full((len(keys),), len(example), device=example.device).scatter_reduce(
            0, inverse, order, "amin")
        return total[first].sum() / weight[first].sum()
