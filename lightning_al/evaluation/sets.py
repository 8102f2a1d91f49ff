"""Evaluation passes: what the LightningModule runs in validation (and ``validate`` / ``test``).

A pass is prepared when the DataModule is set up, from what it needs (the tokenizer and the held-out
rows), so that a bad file or task name fails before any training. The DataModule serves its batches
as the validation dataloader named after it; the LightningModule hands each batch to ``update`` and,
after the loader's last batch, logs what ``compute`` returns as ``<metrics_prefix>/<metric>`` and
keeps ``last_records``, the per-example rows that the loop writes to
``evaluations/round_<r>/<name>.jsonl``. The metric states live in ``metrics``, which the
LightningModule registers as its child: Lightning moves them with it, and torchmetrics syncs them
across processes when they compute.

``Evaluation`` is the base of the configurable sets (``data.evaluations``): per task / subject
accuracy (``GroupedAccuracy``, macro and micro), per-example records (id, task, correct and what was
chosen or generated), and ``rounds`` to restrict a costly set to some rounds (e.g. ``[-1]``: the last).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, SequentialSampler
from transformers import PreTrainedTokenizerBase

from lightning_al.data.batching import (
    TOKEN_BATCH_MAX_ROWS_FACTOR,
    CausalLMCollator,
    TokenBudgetBatchSampler,
    length_sorted,
)
from lightning_al.evaluation.answers import exact_match, truncate_at_stop
from lightning_al.evaluation.metrics import ExampleMean, GroupedAccuracy
from lightning_al.evaluation.records import MAX_GENERATION_CHARS, ExampleRecords
from lightning_al.model.inference import greedy_generate

Batch = dict[str, torch.Tensor]


class EvaluationPass(abc.ABC):
    """One validation dataloader's evaluation: its batches go to ``update``, then ``compute`` gives
    its metrics and ``last_records`` its per-example rows.

    Args:
        name: Names the dataloader, the records file and the metric states in the LightningModule.
    """

    #: Metrics that the progress bar shows too.
    progress_bar: tuple[str, ...] = ()

    def __init__(self, name: str) -> None:
        if not name or "/" in name or "." in name:
            raise ValueError(f"evaluation name {name!r}: must be non-empty, without '/' or '.' (it names files)")
        self.name = name
        #: The torchmetrics states, registered as a child of the LightningModule (see the module docstring).
        self.metrics = torch.nn.ModuleDict()
        self.records = ExampleRecords()
        #: The gathered per-example rows of the latest ``compute`` (one per example).
        self.last_records: list[dict[str, Any]] = []

    @property
    def metrics_prefix(self) -> str:
        """Logged metrics are ``<metrics_prefix>/<metric>``; it is also the ``evaluation`` of metrics.jsonl rows."""
        return self.name

    @abc.abstractmethod
    def prepare(self, tokenizer: PreTrainedTokenizerBase, held_out: datasets.Dataset) -> None:
        """Load, check and tokenize the examples. ``held_out``: the pool's held-out rows (``id``,
        ``task``, ``index`` in the pool, ``input_ids``, ``prompt_length``, ``response``)."""

    @abc.abstractmethod
    def update(self, module, batch: Batch) -> None:
        """Evaluate ``module`` (the LightningModule: ``model``, ``tokenizer``, ``stop_token_ids``) on a batch."""

    @abc.abstractmethod
    def compute(self) -> dict[str, float | torch.Tensor]:
        """The metrics of the examples seen since the last call (synced across processes), then reset;
        the per-example rows go to ``last_records`` (a collective under DDP: every process calls it).
        Values are logged as they are returned (a tensor keeps its dtype)."""


class Evaluation(EvaluationPass):
    """An evaluation set of ``data.evaluations``: prompts served left-padded, scored right or wrong.

    Args:
        name: Prefixes its logged metrics and names its metrics.jsonl rows and records file.
        rounds: Evaluate only at the end of these rounds (0-based; negative counts from the last).
    """

    #: The metric's name in logs: ``<name>/<metric>`` (macro), ``<name>/<metric>_micro``, ``<name>/<metric>/<group>``.
    metric_name = "accuracy"
    #: Batches come group (task) by group: its examples share a few-shot prompt, which generation
    #: then runs once per batch (``greedy_generate``) instead of once per example.
    batch_by_group = False

    def __init__(self, name: str, rounds: list[int] | None = None) -> None:
        super().__init__(name)
        self.rounds = None if rounds is None else [int(r) for r in rounds]
        self.rows: list[dict[str, Any]] = []
        self.groups: list[str] = []

    def runs_at(self, round: int, num_rounds: int) -> bool:
        """Whether the set is evaluated at the end of ``round`` (0-based) of ``num_rounds``."""
        if self.rounds is None:
            return True
        return any(r == round or (r < 0 and num_rounds + r == round) for r in self.rounds)

    @abc.abstractmethod
    def prepare(self, tokenizer: PreTrainedTokenizerBase, held_out: datasets.Dataset) -> None:
        """Load, check and tokenize the examples into ``self.rows`` (``input_ids``: the prompt; ``group``;
        ``id``), then call ``_finish_prepare``."""

    @abc.abstractmethod
    def correct(self, module, batch: Batch) -> torch.Tensor:
        """Whether the model gets each example of the batch right (1.0 / 0.0)."""

    def _finish_prepare(self, groups: Sequence[str]) -> None:
        if not self.rows:
            raise ValueError(f"evaluation {self.name!r}: the evaluation set is empty")
        ids = [row["id"] for row in self.rows]
        if len(set(ids)) != len(ids):
            raise ValueError(f"evaluation {self.name!r}: example ids are not unique")
        for i, row in enumerate(self.rows):
            row.update(index=i, prompt_length=len(row["input_ids"]), content_start=0, content_end=len(row["input_ids"]))
        self.groups = list(groups)
        self.metrics["correct"] = GroupedAccuracy(groups, [row["group"] for row in self.rows])

    #: Tokens that evaluating a row adds to its prompt (a generation's new tokens): counted by token budgets.
    new_tokens = 0

    def dataloader(self, batch_size: int, num_workers: int, pad_token_id: int,
                   batch_tokens: int | None = None) -> DataLoader:
        """Batches of ``batch_size`` prompts, or with ``batch_tokens`` as many as fit in that many tokens
        (each row counted as the batch's longest prompt plus ``new_tokens``; at most 8 x ``batch_size``)."""
        # Longest prompts first: batches of similar lengths, and an out-of-memory error shows up at once.
        lengths = np.array([row["prompt_length"] for row in self.rows])
        groups = np.array([row["group"] for row in self.rows])
        order = length_sorted(np.arange(len(self.rows)), lengths)
        if self.batch_by_group:  # stable: longest first within each group
            order = order[np.argsort(groups[order], kind="stable")]
        collator = CausalLMCollator(pad_token_id, padding_side="left", prompt_only=True)
        rows = [self.rows[i] for i in order]
        if batch_tokens is None:
            return DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=collator, num_workers=num_workers)
        sampler = TokenBudgetBatchSampler(SequentialSampler(rows), lengths[order], batch_tokens, self.new_tokens,
                                          max_rows=TOKEN_BATCH_MAX_ROWS_FACTOR * batch_size,
                                          groups=groups[order] if self.batch_by_group else None)
        return DataLoader(rows, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers)

    def update(self, module, batch: Batch) -> None:
        correct = self.correct(module, batch)
        self.metrics["correct"].update(correct, batch["index"])
        self.records.add(batch["index"], correct=[int(c) for c in correct.tolist()])

    def compute(self) -> dict[str, float | torch.Tensor]:
        metric = self.metrics["correct"]
        values = metric.compute()
        metric.reset()
        self.last_records = [{"id": self.rows[i]["id"], "task": self.groups[self.rows[i]["group"]], **row}
                             for i, row in self.records.gather().items()]
        name = self.metric_name
        results = {name: float(values["macro"]), f"{name}_micro": float(values["micro"]),
                   "examples": float(values["examples"])}
        results.update({f"{name}/{group}": float(v) for group, v in values["groups"].items()})
        return results


