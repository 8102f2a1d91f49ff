import os

# The hub is unreachable in tests (and in CI); loading from it stays the real code path for users.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

TINY_LLAMA = (
    '{"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, '
    '"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}'
)
#: The held-out answers (the default evaluation set) generating 6 tokens: the default 256 of an untrained model
#: that never stops were half the time of a tiny run. ``data.evaluations=None`` keeps the default.
SHORT_ANSWERS = '[{"class_path": "lightning_al.evaluation.HeldOutAnswers", "init_args": {"max_new_tokens": 6}}]'


def tiny_run_args(cache_dir: Path, **overrides: object) -> list[str]:
    """CLI arguments of a seconds-long experiment: tiny random Llama, synthetic pool, random strategy.
    An override of None leaves that key out (its default)."""
    options = {
        "seed_everything": 7,
        "run_name": "tiny",
        "model.config": TINY_LLAMA,
        "model.tokenizer": "char",
        "model.lora_r": 4,
        "model.lora_dropout": 0.1,
        "model.max_new_tokens": 6,
        "data.pool": "lightning_al.data.sources.SyntheticTasks",
        "data.pool.init_args.num_examples": 120,
        "data.pool.init_args.max_length": 6,
        "data.validation_size": 16,
        "data.max_length": 64,
        "data.batch_size": 8,
        "data.eval_batch_size": 16,
        "data.cache_dir": str(cache_dir),
        "data.evaluations": SHORT_ANSWERS,
        "loop.budget": 40,
        "loop.rounds": 2,
        "loop.epochs_per_round": 2,
        "trainer.accelerator": "cpu",
        "trainer.devices": 1,
        "trainer.enable_progress_bar": False,
        "trainer.enable_model_summary": False,
        "trainer.num_sanity_val_steps": 0,
        "trainer.log_every_n_steps": 1,
    }
    if "data.pool" in overrides:  # another source: the synthetic pool's init_args do not apply
        options = {k: v for k, v in options.items() if not k.startswith("data.pool.")}
    options.update(overrides)
    return [f"--{k}={v}" for k, v in options.items() if v is not None]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a fresh folder: checkpoints/ and lightning_logs/ are relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


_drivers: list = []  # the session's driver, started once the tests are collected


def pytest_collection_modifyitems(session, config, items):
    """Starts the driver as soon as the tests are collected when one of them uses it: its imports overlap the
    tests before the first one that does."""
    if any("driver" in item.fixturenames for item in items) and not _drivers:
        import tempfile

        from tests.helpers import Driver

        _drivers.append(Driver(Path(tempfile.mkdtemp(prefix="lightning-al-driver-"))))


def pytest_sessionfinish(session, exitstatus):
    import shutil

    while _drivers:
        driver = _drivers.pop()
        driver.close()
        shutil.rmtree(driver.log_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def driver():
    """Runs ``lightning-al`` commands in forked children of one process (tests.helpers.Driver): a process's
    imports are paid once per session. A run's output comes back with its exit status."""
    if not _drivers:  # (collected without it: a test asked for it by name at run time)
        import tempfile

        from tests.helpers import Driver

        _drivers.append(Driver(Path(tempfile.mkdtemp(prefix="lightning-al-driver-"))))
    return _drivers[0]


#: A multiple-choice set of 7 questions: 2-process DDP pads it with one repeat.
QUIZ = [{"question": f"Pick {i}", "choices": ["x" * (i % 3 + 1), "y", "zz", "w"], "answer": i % 4,
         "subject": "odd" if i % 2 else "even"} for i in range(7)]


@pytest.fixture(scope="session")
def ddp_runs(tmp_path_factory, driver):
    """One round of entropy acquisition with the held-out answers and a quiz evaluated, in this process
    (``checkpoints/single``) and under 2-process DDP (``checkpoints/ddp``, a ``lightning-al fit`` of its own).

    lr 0: the model stays the initial one, so both runs evaluate the same model. 15 held-out examples in
    batches of 4 on 2 ranks: the distributed sampler repeats one to pad, which must count once; the diversity
    samples (15 of the 24 labels) are embedded in shards of 8 and 7 + one repeat; the 49 candidates (a pool of 64)
    are scored in shards of 25 and 24 + one repeat."""
    import json
    from types import SimpleNamespace

    from lightning_al.cli import main

    workdir = tmp_path_factory.mktemp("ddp")
    quiz = workdir / "quiz.jsonl"
    quiz.write_text("".join(json.dumps(q) + "\n" for q in QUIZ))
    evaluations = [
        {"class_path": "lightning_al.evaluation.HeldOutAnswers", "init_args": {"max_new_tokens": 6}},
        {"class_path": "lightning_al.evaluation.MultipleChoice",
         "init_args": {"source": str(quiz), "name": "quiz", "num_fewshot": 0}},
    ]
    options = {"loop.strategy": "lightning_al.strategies.EntropySampling", "data.evaluations": json.dumps(evaluations),
               "data.pool.init_args.num_examples": 64, "loop.rounds": 1, "loop.epochs_per_round": 1,
               "loop.budget": 24, "data.validation_size": 15,
               "data.eval_batch_size": 4, "loop.diversity_sample": 15,
               "model.optimizer": '{"class_path": "torch.optim.SGD", "init_args": {"lr": 0.0}}'}
    # The DDP run starts first: this process's run overlaps its second rank's start-up (a new process's imports).
    # Each run has a tokenized-pool cache of its own: neither reads a cache file the other is writing.
    ddp = driver.start(workdir, ["lightning-al", "fit", *tiny_run_args(workdir / "ddp-cache", run_name="ddp", **options),
                                 "--trainer.strategy=ddp", "--trainer.devices=2"])
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(workdir)
            single = main(["fit", *tiny_run_args(workdir, run_name="single", **options)])
            heldout_loss = float(single.trainer.callback_metrics["heldout/loss"])
    finally:
        code, log = driver.result(ddp)  # (also when this process's run failed: the driver is free again)
    assert code == 0, log[-3000:]
    checkpoints = workdir / "checkpoints"
    return SimpleNamespace(single=checkpoints / "single", ddp=checkpoints / "ddp", heldout_loss=heldout_loss)
