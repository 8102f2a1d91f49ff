"""The embedded demo's tasks are well-formed for what the demo asks of them (no training here)."""

import yaml

from lightning_al.data.synthetic import generate_examples
from lightning_al.evaluation.answers import answer_of, exact_match, reference_answer
from tests.conftest import REPO

DEMO = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
POOL = DEMO["data"]["pool"]["init_args"]


def _examples():
    return generate_examples(POOL["num_examples"], POOL["tasks"], POOL["seed"], POOL["min_length"], POOL["max_length"])


def test_demo_answers_fit_the_generation_and_score_exactly():
    """With the character tokenizer an answer is one token per character, then the end-of-turn token:
    the scored continuation (model.max_new_tokens) and the evaluated one both hold every answer whole,
    and the right answer, generated, is an exact match while a one-character slip is not."""
    budgets = [DEMO["model"]["max_new_tokens"]]
    budgets += [e["init_args"]["max_new_tokens"] for e in DEMO["data"]["evaluations"] if "HeldOutAnswers" in e["class_path"]]
    examples = _examples()
    assert {ex["task"] for ex in examples} == set(POOL["tasks"])
    for ex in examples:
        response = ex["response"]
        assert all(len(response) + 1 <= budget for budget in budgets), ex
        assert exact_match(answer_of(response, response), reference_answer(response)), ex
        assert not exact_match(answer_of(response + "0", response), reference_answer(response)), ex


def test_demo_inputs_stand_out_from_the_instruction():
    """The demo's tasks are learnable in a minute because the input (uppercase letters, digits) is not
    the kind of character the instruction is made of: the model can find it by content."""
    for ex in _examples():
        instruction, argument = ex["prompt"].split(": ", 1)
        assert not any(c.isdigit() for c in instruction) and instruction[1:] == instruction[1:].lower(), ex
        assert argument.replace(" + ", "").isdigit() or (argument.isupper() and argument.isalpha()), ex


def test_demo_budget_fits_the_pool_and_the_rounds_end_with_an_evaluation():
    loop, data = DEMO["loop"], DEMO["data"]
    assert loop["budget"] <= POOL["num_examples"] - data["validation_size"]
    assert loop["rounds"] >= 3  # a curve, not a pair of points
    assert loop["epochs_per_round"] % DEMO["trainer"].get("check_val_every_n_epoch", 1) == 0
