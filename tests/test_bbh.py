"""BIG-Bench Hard prompts and examples: exact prompt text on the real data, and bad folders."""

import json
import shutil

import pytest

from lightning_al.evaluation.answers import extract_answer, truncate_at_stop
from lightning_al.evaluation.bbh import (
    BBH_STOP_STRINGS,
    COT_TRIGGER,
    bbh_chat_turns,
    bbh_prompt,
    list_bbh_tasks,
    load_bbh,
    load_cot_prompt,
)
from tests.conftest import SHARED

BBH = SHARED / "data" / "bbh"
needs_bbh = pytest.mark.skipif(not BBH.exists(), reason="needs ../shared/data/bbh")


def expected_prompt(task: str, question: str) -> str:
    """The prompt as Suzgun et al.'s code builds it, from the raw file text."""
    exemplars = (BBH / "cot-prompts" / f"{task}.txt").read_text().split("-----\n")[1]
    return exemplars.strip() + "\n\nQ: " + question + "\nA: Let's think step by step."


@needs_bbh
def test_lists_the_27_tasks():
    tasks = list_bbh_tasks(BBH)
    assert len(tasks) == 27
    assert tasks == sorted(tasks)
    assert {"boolean_expressions", "dyck_languages", "word_sorting"} <= set(tasks)


@needs_bbh
@pytest.mark.parametrize("task", ["date_understanding", "dyck_languages", "word_sorting", "boolean_expressions"])
def test_prompt_is_the_exemplars_plus_the_question(task):
    row = load_bbh(BBH, [task], max_examples_per_task=1)[0]
    prompt = bbh_prompt(row["cot_prompt"], row["input"])
    assert prompt == expected_prompt(task, row["input"])
    assert "canary" not in prompt
    assert not prompt.startswith("\n")
    assert prompt.count("\nA: Let's think step by step.") == 4  # 3 exemplars and the question
    assert prompt.endswith("\n\nQ: " + row["input"] + "\nA: " + COT_TRIGGER)


@needs_bbh
def test_cot_prompt_starts_with_the_task_description():
    assert load_cot_prompt(BBH, "date_understanding").startswith("Infer the date from context.\n\nQ: ")


@needs_bbh
def test_chat_turns_join_to_the_plain_prompt():
    row = load_bbh(BBH, ["navigate"], max_examples_per_task=1)[0]
    user, prefix = bbh_chat_turns(row["cot_prompt"], row["input"])
    assert prefix == COT_TRIGGER
    assert user + "\nA: " + prefix == bbh_prompt(row["cot_prompt"], row["input"])


@needs_bbh
def test_loads_everything_in_file_order():
    rows = load_bbh(BBH)
    assert len(rows) == 6511
    assert set(rows[0]) == {"task", "index", "input", "target", "cot_prompt"}
    first_task = [row for row in rows if row["task"] == "boolean_expressions"]
    examples = json.loads((BBH / "tasks" / "boolean_expressions.json").read_text())["examples"]
    assert [row["index"] for row in first_task] == list(range(len(examples)))
    assert [row["target"] for row in first_task] == [example["target"] for example in examples]


@needs_bbh
def test_subset_is_seeded_sized_and_in_file_order():
    tasks = ["snarks", "web_of_lies"]
    rows = load_bbh(BBH, tasks, max_examples_per_task=10, seed=3)
    assert [row["task"] for row in rows] == ["snarks"] * 10 + ["web_of_lies"] * 10
    indices = [row["index"] for row in rows if row["task"] == "snarks"]
    assert indices == sorted(indices) and len(set(indices)) == 10
    assert rows == load_bbh(BBH, tasks, max_examples_per_task=10, seed=3)
    assert rows != load_bbh(BBH, tasks, max_examples_per_task=10, seed=4)
    # A task's subset does not depend on which other tasks are loaded.
    assert load_bbh(BBH, ["web_of_lies"], max_examples_per_task=10, seed=3) == rows[10:]
    # A limit above the task size keeps every example (penguins_in_a_table has 146); one name is not a list.
    assert len(load_bbh(BBH, "penguins_in_a_table", max_examples_per_task=1000)) == 146


@needs_bbh
def test_unknown_task_names_it_and_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"'no_such_task'.*boolean_expressions"):
        load_bbh(BBH, ["navigate", "no_such_task"])


