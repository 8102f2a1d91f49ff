"""What a researcher meets first: errors that name the path, file or line before any work is done
(and before anything is written), the CPU study config with local copies, and other loggers."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest

from lightning_al import module
from lightning_al.cli import main
from lightning_al.data.sources import DataValidationError, SyntheticTasks
from lightning_al.model.loading import PretrainedNotFoundError
from tests.conftest import REPO, SHARED, tiny_run_args


@pytest.fixture
def nothing_loaded(monkeypatch):
    """Fails the test if the base model is loaded or the pool tokenized: the error must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work was done before the configuration error was raised")

    monkeypatch.setattr(module, "load_causal_lm", forbidden)
    monkeypatch.setattr(datasets.Dataset, "map", forbidden)  # the pool's tokenization


def assert_nothing_written(workdir):
    assert not (workdir / "checkpoints").exists() and not (workdir / "lightning_logs").exists()


@pytest.mark.parametrize("pretrained", ["./models/NoSuchModel", "models/NoSuchModel", "/nonexistent/SmolLM2"])
def test_missing_model_folder_names_the_path_before_the_pool_is_loaded(workdir, nothing_loaded, monkeypatch,
                                                                      pretrained):
    monkeypatch.setattr(SyntheticTasks, "load", lambda self: pytest.fail("the pool was loaded first"))
    with pytest.raises(PretrainedNotFoundError, match=r"model\.pretrained: .*NoSuchModel|SmolLM2") as info:
        main(["fit", *tiny_run_args(workdir, **{"model.pretrained": pretrained, "model.config": "null",
                                                "model.tokenizer": "null"})])
    assert "does not exist" in str(info.value) and "internet" not in str(info.value)
    assert_nothing_written(workdir)


def test_folder_without_a_model_names_the_missing_file(workdir, nothing_loaded):
    (workdir / "empty_model").mkdir()
    with pytest.raises(PretrainedNotFoundError, match=r"empty_model holds no model \(config\.json missing\)"):
        main(["fit", *tiny_run_args(workdir, **{"model.pretrained": "empty_model", "model.tokenizer": "char"})])
    assert_nothing_written(workdir)


def test_unknown_hub_id_offline_fails_at_once(workdir, nothing_loaded):
    start = time.perf_counter()
    with pytest.raises(PretrainedNotFoundError, match=r"'HuggingFaceTB/NoSuchModel-1M'.*HF_HUB_OFFLINE=1"):
        main(["fit", *tiny_run_args(workdir, **{"model.pretrained": "HuggingFaceTB/NoSuchModel-1M",
                                                "model.tokenizer": "char"})])
    assert time.perf_counter() - start < 10, "offline resolution must not retry"
    assert_nothing_written(workdir)


def test_unknown_tokenizer_names_its_key(workdir, nothing_loaded):
    with pytest.raises(PretrainedNotFoundError, match=r"model\.tokenizer: .*no_such_tokenizer"):
        main(["fit", *tiny_run_args(workdir, **{"model.tokenizer": "./no_such_tokenizer"})])
    assert_nothing_written(workdir)


def test_malformed_pool_line_names_file_and_line(workdir, nothing_loaded):
    path = workdir / "pool.jsonl"
    good = '{"prompt": "Copy the string: abc", "response": "abc"}\n'
    path.write_text(good * 3 + '{"prompt": "Copy the string: abd", "response": abd}\n' + good)
    args = tiny_run_args(workdir, **{"data.pool": "lightning_al.data.sources.LocalFile",
                                     "data.pool.init_args.path": str(path)})
    with pytest.raises(DataValidationError, match=r"pool\.jsonl: row 3 \(line 4\): not valid JSON") as info:
        main(["fit", *args])
    assert "position" not in str(info.value)
    assert_nothing_written(workdir)


def test_pool_mostly_truncated_fails_before_tokenizing(workdir, nothing_loaded):
    with pytest.raises(ValueError, match=r"data\.max_length=24 .*100% of the pool's 120 examples .*"
                                         r"data\.max_truncated_fraction=0\.5") as info:
        main(["fit", *tiny_run_args(workdir, **{"data.max_length": 24})])
    assert "prompt + response: median" in str(info.value)
    assert_nothing_written(workdir)


# --- other loggers ---------------------------------------------------------------------------


def test_csv_logger_beside_tensorboard_receives_the_per_round_metrics(workdir):
    """Every logger gets the scalars; TensorBoard alone gets the histograms (the CSV logger is not asked)."""
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loggers = ('[{"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "tb"}},'
               ' {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "lightning_logs"}}]')
    main(["fit", *tiny_run_args(workdir, **{"trainer.logger": loggers, "loop.diversity_sample": 0,
                                            "loop.epochs_per_round": 1})])
    # Left at their defaults, both write under a folder named after the run (no version_N).
    rows = list(csv.DictReader((workdir / "lightning_logs" / "tiny" / "metrics.csv").open()))
    by_round = {int(row["step"]): row for row in rows if row.get("round/heldout/loss")}
    assert sorted(by_round) == [0, 1]
    assert all(0 <= float(row["round/heldout/answer_exact_match"]) <= 1 for row in by_round.values())
    assert {int(row["step"]) for row in rows if row.get("labeled/heldout/loss")} == {20, 40}
    assert [float(row["al/labeled"]) for row in rows if row.get("al/labeled")] == [20, 40]
    assert any(row.get("train/loss") for row in rows)
    events = EventAccumulator(str(workdir / "tb" / "tiny")).Reload()
    assert "round/heldout/loss" in events.Tags()["scalars"]
    assert "al/acquired_prompt_tokens" in events.Tags()["histograms"]


