"""Evaluation sets run at the end of every round (and by ``lightning-al validate`` / ``test``).

Each set prepares its examples when the DataModule is set up (so a bad file or task name fails
before any training), serves them as a dataloader of left-padded prompts, and scores a batch with
the LightningModule into a ``GroupedAccuracy`` (per task / subject, macro and micro) and into
per-example records (``ExampleRecords``: id, task, correct and what was chosen or generated), which
the loop writes to ``evaluations/round_<r>/<name>.jsonl``. ``rounds`` restricts a set to some rounds
(e.g. ``[-1]``: the last), so that a costly generation-based set does not run every round.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from lightning_al.data.batching import CausalLMCollator, length_sorted
from lightning_al.data.formatting import prompt_text
from lightning_al.evaluation.answers import answer_of, exact_match, extract_answer, reference_answer, truncate_at_stop
from lightning_al.evaluation.bbh import BBH_STOP_STRINGS, bbh_chat_turns, bbh_prompt, load_bbh
from lightning_al.evaluation.metrics import ExampleMean, GroupedAccuracy
from lightning_al.evaluation.multiple_choice import LETTERS, choice_continuations, load_multiple_choice
from lightning_al.evaluation.records import MAX_GENERATION_CHARS, ExampleRecords
from lightning_al.evaluation.scoring import choice_logprobs
from lightning_al.model.inference import greedy_generate

if TYPE_CHECKING:
    from lightning_al.data.datamodule import ActiveLearningDataModule


class Evaluation(abc.ABC):
    """An evaluation set. ``name`` prefixes its TensorBoard scalars and names its metrics.jsonl rows."""

    #: The metric's name in logs: ``<name>/<metric>`` (macro), ``<name>/<metric>_micro``, ``<name>/<metric>/<group>``.
    metric_name = "accuracy"

    def __init__(self, name: str, rounds: list[int] | None = None) -> None:
        self.name = name
        self.rounds = None if rounds is None else [int(r) for r in rounds]
        self.rows: list[dict[str, Any]] = []
        self.groups: list[str] = []
        self.metric: GroupedAccuracy | None = None
        self.records = ExampleRecords()
        #: The gathered per-example rows of the latest ``compute`` (one per example of the set).
        self.last_records: list[dict[str, Any]] = []

    def runs_at(self, round: int, num_rounds: int) -> bool:
        """Whether the set is evaluated at the end of ``round`` (0-based) of ``num_rounds``."""
        if self.rounds is None:
            return True
        return any(r == round or (r < 0 and num_rounds + r == round) for r in self.rounds)

    @abc.abstractmethod
    def prepare(self, datamodule: ActiveLearningDataModule) -> None:
        """Load, check and tokenize the examples: ``self.rows`` with ``input_ids`` (the prompt), ``group``."""

    @abc.abstractmethod
    def correct(self, module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
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
        self.metric = GroupedAccuracy(groups, [row["group"] for row in self.rows])

    def dataloader(self, batch_size: int, num_workers: int, pad_token_id: int) -> DataLoader:
        # Longest prompts first: batches of similar lengths, and an out-of-memory error shows up at once.
        lengths = np.array([row["prompt_length"] for row in self.rows])
        order = length_sorted(np.arange(len(self.rows)), lengths)
        collator = CausalLMCollator(pad_token_id, padding_side="left", prompt_only=True)
        return DataLoader([self.rows[i] for i in order], batch_size=batch_size, shuffle=False,
                          collate_fn=collator, num_workers=num_workers)

    def update(self, module, batch: dict[str, torch.Tensor]) -> None:
        correct = self.correct(module, batch)
        self.metric.to(batch["input_ids"].device)
        self.metric.update(correct, batch["index"])
        self.records.add(batch["index"], correct=[int(c) for c in correct.tolist()])

    def compute(self) -> dict[str, float]:
        """Metrics of the examples seen since the last call (synced across processes), then reset.
        The per-example rows are gathered into ``last_records`` (a collective under DDP)."""
        values = self.metric.compute()
        self.metric.reset()
        self.last_records = [{"id": self.rows[i]["id"], "task": self.groups[self.rows[i]["group"]], **row}
                             for i, row in self.records.gather().items()]
        prefix = f"{self.name}/{self.metric_name}"
        results = {prefix: float(values["macro"]), f"{prefix}_micro": float(values["micro"]),
                   f"{self.name}/examples": float(values["examples"])}
        results.update({f"{prefix}/{group}": float(v) for group, v in values["groups"].items()})
        return results


class _GenerativeEvaluation(Evaluation):
    """Greedy generation, then exact match of the extracted answer. Also logs ``<name>/answered``,
    the fraction of generations with an answer to extract: a low score with few answers is a
    format failure (no "the answer is" within ``max_new_tokens``), not wrong answers."""

    metric_name = "exact_match"
    stop_strings: Sequence[str] = ()

    def __init__(self, name: str, max_new_tokens: int, rounds: list[int] | None = None) -> None:
        super().__init__(name, rounds)
        self.max_new_tokens = max_new_tokens
        self.answered = ExampleMean()  # per example: DDP's padding repeats count once

    def correct(self, module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        texts = greedy_generate(module.model, module.tokenizer, batch["input_ids"], batch["attention_mask"],
                                self.max_new_tokens, module.stop_token_ids, self.stop_strings)
        rows = [self.rows[i] for i in batch["index"].tolist()]
        texts = [truncate_at_stop(t, self.stop_strings) for t in texts]
        predictions = [self.prediction(t, r) for t, r in zip(texts, rows)]
        self.answered.to(batch["input_ids"].device)
        self.answered.update(torch.tensor([float(p is not None) for p in predictions]), batch["index"])
        targets = [self.target(r) for r in rows]
        self.records.add(batch["index"], answer=predictions, target=targets,
                         generation=[t[:MAX_GENERATION_CHARS] for t in texts])
        return torch.tensor([float(exact_match(p, t)) for p, t in zip(predictions, targets)])

    def compute(self) -> dict[str, float]:
        results = super().compute()
        results[f"{self.name}/answered"] = float(self.answered.compute())
        self.answered.reset()
        return results

    @abc.abstractmethod
    def prediction(self, generated: str, row: dict[str, Any]) -> str | None:
        """The answer in a generation (None: no answer found)."""

    @abc.abstractmethod
    def target(self, row: dict[str, Any]) -> str:
        """The reference answer."""


class HeldOutAnswers(_GenerativeEvaluation):
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

    def prepare(self, datamodule: ActiveLearningDataModule) -> None:
        held_out = np.flatnonzero(datamodule.held_out)
        if self.max_examples is not None and self.max_examples < len(held_out):
            held_out = np.sort(np.random.default_rng(self.seed).choice(held_out, self.max_examples, replace=False))
        tasks = sorted(set(datamodule.tasks[held_out].tolist()))
        group_of = {t: i for i, t in enumerate(tasks)}
        pool = datamodule.pool.select(held_out.tolist())
        self.rows = [
            {"input_ids": ex["input_ids"][: ex["prompt_length"]], "group": group_of[ex["task"]],
             "target": ex["response"], "id": str(ex["id"])}
            for ex in pool
        ]
        if not self.rows:
            raise ValueError(f"evaluation {self.name!r}: the held-out split is empty; set data.validation_size > 0")
        self._finish_prepare(tasks)

    def prediction(self, generated: str, row: dict[str, Any]) -> str | None:
        return answer_of(generated, row["target"])

    def target(self, row: dict[str, Any]) -> str:
        return reference_answer(row["target"])


class BigBenchHard(_GenerativeEvaluation):
    """BIG-Bench Hard, 3-shot chain of thought (Suzgun et al.): greedy generation that stops at the
    next "Q:" or a blank line; exact match of the answer after "the answer is".

    Args:
        path: Folder with ``tasks/<task>.json`` and ``cot-prompts/<task>.txt``, or a clone of
            github.com/suzgunmirac/BIG-Bench-Hard (task files in ``bbh/``).
        tasks: Task names (default: all tasks in the folder).
        max_examples_per_task: A fixed, seeded sample per task (None: all), to keep rounds fast.
        max_new_tokens: Generation length limit of the chain of thought.
        chat_template: Put the prompt in a user turn of the tokenizer's chat template, with the
            assistant's answer begun by "Let's think step by step." (instruct models); otherwise
            (or without a chat template) the plain text prompt.
        seed: Seed of the per-task sample.
        name: Prefix of the logged metrics.
        rounds: Evaluate only at the end of these rounds (0-based; negative counts from the last:
            ``[-1]`` is the last round). None: every round. ``validate`` / ``test`` always evaluate.
    """

    stop_strings = BBH_STOP_STRINGS

    def __init__(self, path: str, tasks: list[str] | None = None, max_examples_per_task: int | None = None,
                 max_new_tokens: int = 256, chat_template: bool = True, seed: int = 0, name: str = "bbh",
                 rounds: list[int] | None = None) -> None:
        super().__init__(name, max_new_tokens, rounds)
        self.path = path
        self.tasks = tasks
        self.max_examples_per_task = max_examples_per_task
        self.chat_template = chat_template
        self.seed = seed

    def prepare(self, datamodule: ActiveLearningDataModule) -> None:
        examples = load_bbh(self.path, self.tasks, self.max_examples_per_task, self.seed)
        tasks = sorted({ex["task"] for ex in examples})
        tokenizer = datamodule.tokenizer
        self.rows = []
        for ex in examples:
            if self.chat_template and tokenizer.chat_template:
                user, prefix = bbh_chat_turns(ex["cot_prompt"], ex["input"])
                # The template writes its own special tokens (BOS, role headers).
                ids = tokenizer(prompt_text(tokenizer, "", user) + prefix, add_special_tokens=False)["input_ids"]
            else:
                ids = tokenizer(bbh_prompt(ex["cot_prompt"], ex["input"]))["input_ids"]
            # The id names the example in its task file, so that records of two runs pair up.
            self.rows.append({"input_ids": ids, "group": tasks.index(ex["task"]), "target": ex["target"],
                              "id": f"{ex['task']}/{ex['index']}"})
        self._finish_prepare(tasks)

    def prediction(self, generated: str, row: dict[str, Any]) -> str | None:
        return extract_answer(generated)

    def target(self, row: dict[str, Any]) -> str:
        return row["target"]


class MultipleChoice(Evaluation):
    """Multiple choice by log-likelihood, MMLU style: the question, lettered choices and "Answer:",
    then the choice whose continuation (" A", " B", ...) has the highest log-probability is the
    model's answer. Plain text (no chat template), as in the MMLU papers and lm-evaluation-harness.

    Args:
        source: Hub dataset id (``cais/mmlu``) or a local jsonl / json / parquet / csv file with
            ``question``, ``choices``, ``answer`` (index or letter) and optional ``subject``.
        name: Prefix of the logged metrics.
        config_name: Hub dataset config (``all`` for every MMLU subject).
        split: Split evaluated (hub).
        fewshot_split: Split the exemplars come from (hub); the first ``num_fewshot`` of the same subject.
        fewshot_source: Local file of exemplars (for a local ``source``).
        num_fewshot: Exemplars per prompt.
        subjects: Subjects to keep (default: all).
        max_examples: A fixed, seeded sample of the questions (None: all).
        seed: Seed of the sample.
        rounds: Evaluate only at the end of these rounds (0-based; negative counts from the last:
            ``[-1]`` is the last round). None: every round. ``validate`` / ``test`` always evaluate.
    """

    def __init__(self, source: str = "cais/mmlu", name: str = "mmlu", config_name: str | None = "all",
                 split: str = "test", fewshot_split: str | None = "dev", fewshot_source: str | None = None,
                 num_fewshot: int = 5, subjects: list[str] | None = None, max_examples: int | None = None,
                 seed: int = 0, rounds: list[int] | None = None) -> None:
        super().__init__(name, rounds)
        self.options = dict(split=split, name=config_name, fewshot_split=fewshot_split, fewshot_source=fewshot_source,
                            num_fewshot=num_fewshot, subjects=subjects, max_examples=max_examples, seed=seed)
        self.source = source

    def prepare(self, datamodule: ActiveLearningDataModule) -> None:
        examples = load_multiple_choice(self.source, **self.options)
        subjects = sorted({str(ex["subject"]) for ex in examples})
        tokenizer = datamodule.tokenizer
        self.rows = []
        for ex in examples:
            ids = tokenizer(ex["prompt"])["input_ids"]
            continuations = [tokenizer(c, add_special_tokens=False)["input_ids"]
                             for c in choice_continuations(len(ex["choices"]))]
            # The id is the question's row in its file (or split), so that records of two runs pair up.
            self.rows.append({"input_ids": ids, "group": subjects.index(str(ex["subject"])), "answer": ex["answer"],
                              "continuations": continuations, "id": f"{ex['subject']}/{ex['index']}"})
        self._finish_prepare(subjects)

    def correct(self, module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rows = [self.rows[i] for i in batch["index"].tolist()]
        chosen = []
        for row, logprobs in zip(rows, choice_logprobs(module.model, batch, [r["continuations"] for r in rows])):
            chosen.append(int(torch.argmax(logprobs)))  # ties: the first choice, as in lm-evaluation-harness
        self.records.add(batch["index"], chosen=[LETTERS[c] for c in chosen],
                         target=[LETTERS[r["answer"]] for r in rows])
        return torch.tensor([float(c == r["answer"]) for c, r in zip(chosen, rows)])


__all__ = ["BigBenchHard", "Evaluation", "HeldOutAnswers", "MultipleChoice"]