class GenerativeEvaluation(Evaluation):
    """Greedy generation, then exact match of the extracted answer. Also logs ``<name>/answered``,
    the fraction of generations with an answer to extract: a low score with few answers is a
    format failure (no "the answer is" within ``max_new_tokens``), not wrong answers."""

    metric_name = "exact_match"
    stop_strings: Sequence[str] = ()

    def __init__(self, name: str, max_new_tokens: int, rounds: list[int] | None = None) -> None:
        super().__init__(name, rounds)
        self.max_new_tokens = self.new_tokens = max_new_tokens
        self.metrics["answered"] = ExampleMean()  # per example: DDP's padding repeats count once

    def correct(self, module, batch: Batch) -> torch.Tensor:
        rows = [self.rows[i] for i in batch["index"].tolist()]
        texts = [""] * len(rows)
        # A batch that spans two groups (where one ends, or as DDP shards them) generates each apart,
        # so that each part's shared prompt is run once.
        parts = [[i for i, r in enumerate(rows) if r["group"] == g] for g in dict.fromkeys(r["group"] for r in rows)]
        for part in parts if self.batch_by_group else [list(range(len(rows)))]:
            mask = batch["attention_mask"][part]
            first = int(mask.any(0).nonzero()[0])  # drop the columns that are padding in every row
            generated = greedy_generate(module.model, module.tokenizer, batch["input_ids"][part, first:], mask[:, first:],
                                        self.max_new_tokens, module.stop_token_ids, self.stop_strings)
            for i, text in zip(part, generated):
                texts[i] = text
        texts = [truncate_at_stop(t, self.stop_strings) for t in texts]
        predictions = [self.prediction(t, r) for t, r in zip(texts, rows)]
        self.metrics["answered"].update(torch.tensor([float(p is not None) for p in predictions]), batch["index"])
        targets = [self.target(r) for r in rows]
        self.records.add(batch["index"], answer=predictions, target=targets,
                         generation=[t[:MAX_GENERATION_CHARS] for t in texts])
        return torch.tensor([float(exact_match(p, t)) for p, t in zip(predictions, targets)])

    def compute(self) -> dict[str, float | torch.Tensor]:
        results = super().compute()
        results["answered"] = float(self.metrics["answered"].compute())
        self.metrics["answered"].reset()
        return results

    @abc.abstractmethod
    def prediction(self, generated: str, row: dict[str, Any]) -> str | None:
        """The answer in a generation (None: no answer found)."""

    @abc.abstractmethod
    def target(self, row: dict[str, Any]) -> str:
        """The reference answer."""
