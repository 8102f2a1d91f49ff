"""Impossible configurations and bad data fail with an error that names the key / file / row,
before the model is loaded."""

import subprocess
import sys

import pytest

import lightning_al.model.module as module
from lightning_al.cli import main
from lightning_al.data.sources import DataValidationError
from tests.conftest import REPO, tiny_run_args


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if the base model is loaded: the error must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the configuration error was raised")

    monkeypatch.setattr(module, "load_causal_lm", forbidden)


def test_budget_larger_than_pool(workdir, no_model_load):
    with pytest.raises(ValueError, match=r"loop\.budget \(500\) is larger than the unlabeled pool \(104"):
        main(["fit", *tiny_run_args(workdir, **{"loop.budget": 500})])


@pytest.mark.parametrize(
    "overrides, message",
    [({"loop.budget": 1, "loop.rounds": 2}, r"loop\.budget \(1\) must be >= loop\.rounds"),
     ({"loop.rounds": 0}, r"loop\.rounds must be >= 1")],
)
def test_impossible_budget_split(workdir, no_model_load, overrides, message):
    with pytest.raises(ValueError, match=message):
        main(["fit", *tiny_run_args(workdir, **overrides)])


def test_unknown_strategy_names_the_key(workdir):
    args = tiny_run_args(workdir, **{"loop.strategy": "lightning_al.strategies.NoSuchSampling"})
    result = subprocess.run([sys.executable, "-m", "lightning_al", "fit", *args], cwd=workdir,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "loop.strategy" in result.stderr and "NoSuchSampling" in result.stderr


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


def test_empty_response_names_the_row(workdir, no_model_load):
    path = workdir / "pool.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "  "}\n')
    args = tiny_run_args(workdir, **{"data.pool": "lightning_al.data.sources.LocalFile",
                                     "data.pool.init_args.path": str(path)})
    with pytest.raises(DataValidationError, match=r"row 1") as info:
        main(["fit", *args])
    assert "pool.jsonl" in str(info.value)


def test_fresh_run_does_not_overwrite_an_earlier_one(workdir):
    main(["fit", *tiny_run_args(workdir, **{"loop.rounds": 1, "loop.epochs_per_round": 1})])
    with pytest.raises(FileExistsError, match="--ckpt_path last"):
        main(["fit", *tiny_run_args(workdir, **{"loop.rounds": 1, "loop.epochs_per_round": 1})])


def test_reference_config_prints_offline():
    result = subprocess.run(
        [sys.executable, "-m", "lightning_al", "fit", "--config", "configs/llama-3.2-1b-instruct.yaml", "--print_config"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "meta-llama/Llama-3.2-1B-Instruct" in result.stdout
    assert "budget: 50000" in result.stdout and "rounds: 2" in result.stdout
