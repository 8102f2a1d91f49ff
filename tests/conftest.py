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


def tiny_run_args(cache_dir: Path, **overrides: object) -> list[str]:
    """CLI arguments of a seconds-long experiment: tiny random Llama, synthetic pool, random strategy."""
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
    return [f"--{k}={v}" for k, v in options.items()]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a fresh folder: checkpoints/ and lightning_logs/ are relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