@needs_bbh
def test_stop_strings_end_a_generation_after_its_answer_never_inside_its_reasoning():
    """A model that reasons like an exemplar and goes on with a question of its own is cut right after
    its answer; no exemplar's reasoning (most span several lines) holds a stop string."""
    for task in list_bbh_tasks(BBH):
        exemplars = load_cot_prompt(BBH, task).split("\n\nQ: ")[1:]
        assert len(exemplars) == 3, task
        for i, exemplar in enumerate(exemplars):
            reasoning = exemplar.split("\nA: " + COT_TRIGGER)[1]
            continued = reasoning + "\n\nQ: " + exemplars[(i + 1) % 3]
            assert truncate_at_stop(continued, BBH_STOP_STRINGS) == reasoning, (task, i)
            assert extract_answer(reasoning) is not None, (task, i)


def write_task(folder, task, examples, prompt="canary line\n-----\nDescribe.\n\nQ: 1?\nA: Let's think step by step.\n"):
    (folder / "tasks").mkdir(parents=True, exist_ok=True)
    (folder / "cot-prompts").mkdir(parents=True, exist_ok=True)
    data = examples if isinstance(examples, str) else json.dumps({"canary": "c", "examples": examples})
    (folder / "tasks" / f"{task}.json").write_text(data)
    (folder / "cot-prompts" / f"{task}.txt").write_text(prompt)


def test_small_folder(tmp_path):
    write_task(tmp_path, "toy", [{"input": "2 + 2", "target": "4"}])
    (tmp_path / "tasks" / "no_prompt.json").write_text("{}")  # without a CoT prompt: not a task
    assert list_bbh_tasks(tmp_path) == ["toy"]
    [row] = load_bbh(tmp_path)
    cot_prompt = "Describe.\n\nQ: 1?\nA: Let's think step by step."
    assert row == {"task": "toy", "index": 0, "input": "2 + 2", "target": "4", "cot_prompt": cot_prompt}


def test_clone_of_the_bbh_repository(tmp_path):
    """github.com/suzgunmirac/BIG-Bench-Hard keeps its task files in bbh/."""
    write_task(tmp_path, "toy", [{"input": "2 + 2", "target": "4"}])
    (tmp_path / "tasks").rename(tmp_path / "bbh")
    assert list_bbh_tasks(tmp_path) == ["toy"]
    assert [row["target"] for row in load_bbh(tmp_path)] == ["4"]


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*tasks/<task>\.json"):
        load_bbh(tmp_path / "nowhere")


def test_folder_without_tasks(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        list_bbh_tasks(tmp_path)


def test_missing_cot_prompt_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cot-prompts/absent\.txt"):
        load_cot_prompt(tmp_path, "absent")


def test_prompt_file_without_separator(tmp_path):
    write_task(tmp_path, "toy", [{"input": "x", "target": "y"}], prompt="canary\nno separator here\n")
    with pytest.raises(ValueError, match=r"toy\.txt.*'-----'"):
        load_bbh(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"examples": [', r"broken\.json: malformed JSON"),
        ('{"canary": "c"}', r"broken\.json: expected a JSON object with an \"examples\" list"),
        ('[{"input": "x", "target": "y"}]', r"broken\.json: expected a JSON object"),
        ('{"examples": [{"input": "x", "target": "y"}, {"input": "x"}]}', r"broken\.json: example 1: 'target'"),
        ('{"examples": [{"input": 3, "target": "y"}]}', r"broken\.json: example 0: 'input'"),
        ('{"examples": ["just a string"]}', r"broken\.json: example 0: 'input'"),
    ],
)
def test_malformed_task_file_names_file_and_example(tmp_path, content, message):
    write_task(tmp_path, "good", [{"input": "x", "target": "y"}])
    write_task(tmp_path, "broken", content)
    with pytest.raises(ValueError, match=message):
        load_bbh(tmp_path)
    assert len(load_bbh(tmp_path, ["good"])) == 1  # the other task still loads on its own


@needs_bbh
def test_malformed_copy_of_the_real_data(tmp_path):
    shutil.copytree(BBH, tmp_path / "bbh")
    path = tmp_path / "bbh" / "tasks" / "navigate.json"
    path.write_text(path.read_text()[:-10])
    with pytest.raises(ValueError, match=r"navigate\.json: malformed JSON"):
        load_bbh(tmp_path / "bbh", ["navigate", "snarks"])


def test_empty_result_and_bad_limit(tmp_path):
    write_task(tmp_path, "empty", [])
    with pytest.raises(ValueError, match="no BBH examples"):
        load_bbh(tmp_path)
    with pytest.raises(ValueError, match="max_examples_per_task"):
        load_bbh(tmp_path, max_examples_per_task=0)
