"""Per-example evaluation records: one row per evaluation example, written to the run folder.

An evaluation pass adds, for every example it scores, what it measured (right or wrong, the chosen
option, the extracted answer, the summed NLL and token count, ...) under the example's position in its
set. ``gather`` merges the rows of all processes, each example once: the repeats with which DDP's
distributed sampler pads the last batches are dropped (the first process's row is kept, as
``ExampleMean`` keeps the first record of a key). The loop writes them to the run folder
(``lightning_al.run_folder.write_records``: ``evaluations/round_<r>/<set>.jsonl``), where the report's
paired bootstrap reads them, so that any difference between two runs can be re-tested on the examples
both answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

#: Generations are cut to this many characters in the records (enough to see the format and the answer).
MAX_GENERATION_CHARS = 1000


class ExampleRecords:
    """The rows of one evaluation pass, keyed by the example's position in its evaluation set."""

    def __init__(self) -> None:
        self._rows: dict[int, dict[str, Any]] = {}

    def add(self, index: torch.Tensor | Sequence[int], **columns: Sequence[Any]) -> None:
        """Set ``columns`` (one value per example) on the rows of the examples at positions ``index``."""
        positions = index.tolist() if isinstance(index, torch.Tensor) else list(index)
        for name, values in columns.items():
            values = values.tolist() if isinstance(values, torch.Tensor) else list(values)
            if len(values) != len(positions):
                raise ValueError(f"ExampleRecords.add: {len(values)} values of {name!r} for {len(positions)} examples")
            for position, value in zip(positions, values):
                self._rows.setdefault(int(position), {})[name] = value

    def __len__(self) -> int:
        return len(self._rows)

    def gather(self) -> dict[int, dict[str, Any]]:
        """Every process's rows, each example once (lowest rank first), sorted by position; then reset.

        A collective under DDP: every process must call it.
        """
        local, self._rows = self._rows, {}
        parts = [local]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, local)
        merged: dict[int, dict[str, Any]] = {}
        for part in parts:
            for position, row in part.items():
                merged.setdefault(position, row)
        return dict(sorted(merged.items()))

