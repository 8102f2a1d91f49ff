"""The active-learning loop end to end through the CLI, on tiny random Llamas."""

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import PeftModel

from lightning_al.checkpointing import RunCheckpoint
from lightning_al.cli import main
from lightning_al.loop import ActiveLearningLoop
from lightning_al.model.loading import load_causal_lm, load_tokenizer
from lightning_al.module import LoRALanguageModel
from lightning_al.recording import NO_COST
from lightning_al.strategies import round_sizes
from tests.conftest import TINY_LLAMA, tiny_run_args
from tests.helpers import Crash, read_rounds


@pytest.mark.parametrize(
    "budget, rounds, expected",
    [(10, 1, [10]), (10, 2, [5, 5]), (10, 3, [4, 3, 3]), (50_000, 3, [16_667, 16_667, 16_666]), (7, 7, [1] * 7)],
)
def test_budget_split(budget, rounds, expected):
    assert round_sizes(budget, rounds) == expected


def test_fit_runs_all_rounds_and_writes_outputs(workdir):
    cli = main(["fit", *tiny_run_args(workdir, **{"loop.rounds": 3, "loop.budget": 31, "checkpoint.keep": "epochs"})])
    run_dir = workdir / "checkpoints" / "tiny"
    rounds = read_rounds(run_dir)
    assert sorted(rounds) == [0, 1, 2]
    assert [len(rounds[r]) for r in range(3)] == [11, 10, 10]
    ids = [row["id"] for r in range(3) for row in rounds[r]]
    assert len(ids) == len(set(ids)) == 31, "an id was acquired twice"
    assert all(row["round"] == r for r in range(3) for row in rounds[r])
    # The DataModule's state agrees with the files, and nothing held out was acquired.
    dm = cli.datamodule
    assert sorted(dm.ids[dm.labeled_indices()].tolist()) == sorted(ids)
    assert not dm.held_out[dm.labeled_indices()].any()
    for r in range(3):
        assert sorted(dm.ids[dm.labeled_indices(r)].tolist()) == sorted(row["id"] for row in rounds[r])
    # Per-round and last checkpoints, adapters in peft format, TensorBoard events, the config.
    assert (run_dir / "last.ckpt").exists()
    # keep=epochs: one checkpoint per epoch (epochs_per_round=2, so rounds end at epochs 1, 3, 5) besides
    # the one right after each acquisition (round 0's before any training).
    assert sorted(p.name for p in run_dir.glob("*.ckpt")) == sorted(
        ["last.ckpt", *(f"epoch={e}.ckpt" for e in range(6)), *(f"round={r}.ckpt" for r in range(3))])
    assert (run_dir / "config.yaml").exists()
    assert list((workdir / "lightning_logs" / "tiny").glob("events.out.tfevents.*"))
    adapter = run_dir / "rounds" / "round_2" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    tokenizer = load_tokenizer("char")
    base = load_causal_lm(None, json.loads(TINY_LLAMA), tokenizer)
    loaded = PeftModel.from_pretrained(base, str(adapter))
    trained = cli.model.model
    batch = torch.tensor([[3, 10, 11, 12, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(batch).logits, trained.eval()(batch).logits)


#: The run of the resume tests: scratch retraining (all labels every round), 2 rounds of 2 epochs.
SCRATCH = {"loop.retraining": "scratch", "loop.rounds": 2}


def _final(cli):
    rounds = read_rounds(Path(cli.trainer.checkpoint_callback.dirpath))
    return {r: [row["id"] for row in rows] for r, rows in rounds.items()}, float(cli.trainer.callback_metrics["heldout/loss"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of SCRATCH: what the resumed runs must end with, and the scratch policy's run."""
    folder = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        cli = main(["fit", *tiny_run_args(folder, run_name="reference", **SCRATCH)])
        return cli, _final(cli)


@pytest.mark.parametrize("policy", ["scratch", "incremental"])
def test_training_set_per_policy(workdir, policy, reference):
    """scratch trains on all labels; incremental only on the newest round. The labeled set only grows."""
    if policy == "scratch":
        cli = reference[0]
    else:
        cli = main(["fit", *tiny_run_args(workdir, **{**SCRATCH, "loop.retraining": policy})])
    dm = cli.datamodule
    loader_indices = {int(i) for batch in dm.train_dataloader() for i in batch["index"]}
    expected = dm.labeled_indices(1) if policy == "incremental" else dm.labeled_indices()
    assert loader_indices == set(expected.tolist())
    assert set(dm.labeled_indices(0).tolist()) < set(dm.labeled_indices().tolist())


@pytest.mark.parametrize("crash_epoch, resume_seed", [(1, 7), (2, 7), (1, 8)],
                         ids=["mid-round", "between-rounds", "mid-round-relaunched-with-another-seed"])
def test_resume_matches_uninterrupted_run(workdir, crash_epoch, resume_seed, reference):
    """A resumed run ends where the uninterrupted one does, even relaunched with another seed_everything (as
    `seed_everything: true` draws one per launch): the run's seed, training order included, is the checkpoint's."""
    ref_ids, ref_loss = reference[1]

    crash = json.dumps({"class_path": "tests.helpers.CrashAtEpoch", "init_args": {"epoch": crash_epoch}})
    with pytest.raises(Crash):
        main(["fit", *tiny_run_args(workdir, run_name="resumed", **SCRATCH), f"--trainer.callbacks=[{crash}]"])
    other_seed = pytest.warns(UserWarning, match="seed_everything=8 is not used")
    with other_seed if resume_seed != 7 else contextlib.nullcontext():
        resumed = main(["fit", *tiny_run_args(workdir, run_name="resumed", seed_everything=resume_seed, **SCRATCH),
                        "--ckpt_path=last"])
    ids, loss = _final(resumed)
    assert ids == ref_ids
    assert loss == pytest.approx(ref_loss, abs=1e-6)
    # config.yaml names the seed the run used (the report pairs runs on it), not the relaunch's.
    config = yaml.safe_load((Path(resumed.trainer.checkpoint_callback.dirpath) / "config.yaml").read_text())
    assert config["seed_everything"] == 7


def test_settings_that_resume_depends_on_are_checked(tmp_path):
    """From Python too: a setting that would weaken resume is an error at setup, not a silent change."""
    loop = ActiveLearningLoop(budget=4, run_dir=str(tmp_path))

    def check(**trainer_args):
        callbacks = trainer_args.pop("callbacks", [RunCheckpoint(str(tmp_path))])
        loop._check_resume_settings(Trainer(callbacks=[loop, *callbacks], logger=False, **trainer_args))

    check()
    for args, message in [({"val_check_interval": 0.5}, "val_check_interval"), ({"max_steps": 3}, "max_steps"),
                          ({"limit_val_batches": 0.25}, "limit_val_batches"), ({"limit_val_batches": 1}, "max_examples"),
                          ({"callbacks": [ModelCheckpoint(dirpath=tmp_path)]}, "RunCheckpoint"),
                          ({"callbacks": [RunCheckpoint(str(tmp_path / "elsewhere"))]}, "dirpath")]:
        with pytest.raises(ValueError, match=message):
            check(**args)


def test_checkpoint_state_keeps_its_layout(tmp_path):
    """The loop's checkpoint state is laid out as in every checkpoint written so far (the cost counters, now
    kept by its recorder, under ``cost``): an older checkpoint resumes, a counter it lacks starting at 0."""
    loop = ActiveLearningLoop(budget=4, run_dir=str(tmp_path))
    assert set(loop.state_dict()) == {"round", "ended", "seed", "cost", "rng"}
    old = {**loop.state_dict(), "round": 2, "ended": 1, "seed": 5, "cost": {"tokens_scored": 3.0, "wall_seconds": 7.5}}
    resumed = ActiveLearningLoop(budget=4, run_dir=str(tmp_path))
    resumed.load_state_dict(old)
    assert (resumed.round, resumed.ended, resumed.seed) == (2, 1, 5)
    assert resumed.state_dict()["cost"] == {**NO_COST, "tokens_scored": 3.0, "wall_seconds": 7.5}
    del old["ended"]  # older still: written before the loop counted ended rounds
    resumed.load_state_dict(old)
    assert resumed.ended == 1


def test_fresh_run_does_not_warn_about_its_checkpoint_folder(workdir, recwarn):
    """A fresh run's folder is empty when checkpoint callbacks check it, so even a ModelCheckpoint kept in the
    run folder besides RunCheckpoint does not warn "Checkpoint directory ... exists and is not empty"."""
    best = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": "checkpoints/tiny", "filename": "best", "monitor": "heldout/loss"}}
    options = {"loop.rounds": 1, "loop.epochs_per_round": 1, "loop.budget": 8, "loop.diversity_sample": 0}
    main(["fit", *tiny_run_args(workdir, **options), f"--trainer.callbacks=[{json.dumps(best)}]"])
    run_dir = workdir / "checkpoints" / "tiny"
    assert (run_dir / "best.ckpt").exists() and (run_dir / "config.yaml").exists()
    assert not [str(w.message) for w in recwarn if "Checkpoint directory" in str(w.message)]


def test_a_pretrained_base_trains_in_training_mode(workdir, monkeypatch):
    """``from_pretrained`` returns its model in eval mode, and Lightning keeps each submodule's mode when fit
    starts. A base with dropout of its own (GPT-2) must still train with it on, whatever the strategy: not
    only once an uncertainty scoring pass has switched modes, and not differently after a resume."""
    tokenizer = load_tokenizer("char")
    gpt2 = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256, "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id}
    base = load_causal_lm(None, {"model_type": "gpt2", **gpt2}, tokenizer)
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in base.modules())
    base.save_pretrained(workdir / "tiny-gpt2")
    in_eval = []
    step = LoRALanguageModel.training_step

    def training_step(self, batch, batch_idx):
        in_eval.append([name for name, module in self.named_modules() if not module.training])
        return step(self, batch, batch_idx)

    monkeypatch.setattr(LoRALanguageModel, "training_step", training_step)
    options = {"model.pretrained": str(workdir / "tiny-gpt2"), "model.config": "null", "loop.strategy": "random",
               "loop.rounds": 1, "loop.epochs_per_round": 1, "loop.budget": 8, "loop.diversity_sample": 0}
    main(["fit", *tiny_run_args(workdir, **options)])
    assert in_eval and in_eval == [[]] * len(in_eval), in_eval[0][:5]


@pytest.mark.parametrize("source", ["prompt", "generated"])
def test_tokens_scored_counts_each_prompt_once(workdir, source):
    """The scoring cost: every candidate's prompt, plus the scored continuation in generated mode (prompt mode
    scores positions of the prompt's own forward: counting them again nearly doubled its cost)."""
    options = {"loop.strategy": "entropy", "model.score_source": source, "loop.rounds": 1, "loop.epochs_per_round": 1,
               "loop.budget": 8, "loop.diversity_sample": 0}
    cli = main(["fit", *tiny_run_args(workdir, **options)])
    dm = cli.datamodule
    candidates = np.concatenate([dm.labeled_indices(), dm.unlabeled_indices()])  # round 0 scored all of them
    rows = read_rounds(workdir / "checkpoints" / "tiny")[0]
    prompts = int(dm.prompt_lengths[candidates].sum())
    metrics = [json.loads(line) for line in (workdir / "checkpoints" / "tiny" / "metrics.jsonl").open()]
    cost = next(m for m in metrics if m["evaluation"] == "cost")
    if source == "prompt":
        assert cost["tokens_scored"] == prompts
    else:
        assert prompts < cost["tokens_scored"] <= prompts + len(candidates) * 6  # model.max_new_tokens
    assert rows and cost["scoring_passes"] == 1


def test_a_resumed_rank_gets_its_own_rng_state(tmp_path):
    """Under DDP each rank's generators drew differently (dropout on batches of other shapes; a GPU process
    advances only its own device's), so a checkpoint keeps every rank's state and each rank resumes from its
    own; with another world size, from rank 0's. (The 2-process DDP runs gather them for real.)"""
    from types import SimpleNamespace

    loop = ActiveLearningLoop(budget=4, run_dir=str(tmp_path))
    torch.manual_seed(1)
    rank0 = loop.state_dict()["rng"]
    torch.manual_seed(2)
    rank1 = loop.state_dict()["rng"]
    saved = {**loop.state_dict(), "rng": {**rank0, "ranks": [rank0, rank1]}}
    for world, rank, expected in [(2, 1, rank1), (2, 0, rank0), (4, 3, rank0)]:
        torch.manual_seed(3)
        loop.load_state_dict(saved)
        loop.on_train_start(SimpleNamespace(global_rank=rank, world_size=world), None)
        assert torch.equal(torch.get_rng_state(), expected["torch"]), (world, rank)


@pytest.mark.parametrize("policy", ["scratch", "continue"])
def test_every_round_starts_with_a_new_optimizer_and_under_scratch_from_the_initial_adapter(workdir, monkeypatch,
                                                                                           policy):
    """The study's m=1 and m=2 end with the same training on B examples only if scratch retraining restarts at
    each round: the adapter at its initial weights, an optimizer without AdamW's moments. continue keeps the
    adapter (the contrast shows that the check can fail), with a new optimizer too."""
    firsts = []
    step = LoRALanguageModel.training_step

    def training_step(self, batch, batch_idx):
        if batch_idx == 0 and self.trainer.current_epoch % 2 == 0:  # a round's first step (2 epochs a round)
            initial = all(torch.equal(p.detach(), self.initial_adapter[name].to(p.device))
                          for name, p in self.adapter_state().items())
            firsts.append((self.trainer.current_epoch, initial, len(self.trainer.optimizers[0].state)))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(LoRALanguageModel, "training_step", training_step)
    main(["fit", *tiny_run_args(workdir, **{"loop.retraining": policy, "loop.rounds": 3, "loop.budget": 24,
                                            "loop.diversity_sample": 0})])
    assert firsts == [(0, True, 0), (2, policy == "scratch", 0), (4, policy == "scratch", 0)]
