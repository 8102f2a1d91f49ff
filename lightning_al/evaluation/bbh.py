"""BIG-Bench Hard (BBH): 3-shot chain-of-thought prompts and test examples.

Follows Suzgun et al. (2022), "Challenging BIG-Bench Tasks and Whether
Chain-of-Thought Can Solve Them", as the public harnesses do. A BBH folder holds::

    tasks/<task>.json         {"canary": ..., "examples": [{"input": ..., "target": ...}, ...]}
    cot-prompts/<task>.txt    a canary line, a "-----" line, the task description and 3 exemplars

A clone of github.com/suzgunmirac/BIG-Bench-Hard works as it is: there the task files are in ``bbh/``.

The prompt for one question is the task's exemplars followed by
``"\\n\\nQ: " + input + "\\nA: Let's think step by step."``; the model continues
with its reasoning and "So the answer is ...". Generation stops at
:data:`BBH_STOP_STRINGS`, and the answer is scored with
:func:`lightning_al.evaluation.answers.extract_answer` and
:func:`~lightning_al.evaluation.answers.exact_match` against ``target``.

BBH is evaluation data: it carries a canary string and must never be trained on.
:class:`BigBenchHard` is the evaluation set (``data.evaluations``) built on these functions.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase

from lightning_al.data.formatting import leading_ids, prompt_text, text_ids, with_leading_ids
from lightning_al.evaluation.answers import extract_answer
from lightning_al.evaluation.sets import GenerativeEvaluation

COT_TRIGGER = "Let's think step by step."
BBH_STOP_STRINGS = ("Q:", "\n\n")

_SEPARATOR = "-----"
_LAYOUT = "tasks/<task>.json (or bbh/<task>.json) and cot-prompts/<task>.txt"


def _task_dir(folder: Path) -> Path:
    """``tasks/``, or ``bbh/`` in a clone of the BIG-Bench-Hard repository."""
    return folder / "bbh" if not (folder / "tasks").is_dir() and (folder / "bbh").is_dir() else folder / "tasks"


def list_bbh_tasks(folder: str | Path) -> list[str]:
    """The sorted names of the tasks in ``folder`` that have both a task file and a CoT prompt.

    Raises:
        FileNotFoundError: ``folder`` does not exist or holds no such task.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: BBH folder not found; expected {_LAYOUT} inside it")
    prompts = folder / "cot-prompts"
    tasks = sorted(path.stem for path in _task_dir(folder).glob("*.json") if (prompts / f"{path.stem}.txt").is_file())
    if not tasks:
        raise FileNotFoundError(f"{folder}: no BBH task found; expected {_LAYOUT} inside it")
    return tasks


def load_cot_prompt(folder: str | Path, task: str) -> str:
    """The chain-of-thought prompt of ``task``: its description and 3 exemplars.

    This is the text of ``cot-prompts/<task>.txt`` after the ``-----`` line (the
    canary line above it is dropped), without leading newlines or trailing
    whitespace. Exemplars are separated by a blank line and each ends with
    "So the answer is ...".

    Raises:
        FileNotFoundError: the prompt file does not exist.
        ValueError: the file has no ``-----`` line.
    """
    path = Path(folder) / "cot-prompts" / f"{task}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: chain-of-thought prompt of BBH task {task!r} not found")
    lines = path.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n")
    if _SEPARATOR not in lines:
        raise ValueError(f"{path}: no {_SEPARATOR!r} line separating the canary from the prompt")
    prompt = "\n".join(lines[lines.index(_SEPARATOR) + 1 :])
    return prompt.lstrip("\n").rstrip()


def bbh_prompt(cot_prompt: str, question: str) -> str:
    """The full 3-shot prompt for ``question``, ending in "A: Let's think step by step.".

    Exactly the string of Suzgun et al.'s evaluation code:
    ``cot_prompt + "\\n\\nQ: " + question + "\\nA: Let's think step by step."``.
    """
    return f"{cot_prompt}\n\nQ: {question}\nA: {COT_TRIGGER}"


def bbh_chat_turns(cot_prompt: str, question: str) -> tuple[str, str]:
    """The BBH prompt split for a chat model: ``(user message, assistant prefix)``.

    The user message holds the exemplars and the question; the assistant turn is
    started with "Let's think step by step." so the model reasons before it
    answers, as in the plain prompt. Joined as ``user + "\\nA: " + prefix`` they give
    exactly :func:`bbh_prompt`.
    """
    return f"{cot_prompt}\n\nQ: {question}", COT_TRIGGER


