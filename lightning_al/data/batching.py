"""Batching: dynamic padding and length-grouped orders so that little compute goes to padding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

IGNORE_INDEX = -100
#: A batch sized by a token budget holds at most this many times ``eval_batch_size`` rows (short prompts
#: would otherwise make batches of hundreds of rows, whose per-step work outgrows what batching saves).
TOKEN_BATCH_MAX_ROWS_FACTOR = 8


class CausalLMCollator:
    """Pads a list of tokenized examples to the longest in the batch.

    ``prompt_only`` keeps only the prompt tokens (scoring and generation must never see the
    reference response). Training batches get ``labels`` with the prompt and padding masked out.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right", prompt_only: bool = False) -> None:
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.prompt_only = prompt_only

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.prompt_only:
            sequences = [ex["input_ids"][: ex["prompt_length"]] for ex in examples]
        else:
            sequences = [ex["input_ids"] for ex in examples]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
        for row, (ex, seq) in enumerate(zip(examples, sequences)):
            span = slice(width - len(seq), width) if self.padding_side == "left" else slice(0, len(seq))
            input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, span] = 1
            if not self.prompt_only:
                row_labels = torch.tensor(seq, dtype=torch.long)
                row_labels[: ex["prompt_length"]] = IGNORE_INDEX
                labels[row, span] = row_labels
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "index": torch.tensor([ex["index"] for ex in examples], dtype=torch.long),
        }
        if self.prompt_only:
            batch["content_start"] = torch.tensor([ex["content_start"] for ex in examples], dtype=torch.long)
            batch["content_end"] = torch.tensor([ex["content_end"] for ex in examples], dtype=torch.long)
        else:
            batch["labels"] = labels
        return batch


class LengthGroupedSampler(Sampler[int]):
    """A seeded random order in which neighbours have similar lengths.

    Shuffles, then sorts within mega-batches of ``batch_size * group_factor`` (as transformers'
    ``LengthGroupedSampler``), so batches are random but hold little padding. Under DDP, Lightning
    shards this order with a stride, which keeps neighbouring (similar) lengths together.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group_factor: int = 50) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_factor = group_factor

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng(self.seed).permutation(len(self.lengths))
        group = self.batch_size * self.group_factor
        for start in range(0, len(order), group):
            chunk = order[start : start + group]
            yield from chunk[np.argsort(-self.lengths[chunk], kind="stable")].tolist()


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch rides in Lightning's checkpoints.

    Lightning saves the ``state_dict()`` of a train dataloader that has one and hands it back to
    ``load_state_dict`` when a run resumes; the next iteration then skips the batches the
    checkpointed run had already trained on, so a run resumed mid-epoch sees the rest of the same
    order (the order itself comes from the seeded sampler). Under DDP, Lightning rebuilds the loader
    with a distributed sampler and each rank skips its own batches.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._skip = 0

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        self._served = 0
        iterator = super().__iter__()
        for _ in range(skip):  # collating a skipped batch costs far less than training on it
            next(iterator)
            self._served += 1
        for batch in iterator:
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        # Lightning does not prefetch from a loader with a length: served == batches trained on.
        return {"batches": self._served, "length": len(self)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        # A whole epoch served (an epoch-end checkpoint) means the next epoch starts from its beginning.
        batches = int(state_dict.get("batches", 0))
        self._skip = batches if batches < int(state_dict.get("length", len(self))) else 0


def length_sorted(indices: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices sorted by decreasing length (stable): batches of equal-length prompts, largest first
    so that an out-of-memory error shows up at once rather than at the end of a pass."""
    return indices[np.argsort(-lengths[indices], kind="stable")]


def token_budget_batches(
    indices: np.ndarray, lengths: np.ndarray, max_tokens: int, extra_tokens: int = 0, max_rows: int | None = None
) -> list[np.ndarray]:
    """Consecutive batches of ``indices`` (sorted by decreasing length) holding as many rows as fit in
    ``rows x (longest prompt + extra_tokens) <= max_tokens``, at least one, at most ``max_rows``.

    Long prompts get small batches and short ones large batches, so that a generation pass makes
    few decode steps over short prompts without running out of memory on long ones. Greedy from the
    front: the batches after any batch boundary are those of the remaining indices alone, so a pass
    resumed at a boundary sees the same batches as an uninterrupted one.
    """
    if max_tokens < 1:
        raise ValueError(f"a token budget must be >= 1, got {max_tokens}")
    batches, start = [], 0
    while start < len(indices):
        width = int(lengths[indices[start]]) + extra_tokens  # the first row is the longest (sorted)
        rows = max(1, max_tokens // max(width, 1))
        if max_rows is not None:
            rows = min(rows, max_rows)
        batches.append(indices[start : start + rows])
        start += rows
    return batches


class TokenBudgetBatchSampler(BatchSampler):
    """``token_budget_batches`` over the order of ``sampler``, as a ``BatchSampler`` so that Lightning can
    put its distributed sampler in place of ``sampler`` under DDP (each process then batches its own
    share, which keeps the decreasing lengths of a sorted dataset).

    ``lengths[i]``: the prompt length of dataset position ``i``. ``groups`` (optional): no batch spans two
    groups, so that a group's shared few-shot prompt makes every batch of it share a prefix.
    """

    def __init__(self, sampler: Sampler[int] | Sequence[int], lengths: Sequence[int], max_tokens: int,
                 extra_tokens: int = 0, max_rows: int | None = None, groups: Sequence[Any] | None = None) -> None:
        super().__init__(sampler, batch_size=max(1, max_rows or 1), drop_last=False)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.groups = None if groups is None else np.asarray(groups)
        self.max_tokens, self.extra_tokens, self.max_rows = max_tokens, extra_tokens, max_rows

    def _batches(self) -> list[np.ndarray]:
        order = np.fromiter(iter(self.sampler), dtype=np.int64)
        runs = [order]
        if self.groups is not None and len(order):
            cuts = np.flatnonzero(self.groups[order][1:] != self.groups[order][:-1]) + 1
            runs = np.split(order, cuts)
        return [batch for run in runs
                for batch in token_budget_batches(run, self.lengths, self.max_tokens, self.extra_tokens, self.max_rows)]

    def __iter__(self) -> Iterator[list[int]]:
        yield from (batch.tolist() for batch in self._batches())

    def __len__(self) -> int:
        return len(self._batches())