def test_wandb_logger_offline_receives_the_per_round_metrics(workdir, monkeypatch):
    wandb = pytest.importorskip("wandb")  # an optional extra: pip install "lightning-al[wandb]"
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged: dict[str, list] = {}
    original = WandbLogger.log_metrics

    def spy(self, metrics, step=None):
        for key, value in metrics.items():
            logged.setdefault(key, []).append((step, value))
        return original(self, metrics, step)

    monkeypatch.setattr(WandbLogger, "log_metrics", spy)
    args = tiny_run_args(workdir, **{"trainer.logger": "lightning.pytorch.loggers.WandbLogger",
                                     "trainer.logger.init_args.offline": "true", "loop.diversity_sample": 0,
                                     "loop.epochs_per_round": 1})
    try:
        main(["fit", *args])
    finally:
        wandb.finish()
    assert [step for step, _ in logged["round/heldout/loss"]] == [0, 1]
    assert [step for step, _ in logged["labeled/heldout/answer_exact_match"]] == [20, 40]
    assert [value for _, value in logged["al/labeled"]] == [20, 40] and "train/loss" in logged
    # Named after the run, under lightning_logs/ like the other loggers.
    assert len(list((workdir / "lightning_logs" / "wandb").glob("offline-run-*/run-*.wandb"))) == 1


# --- the CPU study config with local copies ---------------------------------------------------

SMOLLM2 = Path(os.environ.get("SMOLLM2_DIR", Path.home() / ".cache" / "smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct as a local folder, made offline by ../shared/tools/get-smollm2 (~40 s, once)."""
    tool = SHARED / "tools" / "get-smollm2"
    if not (SMOLLM2 / "model.safetensors").is_file():
        if not tool.is_file():
            pytest.skip(f"no SmolLM2 at {SMOLLM2} and no {tool}")
        done = subprocess.run(["bash", str(tool), str(SMOLLM2)], capture_output=True, text=True,
                              env={**os.environ, "PYTHON": sys.executable})
        if done.returncode:
            pytest.skip(f"get-smollm2 failed: {done.stderr[-500:]}")
    return SMOLLM2


def _tiny_local_evaluations(config: Path) -> str:
    """The config's own evaluation sets, shrunk to seconds; MMLU from the offline copy (it is not the last
    set, so the one-line override cannot reach it). BBH keeps the config's path: the override sets it."""
    import yaml

    evaluations = yaml.safe_load(config.read_text())["data"]["evaluations"]
    shrink = {"HeldOutAnswers": {"max_examples": 1, "max_new_tokens": 8},
              "MultipleChoice": {"source": str(SHARED / "data" / "mmlu" / "test.jsonl"), "max_examples": 1},
              # The config's task with the shortest 3-shot prompt (~900 characters; navigate's is 2,300).
              "BigBenchHard": {"tasks": ["sports_understanding"], "max_examples_per_task": 1, "max_new_tokens": 4}}
    for evaluation in evaluations:
        evaluation["init_args"].update(shrink[evaluation["class_path"].rsplit(".", 1)[-1]])
    return json.dumps(evaluations)


@pytest.mark.skipif(not (SHARED / "data" / "flan_v2_cot").is_dir(), reason="needs ../shared/data")
def test_cpu_study_config_fits_with_the_documented_local_overrides(workdir, smollm2):
    config = REPO / "configs" / "study-smollm2-cpu.yaml"
    tiny = [f"--data.evaluations={_tiny_local_evaluations(config)}", "--data.max_pool_size=24",
            "--data.validation_size=1", "--loop.budget=1", "--loop.rounds=1", "--loop.epochs_per_round=1",
            "--loop.diversity_sample=0", "--trainer.check_val_every_n_epoch=1", "--trainer.enable_progress_bar=false",
            f"--data.cache_dir={workdir}"]
    # The override line of the README and of the config's header (after the list it edits).
    local = [f"--model.pretrained={smollm2}", f"--data.pool.init_args.path={SHARED / 'data' / 'flan_v2_cot'}",
             f"--data.evaluations.init_args.path={SHARED / 'data' / 'bbh'}"]
    main(["fit", "--config", str(config), *tiny, *local])
    run_dir = workdir / "checkpoints" / "smollm2-cpu" / "single"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    heldout = next(row for row in rows if row["evaluation"] == "heldout")
    assert heldout["labeled"] == 1 and heldout["loss"] > 0
    assert {row["evaluation"] for row in rows} >= {"heldout", "bbh"}
    saved = (run_dir / "config.yaml").read_text()
    assert str(smollm2) in saved and "flan_v2_cot" in saved and str(SHARED / "data" / "bbh") in saved