def load_bbh(
    folder: str | Path,
    tasks: Sequence[str] | None = None,
    max_examples_per_task: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """BBH examples as rows ``{"task", "index", "input", "target", "cot_prompt"}``.

    Args:
        folder: A BBH folder (see the module docstring).
        tasks: Task names (or one name), in the order the rows should come in;
            ``None`` for all tasks, sorted by name.
        max_examples_per_task: Keep a random subset of at most this many examples
            of each task (all of them when ``None``), returned in file order.
        seed: Seed of the subset. Each task's subset depends only on the seed and
            the task name, so adding or removing a task leaves the others unchanged.

    ``index`` is the example's position in its task file. Within a task, rows are
    in file order. Build the prompt with :func:`bbh_prompt` or :func:`bbh_chat_turns`.

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
        ValueError: an unknown task, a malformed task file (naming the file and
            example), a bad ``max_examples_per_task``, or no examples at all.
    """
    available = list_bbh_tasks(folder)
    tasks = [tasks] if isinstance(tasks, str) else tasks  # one task name, not its characters
    selected = available if tasks is None else list(dict.fromkeys(tasks))
    unknown = [task for task in selected if task not in available]
    if unknown:
        raise ValueError(f"unknown BBH task(s) {unknown} in {folder}; available tasks: {available}")
    if max_examples_per_task is not None and max_examples_per_task < 1:
        raise ValueError(f"max_examples_per_task must be a positive number or None, got {max_examples_per_task!r}")
    rows = []
    for task in selected:
        examples = _read_examples(_task_dir(Path(folder)) / f"{task}.json")
        cot_prompt = load_cot_prompt(folder, task)
        for index in _subset(len(examples), max_examples_per_task, seed, task):
            example = examples[index]
            row = {"task": task, "index": index, "input": example["input"], "target": example["target"]}
            rows.append({**row, "cot_prompt": cot_prompt})
    if not rows:
        raise ValueError(f"{folder}: no BBH examples in tasks {selected}")
    return rows


def _read_examples(path: Path) -> list[dict[str, str]]:
    """The validated examples of one task file; every example is checked, whatever subset is drawn."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        # Malformed data is a ValueError throughout, whatever Python type it has.
        raise ValueError(f'{path}: expected a JSON object with an "examples" list')  # noqa: TRY004
    for number, example in enumerate(data["examples"]):
        for key in ("input", "target"):
            value = example.get(key) if isinstance(example, dict) else None
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{path}: example {number}: {key!r} must be a non-empty string, got {value!r}")
    return data["examples"]


def _subset(size: int, limit: int | None, seed: int, task: str) -> list[int]:
    """Sorted positions of a seeded random subset of at most ``limit`` of ``size`` examples."""
    if limit is None or limit >= size:
        return list(range(size))
    # Seeding with the task name too keeps each task's subset independent of the other tasks selected.
    rng = np.random.default_rng([seed, zlib.crc32(task.encode("utf-8"))])
    return sorted(rng.choice(size, size=limit, replace=False).tolist())


class BigBenchHard(GenerativeEvaluation):
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
    batch_by_group = True  # a task's questions share its 3-shot exemplars

    def __init__(self, path: str, tasks: list[str] | None = None, max_examples_per_task: int | None = None,
                 max_new_tokens: int = 256, chat_template: bool = True, seed: int = 0, name: str = "bbh",
                 rounds: list[int] | None = None) -> None:
        super().__init__(name, max_new_tokens, rounds)
        self.path = path
        self.tasks = tasks
        self.max_examples_per_task = max_examples_per_task
        self.chat_template = chat_template
        self.seed = seed

    def prepare(self, tokenizer: PreTrainedTokenizerBase, held_out: datasets.Dataset) -> None:
        examples = load_bbh(self.path, self.tasks, self.max_examples_per_task, self.seed)
        tasks = sorted({ex["task"] for ex in examples})
        self.rows = []
        lead = leading_ids(tokenizer)
        for ex in examples:
            if self.chat_template and tokenizer.chat_template:
                user, prefix = bbh_chat_turns(ex["cot_prompt"], ex["input"])
                # The template writes its own special tokens (role headers; the BOS where it does, as for the pool).
                ids = tokenizer(prompt_text(tokenizer, "", user) + prefix, add_special_tokens=False)["input_ids"]
                ids = with_leading_ids(ids, (0, 0), lead)[0]
            else:
                ids = text_ids(tokenizer, bbh_prompt(ex["cot_prompt"], ex["input"]), lead)
            # The id names the example in its task file, so that records of two runs pair up.
            self.rows.append({"input_ids": ids, "group": tasks.index(ex["task"]), "target": ex["target"],
                              "id": f"{ex['task']}/{ex['index']}"})
        self._finish_prepare(tasks)

    def prediction(self, generated: str, row: dict[str, Any]) -> str | None:
        return extract_answer(generated)

    def target(self, row: dict[str, Any]) -> str:
        return row["target"]
