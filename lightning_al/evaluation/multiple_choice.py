"""Multiple-choice benchmarks in the MMLU format: data loading and few-shot prompts.

The prompt is Hendrycks et al.'s (2021) MMLU format with letters, as in
lm-evaluation-harness ``mmlu``::

    The following are multiple choice questions (with answers) about high school biology.

    <shot question>
    A. <choice>
    B. <choice>
    Answer: B

    <question>
    A. <choice>
    B. <choice>
    Answer:

A model is scored by comparing the log-likelihoods of the continuations
" A", " B", ... (:func:`choice_continuations`) after the prompt.

:func:`load_multiple_choice` reads the questions from the Hugging Face Hub
(``cais/mmlu``) or from a local file with the same columns; :class:`MultipleChoice` is the
evaluation set (``data.evaluations``) built on them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from itertools import takewhile
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from lightning_al.data.formatting import leading_ids
from lightning_al.data.sources import InvalidRow, read_file
from lightning_al.evaluation.likelihood import choice_logprobs
from lightning_al.evaluation.sets import Batch, Evaluation

logger = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"

_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")

Rows = list[dict[str, Any]]


def format_question(question: str, choices: Sequence[str], answer: int | None = None) -> str:
    """One question with lettered choices, ending in "Answer:" (or "Answer: B" when ``answer`` is given).

    The question is stripped of surrounding whitespace, as lm-evaluation-harness does.
    """
    if not 1 <= len(choices) <= len(LETTERS):
        raise ValueError(f"a question needs 1 to {len(LETTERS)} choices, got {len(choices)}")
    lines = [question.strip(), *(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices)), "Answer:"]
    text = "\n".join(lines)
    if answer is None:
        return text
    if not 0 <= answer < len(choices):
        raise ValueError(f"answer {answer} is not one of the {len(choices)} choices")
    return f"{text} {LETTERS[answer]}"


def mc_prompt(question: str, choices: Sequence[str], subject: str | None, shots: Sequence[dict[str, Any]]) -> str:
    """The few-shot prompt for ``question``: a header, the answered ``shots``, then the question.

    ``shots`` are rows with ``question``, ``choices`` and ``answer`` (an int). The
    header names ``subject`` with underscores read as spaces ("high_school_biology"
    -> "high school biology"), or no subject when it is ``None`` or empty.
    """
    about = f" about {subject.replace('_', ' ')}" if subject else ""
    header = f"The following are multiple choice questions (with answers){about}.\n\n"
    examples = "".join(format_question(s["question"], s["choices"], s["answer"]) + "\n\n" for s in shots)
    return header + examples + format_question(question, choices)


def choice_continuations(n: int) -> list[str]:
    """The continuations scored after a prompt for ``n`` choices: ``[" A", " B", ...]``."""
    if not 1 <= n <= len(LETTERS):
        raise ValueError(f"the number of choices must be between 1 and {len(LETTERS)}, got {n}")
    return [f" {letter}" for letter in LETTERS[:n]]


def continuation_ids(tokenizer: PreTrainedTokenizerBase, context: str, continuation: str,
                     context_ids: list[int] | None = None) -> list[int]:
    """The ids ``continuation`` has after ``context``: the tail of the two tokenized together.

    Tokenized alone, " A" is ['▁', '▁A'] for SentencePiece tokenizers (Llama 2, Mistral v0.1): a stray '▁'
    that every choice would share, scored after a context the exemplars never showed ("Answer: B" ends in
    '▁B'). A context whose last token merges with the continuation keeps the continuation's own ids.
    ``context_ids``: the context's own ids (no special tokens), when the caller has them already.
    """
    if context_ids is None:
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    if len(whole) > len(context_ids) and whole[: len(context_ids)] == context_ids:
        return whole[len(context_ids):]
    return tokenizer(continuation, add_special_tokens=False)["input_ids"]


def load_multiple_choice(
    source: str,
    split: str = "test",
    name: str | None = "all",
    fewshot_split: str | None = "dev",
    fewshot_source: str | None = None,
    num_fewshot: int = 5,
    subjects: Sequence[str] | None = None,
    max_examples: int | None = None,
    seed: int = 0,
) -> Rows:
    """Multiple-choice rows ``{"index", "subject", "question", "choices", "answer", "prompt"}``.

    Args:
        source: A local .jsonl / .json / .parquet / .csv / .tsv file (read as pools are) with columns ``question``,
            ``choices`` (a list; in a csv / tsv, columns ``A``, ``B``, ... instead),
            ``answer`` and optionally ``subject``; or else a Hugging Face Hub
            dataset id such as ``cais/mmlu``, which has these columns.
        split: The Hub split to evaluate on (ignored for a local file).
        name: The Hub dataset configuration (``"all"`` for every MMLU subject).
        fewshot_split: The Hub split the few-shot exemplars come from.
        fewshot_source: Where the exemplars come from instead: a local file or a
            Hub id (loaded with ``fewshot_split``). Required for a local ``source``
            unless ``num_fewshot`` is 0.
        num_fewshot: Exemplars per prompt: the first ``num_fewshot`` exemplar rows of
            the question's subject, in file order, skipping one that is the question
            itself (MMLU repeats a few questions, so the answer would be in the prompt).
            A subject with fewer uses what it has (a warning is logged).
        subjects: Keep only these subjects.
        max_examples: Keep a random subset of at most this many rows (after the
            subject filter), returned in file order.
        seed: Seed of that subset.

    ``index`` is the row's position in the file or split; ``answer`` is the 0-based
    index of the correct choice. In the data, ``answer`` may be an int (or a string of
    digits) counting from 0, or a letter ("B" or "b"). Errors name the file or dataset
    and the row, counted from 0 like ``index``.
    """
    if num_fewshot < 0:
        raise ValueError(f"num_fewshot must be 0 or more, got {num_fewshot}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be a positive number or None, got {max_examples!r}")
    shots = _fewshot_rows(source, name, fewshot_source, fewshot_split, num_fewshot)
    rows = _load_rows(source, name, split)
    if subjects is not None:
        subjects = [subjects] if isinstance(subjects, str) else subjects
        available = sorted({row["subject"] for row in rows if row["subject"] is not None})
        unknown = [subject for subject in subjects if subject not in available]
        if unknown:
            raise ValueError(f"{source}: unknown subject(s) {unknown}; available subjects: {available or 'none'}")
        rows = [row for row in rows if row["subject"] in set(subjects)]
    if max_examples is not None and max_examples < len(rows):
        keep = np.random.default_rng(seed).choice(len(rows), size=max_examples, replace=False)
        rows = [rows[i] for i in sorted(keep.tolist())]
    if not rows:
        raise ValueError(f"{source}: no multiple-choice rows left to evaluate")
    short = sorted({str(row["subject"]) for row in rows if len(shots.get(row["subject"], [])) < num_fewshot})
    if short:
        logger.warning("fewer than %d few-shot exemplars for subject(s) %s; using what there is", num_fewshot, short)
    repeated = 0
    for row in rows:
        candidates = shots.get(row["subject"], [])
        own = [s for s in candidates if not _same_question(s, row)]
        repeated += len(own) < len(candidates)
        row["prompt"] = mc_prompt(row["question"], row["choices"], row["subject"], own[:num_fewshot])
    if repeated:
        logger.info("%d question(s) are also exemplars of their subject; their prompts leave that exemplar out",
                    repeated)
    return rows


def _same_question(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["question"].strip() == b["question"].strip() and a["choices"] == b["choices"]


def _fewshot_rows(
    source: str, name: str | None, fewshot_source: str | None, fewshot_split: str | None, num_fewshot: int
) -> dict[str | None, Rows]:
    """The first ``num_fewshot`` + 1 exemplar rows of each subject, by subject (``None``: rows without one):
    one more than a prompt takes, in case one of them is the question itself."""
    if num_fewshot == 0:
        return {}
    if fewshot_source is None and Path(source).is_file():
        raise ValueError(
            f"{source}: a local file needs `fewshot_source` (a file of exemplars) when num_fewshot > 0; "
            "set fewshot_source, or num_fewshot: 0 for zero-shot prompts"
        )
    if fewshot_source is None and fewshot_split is None:
        raise ValueError(f"{source}: set `fewshot_split` (or `fewshot_source`) when num_fewshot > 0")
    by_subject: dict[str | None, Rows] = defaultdict(list)
    for shot in _load_rows(fewshot_source or source, name, fewshot_split):
        if len(by_subject[shot["subject"]]) <= num_fewshot:
            by_subject[shot["subject"]].append(shot)
    return dict(by_subject)


def _load_rows(source: str, name: str | None, split: str | None) -> Rows:
    """Validated rows ``{"index", "subject", "question", "choices", "answer"}`` of a file or Hub split."""
    if Path(source).is_file():
        records = _read_file(Path(source))
    elif source.lower().endswith(_FILE_SUFFIXES):
        raise FileNotFoundError(f"{source}: multiple-choice data file not found")
    else:
        records = _read_hub(source, name, split)
    return [_validate(record, index, f"{source} row {index}") for index, record in enumerate(records)]


def _read_hub(source: str, name: str | None, split: str | None) -> Rows:
    try:
        return datasets.load_dataset(source, name, split=split).to_list()
    except (OSError, ValueError) as err:
        error = FileNotFoundError if isinstance(err, OSError) else ValueError
        raise error(
            f"{source!r} is not an existing local file, and loading it as a Hugging Face dataset "
            f"(name={name!r}, split={split!r}) failed: {type(err).__name__}: {err}"
        ) from err


def _read_file(path: Path) -> list[Any]:
    """The records of a local file, read as pools are (``read_file``); a line that does not parse fails."""
    file = read_file(path)
    records = []
    for row, record in file.records:
        if isinstance(record, InvalidRow):
            where = f"line {file.line_of(row)}" if file.line_of is not None else f"row {row}"
            kind = "JSON" if file.format in ("json", "jsonl") else file.format.upper()
            # Malformed data is a ValueError throughout, whatever Python type it has.
            raise ValueError(f"{path} {where}: malformed {kind}: {record.reason}")  # noqa: TRY004
        records.append(record)
    return records


def _validate(record: Any, index: int, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        # Malformed data is a ValueError throughout, whatever Python type it has.
        raise ValueError(f"{where}: expected an object with question, choices and answer, got {record!r}")  # noqa: TRY004
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: 'question' must be a non-empty string, got {question!r}")
    choices = record["choices"] if "choices" in record else _letter_columns(record)
    sized = isinstance(choices, list) and 2 <= len(choices) <= len(LETTERS)
    if not sized or not all(isinstance(choice, str) for choice in choices):
        raise ValueError(f"{where}: 'choices' must be a list of 2 to {len(LETTERS)} strings, got {choices!r}")
    subject = record.get("subject")
    if subject is not None and not isinstance(subject, str):
        raise ValueError(f"{where}: 'subject' must be a string, got {subject!r}")
    answer = _answer_index(record.get("answer"), len(choices), where)
    return {"index": index, "subject": subject or None, "question": question, "choices": choices, "answer": answer}


def _letter_columns(record: dict[str, Any]) -> list[Any] | None:
    """Choices given as columns A, B, C, ... (the layout of the original MMLU csv files)."""
    return [record[letter] for letter in takewhile(record.__contains__, LETTERS)] or None


def _answer_index(answer: Any, num_choices: int, where: str) -> int:
    """The 0-based choice index of an int, a string of digits, or a letter label."""
    if isinstance(answer, str) and answer.strip().isdecimal():
        answer = int(answer.strip())  # csv stores everything as text
    if isinstance(answer, int) and not isinstance(answer, bool):
        if not 0 <= answer < num_choices:
            raise ValueError(f"{where}: answer {answer} is not one of the {num_choices} choices (0-based index)")
        return answer
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS:
        if LETTERS.index(answer.strip().upper()) >= num_choices:
            raise ValueError(f"{where}: answer {answer!r} is not one of the {num_choices} choices")
        return LETTERS.index(answer.strip().upper())
    raise ValueError(f"{where}: 'answer' must be a 0-based choice index or a letter A-J, got {answer!r}")


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
        self.options = {"split": split, "name": config_name, "fewshot_split": fewshot_split,
                        "fewshot_source": fewshot_source, "num_fewshot": num_fewshot, "subjects": subjects,
                        "max_examples": max_examples, "seed": seed}
        self.source = source

    def prepare(self, tokenizer: PreTrainedTokenizerBase, held_out: datasets.Dataset) -> None:
        examples = load_multiple_choice(self.source, **self.options)
        subjects = sorted({str(ex["subject"]) for ex in examples})
        self.rows = []
        lead = leading_ids(tokenizer)
        for ex in examples:
            prompt_ids = tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
            ids = lead + prompt_ids  # the BOS, and no EOS after "Answer:" (see ``text_ids``)
            continuations = [continuation_ids(tokenizer, ex["prompt"], c, prompt_ids)
                             for c in choice_continuations(len(ex["choices"]))]
            # The id is the question's row in its file (or split), so that records of two runs pair up.
            self.rows.append({"input_ids": ids, "group": subjects.index(str(ex["subject"])), "answer": ex["answer"],
                              "continuations": continuations, "id": f"{ex['subject']}/{ex['index']}"})
        self._finish_prepare(subjects)

    def correct(self, module, batch: Batch) -> torch.Tensor:
        rows = [self.rows[i] for i in batch["index"].tolist()]
        chosen = []
        for row, logprobs in zip(rows, choice_logprobs(module.model, batch, [r["continuations"] for r in rows])):
            chosen.append(int(torch.argmax(logprobs)))  # ties: the first choice, as in lm-evaluation-harness
        self.records.add(batch["index"], chosen=[LETTERS[c] for c in chosen],
                         target=[LETTERS[r["answer"]] for r in rows])
        return torch.tensor([float(c == r["answer"]) for c, r in zip(chosen, rows)])
