"""Per-example evaluation records: one row per evaluation example, written to the run folder.

An evaluation pass adds, for every example it scores, what it measured (right or wrong, the chosen
option, the extracted answer, the summed NLL and token count, ...) under the example's position in its
set. ``gather`` merges the rows of all processes, each example once: the repeats with which DDP's
distributed sampler pads the last batches are dropped (the first process's row is kept, as
``ExampleMean`` keeps the first record of a key). The report's paired bootstrap reads these rows
(``evaluations/round_<r>/<set>.jsonl``), so that any difference between two runs can be re-tested
on the examples both answered.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

#: Generations are cut to this many characters in the records (enough to see the format and the answer).
MAX_GENERATION_CHARS = 1000
#: Folder of the records inside a run folder: ``evaluations/round_<r>/<set>.jsonl``.
RECORDS_DIR = "evaluations"


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


def write_records(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``rows`` as JSON lines (replacing the file: a round evaluated again after a resume)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)  # a kill while writing leaves the previous file, never half of one
    return path


def records_path(run_dir: str | Path, round: int, name: str) -> Path:
    """``<run_dir>/evaluations/round_<round>/<name>.jsonl``."""
    return Path(run_dir) / RECORDS_DIR / f"round_{round}" / f"{name}.jsonl"
