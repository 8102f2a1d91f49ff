"""Impossible configurations and bad data fail with an error that names the key / file / row,
before the model is loaded."""

import json

import pytest

from lightning_al import module
from lightning_al.cli import main
from lightning_al.commands import main as command
from lightning_al.data.sources import DataValidationError
from tests.conftest import REPO, SHARED, tiny_run_args


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if the base model is loaded: the error must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the configuration error was raised")

    monkeypatch.setattr(module, "load_causal_lm", forbidden)


def assert_nothing_written(workdir):
    assert not (workdir / "checkpoints").exists() and not (workdir / "lightning_logs").exists()


def test_budget_larger_than_pool(workdir, no_model_load):
    with pytest.raises(ValueError, match=r"loop\.budget \(500\) is larger than the unlabeled pool \(104"):
        main(["fit", *tiny_run_args(workdir, **{"loop.budget": 500})])
    # Refused after Lightning made the logger's folder: it is removed again, and no config.yaml is written.
    assert_nothing_written(workdir)


@pytest.mark.parametrize(
    "overrides, message",
    [({"loop.budget": 1, "loop.rounds": 2}, r"loop\.budget \(1\) must be >= loop\.rounds"),
     ({"loop.rounds": 0}, r"loop\.rounds must be >= 1")],
)
def test_impossible_budget_split(workdir, no_model_load, overrides, message):
    with pytest.raises(ValueError, match=message):
        main(["fit", *tiny_run_args(workdir, **overrides)])


def test_unknown_strategy_names_the_key(workdir, capsys):
    """Through the command's entry point (`lightning-al fit`): a failure, and its message names the key."""
    args = tiny_run_args(workdir, **{"loop.strategy": "lightning_al.strategies.NoSuchSampling"})
    with pytest.raises((SystemExit, Exception)) as stop:
        command(["fit", *args])
    if isinstance(stop.value, SystemExit):  # an argument error: printed, non-zero exit
        assert stop.value.code not in (0, None)
        message = capsys.readouterr().err
    else:  # raised: the process would print it and exit 1
        message = str(stop.value)
    assert "loop.strategy" in message and "NoSuchSampling" in message
    assert_nothing_written(workdir)


def test_field_mapping_to_missing_column(workdir, no_model_load):
    path = workdir / "pool.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n')
    args = tiny_run_args(workdir, **{
        "data.pool": "lightning_al.data.sources.LocalFile",
        "data.pool.init_args.path": str(path),
        "data.pool.init_args.fields": '{"prompt": "question", "response": "reply"}',
    })
    with pytest.raises(DataValidationError, match=r"fields\.response.*reply") as info:
        main(["fit", *args])
    assert str(path) in str(info.value)


def test_missing_file(workdir, no_model_load):
    args = tiny_run_args(workdir, **{"data.pool": "lightning_al.data.sources.LocalFile",
                                     "data.pool.init_args.path": str(workdir / "nope.jsonl")})
    with pytest.raises(DataValidationError, match="nope.jsonl"):
        main(["fit", *args])
    assert_nothing_written(workdir)


def test_empty_response_names_the_row(workdir, no_model_load):
    path = workdir / "pool.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "  "}\n')
    args = tiny_run_args(workdir, **{"data.pool": "lightning_al.data.sources.LocalFile",
                                     "data.pool.init_args.path": str(path)})
    with pytest.raises(DataValidationError, match=r"row 1") as info:
        main(["fit", *args])
    assert "pool.jsonl" in str(info.value)


def _with_evaluation(workdir, class_name, **init_args):
    evaluation = {"class_path": f"lightning_al.evaluation.{class_name}", "init_args": init_args}
    return tiny_run_args(workdir, **{"data.evaluations": json.dumps([evaluation])})


@pytest.mark.parametrize("init_args, message", [
    ({"path": "no/such/bbh"}, r"no/such/bbh"),
    ({"path": str(SHARED / "data" / "bbh"), "tasks": ["boolean_expressions", "no_such_task"]}, r"no_such_task"),
])
def test_bad_bbh_folder_or_task(workdir, no_model_load, init_args, message):
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        main(["fit", *_with_evaluation(workdir, "BigBenchHard", **init_args)])


def test_choice_label_not_among_the_choices_names_file_and_row(workdir, no_model_load):
    path = workdir / "quiz.jsonl"
    path.write_text('{"question": "q1", "choices": ["a", "b"], "answer": 1}\n'
                    '{"question": "q2", "choices": ["a", "b", "c", "d"], "answer": "E"}\n')
    with pytest.raises(ValueError, match=r"quiz\.jsonl.*row 1.*'E'"):
        main(["fit", *_with_evaluation(workdir, "MultipleChoice", source=str(path), num_fewshot=0)])


def test_empty_evaluation_set(workdir, no_model_load):
    args = [*_with_evaluation(workdir, "HeldOutAnswers"), "--data.validation_size=0"]
    with pytest.raises(ValueError, match=r"'heldout'.*empty"):
        main(["fit", *args])


def test_fresh_run_does_not_overwrite_an_earlier_one(workdir):
    main(["fit", *tiny_run_args(workdir, **{"loop.rounds": 1, "loop.epochs_per_round": 1})])
    config = (workdir / "checkpoints" / "tiny" / "config.yaml").read_text()
    logs = {p: p.read_bytes() for p in (workdir / "lightning_logs").rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="--ckpt_path last"):
        main(["fit", *tiny_run_args(workdir, **{"loop.rounds": 1, "loop.epochs_per_round": 1, "loop.budget": 30})])
    # The refused run leaves the earlier run's config and TensorBoard folder as they were.
    assert (workdir / "checkpoints" / "tiny" / "config.yaml").read_text() == config and "budget: 40" in config
    assert {p: p.read_bytes() for p in (workdir / "lightning_logs").rglob("*") if p.is_file()} == logs


@pytest.mark.parametrize("configs", [["llama-3.2-1b-instruct.yaml"],
                                     ["llama-3.2-1b-instruct.yaml", "study-llama-3.2-1b.yaml"]])  # the study layers
def test_reference_config_prints_offline(configs, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # HF_HUB_OFFLINE=1 (tests/conftest.py): nothing may be looked up on the hub
    with pytest.raises(SystemExit) as stop:
        command(["fit", *(f"--config=configs/{c}" for c in configs), "--print_config"])
    printed = capsys.readouterr()
    assert stop.value.code in (0, None), printed.err
    assert "meta-llama/Llama-3.2-1B-Instruct" in printed.out
    assert "budget: 50000" in printed.out and "rounds: 2" in printed.out and "cais/mmlu" in printed.out
    assert ("study:\n  name: llama-3.2-1b\n" in printed.out) == (len(configs) == 2)
