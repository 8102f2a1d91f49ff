"""Evaluation on the pool's held-out split: the loss of the reference responses (every validation),
and answer exact match after greedy generation (``HeldOutAnswers``, a configurable set)."""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from lightning_al.evaluation.answers import answer_of, reference_answer
from lightning_al.evaluation.metrics import ExampleMean
from lightning_al.evaluation.sets import Batch, EvaluationPass, GenerativeEvaluation


class HeldOutLoss(EvaluationPass):
    """The per-token NLL of the held-out responses, each held-out example counted once: logged as
    ``heldout/loss``, ``heldout/perplexity`` and ``heldout/loss/<task>``; its records
    (``heldout_loss.jsonl``) hold each example's summed ``nll`` and its response ``tokens``.

    Its batches are the pool's held-out examples, prompt and response, with ``labels`` on the
    response; it runs in every validation, and is computed even when the held-out split is empty
    (a NaN loss), as the DataModule always serves it.
    """

    progress_bar = ("loss", "perplexity")

    def __init__(self) -> None:
        super().__init__("heldout_loss")
        # Per example, so that the examples DDP's sampler repeats to pad the last batch count once.
        self.metrics["nll"] = ExampleMean()
        self._id_and_task: dict[int, tuple[str, str]] = {}

    @property
    def metrics_prefix(self) -> str:
        return "heldout"

    def prepare(self, tokenizer: PreTrainedTokenizerBase, held_out: datasets.Dataset) -> None:
        # Batches name examples by their pool index; the records name them by id and task.
        self._id_and_task = {int(i): (str(example_id), str(task))
                             for i, example_id, task in zip(held_out["index"], held_out["id"], held_out["task"])}

    def update(self, module, batch: Batch) -> None:
        logits = module(batch["input_ids"], batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        # Summed per example and weighted by its response tokens: the epoch value is the per-token
        # NLL of the whole split, each held-out example counted once.
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100,
                                                reduction="none").sum(1)
        tokens = (labels != -100).sum(1)
        self.metrics["nll"].update(nll, batch["index"], weight=tokens)
        self.records.add(batch["index"], nll=nll.tolist(), tokens=tokens.tolist())

    def compute(self) -> dict[str, float | torch.Tensor]:
        nll = self.metrics["nll"].compute()
        self.metrics["nll"].reset()
        self.last_records = [{"id": self._id_and_task[i][0], "task": self._id_and_task[i][1], **row}
                             for i, row in self.records.gather().items()]
        return {"loss": nll, "perplexity": torch.exp(nll), **_loss_per_task(self.last_records)}


def _loss_per_task(records: list[dict[str, Any]]) -> dict[str, float]:
    """``loss/<task>``: summed NLL over summed response tokens of each task's held-out examples."""
    sums: dict[str, list[float]] = {}
    for row in records:
        total = sums.setdefault(row["task"], [0.0, 0.0])
        total[0] += row["nll"]
        total[1] += row["tokens"]
    return {f"loss/{task}": nll / tokens for task, (nll, tokens) in sorted(sums.items()) if tokens > 0}


class HeldOutAnswers(GenerativeEvaluation):
    """Answer exact match on the pool's held-out split, after greedy generation from the same
    (templated) prompt the model is trained on. A reference with "the answer is" (FLAN CoT) is
    compared on the answer after it; a short reference (e.g. synthetic tasks) as a whole.

    Args:
        name: Prefix of the logged metrics.
        max_examples: Evaluate a fixed, seeded sample of this many held-out examples (None: all).
        max_new_tokens: Generation length limit (the answer must appear within it).
        seed: Seed of the sample.
        rounds: Evaluate only at the end of these rounds (0-based; negative counts from the last:
            ``[-1]`` is the last round). None: every round. ``validate`` / ``test`` always evaluate.
    """

    def __init__(self, name: str = "heldout", max_examples: int | None = None, max_new_tokens: int = 256,
                 seed: int = 0, rounds: list[int] | None = None) -> None:
        super().__init__(name, max_new_tokens, rounds)
        self.max_examples = max_examples
        self.seed = seed
        self.metric_name = "answer_exact_match"

    def prepare(self, tokenizer: PreTrainedTokenizerBase, held_out: datasets.Dataset) -> None:
        if len(held_out) == 0:
            raise ValueError(f"evaluation {self.name!r}: the held-out split is empty; set data.validation_size > 0")
        positions = np.arange(len(held_out))
        if self.max_examples is not None and self.max_examples < len(held_out):
            positions = np.sort(np.random.default_rng(self.seed).choice(len(held_out), self.max_examples, replace=False))
        examples = held_out.select(positions.tolist())
        tasks = sorted(set(examples["task"]))
        group_of = {t: i for i, t in enumerate(tasks)}
        self.rows = [
            {"input_ids": ex["input_ids"][: ex["prompt_length"]], "group": group_of[ex["task"]],
             "target": ex["response"], "id": str(ex["id"])}
            for ex in examples
        ]
        self._finish_prepare(tasks)

    def prediction(self, generated: str, row: dict[str, Any]) -> str | None:
        return answer_of(generated, row["target"])

    def target(self, row: dict[str, Any]) -> str:
        return reference_answer(row["target"])
